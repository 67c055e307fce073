//! End to end, `sensors.traceHost: true`: activity of host processes is traced as well as that
//! of containers. A host process in a cgroup of its own (a new cgroup v2 directory, so that its
//! syscalls are first uses there) opens a file; its open and its syscalls' first uses must be
//! reported. This is the path where the kernel gives a host cgroup its syscall set itself
//! (containers get theirs from user space). Needs root; `cargo xtask test` (and CI) run it as
//! root.
mod support;

use std::{path::PathBuf, process::Command, time::Duration};

use custos::api::proto;
use support::*;

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` or, on hybrid hosts,
/// `/sys/fs/cgroup/unified`).
fn cgroup2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    mounts
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.len() > 2 && fields[2] == "cgroup2")
        .map(|fields| PathBuf::from(fields[1]))
        .expect("no cgroup2 mount on this host")
}

/// The built-in configuration with `sensors.traceHost: true`, written into `dir`.
fn trace_host_config(dir: &std::path::Path) -> PathBuf {
    use serde_norway::Value;
    let default =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/custos.yaml");
    let text = std::fs::read_to_string(&default).expect("read the built-in configuration");
    let mut config: Value = serde_norway::from_str(&text).expect("parse the configuration");
    config["sensors"]["traceHost"] = Value::from(true);
    let path = dir.join("custos.yaml");
    std::fs::write(&path, serde_norway::to_string(&config).expect("yaml")).expect("write");
    path
}

/// A cgroup v2 directory of the test's own, removed on drop.
struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn host_processes_are_traced_when_configured() {
    if !privileged("trace_host") {
        return;
    }
    let config_dir = TempDir::new("trace-host");
    let config = trace_host_config(config_dir.path());
    let agent = Agent::start_with(["--config".into(), config.into_os_string()]).await;
    let mut client = agent.client().await;
    let mut stream = subscribe(
        &mut client,
        proto::EventFilter {
            kinds: vec!["open".into(), "syscall".into()],
            ..Default::default()
        },
    )
    .await;

    let cgroup = Cgroup(cgroup2_mount().join(unique("custos-trace-host")));
    std::fs::create_dir(&cgroup.0).expect("create a cgroup v2 directory");
    let marker = config_dir.path().join(unique("opened-by-host"));
    std::fs::write(&marker, "x").expect("marker file");
    // The shell moves itself into the new cgroup, then becomes `cat`, whose syscalls are the
    // first ever made in that cgroup.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec cat {}",
        cgroup.0.display(),
        marker.display()
    );
    let child = Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("run sh");
    assert!(child.status.success(), "sh failed: {child:?}");
    let marker_path = marker.display().to_string();

    // `cat`'s open, not the test's own write of the file (also a host process, also traced).
    let is_marker_open = |e: &proto::Event| {
        matches!(&e.body, Some(proto::event::Body::Open(open)) if open.path == marker_path)
            && e.process.as_ref().is_some_and(|p| p.comm == "cat")
    };
    let events = collect_until(&mut stream, Duration::from_secs(5), |events| {
        events.iter().any(is_marker_open)
    })
    .await;
    let open = events
        .iter()
        .find(|e| is_marker_open(e))
        .unwrap_or_else(|| {
            panic!(
                "no open of {marker_path} by cat reported; agent log:\n{}",
                agent.log()
            )
        });
    let pid = open.process.as_ref().expect("process").pid;
    assert!(
        workload(open).container_id.is_empty(),
        "a host process was attributed to a container: {:?}",
        workload(open)
    );

    // The same process's syscalls were first uses in its new cgroup: reported too.
    let more = collect_until(&mut stream, Duration::from_secs(3), |more| {
        more.iter().any(|e| {
            e.process.as_ref().is_some_and(|p| p.pid == pid)
                && matches!(&e.body, Some(proto::event::Body::Syscall(s)) if s.name == "openat")
        })
    })
    .await;
    let first_uses: Vec<&str> = events
        .iter()
        .chain(&more)
        .filter(|e| e.process.as_ref().is_some_and(|p| p.pid == pid))
        .filter_map(|e| match &e.body {
            Some(proto::event::Body::Syscall(s)) => Some(s.name.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        first_uses.contains(&"openat"),
        "no first use of openat by the host process {pid} in its new cgroup: {first_uses:?}"
    );
}
