//! The mapping's choices, field by field. Conformance to the OCSF class schemas is checked by
//! `tests/e2e_ocsf.rs` against the published schema.
use serde_json::Value;

use super::*;
use crate::api::proto::event::Body;

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
/// 2026-11-25T16:00:00.123456789Z
const T: u64 = 1_795_622_400_123_456_789;

fn pod() -> proto::Workload {
    proto::Workload {
        host: false,
        container_id: ID.into(),
        runtime: "containerd".into(),
        namespace: "qa".into(),
        pod: "web-1".into(),
        container: "web".into(),
        image: "nginx:1.27".into(),
        cgroup_id: 42,
        cgroup_path: "/kubepods/x".into(),
        pod_labels: Default::default(),
    }
}

fn event(workload: proto::Workload, body: Body) -> proto::Event {
    proto::Event {
        time_unix_nano: T,
        node: "node-1".into(),
        workload: Some(workload),
        process: Some(proto::Process {
            pid: 123,
            tid: 124,
            ppid: 100,
            uid: 1000,
            gid: 1000,
            comm: "cat".into(),
            exe: "/bin/cat".into(),
            argv: vec!["cat".into(), "/etc/hostname".into()],
            ancestors: vec![
                proto::Ancestor {
                    pid: 100,
                    exe: "/bin/sh".into(),
                    argv: vec!["sh".into(), "-c".into(), "cat /etc/hostname".into()],
                },
                proto::Ancestor {
                    pid: 1,
                    exe: "/sbin/init".into(),
                    argv: vec![],
                },
            ],
        }),
        repeats_suppressed: 0,
        body: Some(body),
    }
}

fn map(event: &proto::Event) -> Value {
    to_ocsf(event).expect("an OCSF record")
}

fn network(operation: proto::NetworkOperation, result: i32) -> Body {
    Body::Network(proto::NetworkEvent {
        operation: operation as i32,
        protocol: "tcp".into(),
        family: "ipv4".into(),
        address: "10.0.0.1".into(),
        port: 443,
        local_address: "10.1.0.5".into(),
        local_port: 40000,
        result,
    })
}

fn deviation(verdict: &str, count: u64) -> Body {
    Body::Deviation(proto::DeviationEvent {
        kind: "exec".into(),
        observed: "/bin/nc (parent /bin/sh)".into(),
        profile: "web-web".into(),
        nearest_allowed: "/bin/cat (parent /bin/sh)".into(),
        verdict: verdict.into(),
        severity: "high".into(),
        count,
        mode: "enforce".into(),
    })
}

/// Every string, list and object in `value` has something in it.
fn assert_nothing_empty(value: &Value, path: &str) {
    match value {
        Value::Null => panic!("null at {path}"),
        Value::String(s) => assert!(!s.is_empty(), "empty string at {path}"),
        Value::Array(items) => {
            assert!(!items.is_empty(), "empty list at {path}");
            for (i, item) in items.iter().enumerate() {
                assert_nothing_empty(item, &format!("{path}[{i}]"));
            }
        }
        Value::Object(map) => {
            assert!(!map.is_empty(), "empty object at {path}");
            for (key, field) in map {
                assert_nothing_empty(field, &format!("{path}.{key}"));
            }
        }
        Value::Bool(_) | Value::Number(_) => {}
    }
}

#[test]
fn exec_is_a_process_launch_by_the_parent_with_the_container() {
    let record = map(&event(
        pod(),
        Body::Exec(proto::ExecEvent {
            path: "/usr/bin/cat".into(),
            argv: vec!["cat".into(), "/etc/hostname".into()],
            argv_truncated: false,
            ..Default::default()
        }),
    ));
    assert_nothing_empty(&record, "");
    assert_eq!(record["class_uid"], 1007);
    assert_eq!(record["category_uid"], 1);
    assert_eq!(record["activity_id"], 1);
    assert_eq!(record["type_uid"], 100_701);
    assert_eq!(record["type_name"], "Process Activity: Launch");
    assert_eq!(record["severity_id"], 1);
    assert_eq!(record["time"], 1_795_622_400_123_u64);
    assert_eq!(
        record["metadata"]["original_time"],
        "2026-11-25T16:00:00.123456789Z"
    );
    assert_eq!(record["metadata"]["version"], VERSION);
    assert_eq!(record["metadata"]["product"]["name"], "Custos");
    assert_eq!(record["metadata"]["event_code"], "exec");
    assert_eq!(record["device"]["hostname"], "node-1");
    assert!(record.get("count").is_none());

    let process = &record["process"];
    assert_eq!(process["pid"], 123);
    assert_eq!(process["tid"], 124);
    assert_eq!(process["file"]["path"], "/usr/bin/cat");
    assert_eq!(process["file"]["name"], "cat");
    assert_eq!(process["cmd_line"], "cat /etc/hostname");
    assert_eq!(process["user"]["uid"], "1000");
    assert_eq!(process["parent_process"]["pid"], 100);
    assert_eq!(process["parent_process"]["file"]["path"], "/bin/sh");
    assert_eq!(
        process["lineage"],
        serde_json::json!(["/bin/sh", "/sbin/init"])
    );
    let container = &process["container"];
    assert_eq!(container["uid"], ID);
    assert_eq!(container["name"], "web");
    assert_eq!(container["image"]["name"], "nginx:1.27");
    assert_eq!(container["orchestrator"], "Kubernetes");
    assert_eq!(
        container["tags"],
        serde_json::json!([
            {"name": "io.kubernetes.pod.namespace", "value": "qa"},
            {"name": "io.kubernetes.pod.name", "value": "web-1"},
            {"name": "io.kubernetes.container.name", "value": "web"},
        ])
    );
    // The parent launched it.
    assert_eq!(record["actor"]["process"]["pid"], 100);
    assert_eq!(
        record["actor"]["process"]["cmd_line"],
        "sh -c cat /etc/hostname"
    );
}

#[test]
fn host_events_have_no_container_and_fork_and_exit_are_launch_and_terminate() {
    let host = proto::Workload {
        host: true,
        ..Default::default()
    };
    let fork = map(&event(
        host.clone(),
        Body::Fork(proto::ForkEvent { child_pid: 777 }),
    ));
    assert_nothing_empty(&fork, "");
    assert_eq!(fork["activity_id"], 1);
    assert_eq!(fork["process"]["pid"], 777);
    assert_eq!(fork["process"]["parent_process"]["pid"], 123);
    assert_eq!(fork["actor"]["process"]["pid"], 123);
    assert!(fork["process"].get("container").is_none(), "{fork}");
    assert!(
        fork["actor"]["process"].get("container").is_none(),
        "{fork}"
    );

    let exit = map(&event(
        host,
        Body::Exit(proto::ExitEvent {
            exit_code: 0,
            signal: 9,
        }),
    ));
    assert_eq!(exit["activity_id"], 2);
    assert_eq!(exit["type_uid"], 100_702);
    assert_eq!(exit["exit_code"], 0);
    assert_eq!(exit["message"], "killed by SIGKILL");
}

#[test]
fn open_is_file_system_activity_with_its_result() {
    let open = |result| {
        let mut event = event(
            pod(),
            Body::Open(proto::FileOpenEvent {
                path: "/etc/shadow".into(),
                requested_path: "../etc/shadow".into(),
                access: proto::FileAccess::Read as i32,
                create: false,
                truncate: false,
                flags: 0o100000,
                result,
                syscall: "openat".into(),
                ..Default::default()
            }),
        );
        event.repeats_suppressed = 4;
        map(&event)
    };
    let ok = open(3);
    assert_nothing_empty(&ok, "");
    assert_eq!(ok["class_uid"], 1001);
    assert_eq!(ok["activity_id"], 14);
    assert_eq!(ok["type_uid"], 100_114);
    assert_eq!(ok["file"]["path"], "/etc/shadow");
    assert_eq!(ok["file"]["name"], "shadow");
    assert_eq!(ok["status_id"], 1);
    assert_eq!(ok["access_mask"], 0o100000);
    assert_eq!(ok["unmapped"]["custos"]["access"], "read");
    assert_eq!(ok["unmapped"]["custos"]["requested_path"], "../etc/shadow");
    assert_eq!(ok["actor"]["process"]["pid"], 123);
    // The event stands for itself and the repeats suppressed before it.
    assert_eq!(ok["count"], 5);

    let failed = open(-2);
    assert_eq!(failed["status_id"], 2);
    assert_eq!(failed["status"], "Failure");
    assert_eq!(failed["status_code"], "2");
    assert!(
        failed["status_detail"]
            .as_str()
            .unwrap()
            .contains("No such file"),
        "{failed}"
    );
}

#[test]
fn an_action_the_kernel_killed_the_process_for_failed() {
    let mut killed = event(
        pod(),
        Body::Exec(proto::ExecEvent {
            path: "/bin/nc".into(),
            verdict: "killed".into(),
            ..Default::default()
        }),
    );
    let record = map(&killed);
    assert_eq!(record["status_id"], 2);
    assert_eq!(record["unmapped"]["custos"]["verdict"], "killed");
    if let Some(Body::Exec(exec)) = &mut killed.body {
        exec.verdict.clear();
    }
    assert_eq!(map(&killed)["status_id"], 1);

    let open = map(&event(
        pod(),
        Body::Open(proto::FileOpenEvent {
            path: "/etc/shadow".into(),
            result: 3,
            verdict: "killed".into(),
            ..Default::default()
        }),
    ));
    assert_eq!(open["status_id"], 2);
    let alerted = map(&event(
        pod(),
        Body::Open(proto::FileOpenEvent {
            path: "/etc/shadow".into(),
            result: 3,
            verdict: "alerted".into(),
            ..Default::default()
        }),
    ));
    assert_eq!(alerted["status_id"], 1);
    assert_eq!(alerted["unmapped"]["custos"]["verdict"], "alerted");
}

#[test]
fn network_operations_map_to_activities_and_endpoints() {
    use proto::NetworkOperation::{Accept, Connect, Listen};
    let connect = map(&event(pod(), network(Connect, 0)));
    assert_nothing_empty(&connect, "");
    assert_eq!(connect["class_uid"], 4001);
    assert_eq!(connect["category_uid"], 4);
    assert_eq!(connect["activity_id"], 1);
    assert_eq!(connect["dst_endpoint"]["ip"], "10.0.0.1");
    assert_eq!(connect["dst_endpoint"]["port"], 443);
    assert_eq!(connect["src_endpoint"]["ip"], "10.1.0.5");
    assert_eq!(connect["connection_info"]["direction_id"], 2);
    assert_eq!(connect["connection_info"]["protocol_num"], 6);
    assert_eq!(connect["connection_info"]["protocol_ver_id"], 4);
    assert_eq!(connect["message"], "open tcp 10.0.0.1:443");

    let refused = map(&event(pod(), network(Connect, -111)));
    assert_eq!(refused["activity_id"], 5);
    assert_eq!(refused["type_uid"], 400_105);
    assert_eq!(refused["status_id"], 2);
    let unreachable = map(&event(pod(), network(Connect, -101)));
    assert_eq!(unreachable["activity_id"], 4);
    let in_progress = map(&event(pod(), network(Connect, -115)));
    assert_eq!(in_progress["activity_id"], 1);
    assert_eq!(in_progress["status_id"], 1);

    let listen = map(&event(pod(), network(Listen, 0)));
    assert_eq!(listen["activity_id"], 7);
    assert_eq!(listen["dst_endpoint"]["ip"], "10.0.0.1");
    assert!(listen.get("src_endpoint").is_none());

    let accept = map(&event(pod(), network(Accept, 5)));
    assert_eq!(accept["activity_id"], 1);
    assert_eq!(accept["connection_info"]["direction_id"], 1);
    assert_eq!(accept["src_endpoint"]["ip"], "10.0.0.1");
    assert_eq!(accept["dst_endpoint"]["ip"], "10.1.0.5");

    let unix = map(&event(
        pod(),
        Body::Network(proto::NetworkEvent {
            operation: Connect as i32,
            protocol: "unix-stream".into(),
            family: "unix".into(),
            address: "/run/app.sock".into(),
            result: 0,
            ..Default::default()
        }),
    ));
    assert_nothing_empty(&unix, "");
    assert_eq!(
        unix["dst_endpoint"],
        serde_json::json!({"name": "/run/app.sock"})
    );
    assert!(unix["connection_info"].get("protocol_num").is_none());

    let v6 = map(&event(
        pod(),
        Body::Network(proto::NetworkEvent {
            operation: Connect as i32,
            protocol: "udp".into(),
            family: "ipv6".into(),
            address: "::1".into(),
            port: 53,
            ..Default::default()
        }),
    ));
    assert_eq!(v6["connection_info"]["protocol_num"], 17);
    assert_eq!(v6["connection_info"]["protocol_ver_id"], 6);
    assert_eq!(v6["message"], "open udp [::1]:53");

    // An endpoint is there even when the address is unknown.
    let unknown = map(&event(
        pod(),
        Body::Network(proto::NetworkEvent {
            operation: Connect as i32,
            family: "ipv4".into(),
            ..Default::default()
        }),
    ));
    assert_eq!(unknown["dst_endpoint"]["name"], "unknown");
}

#[test]
fn deviations_are_detection_findings_created_then_updated() {
    let first = map(&event(pod(), deviation("alerted", 1)));
    assert_nothing_empty(&first, "");
    assert_eq!(first["class_uid"], 2004);
    assert_eq!(first["category_uid"], 2);
    assert_eq!(first["activity_id"], 1);
    assert_eq!(first["type_uid"], 200_401);
    assert_eq!(first["severity_id"], 4);
    assert_eq!(first["severity"], "High");
    assert_eq!(first["is_alert"], true);
    assert_eq!(first["action_id"], 1);
    assert_eq!(first["disposition_id"], 19);
    assert_eq!(first["finding_info"]["analytic"]["uid"], "web-web");
    assert_eq!(first["finding_info"]["analytic"]["type_id"], 2);
    let title = first["finding_info"]["title"].as_str().unwrap();
    assert!(title.contains("/bin/nc (parent /bin/sh)"), "{title}");
    assert_eq!(first["evidences"][0]["process"]["pid"], 123);
    assert_eq!(
        first["evidences"][0]["data"]["nearest_allowed"],
        "/bin/cat (parent /bin/sh)"
    );
    assert_eq!(first["resources"][0]["namespace"], "qa");
    assert_eq!(first["resources"][1]["uid"], ID);
    assert_eq!(
        first["metadata"]["profiles"],
        serde_json::json!(["container", "host", "security_control"])
    );
    assert!(first.get("count").is_none());

    let again = map(&event(pod(), deviation("alerted", 3)));
    assert_eq!(again["activity_id"], 2);
    assert_eq!(again["count"], 3);
    assert_eq!(again["finding_info"]["uid"], first["finding_info"]["uid"]);
    let mut other = event(pod(), deviation("alerted", 1));
    other.workload.as_mut().unwrap().container_id = ID.replace('0', "f");
    assert_ne!(
        map(&other)["finding_info"]["uid"],
        first["finding_info"]["uid"]
    );

    let blocked = map(&event(pod(), deviation("blocked", 1)));
    assert_eq!(blocked["action_id"], 2);
    assert_eq!(blocked["disposition_id"], 2);
    assert_eq!(blocked["disposition"], "Blocked");
    let killed = map(&event(pod(), deviation("killed", 1)));
    assert_eq!(killed["disposition_id"], 99);
    assert_eq!(killed["disposition"], "Killed");
}

#[test]
fn syscall_and_drop_events_have_no_class() {
    for body in [
        Body::Syscall(proto::SyscallEvent {
            number: 0,
            name: "read".into(),
            verdict: String::new(),
        }),
        Body::Drop(proto::DropEvent::default()),
    ] {
        assert!(to_ocsf(&event(pod(), body)).is_none());
    }
    assert!(to_ocsf(&proto::Event::default()).is_none());
}
