//! End to end, file sensor: real eBPF programs, real containers under containerd, a real gRPC
//! subscriber. Opens made inside containers must arrive with the exact path as seen inside the
//! container, the mode, the result, the container, the pod and the process ancestry; identical
//! opens in a loop must be suppressed in the kernel, counted, and never overflow a ring buffer.
//! Needs root; `cargo xtask test` (and CI) run it as root.
mod support;

use std::time::{Duration, Instant};

use custos::api::proto;
use support::*;

const QA_FILES: PodLabels<'static> = PodLabels {
    namespace: "qa",
    pod: "files-1",
    container: "files",
};

const ENOENT: i32 = 2;

fn open_of(event: &proto::Event) -> Option<&proto::FileOpenEvent> {
    match &event.body {
        Some(proto::event::Body::Open(open)) => Some(open),
        _ => None,
    }
}

fn opens_filter() -> proto::EventFilter {
    proto::EventFilter {
        kinds: vec!["open".into()],
        ..Default::default()
    }
}

/// The open of `path` by container `id` that `matches`, or a panic listing what arrived.
fn find_open<'a>(
    events: &'a [proto::Event],
    id: &str,
    path: &str,
    matches: impl Fn(&proto::FileOpenEvent) -> bool,
) -> &'a proto::Event {
    events
        .iter()
        .filter(|e| workload(e).container_id == id)
        .find(|e| open_of(e).is_some_and(|o| o.path == path && matches(o)))
        .unwrap_or_else(|| {
            let seen: Vec<_> = events
                .iter()
                .filter_map(|e| {
                    open_of(e).map(|o| {
                        format!(
                            "{} {} {:?} {} ({})",
                            e.process.as_ref().map_or("", |p| p.comm.as_str()),
                            o.syscall,
                            o.path,
                            o.result,
                            workload(e).container_id
                        )
                    })
                })
                .collect();
            panic!("no open of {path} in container {id}; opens seen:\n{seen:#?}")
        })
}

fn assert_in_pod(event: &proto::Event, id: &str) {
    let w = workload(event);
    assert!(!w.host, "container open marked as host: {event:#?}");
    assert_eq!(w.container_id, id);
    assert_eq!(
        (w.namespace.as_str(), w.pod.as_str(), w.container.as_str()),
        (QA_FILES.namespace, QA_FILES.pod, QA_FILES.container),
        "pod of {event:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_reads_a_relative_path_after_cd_and_truncates_a_file() {
    if !privileged("shell_reads_a_relative_path_after_cd_and_truncates_a_file") {
        return;
    }
    ensure_containerd();
    let agent = Agent::start().await;
    let mut client = agent.client().await;
    let mut stream = subscribe(&mut client, opens_filter()).await;

    let rootfs = Rootfs::busybox();
    std::fs::write(rootfs.path().join("tmp/read-me.txt"), "hello\n").expect("seed file");
    let id = container_id();
    run_container(
        &id,
        &rootfs,
        &QA_FILES,
        &[
            "/bin/sh",
            "-c",
            "cd /tmp && /bin/cat ./read-me.txt && echo x > new.txt",
        ],
    );

    let mine = |e: &proto::Event| workload(e).container_id == id;
    let events = collect_until(&mut stream, Duration::from_secs(10), |events| {
        let paths: Vec<_> = events
            .iter()
            .filter(|e| mine(e))
            .filter_map(open_of)
            .map(|o| o.path.as_str())
            .collect();
        paths.contains(&"/tmp/read-me.txt") && paths.contains(&"/tmp/new.txt")
    })
    .await;

    let read = find_open(&events, &id, "/tmp/read-me.txt", |_| true);
    let open = open_of(read).unwrap();
    assert_eq!(open.requested_path, "./read-me.txt");
    assert_eq!(open.access, proto::FileAccess::Read as i32, "{open:?}");
    assert!(!open.create && !open.truncate, "{open:?}");
    assert!(open.result >= 0, "{open:?}");
    assert!(!open.path_truncated);
    assert!(
        ["open", "openat", "openat2"].contains(&open.syscall.as_str()),
        "{open:?}"
    );
    assert_in_pod(read, &id);
    let process = read.process.as_ref().expect("process");
    assert_eq!(process.comm, "cat");
    assert_eq!(process.exe, "/bin/cat", "{process:#?}");
    // `/bin/cat` by path: busybox's sh execs it (a bare `cat` would be a fork without exec).
    let parent = process.ancestors.first();
    assert!(
        parent.is_some_and(|a| a.exe == "/bin/sh" && a.pid == process.ppid),
        "cat's parent is not the shell: {process:#?}"
    );

    let written = find_open(&events, &id, "/tmp/new.txt", |_| true);
    let open = open_of(written).unwrap();
    assert_eq!(open.requested_path, "new.txt");
    assert_eq!(open.access, proto::FileAccess::Write as i32, "{open:?}");
    assert!(open.create && open.truncate, "{open:?}");
    assert!(open.result >= 0, "{open:?}");
    assert_in_pod(written, &id);
    let process = written.process.as_ref().expect("process");
    assert_eq!(process.exe, "/bin/sh", "{process:#?}");
    // No host (overlay or bind source) path leaks out of the workload's opens. (runc's init
    // also opens files in the container's cgroup before it pivots into the container's root;
    // those paths are rightly the host's, as that process saw them.)
    let host_root = rootfs.path().to_string_lossy().into_owned();
    let workload_process =
        |e: &proto::Event| ["sh", "cat"].contains(&e.process.as_ref().unwrap().comm.as_str());
    for event in events.iter().filter(|e| mine(e) && workload_process(e)) {
        let path = &open_of(event).unwrap().path;
        assert!(
            path.starts_with('/') && !path.contains(&host_root),
            "{path}"
        );
        assert!(!path.contains("//") && !path.contains("/../"), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_open_syscall_is_covered_with_paths_modes_and_errors() {
    if !privileged("every_open_syscall_is_covered_with_paths_modes_and_errors") {
        return;
    }
    ensure_containerd();
    let agent = Agent::start().await;
    let mut client = agent.client().await;
    let mut stream = subscribe(&mut client, opens_filter()).await;

    let rootfs = Rootfs::busybox();
    install_workload(&rootfs, "open_variants");
    let id = container_id();
    run_container(&id, &rootfs, &QA_FILES, &["/bin/open_variants"]);

    let expected = [
        "/tmp/rel-open.txt",
        "/tmp/creat.txt",
        "/etc/hostname",
        "/etc/nope",
        "/tmp/missing/x",
    ];
    let events = collect_until(&mut stream, Duration::from_secs(10), |events| {
        expected.iter().all(|path| {
            events.iter().any(|e| {
                workload(e).container_id == id && open_of(e).is_some_and(|o| o.path == *path)
            })
        })
    })
    .await;
    let comm = |e: &proto::Event| e.process.as_ref().unwrap().comm.clone();

    let e = find_open(&events, &id, "/tmp/rel-open.txt", |o| o.syscall == "open");
    let o = open_of(e).unwrap();
    assert_eq!(comm(e), "open_variants");
    assert_eq!(o.requested_path, "rel-open.txt");
    assert_eq!(o.access, proto::FileAccess::ReadWrite as i32, "{o:?}");
    assert!(o.create && !o.truncate && o.result >= 0, "{o:?}");

    let o = open_of(find_open(&events, &id, "/tmp/creat.txt", |o| {
        o.syscall == "creat"
    }))
    .unwrap();
    assert_eq!(o.access, proto::FileAccess::Write as i32, "{o:?}");
    assert!(o.create && o.truncate && o.result >= 0, "{o:?}");

    let o = open_of(find_open(&events, &id, "/etc/hostname", |o| {
        o.syscall == "openat2"
    }))
    .unwrap();
    assert_eq!(o.requested_path, "../etc/hostname");
    assert_eq!(o.access, proto::FileAccess::Read as i32, "{o:?}");
    assert!(o.result >= 0, "{o:?}");

    let o = open_of(find_open(&events, &id, "/etc/nope", |o| {
        o.syscall == "openat"
    }))
    .unwrap();
    assert_eq!((o.result, o.requested_path.as_str()), (-ENOENT, "nope"));

    let o = open_of(find_open(&events, &id, "/tmp/missing/x", |o| {
        o.syscall == "open"
    }))
    .unwrap();
    assert_eq!(
        (o.result, o.access),
        (-ENOENT, proto::FileAccess::Write as i32)
    );
    for e in events.iter().filter(|e| workload(e).container_id == id) {
        assert_in_pod(e, &id);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_million_identical_opens_are_suppressed_in_the_kernel_without_drops() {
    const OPENS: u64 = 1_000_000;
    if !privileged("a_million_identical_opens_are_suppressed_in_the_kernel_without_drops") {
        return;
    }
    ensure_containerd();
    let agent = Agent::start().await;
    let mut client = agent.client().await;
    let mut stream = subscribe(&mut client, opens_filter()).await;
    let before = client
        .get_status(proto::GetStatusRequest {})
        .await
        .expect("status")
        .into_inner();

    let rootfs = Rootfs::busybox();
    install_workload(&rootfs, "open_loop");
    std::fs::write(rootfs.path().join("tmp/loop.txt"), "x").expect("seed file");
    let id = container_id();
    let started = Instant::now();
    run_container(
        &id,
        &rootfs,
        &QA_FILES,
        &["/bin/open_loop", "/tmp/loop.txt", &OPENS.to_string()],
    );
    let elapsed = started.elapsed();

    // The loop's events: at least one (its first open), then the stream goes quiet.
    let is_loop = |e: &proto::Event| {
        workload(e).container_id == id && open_of(e).is_some_and(|o| o.path == "/tmp/loop.txt")
    };
    let mut events = collect_until(&mut stream, Duration::from_secs(10), |events| {
        events.iter().any(is_loop)
    })
    .await;
    events.extend(collect_until(&mut stream, Duration::from_secs(2), |_| false).await);
    let loop_events: Vec<_> = events.iter().filter(|e| is_loop(e)).collect();
    let sent_repeats: u64 = loop_events.iter().map(|e| e.repeats_suppressed).sum();

    let status = client
        .get_status(proto::GetStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    let suppressed = status.repeats_suppressed - before.repeats_suppressed;
    eprintln!(
        "{OPENS} opens in {elapsed:?}: {} events for the file ({} repeats reported in them), \
         {suppressed} repeats suppressed in the kernel, ring buffers {:?}",
        loop_events.len(),
        sent_repeats,
        status.ring_buffers
    );
    // The first open is sent; the rest fall within one repeat window (10 s) unless the loop
    // ran longer, in which case one more per window.
    let windows = elapsed.as_secs() / 10 + 1;
    assert!(
        !loop_events.is_empty() && loop_events.len() as u64 <= windows + 1,
        "{} events for {OPENS} identical opens in {elapsed:?}",
        loop_events.len()
    );
    assert!(
        suppressed + loop_events.len() as u64 >= OPENS,
        "only {suppressed} repeats suppressed (+{} sent) of {OPENS} opens",
        loop_events.len()
    );
    for ring in &status.ring_buffers {
        assert_eq!(
            ring.drops, 0,
            "ring buffer {} dropped: {status:?}",
            ring.name
        );
    }
    assert!(!status.ring_buffers.is_empty(), "{status:?}");
}
