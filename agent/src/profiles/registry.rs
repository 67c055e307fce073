//! The set of live profiles of one agent: the entry point the pipeline feeds.
//!
//! It owns the profiles, remembers which changed since they were last written (dirty), and
//! writes those through a [`ProfileStore`]. The caller decides the cadence: flushing every
//! second bounds what a crash can lose to that second. Only meaningful changes make a profile
//! dirty — a new entry, a new container, a status change, an import — so a quiet workload
//! costs no writes; counters (`observations`, `last_seen`) ride along with the next write.

use std::collections::{BTreeSet, HashMap};
use std::time::SystemTime;

use super::identity::{Labels, WorkloadIdentity};
use super::merge::merge_into;
use super::model::{LearnConfig, Observation, Profile};
use super::store::{ProfileStore, StoreError};
use crate::api::proto;

/// Live profiles with dirty tracking.
#[derive(Debug, Default)]
pub struct ProfileSet {
    profiles: HashMap<WorkloadIdentity, Profile>,
    dirty: BTreeSet<WorkloadIdentity>,
    config: LearnConfig,
}

/// What a flush did.
#[derive(Debug, Default)]
pub struct FlushReport {
    pub saved: usize,
    /// Profiles that could not be written stay dirty and are retried on the next flush.
    pub errors: Vec<StoreError>,
}

impl ProfileSet {
    pub fn new(config: LearnConfig) -> Self {
        Self {
            profiles: HashMap::new(),
            dirty: BTreeSet::new(),
            config,
        }
    }

    /// Loads every profile of the store. Skipped files are returned next to the set (they are
    /// already logged); only an unlistable directory is an error.
    pub fn load(
        store: &ProfileStore,
        config: LearnConfig,
    ) -> Result<(Self, Vec<StoreError>), StoreError> {
        let report = store.load_all()?;
        let mut set = Self::new(config);
        for profile in report.profiles {
            set.profiles.insert(profile.identity.clone(), profile);
        }
        Ok((set, report.errors))
    }

    pub fn config(&self) -> &LearnConfig {
        &self.config
    }

    pub fn get(&self, identity: &WorkloadIdentity) -> Option<&Profile> {
        self.profiles.get(identity)
    }

    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }

    /// All profiles, sorted by identity.
    pub fn profiles(&self) -> Vec<&Profile> {
        let mut all: Vec<&Profile> = self.profiles.values().collect();
        all.sort_by(|a, b| a.identity.cmp(&b.identity));
        all
    }

    /// Learns one observation of a container of `identity` (creating the profile on first
    /// sight). Returns true for a new entry.
    pub fn learn(
        &mut self,
        identity: &WorkloadIdentity,
        container_id: &str,
        observation: &Observation,
        now: SystemTime,
    ) -> bool {
        let profile = self
            .profiles
            .entry(identity.clone())
            .or_insert_with(|| Profile::new(identity.clone()));
        let new_container = profile.observe_container(container_id, now);
        let new_entry = profile.learn_with(observation, &self.config, now);
        if new_container || new_entry {
            self.dirty.insert(identity.clone());
        }
        new_entry
    }

    /// Learns everything an event carries. Host events and events without a pod are ignored.
    /// Returns the number of new entries.
    pub fn learn_event(
        &mut self,
        event: &proto::Event,
        labels: &impl Labels,
        now: SystemTime,
    ) -> usize {
        let Some(workload) = &event.workload else {
            return 0;
        };
        let Some(identity) = WorkloadIdentity::from_workload(workload, labels) else {
            return 0;
        };
        Observation::from_event(event)
            .iter()
            .filter(|obs| self.learn(&identity, &workload.container_id, obs, now))
            .count()
    }

    /// Whether the profile of `identity` allows the observation; `None` when there is no
    /// profile for it.
    pub fn allows(&self, identity: &WorkloadIdentity, observation: &Observation) -> Option<bool> {
        self.profiles.get(identity).map(|p| p.allows(observation))
    }

    /// Installs imported profiles, replacing any profile of the same identity. Takes a
    /// complete, validated import (see `yaml::import_file`), so a file is applied entirely or
    /// not at all.
    pub fn apply(&mut self, profiles: Vec<Profile>) {
        for profile in profiles {
            self.dirty.insert(profile.identity.clone());
            self.profiles.insert(profile.identity.clone(), profile);
        }
    }

    /// Merges a profile into the live one of the same identity (or installs it).
    pub fn merge(&mut self, profile: &Profile) {
        match self.profiles.get_mut(&profile.identity) {
            Some(existing) => {
                // Same identity: cannot fail.
                if merge_into(existing, profile).unwrap_or(false) {
                    self.dirty.insert(profile.identity.clone());
                }
            }
            None => self.apply(vec![profile.clone()]),
        }
    }

    /// Removes a profile from the set (the caller removes its file through the store).
    pub fn remove(&mut self, identity: &WorkloadIdentity) -> Option<Profile> {
        self.dirty.remove(identity);
        self.profiles.remove(identity)
    }

    /// Moves quiet profiles to `stable`; returns the identities whose status changed.
    pub fn refresh_statuses(&mut self, now: SystemTime) -> Vec<WorkloadIdentity> {
        let mut changed = Vec::new();
        for (identity, profile) in &mut self.profiles {
            if profile.refresh_status(now, self.config.stable_after) {
                self.dirty.insert(identity.clone());
                changed.push(identity.clone());
            }
        }
        changed.sort();
        changed
    }

    pub fn dirty_count(&self) -> usize {
        self.dirty.len()
    }

    /// Copies of the dirty profiles, clearing their dirty mark: for a caller that writes on
    /// another thread (`spawn_blocking`). Give failures back with [`Self::mark_dirty`].
    pub fn take_dirty(&mut self) -> Vec<Profile> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .filter_map(|id| self.profiles.get(&id).cloned())
            .collect()
    }

    pub fn mark_dirty(&mut self, identity: &WorkloadIdentity) {
        if self.profiles.contains_key(identity) {
            self.dirty.insert(identity.clone());
        }
    }

    /// Writes every dirty profile now (blocking I/O). Failed writes stay dirty.
    pub fn flush(&mut self, store: &ProfileStore) -> FlushReport {
        let mut report = FlushReport::default();
        for profile in self.take_dirty() {
            match store.save(&profile) {
                Ok(_) => report.saved += 1,
                Err(err) => {
                    tracing::warn!(%err, identity = %profile.identity, "cannot save profile; will retry");
                    self.dirty.insert(profile.identity.clone());
                    report.errors.push(err);
                }
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiles::model::FileAccess;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn open_event(pod: &str, container_id: &str, path: &str) -> proto::Event {
        proto::Event {
            workload: Some(proto::Workload {
                container_id: container_id.into(),
                namespace: "prod".into(),
                pod: pod.into(),
                container: "nginx".into(),
                image: "nginx:1.27".into(),
                ..Default::default()
            }),
            body: Some(proto::event::Body::Open(proto::FileOpenEvent {
                path: path.into(),
                access: proto::FileAccess::Read as i32,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn replicas_feed_one_profile_and_flush_persists() {
        let dir = tempfile::tempdir().unwrap();
        let store = ProfileStore::open(dir.path()).unwrap();
        let mut set = ProfileSet::new(LearnConfig::default());
        assert_eq!(
            set.learn_event(
                &open_event("web-7f9c5d8b6-x2x1q", "c1", "/proc/1/stat"),
                &(),
                at(1)
            ),
            1
        );
        assert_eq!(
            set.learn_event(
                &open_event("web-7f9c5d8b6-q9zkd", "c2", "/proc/2/stat"),
                &(),
                at(2)
            ),
            0
        );
        assert_eq!(set.len(), 1);
        let profile = set.profiles()[0];
        assert_eq!(profile.stats.containers, 2);
        assert_eq!(set.dirty_count(), 1);

        let report = set.flush(&store);
        assert_eq!(report.saved, 1);
        assert_eq!(set.dirty_count(), 0);
        // Known behaviour from a known container does not make the profile dirty.
        set.learn_event(
            &open_event("web-7f9c5d8b6-x2x1q", "c1", "/proc/9/stat"),
            &(),
            at(3),
        );
        assert_eq!(set.dirty_count(), 0);

        let (loaded, errors) = ProfileSet::load(&store, LearnConfig::default()).unwrap();
        assert!(errors.is_empty());
        let id = WorkloadIdentity::new("web", "nginx", "docker.io/library/nginx");
        assert_eq!(
            loaded.allows(
                &id,
                &Observation::File {
                    path: "/proc/5/stat".into(),
                    access: FileAccess::Read
                }
            ),
            Some(true)
        );
        assert_eq!(
            loaded.allows(
                &WorkloadIdentity::new("x", "y", "z"),
                &Observation::Syscall {
                    name: "read".into()
                }
            ),
            None
        );
    }

    #[test]
    fn failed_writes_stay_dirty() {
        let dir = tempfile::tempdir().unwrap();
        let store = ProfileStore::open(dir.path().join("p")).unwrap();
        let mut set = ProfileSet::new(LearnConfig::default());
        let id = WorkloadIdentity::new("w", "c", "i");
        set.learn(
            &id,
            "c1",
            &Observation::Syscall {
                name: "read".into(),
            },
            at(1),
        );
        std::fs::remove_dir_all(store.dir()).unwrap();
        let report = set.flush(&store);
        assert_eq!(report.saved, 0);
        assert_eq!(report.errors.len(), 1);
        assert_eq!(set.dirty_count(), 1);
    }

    #[test]
    fn statuses_and_apply() {
        let mut set = ProfileSet::new(LearnConfig {
            stable_after: Duration::from_secs(10),
            ..LearnConfig::default()
        });
        let id = WorkloadIdentity::new("w", "c", "i");
        set.learn(
            &id,
            "",
            &Observation::Syscall {
                name: "read".into(),
            },
            at(100),
        );
        set.take_dirty();
        assert!(set.refresh_statuses(at(105)).is_empty());
        assert_eq!(set.refresh_statuses(at(110)), vec![id.clone()]);
        assert_eq!(set.dirty_count(), 1);

        let mut imported = Profile::new(id.clone());
        imported.syscalls.insert("write".into());
        set.apply(vec![imported]);
        assert_eq!(
            set.allows(
                &id,
                &Observation::Syscall {
                    name: "read".into()
                }
            ),
            Some(false)
        );
        let mut extra = Profile::new(id.clone());
        extra.syscalls.insert("read".into());
        set.merge(&extra);
        assert_eq!(
            set.allows(
                &id,
                &Observation::Syscall {
                    name: "read".into()
                }
            ),
            Some(true)
        );
        assert!(set.remove(&id).is_some());
        assert!(set.is_empty());
    }
}
