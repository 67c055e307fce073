//! The gRPC API and the CLI against a real agent: filters, reconnects, and bad input.
//! Needs root for the agent (eBPF); `cargo xtask test` (and CI) run it as root.
mod support;

use std::{process::Command, time::Duration};

use custos::api::proto;
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn two_subscribers_with_different_filters_each_get_exactly_their_events() {
    if !privileged("two_subscribers_with_different_filters") {
        return;
    }
    ensure_containerd();
    let agent = Agent::start().await;
    let mut client = agent.client().await;
    let (id_a, id_b) = (container_id(), container_id());
    let pod_a = unique("pod-a");
    let pod_b = unique("pod-b");
    let mut execs_of_a = subscribe(
        &mut client,
        proto::EventFilter {
            pods: vec![pod_a.clone()],
            kinds: vec!["exec".into()],
            ..Default::default()
        },
    )
    .await;
    let mut exits_of_b = subscribe(
        &mut client,
        proto::EventFilter {
            container_ids: vec![id_b[..12].to_string()],
            kinds: vec!["exit".into()],
            ..Default::default()
        },
    )
    .await;

    let rootfs = Rootfs::busybox();
    let command = ["/bin/sh", "-c", "/bin/echo one; /bin/echo two"];
    for (id, pod) in [(&id_a, &pod_a), (&id_b, &pod_b)] {
        let labels = PodLabels {
            namespace: "qa",
            pod,
            container: "app",
        };
        run_container(id, &rootfs, &labels, &command);
    }

    let a = collect_until(&mut execs_of_a, Duration::from_secs(10), |events| {
        events.iter().filter(|e| exec_of(e).is_some()).count() >= 3
    })
    .await;
    let b = collect_until(&mut exits_of_b, Duration::from_secs(10), |events| {
        events.len() >= 3
    })
    .await;
    // Let anything that should not have been sent arrive before judging.
    let a_late = collect_until(&mut execs_of_a, Duration::from_millis(500), |_| false).await;
    let b_late = collect_until(&mut exits_of_b, Duration::from_millis(500), |_| false).await;

    let a: Vec<_> = a.into_iter().chain(a_late).collect();
    let b: Vec<_> = b.into_iter().chain(b_late).collect();
    assert!(
        a.len() >= 3,
        "pod filter: expected sh + 2 echo execs, got {a:#?}"
    );
    for event in &a {
        assert!(
            exec_of(event).is_some(),
            "kind filter let through {event:#?}"
        );
        assert_eq!(
            workload(event).pod,
            pod_a,
            "pod filter let through {event:#?}"
        );
        assert_eq!(workload(event).container_id, id_a);
    }
    let echo_args: Vec<_> = a
        .iter()
        .filter_map(exec_of)
        .filter(|x| x.path == "/bin/echo")
        .map(|x| x.argv.clone())
        .collect();
    assert_eq!(
        echo_args,
        [vec!["/bin/echo", "one"], vec!["/bin/echo", "two"]]
    );

    assert!(
        b.len() >= 3,
        "container filter: expected ≥3 exits, got {b:#?}"
    );
    for event in &b {
        assert!(
            matches!(event.body, Some(proto::event::Body::Exit(_))),
            "kind filter let through {event:#?}"
        );
        assert_eq!(workload(event).container_id, id_b, "{event:#?}");
        assert_eq!(workload(event).pod, pod_b);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribers_that_disconnect_and_reconnect_cause_no_error() {
    if !privileged("subscribers_that_disconnect_and_reconnect") {
        return;
    }
    let mut agent = Agent::start().await;
    // Keep events flowing from the host while subscribers come and go.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flow = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = Command::new("/bin/true").status();
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    for round in 0..5 {
        let mut client = agent.client().await;
        let mut stream = subscribe(&mut client, proto::EventFilter::default()).await;
        let events = collect_until(&mut stream, Duration::from_secs(5), |e| e.len() >= 5).await;
        assert!(
            events.len() >= 5,
            "round {round}: only {} events",
            events.len()
        );
        drop(stream);
        drop(client);
    }
    // After every subscriber left, the agent is healthy and counts none.
    let mut client = agent.client().await;
    let mut subscribers = u32::MAX;
    for _ in 0..50 {
        let status = client
            .get_status(proto::GetStatusRequest {})
            .await
            .expect("status after reconnects")
            .into_inner();
        subscribers = status.subscribers;
        if subscribers == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flow.join().unwrap();
    assert_eq!(subscribers, 0, "subscribers not released after disconnect");
    agent.assert_running();
    let log = agent.log();
    assert!(!log.contains("ERROR"), "agent logged errors:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_event_kind_in_a_filter_is_rejected_by_name() {
    if !privileged("unknown_event_kind_in_a_filter") {
        return;
    }
    let mut agent = Agent::start().await;
    let output = Command::new(custos_bin())
        .args(["events", "--socket"])
        .arg(&agent.socket)
        .args(["--kind", "exec", "--kind", "teleport"])
        .output()
        .expect("run custos events");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("teleport"),
        "error does not name the kind: {stderr}"
    );
    assert!(
        stderr.contains("exec"),
        "error does not list valid kinds: {stderr}"
    );
    agent.assert_running();
}

#[test]
fn unknown_cli_flags_are_rejected_by_name() {
    let output = Command::new(custos_bin())
        .args(["agent", "--frobnicate"])
        .output()
        .expect("run custos");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("--frobnicate"), "{stderr}");
}

#[test]
fn an_unusable_state_dir_is_a_clear_error() {
    let dir = TempDir::new("bad-state");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let output = Command::new(custos_bin())
        .arg("agent")
        .arg("--state-dir")
        .arg(file.join("state"))
        .arg("--listen-unix")
        .arg(dir.path().join("custos.sock"))
        .output()
        .expect("run custos");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("state dir"), "{stderr}");
    assert!(
        stderr.contains(&*file.to_string_lossy()),
        "does not name the path: {stderr}"
    );
}

#[test]
fn a_socket_path_taken_by_a_file_is_a_clear_error_and_the_file_survives() {
    let dir = TempDir::new("bad-socket");
    let taken = dir.path().join("custos.sock");
    std::fs::write(&taken, "precious").unwrap();
    let output = Command::new(custos_bin())
        .arg("agent")
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--listen-unix")
        .arg(&taken)
        .output()
        .expect("run custos");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains(&*taken.to_string_lossy()),
        "does not name the path: {stderr}"
    );
    assert_eq!(std::fs::read_to_string(&taken).unwrap(), "precious");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_agent_on_a_live_socket_is_refused() {
    if !privileged("a_second_agent_on_a_live_socket") {
        return;
    }
    let mut agent = Agent::start().await;
    let output = Command::new(custos_bin())
        .arg("agent")
        .arg("--state-dir")
        .arg(agent.dir.path().join("state2"))
        .arg("--listen-unix")
        .arg(&agent.socket)
        .output()
        .expect("run custos");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("already listening"), "{stderr}");
    agent.assert_running();
    // The first agent still serves.
    let mut client = agent.client().await;
    client
        .get_status(proto::GetStatusRequest {})
        .await
        .expect("first agent still answers");
}
