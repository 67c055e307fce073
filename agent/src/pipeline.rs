//! The event pipeline: kernel records in, attributed API events out.
//!
//! Each record is turned into a `proto::Event`: wall-clock time, node, the workload (container
//! and pod, or host) of its cgroup, and the process; exec paths are made absolute. Events are
//! then published to the hub, which fans them out to subscribers without ever waiting on them.
use std::{path::Path, sync::Arc, time::Duration};

use tracing::{debug, warn};

use crate::{
    api::{hub::EventHub, proto},
    containers::ContainerRegistry,
    processes::ProcessTable,
    sensors::{
        ExecRecord, ExitRecord, KernelCounters, KernelRecord, RecordHeader, RecordReaders,
        TracedCgroups,
    },
};

/// `AT_FDCWD`: execveat relative to the working directory (what execve does).
const AT_FDCWD: i32 = -100;

/// Converts the kernel's boot-time clock to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct BootClock {
    /// Wall-clock nanoseconds at boot.
    realtime_at_boot_ns: u64,
}

impl BootClock {
    pub fn now() -> Self {
        let realtime = clock_ns(libc::CLOCK_REALTIME);
        let boottime = clock_ns(libc::CLOCK_BOOTTIME);
        Self {
            realtime_at_boot_ns: realtime.saturating_sub(boottime),
        }
    }

    pub fn to_unix_nanos(self, boot_ns: u64) -> u64 {
        self.realtime_at_boot_ns.saturating_add(boot_ns)
    }
}

/// `clock`'s current time in nanoseconds.
pub(crate) fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; both clocks exist on every supported kernel.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Turns kernel records into API events: attribution, the process table, ancestry.
pub struct Enricher {
    pub node: String,
    pub clock: BootClock,
    pub containers: Arc<ContainerRegistry>,
    pub processes: Arc<ProcessTable>,
    /// Containers found in events start having their activity traced.
    pub traced: Option<Arc<TracedCgroups>>,
    /// Per-cgroup syscall sets: drop first-use records the kernel sent twice.
    pub syscalls: Option<Arc<crate::sensors::syscalls::SyscallSets>>,
    /// Learns the behaviour of workloads in `learn` mode from every event.
    pub learner: Option<Arc<crate::learning::Learner>>,
    /// Judges every event of workloads in monitor/enforce mode against their profile.
    pub judge: Option<Arc<crate::judge::Judge>>,
}

impl Enricher {
    /// True for a record that must not become an event: a syscall first use already reported
    /// for its cgroup (the kernel may send one twice when CPUs race).
    pub fn is_duplicate(&self, record: &KernelRecord) -> bool {
        match (record, &self.syscalls) {
            (KernelRecord::SyscallFirstUse(syscall), Some(sets)) => sets.is_duplicate(syscall),
            _ => false,
        }
    }

    pub async fn event(&self, record: KernelRecord) -> proto::Event {
        let header = record.header();
        let workload = self.containers.workload_for_cgroup(header.cgroup_id).await;
        if let Some(traced) = &self.traced
            && !workload.host
            && !workload.container_id.is_empty()
        {
            traced.trace(header.cgroup_id);
        }
        let time_unix_nano = self.clock.to_unix_nanos(header.boot_ns);
        let mut process = process_of(header);
        let boot_ns = header.boot_ns;
        // Identical actions the kernel suppressed before this one (activity records).
        let mut repeats_suppressed = 0;
        let body = match record {
            KernelRecord::Exec(exec) => {
                let body = exec_body(exec);
                self.processes
                    .exec(process.pid, process.ppid, &body.path, &body.argv);
                proto::event::Body::Exec(body)
            }
            KernelRecord::Exit(exit) => {
                self.processes.exit(process.pid, boot_ns);
                proto::event::Body::Exit(exit_body(&exit))
            }
            KernelRecord::Fork(fork) => {
                self.processes.fork(process.pid, fork.child_pid);
                proto::event::Body::Fork(proto::ForkEvent {
                    child_pid: fork.child_pid,
                })
            } // --- activity bodies: add arms below ---
            KernelRecord::FileOpen(open) => {
                repeats_suppressed = open.repeats;
                proto::event::Body::Open(crate::sensors::files::open_event(open))
            }
            KernelRecord::Network(network) => {
                repeats_suppressed = network.repeats;
                proto::event::Body::Network(crate::sensors::network::network_event(&network))
            }
            KernelRecord::SyscallFirstUse(syscall) => {
                proto::event::Body::Syscall(crate::sensors::syscalls::record_event(&syscall))
            } // --- end of activity bodies ---
        };
        self.processes.annotate(&mut process);
        proto::Event {
            time_unix_nano,
            node: self.node.clone(),
            workload: Some(workload),
            process: Some(process),
            repeats_suppressed,
            body: Some(body),
        }
    }
}

fn process_of(header: &RecordHeader) -> proto::Process {
    proto::Process {
        pid: header.pid,
        tid: header.tid,
        ppid: header.ppid,
        uid: header.uid,
        gid: header.gid,
        comm: header.comm.clone(),
        ..Default::default()
    }
}

fn exec_body(exec: ExecRecord) -> proto::ExecEvent {
    let path = absolute_exec_path(exec.header.pid, exec.dirfd, &exec.path);
    proto::ExecEvent {
        path,
        argv: exec.argv,
        // Arguments the kernel could not see (exec started before the agent) count as cut.
        argv_truncated: exec.argv_truncated || exec.argv_missing,
        path_truncated: exec.path_truncated,
        verdict: match (exec.killed, exec.blocked) {
            (true, _) => "killed".into(),
            (_, true) => "blocked".into(),
            _ => String::new(),
        },
    }
}

fn exit_body(exit: &ExitRecord) -> proto::ExitEvent {
    proto::ExitEvent {
        exit_code: exit.exit_code,
        signal: exit.signal,
    }
}

/// Makes an exec path absolute, as seen by the process: relative paths are joined to its
/// working directory (execve) or to the directory `dirfd` refers to (execveat). The links in
/// `/proc/<pid>` show paths from the process's own root, so container paths stay container
/// paths. When the process is already gone, the path is returned as given.
pub fn absolute_exec_path(pid: u32, dirfd: i32, path: &str) -> String {
    if path.starts_with('/') {
        return normalize(path);
    }
    let base_link = if dirfd == AT_FDCWD {
        format!("/proc/{pid}/cwd")
    } else {
        format!("/proc/{pid}/fd/{dirfd}")
    };
    match std::fs::read_link(&base_link) {
        Ok(base) => normalize(&Path::new(&base).join(path).to_string_lossy()),
        Err(error) => {
            debug!(%error, pid, path, "cannot resolve relative exec path");
            path.to_string()
        }
    }
}

/// Removes `.` segments, duplicate slashes and resolves `..` lexically.
pub fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

/// How often the rings are drained whether or not the kernel woke the reader: records are
/// submitted without a wakeup until a ring's backlog reaches 1 MiB (`wakeup_flags` in
/// agent-ebpf/src/probes/common.rs), so this bounds how late a record is read.
pub const RING_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Reads both ring buffers until one fails, enriching and publishing each record.
///
/// Records are handled in the order the kernel saw them (by timestamp), across both rings:
/// whichever ring wakes up, both are drained, and the batch is sorted. An open is then annotated with the process as it was when it opened, before the
/// exec that may follow it, and never from a table that has not seen its exec yet.
pub async fn run(readers: RecordReaders, enricher: Arc<Enricher>, hub: EventHub) {
    let RecordReaders {
        mut process,
        mut activity,
    } = readers;
    let mut process_batch = Vec::with_capacity(256);
    let mut activity_batch = Vec::with_capacity(256);
    let mut batch = Vec::with_capacity(512);
    let mut poll = tokio::time::interval(RING_POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let result = tokio::select! {
            result = process.read(&mut process_batch) => result,
            result = activity.read(&mut activity_batch) => result,
            _ = poll.tick() => Ok(()),
        };
        // Whichever woke up, take what the other ring holds too, so that the sort below sees
        // every record written so far.
        process.drain(&mut process_batch);
        activity.drain(&mut activity_batch);
        if let Err(error) = result {
            warn!(%error, "reading a ring buffer failed; sensors stopped");
            return;
        }
        batch.append(&mut process_batch);
        batch.append(&mut activity_batch);
        batch.sort_by_key(|record: &KernelRecord| record.header().boot_ns);
        for record in batch.drain(..) {
            if enricher.is_duplicate(&record) {
                continue;
            }
            let event = enricher.event(record).await;
            if let Some(learner) = &enricher.learner {
                learner.observe(&event);
            }
            if let Some(judge) = &enricher.judge {
                judge.judge(&event);
            }
            hub.publish(Arc::new(event));
        }
    }
}

/// How often lost records are reported (at most one drop event per ring buffer per interval).
pub const DROP_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Publishes a drop event whenever a ring buffer lost records during the last interval.
/// `counters` reads the kernel's counters (None while the sensors are not loaded).
pub async fn report_drops(
    counters: impl Fn() -> Option<KernelCounters>,
    node: String,
    clock: BootClock,
    hub: EventHub,
) {
    let mut ticker = tokio::time::interval(DROP_REPORT_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = KernelCounters::default();
    loop {
        ticker.tick().await;
        let Some(now) = counters() else { continue };
        for (ring_buffer, before, after) in [
            ("process", last.events_dropped, now.events_dropped),
            ("activity", last.activity_dropped, now.activity_dropped),
        ] {
            if after > before {
                warn!(
                    ring_buffer,
                    dropped = after - before,
                    "kernel ring buffer full: records lost"
                );
                hub.publish(Arc::new(proto::Event {
                    time_unix_nano: clock.to_unix_nanos(clock_ns(libc::CLOCK_BOOTTIME)),
                    node: node.clone(),
                    workload: None,
                    process: None,
                    repeats_suppressed: 0,
                    body: Some(proto::event::Body::Drop(proto::DropEvent {
                        ring_buffer: ring_buffer.into(),
                        dropped: after - before,
                        interval_ms: DROP_REPORT_INTERVAL.as_millis() as u64,
                    })),
                }));
            }
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_paths() {
        assert_eq!(normalize("/bin//cat"), "/bin/cat");
        assert_eq!(normalize("/usr/./bin/../lib/x"), "/usr/lib/x");
        assert_eq!(normalize("/../.."), "/");
        assert_eq!(normalize("/"), "/");
    }

    #[test]
    fn relative_exec_paths_join_the_working_directory() {
        let cwd = std::env::current_dir().unwrap();
        let pid = std::process::id();
        let expected = normalize(&cwd.join("bin/tool").to_string_lossy());
        assert_eq!(absolute_exec_path(pid, AT_FDCWD, "./bin/tool"), expected);
        assert_eq!(absolute_exec_path(pid, AT_FDCWD, "/bin/sh"), "/bin/sh");
    }

    #[test]
    fn relative_exec_path_of_a_gone_process_is_kept() {
        // pid_max is at most 2^22, so this pid cannot exist.
        assert_eq!(absolute_exec_path(u32::MAX, AT_FDCWD, "tool"), "tool");
    }

    #[test]
    fn boot_clock_gives_current_wall_time() {
        let clock = BootClock::now();
        let wall = clock.to_unix_nanos(clock_ns(libc::CLOCK_BOOTTIME));
        let now = clock_ns(libc::CLOCK_REALTIME);
        assert!(now.abs_diff(wall) < 1_000_000_000, "{now} vs {wall}");
    }
}
