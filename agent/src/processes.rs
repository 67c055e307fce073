//! The process table: who is whose parent, and what each process runs, kept from fork, exec
//! and exit events (and from /proc at start-up, for processes older than the agent). Every event
//! is stamped with its process's executable and argv and its ancestry from here.
use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    sync::Mutex,
    time::Duration,
};

use crate::api::proto;

/// Ancestors reported per event, nearest first.
pub const ANCESTRY_DEPTH: usize = 8;
/// How long an exited process stays known, so late events of it (and of children that
/// outlive it) are still attributed.
const EXITED_GRACE: Duration = Duration::from_secs(30);
/// Table size beyond which exited processes are pruned.
const PRUNE_ABOVE: usize = 65_536;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub ppid: u32,
    pub exe: String,
    pub argv: Vec<String>,
    /// Boot-time ns of the exit, when it has exited.
    pub exited_ns: Option<u64>,
}

/// Hashes a pid with one multiplication (Fibonacci hashing). Pids are small kernel-assigned
/// integers, not attacker-chosen keys, and the table is looked up up to nine times per event,
/// where SipHash showed in profiles.
#[derive(Default, Clone, Copy)]
struct PidHasher(u64);

impl Hasher for PidHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u32(&mut self, value: u32) {
        self.write_u64(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type PidMap<V> = HashMap<u32, V, BuildHasherDefault<PidHasher>>;

#[derive(Default)]
pub struct ProcessTable {
    processes: Mutex<PidMap<ProcessInfo>>,
}

impl ProcessTable {
    /// A table filled from `/proc` (processes that started before the agent).
    pub fn from_proc() -> Self {
        let table = Self::default();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return table;
        };
        let mut processes = table.lock();
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(info) = read_proc(pid) {
                processes.insert(pid, info);
            }
        }
        drop(processes);
        table
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PidMap<ProcessInfo>> {
        self.processes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A new process: it runs what its parent runs until it execs.
    pub fn fork(&self, parent: u32, child: u32) {
        let mut processes = self.lock();
        let inherited = processes.get(&parent).cloned().unwrap_or_default();
        processes.insert(
            child,
            ProcessInfo {
                ppid: parent,
                exited_ns: None,
                ..inherited
            },
        );
    }

    pub fn exec(&self, pid: u32, ppid: u32, exe: &str, argv: &[String]) {
        let mut processes = self.lock();
        let info = processes.entry(pid).or_default();
        if ppid != 0 {
            info.ppid = ppid;
        }
        info.exe = exe.to_string();
        info.argv = argv.to_vec();
        info.exited_ns = None;
    }

    pub fn exit(&self, pid: u32, now_ns: u64) {
        let mut processes = self.lock();
        if let Some(info) = processes.get_mut(&pid) {
            info.exited_ns = Some(now_ns);
        }
        if processes.len() > PRUNE_ABOVE {
            let grace = EXITED_GRACE.as_nanos() as u64;
            processes.retain(|_, info| {
                info.exited_ns
                    .is_none_or(|exited| now_ns.saturating_sub(exited) < grace)
            });
        }
    }

    /// Fills `process.exe`, `process.argv` and `process.ancestors` from the table; learns the
    /// process from /proc when it is not known yet (it may predate the agent).
    pub fn annotate(&self, process: &mut proto::Process) {
        let mut processes = self.lock();
        if let Some(info) = known_or_from_proc(&mut processes, process.pid) {
            if process.exe.is_empty() {
                process.exe.clone_from(&info.exe);
                process.argv.clone_from(&info.argv);
            }
            if process.ppid == 0 {
                process.ppid = info.ppid;
            }
        }
        process.ancestors.clear();
        let mut next = process.ppid;
        while next != 0 && process.ancestors.len() < ANCESTRY_DEPTH {
            let Some(info) = known_or_from_proc(&mut processes, next) else {
                break;
            };
            if process.ancestors.capacity() == 0 {
                process.ancestors.reserve_exact(ANCESTRY_DEPTH);
            }
            process.ancestors.push(proto::Ancestor {
                pid: next,
                exe: info.exe.clone(),
                argv: info.argv.clone(),
            });
            if info.ppid == next {
                break;
            }
            next = info.ppid;
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The table's entry for `pid`, learned from /proc first when the table does not know it (one
/// hash lookup when it does).
fn known_or_from_proc(processes: &mut PidMap<ProcessInfo>, pid: u32) -> Option<&ProcessInfo> {
    if !processes.contains_key(&pid) {
        let info = read_proc(pid)?;
        return Some(processes.entry(pid).or_insert(info));
    }
    processes.get(&pid)
}

/// What /proc says of a live process; `None` when it is gone (or a kernel thread without an
/// executable, which is still returned with an empty exe).
fn read_proc(pid: u32) -> Option<ProcessInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ppid = parse_stat_ppid(&stat)?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|path| path.to_string_lossy().into_owned())
        .unwrap_or_default();
    let argv = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| crate::sensors::records::split_argv(&bytes))
        .unwrap_or_default();
    Some(ProcessInfo {
        ppid,
        exe,
        argv,
        exited_ns: None,
    })
}

/// The ppid field of /proc/<pid>/stat. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its last ')'.
fn parse_stat_ppid(stat: &str) -> Option<u32> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: u32, ppid: u32) -> proto::Process {
        proto::Process {
            pid,
            ppid,
            ..Default::default()
        }
    }

    #[test]
    fn ancestry_follows_forks_and_execs_nearest_first() {
        let table = ProcessTable::default();
        // Synthetic pids far above pid_max so /proc never answers for them.
        let (init, shell, script, tool) = (4_000_001, 4_000_002, 4_000_003, 4_000_004);
        table.exec(init, 0, "/sbin/init", &["init".into()]);
        table.fork(init, shell);
        table.exec(shell, init, "/bin/sh", &["sh".into()]);
        table.fork(shell, script);
        table.exec(
            script,
            shell,
            "/bin/busybox",
            &["sh".into(), "run.sh".into()],
        );
        table.fork(script, tool);
        let mut event = process(tool, script);
        table.annotate(&mut event);
        // Not exec'd yet: runs what its parent runs.
        assert_eq!(event.exe, "/bin/busybox");
        let chain: Vec<_> = event
            .ancestors
            .iter()
            .map(|a| (a.pid, a.exe.as_str()))
            .collect();
        assert_eq!(
            chain,
            [
                (script, "/bin/busybox"),
                (shell, "/bin/sh"),
                (init, "/sbin/init")
            ]
        );
    }

    #[test]
    fn exited_parents_stay_known_for_their_children() {
        let table = ProcessTable::default();
        table.exec(4_000_010, 0, "/bin/parent", &[]);
        table.fork(4_000_010, 4_000_011);
        table.exit(4_000_010, 1);
        let mut event = process(4_000_011, 4_000_010);
        table.annotate(&mut event);
        assert_eq!(event.ancestors[0].exe, "/bin/parent");
    }

    #[test]
    fn processes_older_than_the_agent_come_from_proc() {
        let table = ProcessTable::from_proc();
        assert!(table.len() > 1);
        let mut me = process(std::process::id(), 0);
        table.annotate(&mut me);
        let own_exe = std::env::current_exe().unwrap();
        assert_eq!(me.exe, own_exe.to_string_lossy());
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
        assert!(!me.ancestors.is_empty());
        assert_eq!(me.ancestors[0].pid, std::os::unix::process::parent_id());
    }

    #[test]
    fn stat_ppid_survives_odd_command_names() {
        assert_eq!(parse_stat_ppid("42 (a) b) (c) S 7 42 42 0"), Some(7));
        assert_eq!(parse_stat_ppid("garbage"), None);
    }

    #[test]
    fn a_loop_in_parent_links_ends() {
        let table = ProcessTable::default();
        table.exec(4_000_020, 4_000_021, "/a", &[]);
        table.exec(4_000_021, 4_000_020, "/b", &[]);
        let mut event = process(4_000_022, 4_000_020);
        table.annotate(&mut event);
        assert_eq!(event.ancestors.len(), ANCESTRY_DEPTH);
    }
}
