//! The canonical in-memory behaviour profile: what one workload identity was seen doing.
//!
//! Everything else in `profiles` is a view of this model (YAML documents, the seccomp profile,
//! diffs) or a way to keep it (the store). It is deliberately independent of the protobuf
//! types: the pipeline turns events into [`Observation`]s (see [`Observation::from_event`]),
//! which is the only thing the model learns from or judges.
//!
//! The central invariant: [`Profile::learn`] returns `true` (a new entry) exactly when
//! [`Profile::allows`] returned `false` for that observation before. Learning goes through the
//! generaliser first, so an entry is usually a pattern (`/proc/*/stat`, `10.244.0.0/16`) and
//! later observations that differ only in volatile parts are not new.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::generalize::{self, GeneralizeConfig};
use super::identity::WorkloadIdentity;
use super::pattern::{PathPattern, Peer};
use crate::api::proto;

/// How a file was used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileAccess {
    Read,
    Write,
    Exec,
}

impl FileAccess {
    pub const ALL: [FileAccess; 3] = [FileAccess::Read, FileAccess::Write, FileAccess::Exec];

    pub fn as_str(self) -> &'static str {
        match self {
            FileAccess::Read => "read",
            FileAccess::Write => "write",
            FileAccess::Exec => "exec",
        }
    }
}

impl fmt::Display for FileAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Transport of a connection or listening socket, as the event model names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    Tcp,
    Udp,
    UnixStream,
    UnixDgram,
    UnixSeqpacket,
    Raw,
    Other,
}

impl Protocol {
    /// The event model's name (`tcp`, `unix-stream`, ...); unknown names map to `Other`.
    pub fn from_name(name: &str) -> Self {
        match name {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "unix-stream" => Protocol::UnixStream,
            "unix-dgram" => Protocol::UnixDgram,
            "unix-seqpacket" => Protocol::UnixSeqpacket,
            "raw" => Protocol::Raw,
            _ => Protocol::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::UnixStream => "unix-stream",
            Protocol::UnixDgram => "unix-dgram",
            Protocol::UnixSeqpacket => "unix-seqpacket",
            Protocol::Raw => "raw",
            Protocol::Other => "other",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing a workload was seen doing, as the profile cares about it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Observation {
    /// An executable was run (path as invoked, absolute); `parent_exe` is the executable of
    /// the process that ran it, when known.
    Exec {
        path: String,
        parent_exe: Option<String>,
    },
    File {
        path: String,
        access: FileAccess,
    },
    /// Outbound connection to `address` (IP text, or a unix socket path / `@abstract` name).
    Connect {
        protocol: Protocol,
        address: String,
        port: u16,
    },
    Listen {
        protocol: Protocol,
        port: u16,
    },
    Syscall {
        name: String,
    },
}

impl Observation {
    /// The observations one event carries: none for events a profile does not describe
    /// (exit, fork, drop, accept), two for a read-write open.
    ///
    /// Failed opens and connects are included: the attempt is the behaviour (a library
    /// search that fails with `ENOENT` on every start is normal and must be learned; an
    /// attempt to read `/etc/shadow` that fails is still a deviation).
    pub fn from_event(event: &proto::Event) -> Vec<Observation> {
        use proto::event::Body;
        let Some(body) = &event.body else {
            return Vec::new();
        };
        match body {
            Body::Exec(exec) => {
                let parent_exe = event
                    .process
                    .as_ref()
                    .and_then(|p| p.ancestors.first())
                    .map(|a| a.exe.clone())
                    .filter(|exe| !exe.is_empty());
                vec![Observation::Exec {
                    path: exec.path.clone(),
                    parent_exe,
                }]
            }
            Body::Open(open) => {
                let accesses: &[FileAccess] = match open.access() {
                    proto::FileAccess::Write => &[FileAccess::Write],
                    proto::FileAccess::ReadWrite => &[FileAccess::Read, FileAccess::Write],
                    proto::FileAccess::Read | proto::FileAccess::Unspecified => &[FileAccess::Read],
                };
                accesses
                    .iter()
                    .map(|access| Observation::File {
                        path: open.path.clone(),
                        access: *access,
                    })
                    .collect()
            }
            Body::Network(net) => {
                let protocol = Protocol::from_name(&net.protocol);
                let port = u16::try_from(net.port).unwrap_or(0);
                match net.operation() {
                    proto::NetworkOperation::Connect => vec![Observation::Connect {
                        protocol,
                        address: net.address.clone(),
                        port,
                    }],
                    proto::NetworkOperation::Listen => vec![Observation::Listen { protocol, port }],
                    _ => Vec::new(),
                }
            }
            Body::Syscall(sys) => vec![Observation::Syscall {
                name: sys.name.clone(),
            }],
            Body::Exit(_) | Body::Fork(_) | Body::Drop(_) | Body::Deviation(_) => Vec::new(),
        }
    }
}

/// An executable with its lineage: the parent executable that ran it. `parent: None` is an
/// executable whose parent was not known (e.g. started before the agent).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRule {
    pub path: PathPattern,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<PathPattern>,
}

/// An outbound peer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    pub protocol: Protocol,
    pub address: Peer,
    pub port: u16,
}

/// A listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenRule {
    pub protocol: Protocol,
    pub port: u16,
}

/// What enforce mode does about a syscall outside the profile's set. Syscall deviations are
/// flagged in any case; killing is opt-in, per profile, because the syscall itself still runs
/// (the process dies when it returns): the exported seccomp profile, which makes the call fail
/// instead, is the recommended way to deny syscalls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyscallPolicy {
    /// Report the deviation, let the process live.
    #[default]
    Flag,
    /// In enforce mode, send the process SIGKILL (verdict `killed`).
    Kill,
}

impl SyscallPolicy {
    pub fn is_flag(&self) -> bool {
        *self == SyscallPolicy::Flag
    }
}

/// Where a profile is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfileStatus {
    /// New entries are still being learned.
    #[default]
    Learning,
    /// No new entry for at least the quiet period.
    Stable,
}

impl fmt::Display for ProfileStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProfileStatus::Learning => "learning",
            ProfileStatus::Stable => "stable",
        })
    }
}

/// At most this many container ids are remembered to count distinct containers; beyond it the
/// count only grows for ids not remembered (an overestimate, never an underestimate).
pub const MAX_TRACKED_CONTAINERS: usize = 1024;

/// Lifecycle of a profile. Times are milliseconds since the Unix epoch (0 = never).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ProfileStats {
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// When the last new entry was learned.
    pub last_new_entry_ms: u64,
    /// Observations fed to `learn`, new or not.
    pub observations: u64,
    /// Distinct containers observed.
    pub containers: u64,
    /// The remembered container ids (bounded by [`MAX_TRACKED_CONTAINERS`]).
    pub container_ids: BTreeSet<String>,
    pub status: ProfileStatus,
}

impl ProfileStats {
    /// How long the workload has been observed.
    pub fn observed_for(&self) -> Duration {
        Duration::from_millis(self.last_seen_ms.saturating_sub(self.first_seen_ms))
    }

    fn touch(&mut self, now_ms: u64) {
        if self.first_seen_ms == 0 || now_ms < self.first_seen_ms {
            self.first_seen_ms = now_ms;
        }
        self.last_seen_ms = self.last_seen_ms.max(now_ms);
    }
}

/// Counts of entries per section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EntryCounts {
    pub executables: usize,
    pub files: usize,
    pub egress: usize,
    pub listen: usize,
    pub syscalls: usize,
}

impl EntryCounts {
    pub fn total(&self) -> usize {
        self.executables + self.files + self.egress + self.listen + self.syscalls
    }
}

/// How learning behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnConfig {
    pub generalize: GeneralizeConfig,
    /// A profile becomes `stable` after this long without a new entry.
    pub stable_after: Duration,
}

impl Default for LearnConfig {
    fn default() -> Self {
        Self {
            generalize: GeneralizeConfig::default(),
            stable_after: Duration::from_secs(24 * 60 * 60),
        }
    }
}

/// Syscalls the kernel makes a process enter when a signal handler returns or an interrupted
/// call restarts: whether a run uses them depends on signal timing, not on what the program
/// does, so they are always allowed and never learned (the seccomp export adds them anyway).
pub const SIGNAL_RETURN_SYSCALLS: &[&str] = &["rt_sigreturn", "restart_syscall"];

/// Milliseconds since the Unix epoch (0 for times before it).
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The behaviour profile of one workload identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub identity: WorkloadIdentity,
    /// Free-form metadata carried through YAML (`metadata.labels` / `annotations`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub executables: BTreeSet<ExecRule>,
    #[serde(default)]
    pub files: BTreeMap<PathPattern, BTreeSet<FileAccess>>,
    #[serde(default)]
    pub egress: BTreeSet<EgressRule>,
    #[serde(default)]
    pub listen: BTreeSet<ListenRule>,
    #[serde(default)]
    pub syscalls: BTreeSet<String>,
    /// Set by people (YAML `spec.syscallPolicy`), never learned.
    #[serde(default)]
    pub syscall_policy: SyscallPolicy,
    #[serde(default)]
    pub stats: ProfileStats,
}

impl Profile {
    /// An empty profile, learning.
    pub fn new(identity: WorkloadIdentity) -> Self {
        Self {
            identity,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            executables: BTreeSet::new(),
            files: BTreeMap::new(),
            egress: BTreeSet::new(),
            listen: BTreeSet::new(),
            syscalls: BTreeSet::new(),
            syscall_policy: SyscallPolicy::Flag,
            stats: ProfileStats::default(),
        }
    }

    pub fn counts(&self) -> EntryCounts {
        EntryCounts {
            executables: self.executables.len(),
            files: self.files.values().map(BTreeSet::len).sum(),
            egress: self.egress.len(),
            listen: self.listen.len(),
            syscalls: self.syscalls.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.counts().total() == 0
    }

    /// Learns with the default configuration at the current time. Returns true for a new
    /// entry.
    pub fn learn(&mut self, observation: &Observation) -> bool {
        self.learn_with(observation, &LearnConfig::default(), SystemTime::now())
    }

    /// Learns one observation. Returns true when it added an entry, i.e. when the profile did
    /// not allow it before. An observation that cannot be matched at all (empty or relative
    /// path, empty address) is not learned and returns false.
    pub fn learn_with(
        &mut self,
        observation: &Observation,
        config: &LearnConfig,
        now: SystemTime,
    ) -> bool {
        let now_ms = unix_ms(now);
        self.stats.touch(now_ms);
        self.stats.observations = self.stats.observations.saturating_add(1);
        if self.allows(observation) {
            return false;
        }
        let added = self.insert(observation, &config.generalize);
        if added {
            self.stats.last_new_entry_ms = now_ms;
            self.stats.status = ProfileStatus::Learning;
        }
        added
    }

    fn insert(&mut self, observation: &Observation, config: &GeneralizeConfig) -> bool {
        match observation {
            Observation::Exec { path, parent_exe } => {
                let Some(path) = generalize::generalize_path(path) else {
                    return false;
                };
                let parent = parent_exe.as_deref().and_then(generalize::generalize_path);
                self.executables.insert(ExecRule { path, parent })
            }
            Observation::File { path, access } => {
                let Some(pattern) = generalize::generalize_path(path) else {
                    return false;
                };
                let dir = pattern.parent().map(str::to_owned);
                let added = self
                    .files
                    .entry(pattern.clone())
                    .or_default()
                    .insert(*access);
                if added {
                    generalize::fold_random_siblings(&mut self.files, &pattern, *access, config);
                }
                if let Some(dir) = dir {
                    generalize::fold_directory(&mut self.files, &dir, config);
                }
                added
            }
            Observation::Connect {
                protocol,
                address,
                port,
            } => {
                let Some(address) = generalize::generalize_peer(address, config) else {
                    return false;
                };
                self.egress.insert(EgressRule {
                    protocol: *protocol,
                    address,
                    port: *port,
                })
            }
            Observation::Listen { protocol, port } => self.listen.insert(ListenRule {
                protocol: *protocol,
                port: *port,
            }),
            Observation::Syscall { name } => {
                if name.is_empty() {
                    return false;
                }
                let implied = generalize::implied_syscalls(name);
                self.syscalls
                    .extend(implied.iter().map(|implied| (*implied).to_owned()));
                self.syscalls.insert(name.clone())
            }
        }
    }

    /// True when the profile covers the observation (what monitor mode asks).
    ///
    /// An exec whose parent is unknown is judged on its path alone: missing lineage is not
    /// evidence of a different lineage. An exec with a known parent needs an entry with a
    /// matching parent.
    pub fn allows(&self, observation: &Observation) -> bool {
        match observation {
            Observation::Exec { path, parent_exe } => self.executables.iter().any(|rule| {
                rule.path.matches(path)
                    && match (parent_exe, &rule.parent) {
                        (None, _) => true,
                        (Some(parent), Some(pattern)) => pattern.matches(parent),
                        (Some(_), None) => false,
                    }
            }),
            Observation::File { path, access } => {
                // Exact entries first (the common case), then the patterns.
                self.files
                    .get(path.as_str())
                    .is_some_and(|a| a.contains(access))
                    || self.files.iter().any(|(pattern, accesses)| {
                        !pattern.is_literal() && accesses.contains(access) && pattern.matches(path)
                    })
            }
            Observation::Connect {
                protocol,
                address,
                port,
            } => self.egress.iter().any(|rule| {
                rule.protocol == *protocol && rule.port == *port && rule.address.matches(address)
            }),
            Observation::Listen { protocol, port } => self.listen.contains(&ListenRule {
                protocol: *protocol,
                port: *port,
            }),
            Observation::Syscall { name } => {
                SIGNAL_RETURN_SYSCALLS.contains(&name.as_str())
                    || self.syscalls.contains(name)
                    // An imported profile may list `socket` without the waits it implies.
                    || self.syscalls.iter().any(|learned| {
                        generalize::implied_syscalls(learned).contains(&name.as_str())
                    })
            }
        }
    }

    /// Records that a container of this workload was seen (counts distinct containers).
    /// Returns true the first time an id is seen.
    pub fn observe_container(&mut self, container_id: &str, now: SystemTime) -> bool {
        self.stats.touch(unix_ms(now));
        if container_id.is_empty() || self.stats.container_ids.contains(container_id) {
            return false;
        }
        if self.stats.container_ids.len() < MAX_TRACKED_CONTAINERS {
            self.stats.container_ids.insert(container_id.to_owned());
        }
        self.stats.containers = self.stats.containers.saturating_add(1);
        true
    }

    /// Moves `learning` → `stable` once `stable_after` has passed since the last new entry
    /// (or since first seen, for a profile that never learned anything). Returns true when
    /// the status changed.
    pub fn refresh_status(&mut self, now: SystemTime, stable_after: Duration) -> bool {
        if self.stats.status == ProfileStatus::Stable {
            return false;
        }
        let since = self.stats.last_new_entry_ms.max(self.stats.first_seen_ms);
        let quiet_ms = u64::try_from(stable_after.as_millis()).unwrap_or(u64::MAX);
        if since != 0 && unix_ms(now).saturating_sub(since) >= quiet_ms {
            self.stats.status = ProfileStatus::Stable;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> WorkloadIdentity {
        WorkloadIdentity::new("web", "nginx", "docker.io/library/nginx")
    }

    fn exec(path: &str, parent: Option<&str>) -> Observation {
        Observation::Exec {
            path: path.into(),
            parent_exe: parent.map(Into::into),
        }
    }

    fn file(path: &str, access: FileAccess) -> Observation {
        Observation::File {
            path: path.into(),
            access,
        }
    }

    fn connect(address: &str, port: u16) -> Observation {
        Observation::Connect {
            protocol: Protocol::Tcp,
            address: address.into(),
            port,
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn learn_returns_true_only_for_new_entries() {
        let mut p = Profile::new(identity());
        let c = LearnConfig::default();
        assert!(p.learn_with(&exec("/bin/cat", Some("/bin/sh")), &c, at(10)));
        assert!(!p.learn_with(&exec("/bin/cat", Some("/bin/sh")), &c, at(11)));
        assert!(p.learn_with(&exec("/bin/cat", Some("/usr/bin/bash")), &c, at(12)));
        assert!(p.learn_with(&file("/proc/1/stat", FileAccess::Read), &c, at(13)));
        assert!(!p.learn_with(&file("/proc/2/stat", FileAccess::Read), &c, at(14)));
        assert!(p.learn_with(&file("/proc/2/stat", FileAccess::Write), &c, at(15)));
        assert!(p.learn(&Observation::Syscall {
            name: "openat".into()
        }));
        assert!(!p.learn(&Observation::Syscall {
            name: "openat".into()
        }));
        assert!(!p.learn(&Observation::Syscall {
            name: String::new()
        }));
        assert!(!p.learn(&file("relative", FileAccess::Read)));
        let counts = p.counts();
        assert_eq!(counts.executables, 2);
        assert_eq!(counts.files, 2);
        assert_eq!(counts.syscalls, 1);
        assert_eq!(p.stats.first_seen_ms, 10_000);
        assert_eq!(p.stats.observations, 10);
    }

    #[test]
    fn sockets_bring_the_readiness_waits_and_nothing_else() {
        let syscall = |name: &str| Observation::Syscall { name: name.into() };
        let mut p = Profile::new(identity());
        p.learn(&syscall("read"));
        assert!(!p.allows(&syscall("poll")), "read alone implies nothing");
        assert!(p.learn(&syscall("socket")));
        for wait in [
            "poll",
            "ppoll",
            "select",
            "pselect6",
            "epoll_wait",
            "epoll_pwait",
        ] {
            assert!(p.allows(&syscall(wait)), "{wait}");
            assert!(!p.learn(&syscall(wait)), "{wait} is not new after socket");
        }
        assert!(!p.allows(&syscall("connect")));
        // A reviewed profile that lists `socket` without its waits allows them too.
        let mut imported = Profile::new(identity());
        imported.syscalls.insert("socket".into());
        assert!(imported.allows(&syscall("epoll_wait")));
        assert!(!imported.allows(&syscall("read")));
        assert!(!p.allows(&syscall("ptrace")));
    }

    #[test]
    fn lineage_is_part_of_an_exec() {
        let mut p = Profile::new(identity());
        p.learn(&exec("/bin/cat", Some("/bin/sh")));
        assert!(p.allows(&exec("/bin/cat", Some("/bin/sh"))));
        assert!(!p.allows(&exec("/bin/cat", Some("/usr/sbin/nginx"))));
        assert!(
            p.allows(&exec("/bin/cat", None)),
            "unknown parent: judged on path"
        );
        assert!(!p.allows(&exec("/bin/sh", None)));
        // Learned with an unknown parent: a known parent is still new.
        let mut q = Profile::new(identity());
        q.learn(&exec("/entrypoint.sh", None));
        assert!(!q.allows(&exec("/entrypoint.sh", Some("/bin/sh"))));
    }

    #[test]
    fn tight_file_matching() {
        let mut p = Profile::new(identity());
        p.learn(&file("/etc/nginx/nginx.conf", FileAccess::Read));
        p.learn(&file("/tmp/tmp.a8Xk2", FileAccess::Write));
        assert!(p.allows(&file("/etc/nginx/nginx.conf", FileAccess::Read)));
        assert!(!p.allows(&file("/etc/nginx/nginx.conf", FileAccess::Write)));
        assert!(!p.allows(&file("/etc/shadow", FileAccess::Read)));
        assert!(!p.allows(&file("/etc/nginx/other.conf", FileAccess::Read)));
        assert!(p.allows(&file("/tmp/tmp.Zq81p", FileAccess::Write)));
        assert!(!p.allows(&file("/tmp/tmp.Zq81p/x", FileAccess::Write)));
        assert!(!p.allows(&file("/etc/passwd", FileAccess::Write)));
        assert!(!p.allows(&file("/tmp/evil", FileAccess::Write)));
    }

    #[test]
    fn many_children_fold_but_not_in_etc() {
        let mut p = Profile::new(identity());
        for name in ["a", "b", "c", "d", "e", "f", "g"] {
            assert!(p.learn(&file(&format!("/var/cache/nginx/{name}"), FileAccess::Read)));
        }
        assert!(!p.allows(&file("/var/cache/nginx/zz", FileAccess::Read)));
        assert!(p.learn(&file("/var/cache/nginx/h", FileAccess::Read)));
        assert!(p.allows(&file("/var/cache/nginx/zz", FileAccess::Read)));
        assert!(!p.allows(&file("/var/cache/nginx/zz/deeper", FileAccess::Read)));
        assert!(!p.allows(&file("/var/cache/nginx/zz", FileAccess::Write)));
        assert_eq!(p.files.len(), 1);

        let mut q = Profile::new(identity());
        for name in [
            "passwd",
            "group",
            "hosts",
            "resolv.conf",
            "nsswitch.conf",
            "localtime",
            "ld.so.cache",
            "host.conf",
            "os-release",
        ] {
            q.learn(&file(&format!("/etc/{name}"), FileAccess::Read));
        }
        assert!(!q.allows(&file("/etc/shadow", FileAccess::Read)));
    }

    #[test]
    fn network_matching() {
        let mut p = Profile::new(identity());
        p.learn(&connect("10.244.1.5", 5432));
        p.learn(&connect("93.184.216.34", 443));
        p.learn(&Observation::Listen {
            protocol: Protocol::Tcp,
            port: 80,
        });
        assert!(
            p.allows(&connect("10.244.7.9", 5432)),
            "another pod of the same range"
        );
        assert!(!p.allows(&connect("10.245.7.9", 5432)));
        assert!(!p.allows(&connect("10.244.7.9", 5433)));
        assert!(!p.allows(&Observation::Connect {
            protocol: Protocol::Udp,
            address: "10.244.1.5".into(),
            port: 5432
        }));
        assert!(p.allows(&connect("93.184.216.34", 443)));
        assert!(!p.allows(&connect("93.184.216.35", 443)));
        assert!(p.allows(&Observation::Listen {
            protocol: Protocol::Tcp,
            port: 80
        }));
        assert!(!p.allows(&Observation::Listen {
            protocol: Protocol::Tcp,
            port: 8080
        }));
        assert!(!p.learn(&connect("", 80)));
    }

    #[test]
    fn status_becomes_stable_after_quiet_period() {
        let c = LearnConfig {
            stable_after: Duration::from_secs(60),
            ..LearnConfig::default()
        };
        let mut p = Profile::new(identity());
        p.learn_with(&exec("/bin/sh", None), &c, at(100));
        assert!(!p.refresh_status(at(159), c.stable_after));
        assert_eq!(p.stats.status, ProfileStatus::Learning);
        assert!(p.refresh_status(at(160), c.stable_after));
        assert_eq!(p.stats.status, ProfileStatus::Stable);
        // Known behaviour keeps it stable; a new entry brings it back to learning.
        p.learn_with(&exec("/bin/sh", None), &c, at(200));
        assert_eq!(p.stats.status, ProfileStatus::Stable);
        p.learn_with(&exec("/bin/ls", None), &c, at(201));
        assert_eq!(p.stats.status, ProfileStatus::Learning);
        assert_eq!(p.stats.last_new_entry_ms, 201_000);
        assert_eq!(p.stats.observed_for(), Duration::from_secs(101));
    }

    #[test]
    fn distinct_containers() {
        let mut p = Profile::new(identity());
        assert!(p.observe_container("aaa", at(1)));
        assert!(!p.observe_container("aaa", at(2)));
        assert!(p.observe_container("bbb", at(3)));
        assert!(!p.observe_container("", at(3)));
        assert_eq!(p.stats.containers, 2);
    }

    #[test]
    fn observations_from_events() {
        use proto::event::Body;
        let mut event = proto::Event {
            process: Some(proto::Process {
                ancestors: vec![proto::Ancestor {
                    pid: 1,
                    exe: "/bin/sh".into(),
                    argv: vec![],
                }],
                ..Default::default()
            }),
            body: Some(Body::Exec(proto::ExecEvent {
                path: "/bin/cat".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(
            Observation::from_event(&event),
            vec![exec("/bin/cat", Some("/bin/sh"))]
        );
        event.body = Some(Body::Open(proto::FileOpenEvent {
            path: "/etc/hosts".into(),
            access: proto::FileAccess::ReadWrite as i32,
            ..Default::default()
        }));
        assert_eq!(
            Observation::from_event(&event),
            vec![
                file("/etc/hosts", FileAccess::Read),
                file("/etc/hosts", FileAccess::Write)
            ]
        );
        event.body = Some(Body::Network(proto::NetworkEvent {
            operation: proto::NetworkOperation::Connect as i32,
            protocol: "tcp".into(),
            address: "10.0.0.1".into(),
            port: 53,
            ..Default::default()
        }));
        assert_eq!(
            Observation::from_event(&event),
            vec![connect("10.0.0.1", 53)]
        );
        event.body = Some(Body::Network(proto::NetworkEvent {
            operation: proto::NetworkOperation::Listen as i32,
            protocol: "udp".into(),
            port: 8125,
            ..Default::default()
        }));
        assert_eq!(
            Observation::from_event(&event),
            vec![Observation::Listen {
                protocol: Protocol::Udp,
                port: 8125
            }]
        );
        event.body = Some(Body::Syscall(proto::SyscallEvent {
            number: 257,
            name: "openat".into(),
            verdict: String::new(),
        }));
        assert_eq!(
            Observation::from_event(&event),
            vec![Observation::Syscall {
                name: "openat".into()
            }]
        );
        event.body = Some(Body::Exit(proto::ExitEvent::default()));
        assert!(Observation::from_event(&event).is_empty());
        event.body = None;
        assert!(Observation::from_event(&event).is_empty());
    }
}
