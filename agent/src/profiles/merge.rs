//! Merging and diffing profiles.
//!
//! One workload runs on many nodes; each node's agent learns a partial profile. Merging is
//! the union of what each saw (it can only widen the profile, never lose an entry), and is
//! refused for different identities so that two workloads never blend by accident. A diff is
//! what a reviewer reads before accepting a learned profile as code: one line per entry, `+`
//! for added and `-` for removed, grouped by section in a stable order.

use std::collections::BTreeSet;
use std::fmt;

use super::identity::WorkloadIdentity;
use super::model::{
    EgressRule, FileAccess, ListenRule, MAX_TRACKED_CONTAINERS, Profile, ProfileStats,
    ProfileStatus, SyscallPolicy,
};
use super::pattern::PathPattern;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    #[error(
        "cannot merge profiles of different workloads: {left} and {right} (selectors must be \
         equal)"
    )]
    SelectorMismatch {
        left: Box<WorkloadIdentity>,
        right: Box<WorkloadIdentity>,
    },
}

/// One entry of a profile, in a flat form suited for set arithmetic and display.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entry {
    Exec {
        path: PathPattern,
        parent: Option<PathPattern>,
    },
    File {
        path: PathPattern,
        access: FileAccess,
    },
    Egress(EgressRule),
    Listen(ListenRule),
    Syscall(String),
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Exec {
                path,
                parent: Some(parent),
            } => write!(f, "exec {path} (parent {parent})"),
            Entry::Exec { path, parent: None } => write!(f, "exec {path} (parent unknown)"),
            Entry::File { path, access } => write!(f, "file {path} {access}"),
            Entry::Egress(rule) => {
                write!(
                    f,
                    "egress {} {} port {}",
                    rule.protocol, rule.address, rule.port
                )
            }
            Entry::Listen(rule) => write!(f, "listen {} port {}", rule.protocol, rule.port),
            Entry::Syscall(name) => write!(f, "syscall {name}"),
        }
    }
}

impl Profile {
    /// Every entry of the profile, sorted by section then value.
    pub fn entries(&self) -> BTreeSet<Entry> {
        let mut out = BTreeSet::new();
        for rule in &self.executables {
            out.insert(Entry::Exec {
                path: rule.path.clone(),
                parent: rule.parent.clone(),
            });
        }
        for (path, accesses) in &self.files {
            for access in accesses {
                out.insert(Entry::File {
                    path: path.clone(),
                    access: *access,
                });
            }
        }
        out.extend(self.egress.iter().cloned().map(Entry::Egress));
        out.extend(self.listen.iter().copied().map(Entry::Listen));
        out.extend(self.syscalls.iter().cloned().map(Entry::Syscall));
        out
    }
}

/// Merges `other` into `target` (union of entries, stats combined; a `kill` syscall policy on
/// either side is kept). Returns true when `target` gained an entry or the policy.
///
/// Stats: first seen is the earliest, last seen and last new entry the latest, observations
/// add up, distinct containers are counted once (inclusion–exclusion over the remembered
/// ids), and the result is `stable` only when both sides are.
pub fn merge_into(target: &mut Profile, other: &Profile) -> Result<bool, MergeError> {
    if target.identity != other.identity {
        return Err(MergeError::SelectorMismatch {
            left: Box::new(target.identity.clone()),
            right: Box::new(other.identity.clone()),
        });
    }
    let before = (target.counts(), target.syscall_policy);
    target.executables.extend(other.executables.iter().cloned());
    for (path, accesses) in &other.files {
        target
            .files
            .entry(path.clone())
            .or_default()
            .extend(accesses.iter().copied());
    }
    target.egress.extend(other.egress.iter().cloned());
    target.listen.extend(other.listen.iter().copied());
    target.syscalls.extend(other.syscalls.iter().cloned());
    // An opt-in is set by a person and never learned: a partial profile learned elsewhere must
    // not drop it.
    if other.syscall_policy == SyscallPolicy::Kill {
        target.syscall_policy = SyscallPolicy::Kill;
    }
    for (k, v) in &other.labels {
        target.labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    for (k, v) in &other.annotations {
        target
            .annotations
            .entry(k.clone())
            .or_insert_with(|| v.clone());
    }
    merge_stats(&mut target.stats, &other.stats);
    Ok((target.counts(), target.syscall_policy) != before)
}

/// The union of two partial profiles of one workload.
pub fn merge(left: &Profile, right: &Profile) -> Result<Profile, MergeError> {
    let mut out = left.clone();
    merge_into(&mut out, right)?;
    Ok(out)
}

fn min_nonzero(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    }
}

fn merge_stats(target: &mut ProfileStats, other: &ProfileStats) {
    target.first_seen_ms = min_nonzero(target.first_seen_ms, other.first_seen_ms);
    target.last_seen_ms = target.last_seen_ms.max(other.last_seen_ms);
    target.last_new_entry_ms = target.last_new_entry_ms.max(other.last_new_entry_ms);
    target.observations = target.observations.saturating_add(other.observations);
    let shared = target
        .container_ids
        .intersection(&other.container_ids)
        .count() as u64;
    target.containers = target
        .containers
        .saturating_add(other.containers)
        .saturating_sub(shared);
    for id in &other.container_ids {
        if target.container_ids.len() >= MAX_TRACKED_CONTAINERS {
            break;
        }
        target.container_ids.insert(id.clone());
    }
    if other.status == ProfileStatus::Learning {
        target.status = ProfileStatus::Learning;
    }
}

/// What changed between two versions of a profile.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProfileDiff {
    pub added: Vec<Entry>,
    pub removed: Vec<Entry>,
}

impl ProfileDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// Renders one line per change (`+ exec /bin/cat (parent /bin/sh)`, `- file /etc/hosts
/// read`), sections in the order exec, file, egress, listen, syscall; within a section, by
/// entry. Empty output for no change.
impl fmt::Display for ProfileDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut lines: Vec<(&Entry, char)> = self
            .added
            .iter()
            .map(|e| (e, '+'))
            .chain(self.removed.iter().map(|e| (e, '-')))
            .collect();
        lines.sort();
        for (entry, sign) in lines {
            writeln!(f, "{sign} {entry}")?;
        }
        Ok(())
    }
}

/// The entries added in `new` and removed from `old`. Identities may differ (e.g. comparing a
/// profile with its renamed successor); only entries are compared.
pub fn diff(old: &Profile, new: &Profile) -> ProfileDiff {
    let old = old.entries();
    let new = new.entries();
    ProfileDiff {
        added: new.difference(&old).cloned().collect(),
        removed: old.difference(&new).cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiles::model::{LearnConfig, Observation, Protocol};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn id() -> WorkloadIdentity {
        WorkloadIdentity::new("web", "nginx", "docker.io/library/nginx")
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn learn(p: &mut Profile, obs: Observation, secs: u64) {
        p.learn_with(&obs, &LearnConfig::default(), at(secs));
    }

    fn exec(path: &str, parent: &str) -> Observation {
        Observation::Exec {
            path: path.into(),
            parent_exe: Some(parent.into()),
        }
    }

    fn file(path: &str, access: FileAccess) -> Observation {
        Observation::File {
            path: path.into(),
            access,
        }
    }

    #[test]
    fn merge_is_a_union_with_combined_stats() {
        let mut a = Profile::new(id());
        learn(&mut a, exec("/bin/cat", "/bin/sh"), 100);
        learn(&mut a, file("/etc/hosts", FileAccess::Read), 110);
        a.observe_container("c1", at(100));
        a.observe_container("c2", at(100));
        a.stats.status = ProfileStatus::Stable;
        let mut b = Profile::new(id());
        learn(&mut b, file("/etc/hosts", FileAccess::Write), 50);
        learn(
            &mut b,
            Observation::Syscall {
                name: "read".into(),
            },
            200,
        );
        b.observe_container("c2", at(60));
        b.observe_container("c3", at(60));
        b.labels.insert("team".into(), "x".into());

        let m = merge(&a, &b).unwrap();
        assert_eq!(m.counts().total(), 4);
        assert_eq!(
            m.files.values().next().unwrap(),
            &BTreeSet::from([FileAccess::Read, FileAccess::Write])
        );
        assert_eq!(m.stats.first_seen_ms, 50_000);
        assert_eq!(m.stats.last_seen_ms, 200_000);
        assert_eq!(m.stats.last_new_entry_ms, 200_000);
        assert_eq!(m.stats.observations, 4);
        assert_eq!(m.stats.containers, 3);
        assert_eq!(m.stats.status, ProfileStatus::Learning);
        assert_eq!(m.labels.get("team").map(String::as_str), Some("x"));
        // Merging is idempotent for entries.
        let mut again = m.clone();
        assert!(!merge_into(&mut again, &a).unwrap());
    }

    #[test]
    fn merge_keeps_a_syscall_kill_opt_in() {
        let mut reviewed = Profile::new(id());
        reviewed.syscall_policy = SyscallPolicy::Kill;
        let learned = Profile::new(id());
        let mut target = learned.clone();
        assert!(
            merge_into(&mut target, &reviewed).unwrap(),
            "the opt-in is a change"
        );
        assert_eq!(target.syscall_policy, SyscallPolicy::Kill);
        assert!(!merge_into(&mut target, &learned).unwrap());
        assert_eq!(target.syscall_policy, SyscallPolicy::Kill);
    }

    #[test]
    fn merge_refuses_different_selectors() {
        let a = Profile::new(id());
        let b = Profile::new(WorkloadIdentity::new(
            "api",
            "nginx",
            "docker.io/library/nginx",
        ));
        let err = merge(&a, &b).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("web/nginx") && text.contains("api/nginx"),
            "{text}"
        );
    }

    #[test]
    fn diff_lists_additions_and_removals_per_section() {
        let mut old = Profile::new(id());
        learn(&mut old, exec("/bin/sh", "/usr/bin/env"), 1);
        learn(&mut old, file("/etc/hosts", FileAccess::Read), 1);
        learn(
            &mut old,
            Observation::Syscall {
                name: "read".into(),
            },
            1,
        );
        let mut new = old.clone();
        new.files.clear();
        learn(&mut new, exec("/bin/cat", "/bin/sh"), 2);
        learn(
            &mut new,
            Observation::Connect {
                protocol: Protocol::Tcp,
                address: "10.244.1.2".into(),
                port: 5432,
            },
            2,
        );
        learn(
            &mut new,
            Observation::Listen {
                protocol: Protocol::Tcp,
                port: 80,
            },
            2,
        );
        learn(
            &mut new,
            Observation::Syscall {
                name: "write".into(),
            },
            2,
        );
        new.executables.insert(crate::profiles::model::ExecRule {
            path: PathPattern::parse("/entrypoint.sh").unwrap(),
            parent: None,
        });
        let d = diff(&old, &new);
        assert_eq!(d.added.len(), 5);
        assert_eq!(d.removed.len(), 1);
        assert_eq!(
            d.to_string(),
            "+ exec /bin/cat (parent /bin/sh)\n\
             + exec /entrypoint.sh (parent unknown)\n\
             - file /etc/hosts read\n\
             + egress tcp 10.244.0.0/16 port 5432\n\
             + listen tcp port 80\n\
             + syscall write\n"
        );
        assert!(diff(&old, &old).is_empty());
        assert_eq!(diff(&old, &old).to_string(), "");
    }
}
