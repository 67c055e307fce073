//! End to end: real eBPF programs in the real kernel, real containers under containerd, a real
//! gRPC subscriber. Needs root; `cargo xtask test` (and CI) run it as root.
mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use custos::api::proto;
use support::*;

const QA_WEB: PodLabels<'static> = PodLabels {
    namespace: "qa",
    pod: "web-1",
    container: "web",
};

#[tokio::test(flavor = "multi_thread")]
async fn container_execs_reach_a_subscriber_attributed_to_their_pod_and_host_execs_are_host() {
    if !privileged("container_execs_reach_a_subscriber") {
        return;
    }
    ensure_containerd();
    let agent = Agent::start().await;
    let mut client = agent.client().await;
    let mut stream = subscribe(
        &mut client,
        proto::EventFilter {
            kinds: vec!["exec".into()],
            ..Default::default()
        },
    )
    .await;

    let rootfs = Rootfs::busybox();
    let id = container_id();
    run_container(
        &id,
        &rootfs,
        &QA_WEB,
        &["/bin/sh", "-c", "/bin/cat /etc/hostname"],
    );
    let host_marker = unique("host-marker");
    let status = std::process::Command::new("/bin/echo")
        .arg(&host_marker)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run /bin/echo");
    assert!(status.success());

    let in_container = |e: &proto::Event| workload(e).container_id == id;
    let events = collect_until(&mut stream, Duration::from_secs(10), |events| {
        let container_execs = events.iter().filter(|e| in_container(e)).count();
        let host_seen = events
            .iter()
            .any(|e| exec_of(e).is_some_and(|x| x.argv.contains(&host_marker)));
        container_execs >= 2 && host_seen
    })
    .await;

    let sh = events
        .iter()
        .filter(|e| in_container(e))
        .find(|e| exec_of(e).is_some_and(|x| x.path == "/bin/sh"))
        .unwrap_or_else(|| panic!("no exec of /bin/sh in container {id}; got {events:#?}"));
    let cat = events
        .iter()
        .filter(|e| in_container(e))
        .find(|e| exec_of(e).is_some_and(|x| x.path == "/bin/cat"))
        .unwrap_or_else(|| panic!("no exec of /bin/cat in container {id}; got {events:#?}"));

    assert_eq!(
        exec_of(sh).unwrap().argv,
        ["/bin/sh", "-c", "/bin/cat /etc/hostname"]
    );
    assert_eq!(exec_of(cat).unwrap().argv, ["/bin/cat", "/etc/hostname"]);
    for event in [sh, cat] {
        let w = workload(event);
        assert!(!w.host, "container exec marked as host: {event:#?}");
        assert_eq!(
            (
                w.runtime.as_str(),
                w.namespace.as_str(),
                w.pod.as_str(),
                w.container.as_str()
            ),
            ("containerd", "qa", "web-1", "web"),
            "{event:#?}"
        );
        let exec = exec_of(event).unwrap();
        assert!(
            exec.path.starts_with('/'),
            "path not absolute: {}",
            exec.path
        );
        assert!(!exec.argv_truncated && !exec.path_truncated);
        let process = event.process.as_ref().expect("process");
        assert_ne!(process.pid, 0);
        assert_ne!(process.ppid, 0, "ppid unknown: {event:#?}");
        assert_ne!(w.cgroup_id, 0);
        // Delivered within 2 s of the kernel seeing it (the stream is read as it arrives).
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let age = Duration::from_nanos(now.saturating_sub(event.time_unix_nano));
        assert!(
            age < Duration::from_secs(10),
            "event time is off: {age:?} old"
        );
    }
    let sh_process = sh.process.as_ref().unwrap();
    let cat_process = cat.process.as_ref().unwrap();
    assert!(
        cat_process.ppid == sh_process.pid || cat_process.pid == sh_process.pid,
        "cat ({cat_process:?}) is not a child of sh ({sh_process:?})"
    );

    // Ancestry: the nearest ancestor is the parent, and the chain reaches into the host
    // (containerd's shim started the container).
    let ancestors = &cat_process.ancestors;
    assert!(!ancestors.is_empty(), "no ancestry: {cat:#?}");
    assert_eq!(ancestors[0].pid, cat_process.ppid, "{cat:#?}");
    assert!(
        ancestors.iter().any(|a| a.exe.contains("containerd-shim")),
        "ancestry does not reach the shim: {ancestors:#?}"
    );
    assert_eq!(cat_process.exe, "/bin/cat");

    let host = events
        .iter()
        .find(|e| exec_of(e).is_some_and(|x| x.argv.contains(&host_marker)))
        .unwrap_or_else(|| panic!("host exec of /bin/echo not reported; got {events:#?}"));
    assert!(workload(host).host, "host exec not marked host: {host:#?}");
    assert!(workload(host).container_id.is_empty());
    assert_eq!(exec_of(host).unwrap().path, "/bin/echo");
    assert_eq!(
        exec_of(host).unwrap().argv,
        ["/bin/echo", host_marker.as_str()]
    );
    assert_eq!(host.process.as_ref().unwrap().ppid, std::process::id());
}

#[tokio::test(flavor = "multi_thread")]
async fn container_exec_arrives_within_two_seconds() {
    if !privileged("container_exec_arrives_within_two_seconds") {
        return;
    }
    ensure_containerd();
    let agent = Agent::start().await;
    let mut client = agent.client().await;
    let id = container_id();
    let mut stream = subscribe(
        &mut client,
        proto::EventFilter {
            container_ids: vec![id.clone()],
            kinds: vec!["exec".into()],
            ..Default::default()
        },
    )
    .await;
    let rootfs = Rootfs::busybox();
    let labels = PodLabels {
        namespace: "qa",
        pod: "web-1",
        container: "web",
    };
    let id_for_thread = id.clone();
    let runner = std::thread::spawn(move || {
        // The container sleeps first so that the exec we time happens after ctr's set-up.
        run_container(
            &id_for_thread,
            &rootfs,
            &labels,
            &["/bin/sh", "-c", "/bin/sleep 1; /bin/cat /etc/hostname"],
        )
    });
    let events = collect_until(&mut stream, Duration::from_secs(15), |events| {
        events
            .iter()
            .any(|e| exec_of(e).is_some_and(|x| x.path == "/bin/cat"))
    })
    .await;
    let received_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    runner.join().expect("container run");
    let cat = events
        .iter()
        .find(|e| exec_of(e).is_some_and(|x| x.path == "/bin/cat"))
        .unwrap_or_else(|| panic!("no /bin/cat exec from {id}: {events:#?}"));
    let latency = Duration::from_nanos(received_at.saturating_sub(cat.time_unix_nano));
    assert!(
        latency < Duration::from_secs(2),
        "exec reached the subscriber after {latency:?}"
    );
    assert!(
        events.iter().all(|e| workload(e).container_id == id),
        "container filter let other events through: {events:#?}"
    );
}
