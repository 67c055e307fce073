//! End to end, the syscall-set sensor: real eBPF programs, a real container running a static
//! workload with distinctive syscalls, a real gRPC subscriber and `GetSyscalls`. Needs root;
//! `cargo xtask test` (and CI) run it as root.
mod support;

use std::{collections::BTreeMap, time::Duration};

use custos::api::proto;
use support::*;

const QA_SYSCALLS: PodLabels<'static> = PodLabels {
    namespace: "qa",
    pod: "syscalls-1",
    container: "mix",
};

/// What `tests/workloads/syscall_mix.c` calls specifically, several times each.
const DISTINCTIVE: &[&str] = &["getppid", "uname", "sched_yield", "getrandom"];
/// What any run of the workload (and `cat`) does.
const COMMON: &[&str] = &["execve", "openat", "read", "write", "exit_group"];

fn syscall_of(event: &proto::Event) -> Option<&proto::SyscallEvent> {
    match &event.body {
        Some(proto::event::Body::Syscall(syscall)) => Some(syscall),
        _ => None,
    }
}

/// Number of first-use events per syscall name.
fn first_uses(events: &[proto::Event], id: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for event in events.iter().filter(|e| workload(e).container_id == id) {
        if let Some(syscall) = syscall_of(event) {
            *counts.entry(syscall.name.clone()).or_insert(0) += 1;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread")]
async fn each_first_use_is_one_event_and_get_syscalls_returns_the_whole_set() {
    if !privileged("syscall_sets") {
        return;
    }
    ensure_containerd();
    let agent = Agent::start().await;
    let mut client = agent.client().await;
    let mut stream = subscribe(
        &mut client,
        proto::EventFilter {
            kinds: vec!["syscall".into()],
            ..Default::default()
        },
    )
    .await;

    let rootfs = Rootfs::busybox();
    install_workload(&rootfs, "syscall_mix");
    let id = container_id();
    // The workload runs twice in the same container: its second run must add no event. The
    // container then sleeps so that its cgroup still exists for GetSyscalls.
    let container = {
        let id = id.clone();
        tokio::task::spawn_blocking(move || {
            run_container(
                &id,
                &rootfs,
                &QA_SYSCALLS,
                &[
                    "/bin/sh",
                    "-c",
                    "/bin/syscall_mix; /bin/syscall_mix; /bin/cat /etc/hostname; /bin/sleep 5",
                ],
            )
        })
    };

    let mut events = collect_until(&mut stream, Duration::from_secs(15), |events| {
        let seen = first_uses(events, &id);
        DISTINCTIVE
            .iter()
            .chain(COMMON)
            .all(|name| seen.contains_key(*name))
    })
    .await;
    // Anything sent twice would arrive within moments of the first: keep listening a while.
    events.extend(collect_until(&mut stream, Duration::from_secs(2), |_| false).await);
    let seen = first_uses(&events, &id);
    eprintln!("first uses of container {id}: {seen:?}");
    for name in DISTINCTIVE.iter().chain(COMMON) {
        assert!(
            seen.contains_key(*name),
            "no first use of {name} from container {id}; first uses: {seen:?}\nagent log:\n{}",
            agent.log()
        );
    }
    let repeated: Vec<_> = seen.iter().filter(|(_, count)| **count > 1).collect();
    assert!(
        repeated.is_empty(),
        "syscalls reported more than once for container {id}: {repeated:?}"
    );
    for event in events.iter().filter(|e| workload(e).container_id == id) {
        let w = workload(event);
        assert_eq!(
            (w.host, w.namespace.as_str(), w.pod.as_str()),
            (false, "qa", "syscalls-1"),
            "attribution of {event:?}"
        );
    }

    // The whole set, while the container still runs, by full id and by a 12-character prefix.
    for asked in [id.as_str(), &id[..12]] {
        let set = client
            .get_syscalls(proto::GetSyscallsRequest {
                container_id: asked.to_owned(),
            })
            .await
            .unwrap_or_else(|status| panic!("GetSyscalls({asked}): {status}"))
            .into_inner();
        assert_eq!(set.container_id, id);
        let numbers: Vec<u32> = set.syscalls.iter().map(|s| s.number).collect();
        let mut sorted = numbers.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(numbers, sorted, "not sorted by number, or repeated");
        let names: Vec<&str> = set.syscalls.iter().map(|s| s.name.as_str()).collect();
        for name in DISTINCTIVE.iter().chain(COMMON) {
            assert!(
                names.contains(name),
                "{name} missing from GetSyscalls: {names:?}"
            );
        }
        // Every first use reported is in the set.
        for name in seen.keys() {
            assert!(
                names.contains(&name.as_str()),
                "{name} reported but not in GetSyscalls: {names:?}"
            );
        }
    }

    // Unknown and malformed ids.
    let unknown = container_id();
    let status = client
        .get_syscalls(proto::GetSyscallsRequest {
            container_id: unknown,
        })
        .await
        .expect_err("unknown container");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status}");
    for bad in ["", "abc", "not-a-container-id!", &id[..11]] {
        let status = client
            .get_syscalls(proto::GetSyscallsRequest {
                container_id: bad.to_owned(),
            })
            .await
            .expect_err("malformed id");
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{bad:?}: {status}"
        );
    }

    container.await.expect("container thread panicked");
}
