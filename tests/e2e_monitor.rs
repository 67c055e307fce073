//! Monitor mode end to end: a workload is learned in `qa`, its namespace is switched to
//! `monitor` by editing the configuration file (no restart), the same workload then runs with
//! zero deviations, and unlearned actions succeed and are each flagged exactly once. Real agent,
//! real containerd containers, real gRPC; needs root.
mod support;

use std::time::Duration;

use support::*;

fn modes(mode: &str) -> String {
    format!("default: off\nworkloads:\n- {{workload: watched, namespace: qa, mode: {mode}}}\n")
}

fn labels(pod: &str) -> PodLabels<'_> {
    PodLabels {
        namespace: "qa",
        pod,
        container: "app",
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn monitor_mode_flags_each_unlearned_action_once_and_lets_it_happen() {
    if !privileged("monitor_mode_flags_each_unlearned_action_once") {
        return;
    }
    ensure_containerd();
    let dir = TempDir::new("monitor");
    let config = agent_config(dir.path(), &modes("learn"), 3600);
    let agent = Agent::start_with(["--config".into(), config.clone().into_os_string()]).await;
    let mut client = agent.client().await;

    let rootfs = Rootfs::busybox_with(&["nc", "ls"]);
    std::fs::write(
        rootfs.path().join("etc/shadow"),
        "root:secret-hash:1::::::\n",
    )
    .unwrap();
    // `true` (a builtin) last, so that the shell forks for every external command and the
    // learned lineage is the same in every run.
    let learned_run = ["/bin/sh", "-c", "/bin/cat /etc/hostname; true"];

    // Learn: the workload runs until its profile holds what it did.
    run_container(&container_id(), &rootfs, &labels("watched-0"), &learned_run);
    wait_for_profile(&agent, &mut client, "watched", |p| {
        p.executables >= 2 && p.files >= 1
    })
    .await;

    // Switch to monitor by editing the configuration: effective within a second.
    agent_config(dir.path(), &modes("monitor"), 3600);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut deviations = subscribe_deviations(&mut client, "qa").await;

    // The same workload: nothing to flag.
    let same_id = container_id();
    run_container(&same_id, &rootfs, &labels("watched-1"), &learned_run);
    assert_no_deviations(&mut deviations, &same_id, Duration::from_secs(2)).await;

    // Unlearned actions: an exec, a read of /etc/shadow, a write, an outbound connect.
    let odd_id = container_id();
    let output = run_container_with(
        &odd_id,
        &rootfs,
        &labels("watched-2"),
        &[
            "/bin/sh",
            "-c",
            "/bin/cat /etc/hostname; /bin/ls / > /dev/null; /bin/cat /etc/shadow; \
             echo x > /tmp/new.txt; /bin/nc 127.0.0.1 9 < /dev/null; true",
        ],
        // The host's network namespace, for a loopback that is up (the connect is refused:
        // nothing listens on port 9).
        &["--net-host"],
    );
    // Monitor mode lets everything happen.
    assert!(
        output.contains("secret-hash"),
        "the read of /etc/shadow failed: {output}"
    );

    let expected = [
        ("exec", "/bin/ls (parent /bin/sh)"),
        ("file", "/etc/shadow read"),
        ("file", "/tmp/new.txt write"),
        ("exec", "/bin/nc (parent /bin/sh)"),
        ("connect", "tcp 127.0.0.1 port 9"),
    ];
    let found =
        expect_each_deviation_once(&mut deviations, &odd_id, &expected, || agent.log()).await;
    for ((_, observed), event) in expected.iter().zip(&found) {
        let deviation = deviation_of(event).unwrap();
        assert_eq!(deviation.verdict, "alerted");
        assert_eq!(deviation.mode, "monitor");
        // Reading /etc/shadow breaks a global rule, whatever the profile says.
        let profile = match *observed {
            "/etc/shadow read" => "global rule shadowReads",
            _ => "watched-app",
        };
        assert_eq!(deviation.profile, profile);
        assert_eq!(deviation.count, 1);
    }
    let shadow = &found[1];
    assert_eq!(deviation_of(shadow).unwrap().severity, "critical");
    assert_eq!(workload(shadow).pod, "watched-2");
    let process = shadow.process.as_ref().expect("process");
    assert_eq!(process.exe, "/bin/cat");
    assert!(
        process
            .ancestors
            .first()
            .is_some_and(|a| a.exe == "/bin/sh"),
        "ancestry: {process:#?}"
    );
}
