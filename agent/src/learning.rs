//! Learning mode: turns the events of workloads in `learn` mode into their behaviour profiles,
//! keeps the profiles on disk (nothing learned more than a second before a crash is lost),
//! loads reviewed profiles from YAML (the API and a watched directory), and answers the
//! profile calls of the gRPC API.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::{
    api::{
        proto,
        server::{ProfilesApi, ProfilesError},
    },
    config::Config,
    containers::ContainerRegistry,
    modes::Mode,
    profiles::{
        LearnConfig, ProfileSet, ProfileStore, WorkloadIdentity,
        model::{ProfileStatus, unix_ms},
        yaml,
    },
};

/// How often learned changes are written to disk. Half the "lose at most 1 s" budget.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// How often the watched profiles directory is checked.
pub const DIRECTORY_POLL: Duration = Duration::from_millis(500);

pub struct Learner {
    set: Mutex<ProfileSet>,
    store: ProfileStore,
    config: watch::Receiver<Config>,
    containers: Arc<ContainerRegistry>,
}

impl Learner {
    /// Opens the profile store under `state_dir` and loads what was learned before. Corrupt
    /// profile files are reported and left on disk; the others load.
    pub fn open(
        state_dir: &Path,
        config: watch::Receiver<Config>,
        containers: Arc<ContainerRegistry>,
    ) -> anyhow::Result<Arc<Self>> {
        let learn_config = learn_config(&config.borrow());
        let store = ProfileStore::open(state_dir.join("profiles"))?;
        let (set, errors) = ProfileSet::load(&store, learn_config)?;
        for error in errors {
            error!("{error}; this profile is not loaded (the file is left as it is)");
        }
        info!(profiles = set.len(), dir = %store.dir().display(), "profiles loaded");
        Ok(Arc::new(Self {
            set: Mutex::new(set),
            store,
            config,
            containers,
        }))
    }

    fn set(&self) -> MutexGuard<'_, ProfileSet> {
        self.set
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the profile of `identity` (None when there is none).
    pub fn with_profile<R>(
        &self,
        identity: &WorkloadIdentity,
        f: impl FnOnce(Option<&crate::profiles::Profile>) -> R,
    ) -> R {
        f(self.set().get(identity))
    }

    /// The mode that applies to a workload now (host processes: the default mode).
    pub fn mode_for(&self, workload: &proto::Workload) -> Mode {
        let config = self.config.borrow();
        match WorkloadIdentity::from_workload(workload, &()) {
            Some(identity) => config
                .modes
                .mode_for(&workload.namespace, &identity.workload),
            None => config.modes.default,
        }
    }

    /// Learns from `event` when its workload is in `learn` mode.
    pub fn observe(&self, event: &proto::Event) {
        let Some(workload) = &event.workload else {
            return;
        };
        if workload.host || workload.container_id.is_empty() {
            return;
        }
        if is_container_runtime(event) || self.mode_for(workload) != Mode::Learn {
            return;
        }
        self.set().learn_event(event, &(), SystemTime::now());
    }

    /// Writes changed profiles every [`FLUSH_INTERVAL`] and moves quiet profiles to `stable`.
    pub async fn run_flusher(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(FLUSH_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let learner = Arc::clone(&self);
            let flushed = tokio::task::spawn_blocking(move || learner.flush()).await;
            if let Err(error) = flushed {
                error!(%error, "profile flush task failed");
            }
        }
    }

    /// Writes every changed profile now; failed writes stay pending and are retried.
    pub fn flush(&self) {
        let dirty = {
            let mut set = self.set();
            set.refresh_statuses(SystemTime::now());
            set.take_dirty()
        };
        for profile in dirty {
            if let Err(error) = self.store.save(&profile) {
                error!("{error}; will retry");
                self.set().mark_dirty(&profile.identity);
            }
        }
    }

    /// Imports YAML documents: all or nothing. Imported profiles replace learned ones of the
    /// same workload (the reviewed profile is the truth) and are written to disk at once.
    pub fn import(&self, text: &str, source: &Path) -> Result<Vec<String>, ProfilesError> {
        let profiles = yaml::import_str(text, source)
            .map_err(|error| ProfilesError::Invalid(error.to_string()))?;
        let names = profiles
            .iter()
            .map(|profile| profile.identity.default_name())
            .collect();
        self.set().apply(profiles);
        self.flush();
        Ok(names)
    }

    /// Watches a directory of YAML files (a ConfigMap mount) and imports each file that
    /// changes. An invalid file is reported with its line and reason and changes nothing.
    pub async fn watch_directory(self: Arc<Self>, dir: PathBuf) {
        let mut seen: BTreeMap<PathBuf, SystemTime> = BTreeMap::new();
        let mut ticker = tokio::time::interval(DIRECTORY_POLL);
        let mut missing_reported = false;
        loop {
            ticker.tick().await;
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(error) => {
                    if !missing_reported {
                        info!(dir = %dir.display(), %error, "profiles directory not readable; watching for it");
                        missing_reported = true;
                    }
                    continue;
                }
            };
            missing_reported = false;
            for entry in entries.flatten() {
                let path = entry.path();
                let is_yaml = path
                    .extension()
                    .is_some_and(|ext| ext == "yaml" || ext == "yml");
                // ConfigMap mounts hold `..data` links and hidden timestamped directories.
                let hidden = entry.file_name().to_string_lossy().starts_with('.');
                if !is_yaml || hidden {
                    continue;
                }
                let Ok(modified) = std::fs::metadata(&path).and_then(|m| m.modified()) else {
                    continue;
                };
                if seen.get(&path) == Some(&modified) {
                    continue;
                }
                seen.insert(path.clone(), modified);
                match std::fs::read_to_string(&path) {
                    Ok(text) => match self.import(&text, &path) {
                        Ok(names) => info!(file = %path.display(), ?names, "profiles imported"),
                        Err(error) => {
                            error!("{error}; the last good profiles stay in force")
                        }
                    },
                    Err(error) => warn!(file = %path.display(), %error, "cannot read profile file"),
                }
            }
        }
    }

    fn summary(profile: &crate::profiles::Profile) -> proto::ProfileSummary {
        let counts = profile.counts();
        let stats = &profile.stats;
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        proto::ProfileSummary {
            name: profile.identity.default_name(),
            workload: profile.identity.workload.clone(),
            container: profile.identity.container.clone(),
            image: profile.identity.image.clone(),
            status: match stats.status {
                ProfileStatus::Learning => "learning".into(),
                ProfileStatus::Stable => "stable".into(),
            },
            executables: count(counts.executables),
            files: count(counts.files),
            egress: count(counts.egress),
            listen: count(counts.listen),
            syscalls: count(counts.syscalls),
            first_seen_unix: (stats.first_seen_ms / 1000) as i64,
            last_new_entry_unix: (stats.last_new_entry_ms / 1000) as i64,
            observed_seconds: stats.observed_for().as_secs(),
            containers: u32::try_from(stats.containers).unwrap_or(u32::MAX),
        }
    }
}

/// True for the container runtime's own processes while it sets a container up: `runc`
/// (re-executed as `runc init`, loading its libraries), then `runc:[0:PARENT]`,
/// `runc:[1:CHILD]`, `runc:[2:INIT]` until the entrypoint's exec. What
/// they do (mounts, host paths, the exec fifo) is not the workload's behaviour. The exec of the
/// entrypoint itself carries the new name and is learned.
pub(crate) fn is_container_runtime(event: &proto::Event) -> bool {
    event.process.as_ref().is_some_and(|process| {
        process.comm == "runc"
                || process.comm.starts_with("runc:")
                // runc re-executing itself from a sealed memfd copy (newer runc versions).
                || process.comm.starts_with("memfd:runc")
    })
}

/// Learning settings from the configuration.
fn learn_config(config: &Config) -> LearnConfig {
    LearnConfig {
        stable_after: Duration::from_secs(config.profiles.stable_after_seconds),
        ..LearnConfig::default()
    }
}

#[tonic::async_trait]
impl ProfilesApi for Learner {
    async fn list(&self) -> Vec<proto::ProfileSummary> {
        let mut set = self.set();
        set.refresh_statuses(SystemTime::now());
        set.profiles().into_iter().map(Self::summary).collect()
    }

    async fn export(&self, names: &[String]) -> Result<String, ProfilesError> {
        let set = self.set();
        let all = set.profiles();
        let chosen: Vec<_> = if names.is_empty() {
            all.into_iter().cloned().collect()
        } else {
            let mut chosen = Vec::new();
            for name in names {
                let profile = all
                    .iter()
                    .find(|p| &p.identity.default_name() == name)
                    .ok_or_else(|| ProfilesError::NotFound(format!("no profile named {name:?}")))?;
                chosen.push((*profile).clone());
            }
            chosen
        };
        Ok(yaml::export(&chosen))
    }

    async fn import(&self, text: &str, source: &str) -> Result<Vec<String>, ProfilesError> {
        Learner::import(self, text, Path::new(source))
    }

    async fn container_profile(&self, id: &str) -> Result<proto::ContainerProfile, ProfilesError> {
        let matches = self.containers.containerd().find_by_prefix(id, 2);
        let (container_id, meta) = match matches.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(ProfilesError::NotFound(format!(
                    "no running container {id} is known"
                )));
            }
            _ => {
                return Err(ProfilesError::Invalid(format!(
                    "container id prefix {id} is not unique"
                )));
            }
        };
        let workload = proto::Workload {
            host: false,
            container_id: container_id.clone(),
            namespace: meta.pod_namespace.clone(),
            pod: meta.pod.clone(),
            container: meta.container.clone(),
            image: meta.image.clone(),
            ..Default::default()
        };
        let identity = WorkloadIdentity::from_workload(&workload, &())
            .ok_or_else(|| ProfilesError::NotFound(format!("container {id} has no workload")))?;
        let exists = self.set().get(&identity).is_some();
        Ok(proto::ContainerProfile {
            container_id,
            namespace: meta.pod_namespace.clone(),
            pod: meta.pod.clone(),
            profile: identity.default_name(),
            profile_exists: exists,
            mode: self.mode_for(&workload).name().into(),
        })
    }
}

/// Unix milliseconds now (for tests and logs).
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}
