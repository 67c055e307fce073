//! The event pipeline: kernel records in, attributed API events out.
//!
//! Each record is turned into a `proto::Event`: wall-clock time, node, the workload (container
//! and pod, or host) of its cgroup, and the process; exec paths are made absolute. Events are
//! then published to the hub, which fans them out to subscribers without ever waiting on them.
use std::{path::Path, sync::Arc};

use tracing::{debug, warn};

use crate::{
    api::{hub::EventHub, proto},
    containers::ContainerRegistry,
    sensors::{ExecRecord, ExitRecord, KernelRecord, RecordHeader, RecordReader},
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

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; both clocks exist on every supported kernel.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Turns kernel records into API events.
pub struct Enricher {
    pub node: String,
    pub clock: BootClock,
    pub containers: Arc<ContainerRegistry>,
}

impl Enricher {
    pub async fn event(&self, record: KernelRecord) -> proto::Event {
        let header = record.header();
        let workload = self.containers.workload_for_cgroup(header.cgroup_id).await;
        let time_unix_nano = self.clock.to_unix_nanos(header.boot_ns);
        let process = process_of(header);
        let body = match record {
            KernelRecord::Exec(exec) => proto::event::Body::Exec(exec_body(exec)),
            KernelRecord::Exit(exit) => proto::event::Body::Exit(exit_body(&exit)),
        };
        proto::Event {
            time_unix_nano,
            node: self.node.clone(),
            workload: Some(workload),
            process: Some(process),
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

/// Reads records until the ring buffer fails, enriching and publishing each.
pub async fn run(mut reader: RecordReader, enricher: Enricher, hub: EventHub) {
    let mut batch = Vec::with_capacity(256);
    loop {
        if let Err(error) = reader.read(&mut batch).await {
            warn!(%error, "reading the event ring buffer failed; sensors stopped");
            return;
        }
        for record in batch.drain(..) {
            let event = enricher.event(record).await;
            hub.publish(Arc::new(event));
        }
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
