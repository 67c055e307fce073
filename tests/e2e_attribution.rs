//! Processes that started before the agent: their actions are attributed to their container
//! and carry their ancestry (read from /proc at start-up), and their container is traced from
//! the start. Real containerd container, real agent, real gRPC; needs root.
mod support;

use std::{process::Command, time::Duration};

use custos::api::proto;
use support::*;

/// The pid of a running container's first process, from `ctr task ls`.
fn task_pid(id: &str) -> Option<u32> {
    let output = Command::new("ctr").args(["task", "ls"]).output().ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find(|line| line.starts_with(id))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|pid| pid.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_started_before_the_agent_is_attributed_to_its_container() {
    if !privileged("a_process_started_before_the_agent") {
        return;
    }
    ensure_containerd();
    let rootfs = Rootfs::busybox();
    let go = rootfs.path().join("tmp/go");
    let id = container_id();
    let labels = PodLabels {
        namespace: "qa",
        pod: "early-1",
        container: "early",
    };
    // The container's shell starts now, waits for /tmp/go (created from the host once the
    // agent runs), then opens /etc/hostname itself (a builtin's redirection: no new process).
    let script = "while [ ! -e /tmp/go ]; do /bin/sleep 0.1; done; read line < /etc/hostname; \
                  /bin/sleep 1";
    let container = {
        let id = id.clone();
        std::thread::spawn(move || {
            run_container(&id, &rootfs, &labels, &["/bin/sh", "-c", script]);
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // The task is listed as soon as runc creates it; the shell runs once its exec is done
    // (its name is then `sh`). Only then is it a process that started before the agent.
    let shell_pid = loop {
        if let Some(pid) = task_pid(&id)
            && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "sh")
        {
            break pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "container {id} did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    };

    let agent = Agent::start().await;
    let mut client = agent.client().await;
    let mut stream = subscribe(
        &mut client,
        proto::EventFilter {
            container_ids: vec![id.clone()],
            kinds: vec!["open".into()],
            ..Default::default()
        },
    )
    .await;
    std::fs::write(&go, "").expect("create the go file");

    let events = collect_until(&mut stream, Duration::from_secs(10), |events| {
        events.iter().any(is_hostname_open)
    })
    .await;
    std::fs::remove_file(&go).ok();
    container.join().expect("container run");

    let open = events
        .iter()
        .find(|e| is_hostname_open(e))
        .unwrap_or_else(|| panic!("no open of /etc/hostname from {id}: {events:#?}"));
    let process = open.process.as_ref().expect("process");
    assert_eq!(
        process.pid, shell_pid,
        "not the pre-existing shell: {open:#?}"
    );
    assert_eq!(process.exe, "/bin/busybox", "exe from /proc: {open:#?}");
    assert_eq!(process.argv, ["/bin/sh", "-c", script], "{open:#?}");
    let workload = workload(open);
    assert_eq!(
        (
            workload.namespace.as_str(),
            workload.pod.as_str(),
            workload.container.as_str()
        ),
        ("qa", "early-1", "early")
    );
    assert!(
        process
            .ancestors
            .iter()
            .any(|a| a.exe.contains("containerd-shim")),
        "ancestry of a pre-existing process does not reach the shim: {open:#?}"
    );
}

fn is_hostname_open(event: &proto::Event) -> bool {
    matches!(&event.body, Some(proto::event::Body::Open(open)) if open.path == "/etc/hostname")
}

/// A pod label overrides the workload part of a profile's identity. On a real node the CRI
/// plugin puts a pod's labels on its sandbox container (`io.cri-containerd.kind=sandbox`), and
/// the pod's containers share its `io.kubernetes.pod.uid`; this builds that shape with `ctr` (no
/// kubelet runs here).
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_label_on_the_sandbox_sets_the_profile_identity() {
    if !privileged("a_pod_label_on_the_sandbox_sets_the_profile_identity") {
        return;
    }
    ensure_containerd();
    let dir = TempDir::new("pod-labels");
    let config = agent_config(dir.path(), "default: learn\n", 3600);
    let agent = Agent::start_with(["--config".into(), config.into_os_string()]).await;
    let mut client = agent.client().await;
    let rootfs = Rootfs::busybox_with(&["sleep"]);
    let pod = "web-7f9c5d8b6-x2x1q";
    let uid = format!("uid-{}", &container_id()[..12]);
    let uid_label = format!("io.kubernetes.pod.uid={uid}");
    let mut sandbox = BackgroundContainer::start(
        &container_id(),
        &rootfs,
        &PodLabels {
            namespace: "qa",
            pod,
            container: "POD",
        },
        &["/bin/sleep", "30"],
        &[
            "--label",
            "io.cri-containerd.kind=sandbox",
            "--label",
            &uid_label,
            "--label",
            "custos.dev/workload=storefront",
        ],
    );
    // containerd tells the agent about the sandbox through its events.
    tokio::time::sleep(Duration::from_secs(1)).await;
    sandbox.assert_running();
    run_container_with(
        &container_id(),
        &rootfs,
        &PodLabels {
            namespace: "qa",
            pod,
            container: "app",
        },
        &["/bin/cat", "/etc/hostname"],
        &[
            "--label",
            "io.cri-containerd.kind=container",
            "--label",
            &uid_label,
        ],
    );
    wait_for_profile(&agent, &mut client, "storefront", |p| {
        p.container == "app" && p.executables >= 1
    })
    .await;
    let profiles = list_profiles(&mut client).await;
    assert!(
        !profiles
            .iter()
            .any(|p| p.workload == "web" && p.container == "app"),
        "the pod-name identity was used despite the label: {profiles:#?}"
    );
    sandbox.stop();
}
