//! Decisions taken in the kernel, end to end: what a workload's profile allows never reaches
//! user space, what it does not allow does (and is flagged or stopped).
//! - Network: in `monitor`, a learned connect is decided in the kernel and produces no event at
//!   all, while an unlearned one is sent and flagged.
//!
//! Real agent, real kernel programs, real containerd containers, real gRPC; needs root.
mod support;

use std::time::Duration;

use custos::api::proto::{self, custos_client::CustosClient};
use support::*;
use tonic::transport::Channel;

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

/// Waits until the profile of `workload` satisfies `ready`.
async fn wait_for_profile(
    agent: &Agent,
    client: &mut CustosClient<Channel>,
    workload: &str,
    ready: impl Fn(&proto::ProfileSummary) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let profiles = client
            .list_profiles(proto::ListProfilesRequest {})
            .await
            .expect("list profiles")
            .into_inner()
            .profiles;
        if profiles.iter().any(|p| p.workload == workload && ready(p)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "profile of {workload} not learned: {profiles:#?}\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
