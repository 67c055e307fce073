//! Decisions taken in the kernel, end to end: what a workload's profile allows never reaches
//! user space, what it does not allow does (and is flagged or stopped).
//! - Network: in `monitor`, a learned connect is decided in the kernel and produces no event at
//!   all, while an unlearned one is sent and flagged.
//! - Syscalls: in `enforce`, a workload whose profile opted in (`syscallPolicy: kill`) is killed
//!   for an unlearned syscall and the deviation says `killed`; one that did not is only flagged.
//!
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

fn modes(workload: &str, mode: &str) -> String {
    format!("default: off\nworkloads:\n- {{workload: {workload}, namespace: qa, mode: {mode}}}\n")
}

fn network_of(event: &proto::Event) -> Option<&proto::NetworkEvent> {
    match &event.body {
        Some(proto::event::Body::Network(network)) => Some(network),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_learned_connect_never_leaves_the_kernel_an_unlearned_one_is_flagged() {
    if !privileged("a_learned_connect_never_leaves_the_kernel_an_unlearned_one_is_flagged") {
        return;
    }
    ensure_containerd();
    let dir = TempDir::new("kernel-filter-net");
    let config = agent_config(dir.path(), &modes("netfiltered", "learn"), 3600);
    let agent = Agent::start_with(["--config".into(), config.into_os_string()]).await;
    let mut client = agent.client().await;
    let rootfs = Rootfs::busybox_with(&["nc", "sleep"]);
    // The host's network namespace, for a loopback that is up; nothing listens on ports 7 and
    // 9, so both connects are refused, which is still a connect. The sleep gives the agent
    // time to put a new container under kernel policy (it learns of a container from its
    // first event).
    let net = ["--net-host"];
    let learned = "/bin/sleep 2; /bin/nc 127.0.0.1 7 < /dev/null; true";
    run_container_with(
        &container_id(),
        &rootfs,
        &labels("netfiltered-0"),
        &["/bin/sh", "-c", learned],
        &net,
    );
    wait_for_profile(&agent, &mut client, "netfiltered", |p| p.egress >= 1).await;

    agent_config(dir.path(), &modes("netfiltered", "monitor"), 3600);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut stream = subscribe(
        &mut client,
        proto::EventFilter {
            namespaces: vec!["qa".into()],
            kinds: vec!["connect".into(), "deviation".into()],
            ..Default::default()
        },
    )
    .await;

    let id = container_id();
    run_container_with(
        &id,
        &rootfs,
        &labels("netfiltered-1"),
        &[
            "/bin/sh",
            "-c",
            "/bin/sleep 2; /bin/nc 127.0.0.1 7 < /dev/null; /bin/nc 127.0.0.1 9 < /dev/null; true",
        ],
        &net,
    );
    let ours = |e: &&proto::Event| workload(e).container_id == id;
    let flagged = |events: &[proto::Event]| {
        events
            .iter()
            .filter(ours)
            .filter_map(deviation_of)
            .any(|d| d.kind == "connect")
    };
    let events = collect_until(&mut stream, Duration::from_secs(10), flagged).await;
    let late = collect_until(&mut stream, Duration::from_secs(1), |_| false).await;
    let all: Vec<&proto::Event> = events.iter().chain(&late).filter(ours).collect();

    let connects: Vec<u32> = all
        .iter()
        .filter_map(|e| network_of(e))
        .filter(|n| n.address == "127.0.0.1")
        .map(|n| n.port)
        .collect();
    assert_eq!(
        connects,
        [9],
        "only the unlearned connect may reach user space; events: {all:#?}\n{}",
        agent.log()
    );
    let deviations: Vec<&proto::DeviationEvent> =
        all.iter().filter_map(|e| deviation_of(e)).collect();
    assert_eq!(deviations.len(), 1, "deviations: {deviations:#?}");
    assert_eq!(deviations[0].observed, "tcp 127.0.0.1 port 9");
    assert_eq!(deviations[0].verdict, "alerted");
    assert_eq!(deviations[0].mode, "monitor");
}

/// A subshell runs the `umask` builtin: an unlearned syscall (`umask`) made by a learned program
/// (the shell) in a child process, so the shell itself lives on to say `finished`.
const LEARNED_SHELL: &str = "/bin/sleep 2; /bin/cat /etc/hostname; ( true ); echo learned";
const ODD_SHELL: &str =
    "/bin/sleep 2; /bin/cat /etc/hostname; ( true ); ( umask 077; echo alive ); echo finished";

#[tokio::test(flavor = "multi_thread")]
async fn an_opted_in_workload_is_killed_for_an_unlearned_syscall_others_are_flagged() {
    if !privileged("an_opted_in_workload_is_killed_for_an_unlearned_syscall_others_are_flagged") {
        return;
    }
    ensure_containerd();
    let dir = TempDir::new("kernel-filter-syscall");
    let modes = |mode: &str| {
        format!(
            "default: off\nworkloads:\n- {{workload: killer, namespace: qa, mode: {mode}}}\n\
             - {{workload: flagger, namespace: qa, mode: {mode}}}\n"
        )
    };
    let config = agent_config(dir.path(), &modes("learn"), 3600);
    let agent = Agent::start_with(["--config".into(), config.into_os_string()]).await;
    let mut client = agent.client().await;
    let rootfs = Rootfs::busybox_with(&["sleep", "cat"]);
    for workload in ["killer", "flagger"] {
        let output = run_container_with(
            &container_id(),
            &rootfs,
            &labels(&format!("{workload}-0")),
            &["/bin/sh", "-c", LEARNED_SHELL],
            &[],
        );
        assert!(output.contains("learned"), "{output}");
        wait_for_profile(&agent, &mut client, workload, |p| {
            p.executables >= 3 && p.syscalls >= 10
        })
        .await;
    }

    // The killer opts in, as a reviewer would: its exported profile with `syscallPolicy: kill`.
    let exported = client
        .export_profiles(proto::ExportProfilesRequest {
            names: vec!["killer-app".into()],
        })
        .await
        .expect("export")
        .into_inner()
        .yaml;
    assert!(exported.contains("\nspec:\n"), "{exported}");
    let opted_in = exported.replacen("\nspec:\n", "\nspec:\n  syscallPolicy: kill\n", 1);
    client
        .import_profiles(proto::ImportProfilesRequest {
            yaml: opted_in,
            source: "killer.yaml".into(),
        })
        .await
        .expect("import the opted-in profile");

    agent_config(dir.path(), &modes("enforce"), 3600);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut deviations = subscribe_deviations(&mut client, "qa").await;

    let mut ids = Vec::new();
    let mut outputs = Vec::new();
    for workload in ["killer", "flagger"] {
        let id = container_id();
        outputs.push(run_container_with(
            &id,
            &rootfs,
            &labels(&format!("{workload}-1")),
            &["/bin/sh", "-c", ODD_SHELL],
            &[],
        ));
        ids.push(id);
    }
    let (killer, flagger) = (&ids[0], &ids[1]);
    assert!(
        outputs[0].contains("finished"),
        "the shell was killed: {}",
        outputs[0]
    );
    assert!(
        !outputs[0].contains("alive"),
        "the subshell lived on after umask: {}\n{}",
        outputs[0],
        agent.log()
    );
    assert!(outputs[1].contains("alive\nfinished"), "{}", outputs[1]);

    let syscall_deviations = |events: &[proto::Event], id: &str| -> Vec<proto::DeviationEvent> {
        events
            .iter()
            .filter(|e| workload(e).container_id == id)
            .filter_map(deviation_of)
            .filter(|d| d.kind == "syscall")
            .cloned()
            .collect()
    };
    let events = collect_until(&mut deviations, Duration::from_secs(10), |events| {
        !syscall_deviations(events, killer).is_empty()
            && !syscall_deviations(events, flagger).is_empty()
    })
    .await;
    let late = collect_until(&mut deviations, Duration::from_secs(1), |_| false).await;
    let all: Vec<proto::Event> = events.into_iter().chain(late).collect();
    for (id, verdict, profile) in [
        (killer, "killed", "killer-app"),
        (flagger, "alerted", "flagger-app"),
    ] {
        let found = syscall_deviations(&all, id);
        assert_eq!(
            found.len(),
            1,
            "expected one syscall deviation of {profile}: {found:#?}\n{}",
            agent.log()
        );
        assert_eq!(found[0].observed, "umask");
        assert_eq!(found[0].verdict, verdict, "{found:#?}");
        assert_eq!(found[0].profile, profile);
        assert_eq!(found[0].mode, "enforce");
    }
}
