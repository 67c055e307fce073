//! Enforce mode end to end, with the mechanism the running kernel offers (`GetStatus` says which):
//! with BPF LSM (`cargo xtask vm-test`, Debian 12's 6.1 kernel) execs and opens fail with EPERM
//! (verdict `blocked`); without it (this host) they are killed by SIGKILL from the tracepoints
//! (verdict `killed`). Network calls fail with EPERM from cgroup sock_addr programs on both. A workload is learned, its namespace switched to `enforce` by
//! editing the configuration (no restart), the same workload then runs with zero deviations,
//! and an unlearned exec, read of /etc/shadow, write and outbound connect are each stopped and
//! reported exactly once. Global rules (ssh in a container) fire in every mode but `off`.
//! Real agent, real kernel programs, real containerd containers, real gRPC; needs root.
mod support;

use std::time::Duration;

use custos::api::proto;
use support::*;

fn labels(pod: &str) -> PodLabels<'_> {
    PodLabels {
        namespace: "qa",
        pod,
        container: "app",
    }
}

/// A busybox root with the applets the runs use, a fake /etc/shadow and an `sshd` (busybox
/// under that name: what matters is the exec, not what it does).
fn guarded_rootfs() -> Rootfs {
    let rootfs = Rootfs::busybox_with(&["nc", "ls", "sleep"]);
    std::fs::write(
        rootfs.path().join("etc/shadow"),
        "root:secret-hash:1::::::\n",
    )
    .unwrap();
    let sbin = rootfs.path().join("usr/sbin");
    std::fs::create_dir_all(&sbin).unwrap();
    std::os::unix::fs::symlink("/bin/busybox", sbin.join("sshd")).unwrap();
    rootfs
}

#[tokio::test(flavor = "multi_thread")]
async fn enforce_mode_stops_each_unlearned_action_and_reports_it_once() {
    if !privileged("enforce_mode_stops_each_unlearned_action_and_reports_it_once") {
        return;
    }
    ensure_containerd();
    let dir = TempDir::new("enforce");
    let modes = |mode: &str| {
        format!("default: off\nworkloads:\n- {{workload: guarded, namespace: qa, mode: {mode}}}\n")
    };
    let config = agent_config(dir.path(), &modes("learn"), 3600);
    let agent = Agent::start_with(["--config".into(), config.clone().into_os_string()]).await;
    let mut client = agent.client().await;
    let rootfs = guarded_rootfs();
    let mechanism = client
        .get_status(proto::GetStatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .enforcement;
    // Under `cargo xtask vm-test` the kernel has BPF LSM active, and the agent must use it.
    let want_lsm = std::env::var_os("CUSTOS_VM").is_some();
    let stopped = match mechanism.as_str() {
        "bpf-lsm+cgroup" => "blocked",
        "cgroup+sigkill" if !want_lsm => "killed",
        other => panic!(
            "enforcement mechanism {other:?} (BPF LSM expected: {want_lsm})\n{}",
            agent.log()
        ),
    };
    eprintln!("enforcement mechanism: {mechanism}; execs and opens are {stopped}");

    // The sleep first gives the agent time to put a new container under kernel policy (it
    // learns of a container from its first event); the connect is refused (nothing listens on
    // port 7), which is still a connect the profile learns.
    let learned = "/bin/sleep 2; /bin/cat /etc/hostname; echo ok > /tmp/ok.txt; \
                   /bin/nc 127.0.0.1 7 < /dev/null; true";
    // The host's network namespace, for a loopback that is up.
    let net = ["--net-host"];
    run_container_with(
        &container_id(),
        &rootfs,
        &labels("guarded-0"),
        &["/bin/sh", "-c", learned],
        &net,
    );
    wait_for_profile(&agent, &mut client, "guarded", |p| {
        p.executables >= 4 && p.files >= 2 && p.egress >= 1
    })
    .await;

    // Enforce, by editing the configuration: effective within a second.
    agent_config(dir.path(), &modes("enforce"), 3600);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut deviations = subscribe_deviations(&mut client, "qa").await;

    // The same workload runs, untouched and unreported.
    let same_id = container_id();
    let output = run_container_with(
        &same_id,
        &rootfs,
        &labels("guarded-1"),
        &["/bin/sh", "-c", &format!("{learned}; echo finished")],
        &net,
    );
    assert!(
        output.contains("finished"),
        "the learned run was stopped: {output}"
    );
    assert_no_deviations(&mut deviations, &same_id, Duration::from_secs(2)).await;

    // Unlearned actions. A kill (without BPF LSM) hits the process that acted: the exec and the
    // shadow read are child processes, the write happens in a subshell, so the shell lives on.
    let odd_id = container_id();
    let output = run_container_with(
        &odd_id,
        &rootfs,
        &labels("guarded-2"),
        &[
            "/bin/sh",
            "-c",
            "/bin/sleep 2; /bin/cat /etc/hostname; /bin/ls /; /bin/cat /etc/shadow; \
             ( echo x > /tmp/new.txt ); /bin/nc 127.0.0.1 9 < /dev/null 2>&1; \
             /usr/sbin/sshd; echo finished",
        ],
        &net,
    );
    assert!(
        output.contains("finished"),
        "the shell itself was stopped: {output}"
    );
    assert!(
        !output.contains("secret-hash"),
        "/etc/shadow was read: {output}"
    );
    assert!(!output.contains("etc\n"), "ls ran: {output}");
    assert!(
        output.contains("Operation not permitted"),
        "the connect did not fail with EPERM: {output}"
    );

    let expected = [
        ("exec", "/bin/ls (parent /bin/sh)", stopped, "guarded-app"),
        (
            "file",
            "/etc/shadow read",
            stopped,
            "global rule shadowReads",
        ),
        ("file", "/tmp/new.txt write", stopped, "guarded-app"),
        ("connect", "tcp 127.0.0.1 port 9", "blocked", "guarded-app"),
        (
            "exec",
            "/usr/sbin/sshd (parent /bin/sh)",
            stopped,
            "global rule ssh",
        ),
    ];
    let wanted: Vec<(&str, &str)> = expected.iter().map(|e| (e.0, e.1)).collect();
    let found = expect_each_deviation_once(&mut deviations, &odd_id, &wanted, || agent.log()).await;
    for ((_, _, verdict, profile), event) in expected.iter().zip(&found) {
        let deviation = deviation_of(event).unwrap();
        assert_eq!(deviation.verdict, *verdict, "{deviation:#?}");
        assert_eq!(deviation.mode, "enforce");
        assert_eq!(deviation.profile, *profile);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_in_a_container_is_flagged_in_every_mode_but_off() {
    if !privileged("ssh_in_a_container_is_flagged_in_every_mode_but_off") {
        return;
    }
    ensure_containerd();
    let dir = TempDir::new("global-rules");
    let modes = "default: off\nworkloads:\n\
                 - {workload: learner, namespace: qa, mode: learn}\n\
                 - {workload: watcher, namespace: qa, mode: monitor}\n\
                 - {workload: ignored, namespace: qa, mode: off}\n";
    let config = agent_config(dir.path(), modes, 3600);
    let agent = Agent::start_with(["--config".into(), config.into_os_string()]).await;
    let mut client = agent.client().await;
    let mut deviations = subscribe_deviations(&mut client, "qa").await;
    let rootfs = guarded_rootfs();
    let mut ids = Vec::new();
    for workload in ["learner", "watcher", "ignored"] {
        let id = container_id();
        run_container(
            &id,
            &rootfs,
            &PodLabels {
                namespace: "qa",
                pod: &format!("{workload}-0"),
                container: "app",
            },
            &["/bin/sh", "-c", "/usr/sbin/sshd; true"],
        );
        ids.push(id);
    }
    let flagged_in = |events: &[proto::Event], id: &str| {
        events
            .iter()
            .filter(|e| workload(e).container_id == id)
            .filter_map(deviation_of)
            .filter(|d| d.profile == "global rule ssh")
            .count()
    };
    let events = collect_until(&mut deviations, Duration::from_secs(10), |events| {
        flagged_in(events, &ids[0]) > 0 && flagged_in(events, &ids[1]) > 0
    })
    .await;
    let late = collect_until(&mut deviations, Duration::from_secs(1), |_| false).await;
    let all: Vec<proto::Event> = events.into_iter().chain(late).collect();
    assert_eq!(flagged_in(&all, &ids[0]), 1, "learn: {all:#?}");
    assert_eq!(flagged_in(&all, &ids[1]), 1, "monitor: {all:#?}");
    assert_eq!(flagged_in(&all, &ids[2]), 0, "off: {all:#?}");
    for event in all
        .iter()
        .filter(|e| flagged_in(std::slice::from_ref(e), &ids[0]) > 0)
    {
        let deviation = deviation_of(event).unwrap();
        assert_eq!(deviation.verdict, "alerted");
        assert_eq!(deviation.severity, "critical");
        assert_eq!(deviation.observed, "/usr/sbin/sshd (parent /bin/sh)");
    }
}

/// An unconnected UDP send (sendto with an address, as musl's DNS resolver does) is learned as
/// an egress peer like a connect, so enforce mode lets the learned peer through and blocks
/// others with EPERM (cgroup `sendmsg4`).
#[tokio::test(flavor = "multi_thread")]
async fn udp_sends_to_learned_peers_pass_and_others_are_blocked() {
    if !privileged("udp_sends_to_learned_peers_pass_and_others_are_blocked") {
        return;
    }
    ensure_containerd();
    let dir = TempDir::new("enforce-udp");
    let modes = |mode: &str| {
        format!("default: off\nworkloads:\n- {{workload: sender, namespace: qa, mode: {mode}}}\n")
    };
    let config = agent_config(dir.path(), &modes("learn"), 3600);
    let agent = Agent::start_with(["--config".into(), config.into_os_string()]).await;
    let mut client = agent.client().await;
    let rootfs = Rootfs::busybox_with(&["sleep"]);
    install_workload(&rootfs, "net_actions");
    let send = |pod: &str, port: u16| {
        run_container_with(
            &container_id(),
            &rootfs,
            &labels(pod),
            &[
                "/bin/sh",
                "-c",
                &format!("/bin/sleep 2; /bin/net_actions sendto {port}"),
            ],
            &["--net-host"],
        )
    };
    assert!(send("sender-0", 5353).contains("sent"));
    wait_for_profile(&agent, &mut client, "sender", |p| p.egress >= 1).await;

    agent_config(dir.path(), &modes("enforce"), 3600);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let learned = send("sender-1", 5353);
    assert!(
        learned.contains("sent"),
        "the learned peer was blocked: {learned}"
    );
    let other = send("sender-2", 5354);
    assert!(
        other.contains("Operation not permitted"),
        "an unlearned peer was not blocked: {other}"
    );
}
