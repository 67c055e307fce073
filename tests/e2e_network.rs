//! End to end for the network sensor: a real container connects, listens and accepts over TCP
//! and UDP (IPv4 and IPv6) and unix sockets; each action must reach a gRPC subscriber with the
//! exact addresses, ports, protocol and result, attributed to its container, pod and ancestry.
//!
//! Every address used is on this machine: the container's own loopback (brought up by the
//! workload, which is why the container gets CAP_NET_ADMIN) and unix sockets inside it.
mod support;

use std::{collections::HashMap, time::Duration};

use custos::api::proto;
use support::*;

const QA_NET: PodLabels<'static> = PodLabels {
    namespace: "qa",
    pod: "net-1",
    container: "client",
};

/// What a network event says, as one comparable tuple.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Action {
    operation: &'static str,
    protocol: String,
    family: String,
    address: String,
    port: u32,
    local_address: String,
    local_port: u32,
    result: i32,
}

fn network_of(event: &proto::Event) -> Option<&proto::NetworkEvent> {
    match &event.body {
        Some(proto::event::Body::Network(network)) => Some(network),
        _ => None,
    }
}

fn action_of(network: &proto::NetworkEvent) -> Action {
    let operation = match proto::NetworkOperation::try_from(network.operation) {
        Ok(proto::NetworkOperation::Connect) => "connect",
        Ok(proto::NetworkOperation::Listen) => "listen",
        Ok(proto::NetworkOperation::Accept) => "accept",
        _ => "unspecified",
    };
    Action {
        operation,
        protocol: network.protocol.clone(),
        family: network.family.clone(),
        address: network.address.clone(),
        port: network.port,
        local_address: network.local_address.clone(),
        local_port: network.local_port,
        result: network.result,
    }
}

#[allow(clippy::too_many_arguments)]
fn action(
    operation: &'static str,
    protocol: &str,
    family: &str,
    address: &str,
    port: u32,
    local_address: &str,
    local_port: u32,
    result: i32,
) -> Action {
    Action {
        operation,
        protocol: protocol.into(),
        family: family.into(),
        address: address.into(),
        port,
        local_address: local_address.into(),
        local_port,
        result,
    }
}

/// `key=value` fields of the workload's output line starting with `label`.
fn reported(stdout: &str, label: &str) -> HashMap<String, i64> {
    let line = stdout
        .lines()
        .find(|line| line.split_whitespace().next() == Some(label))
        .unwrap_or_else(|| panic!("workload printed no `{label}` line:\n{stdout}"));
    line.split_whitespace()
        .filter_map(|field| field.split_once('='))
        .filter_map(|(key, value)| Some((key.to_string(), value.parse().ok()?)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn container_connects_listens_and_accepts_are_reported_exactly() {
    if !privileged("container_connects_listens_and_accepts_are_reported_exactly") {
        return;
    }
    ensure_containerd();
    let agent = Agent::start().await;
    let mut client = agent.client().await;
    let mut stream = subscribe(
        &mut client,
        proto::EventFilter {
            kinds: vec!["connect".into(), "listen".into(), "accept".into()],
            ..Default::default()
        },
    )
    .await;

    let rootfs = Rootfs::busybox();
    install_workload(&rootfs, "net_actions");
    let id = container_id();
    // `; true` keeps the shell alive as the workload's parent, for the ancestry check.
    let stdout = run_container_with(
        &id,
        &rootfs,
        &QA_NET,
        &["/bin/sh", "-c", "/bin/net_actions all; true"],
        &["--cap-add", "CAP_NET_ADMIN"],
    );
    let tcp4 = reported(&stdout, "tcp4");
    let tcp6 = reported(&stdout, "tcp6");
    let udp4 = reported(&stdout, "udp4");
    let udp6 = reported(&stdout, "udp6");
    let unix_stream = reported(&stdout, "unix-stream");
    let port = |fields: &HashMap<String, i64>| fields["client_port"] as u32;
    let fd = |fields: &HashMap<String, i64>| fields["accept_fd"] as i32;

    let expected = vec![
        action("listen", "tcp", "ipv4", "127.0.0.1", 7001, "", 0, 0),
        action(
            "connect",
            "tcp",
            "ipv4",
            "127.0.0.1",
            7001,
            "127.0.0.1",
            port(&tcp4),
            0,
        ),
        action(
            "accept",
            "tcp",
            "ipv4",
            "127.0.0.1",
            port(&tcp4),
            "127.0.0.1",
            7001,
            fd(&tcp4),
        ),
        action("listen", "tcp", "ipv6", "::1", 7002, "", 0, 0),
        action("connect", "tcp", "ipv6", "::1", 7002, "::1", port(&tcp6), 0),
        action(
            "accept",
            "tcp",
            "ipv6",
            "::1",
            port(&tcp6),
            "::1",
            7002,
            fd(&tcp6),
        ),
        action(
            "connect",
            "udp",
            "ipv4",
            "127.0.0.1",
            7003,
            "127.0.0.1",
            port(&udp4),
            0,
        ),
        action("connect", "udp", "ipv6", "::1", 7004, "::1", port(&udp6), 0),
        action(
            "listen",
            "unix-stream",
            "unix",
            "/tmp/net_actions.sock",
            0,
            "",
            0,
            0,
        ),
        action(
            "connect",
            "unix-stream",
            "unix",
            "/tmp/net_actions.sock",
            0,
            "",
            0,
            0,
        ),
        action(
            "accept",
            "unix-stream",
            "unix",
            "",
            0,
            "/tmp/net_actions.sock",
            0,
            fd(&unix_stream),
        ),
        // Last action of the workload: once it is here, everything before it is too (one
        // ring buffer, in order).
        action(
            "connect",
            "unix-dgram",
            "unix",
            "@custos-net-actions",
            0,
            "",
            0,
            0,
        ),
    ];
    let last = expected.last().cloned().unwrap();
    let in_container = |e: &proto::Event| workload(e).container_id == id;
    let events = collect_until(&mut stream, Duration::from_secs(20), |events| {
        events
            .iter()
            .filter(|e| in_container(e))
            .filter_map(network_of)
            .any(|n| action_of(n) == last)
    })
    .await;
    let mine: Vec<&proto::Event> = events.iter().filter(|e| in_container(e)).collect();
    let actions: Vec<Action> = mine
        .iter()
        .filter_map(|e| network_of(e))
        .map(action_of)
        .collect();
    for want in &expected {
        assert!(
            actions.contains(want),
            "missing {want:#?}\namong the container's network events:\n{actions:#?}"
        );
    }

    // Connects to closed ports: the non-blocking one reports -EINPROGRESS (the refusal comes
    // later), the blocking one -ECONNREFUSED. Their local side may or may not be bound.
    for (port, result) in [(7009, -libc::EINPROGRESS), (7010, -libc::ECONNREFUSED)] {
        assert!(
            actions.iter().any(|a| a.operation == "connect"
                && a.protocol == "tcp"
                && a.address == "127.0.0.1"
                && a.port == port
                && a.result == result),
            "no tcp connect to 127.0.0.1:{port} with result {result}:\n{actions:#?}"
        );
    }

    // The UDP connect to 7003 happened 6 times within the repeat window: sent once.
    let udp4_connects = actions
        .iter()
        .filter(|a| a.operation == "connect" && a.protocol == "udp" && a.port == 7003)
        .count();
    assert_eq!(
        udp4_connects, 1,
        "identical connects were not suppressed:\n{actions:#?}"
    );

    // Attribution: container, pod, process and its ancestry.
    for event in &mine {
        let w = workload(event);
        assert!(!w.host, "container event marked as host: {event:#?}");
        assert_eq!(
            (w.namespace.as_str(), w.pod.as_str(), w.container.as_str()),
            ("qa", "net-1", "client"),
            "{event:#?}"
        );
        let process = event.process.as_ref().expect("process");
        assert_eq!(process.comm, "net_actions", "{event:#?}");
        assert_eq!(process.exe, "/bin/net_actions", "{event:#?}");
        let parent = process.ancestors.first().expect("ancestry");
        assert_eq!(parent.pid, process.ppid, "{event:#?}");
        assert_eq!(parent.exe, "/bin/sh", "{event:#?}");
        assert!(
            process
                .ancestors
                .iter()
                .any(|a| a.exe.contains("containerd-shim")),
            "ancestry does not reach the shim: {event:#?}"
        );
    }
}
