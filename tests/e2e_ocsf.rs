//! The OCSF JSON-lines output against the published OCSF schema.
//!
//! The class schemas (Process Activity 1007, File System Activity 1001, Network Activity 4001,
//! Detection Finding 2004 of OCSF `ocsf::VERSION`, with the profiles each record declares) are
//! generated from the schema.ocsf.io export packaged by the PyPI package `ocsf-json-schema`
//! (`tests/ocsf/class_schemas.py`; `cargo xtask setup` installs it): types, required
//! attributes, enumerations, no unknown attributes, at-least-one constraints. Each emitted line
//! is validated with the `jsonschema` crate.
//!
//! - every shape of event the mapping handles (built here) validates;
//! - a real agent writing to a file, with a real container that runs commands, opens files and
//!   connects, learned and then monitored so that it deviates: every line of every file
//!   validates, the container's exec, open, connect and deviation are there, and the small
//!   `maxBytes` rotated the file into several, each of whole lines. Needs root.
mod scenario;
mod support;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use custos::{
    api::proto::{self, event::Body},
    outputs::ocsf::{self, Class},
};
use serde_json::{Value, json};
use support::*;

/// Size past which the output rotates: small, so that one test run rotates several times.
const MAX_BYTES: usize = 16384;

/// Validators of the classes Custos emits, by `class_uid`.
struct Schemas(BTreeMap<u64, jsonschema::Validator>);

impl Schemas {
    /// Generates the schemas; `None` (after a loud skip, or a failure under
    /// `CUSTOS_REQUIRE_PRIVILEGED`) when the Python package is missing.
    fn load(test: &str) -> Option<Self> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/ocsf/class_schemas.py");
        let mut validators = BTreeMap::new();
        for class in Class::ALL {
            let output = Command::new("python3")
                .arg(&script)
                .arg(ocsf::VERSION)
                .arg(class.profiles().join(","))
                .arg(class.uid().to_string())
                .output();
            let missing = match &output {
                Err(error) => Some(format!("python3 does not run ({error})")),
                Ok(out) => String::from_utf8_lossy(&out.stderr)
                    .contains("ocsf-json-schema is missing")
                    .then(|| String::from_utf8_lossy(&out.stderr).trim().to_owned()),
            };
            if let Some(missing) = missing {
                let why = format!("{test}: {missing}");
                assert!(
                    std::env::var_os("CUSTOS_REQUIRE_PRIVILEGED").is_none(),
                    "{why}, and CUSTOS_REQUIRE_PRIVILEGED is set"
                );
                eprintln!("\n!!! skipping: {why} !!!\n");
                return None;
            }
            let output = output.expect("python3 ran");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                output.status.success(),
                "generating the OCSF {} {} schema: {stderr}",
                ocsf::VERSION,
                class.name()
            );
            let mut schemas: Value = serde_json::from_slice(&output.stdout).expect("JSON schemas");
            let schema = schemas[class.uid().to_string()].take();
            assert_eq!(schema["title"], class.name(), "the schema of another class");
            let validator = jsonschema::draft202012::new(&schema)
                .unwrap_or_else(|e| panic!("the {} schema compiles: {e}", class.name()));
            validators.insert(u64::from(class.uid()), validator);
        }
        Some(Self(validators))
    }

    /// The violations of `record`, one per line; the record must declare the profiles its
    /// class's schema was generated for.
    fn errors(&self, record: &Value, origin: &str) -> Vec<String> {
        let uid = record["class_uid"].as_u64().unwrap_or_default();
        let validator = self
            .0
            .get(&uid)
            .unwrap_or_else(|| panic!("{origin}: class_uid {uid} is not one Custos emits"));
        let class = class_of(uid);
        assert_eq!(
            record["metadata"]["profiles"],
            json!(class.profiles()),
            "{origin}"
        );
        validator
            .iter_errors(record)
            .map(|e| format!("  {}: {e}", e.instance_path))
            .collect()
    }

    /// Panics with every violation of `record`, named by `origin`.
    fn check(&self, record: &Value, origin: &str) {
        let errors = self.errors(record, origin);
        assert!(
            errors.is_empty(),
            "{origin}: not a valid OCSF {} {} record:\n{}\n{record:#}",
            ocsf::VERSION,
            class_of(record["class_uid"].as_u64().unwrap_or_default()).name(),
            errors.join("\n")
        );
    }
}

fn class_of(uid: u64) -> Class {
    Class::ALL
        .into_iter()
        .find(|c| u64::from(c.uid()) == uid)
        .unwrap_or_else(|| panic!("class_uid {uid} is not one Custos emits"))
}

/// One event of each shape the mapping distinguishes.
fn every_shape() -> Vec<(&'static str, proto::Event)> {
    use proto::NetworkOperation::{Accept, Connect, Listen};
    let pod = proto::Workload {
        container_id: "ab".repeat(32),
        runtime: "containerd".into(),
        namespace: "prod".into(),
        pod: "api-7d9f-x2".into(),
        container: "api".into(),
        image: "registry.example/api:1.2".into(),
        cgroup_id: 9,
        ..Default::default()
    };
    let bare_container = proto::Workload {
        container_id: "cd".repeat(32),
        ..Default::default()
    };
    let host = proto::Workload {
        host: true,
        ..Default::default()
    };
    let process = proto::Process {
        pid: 4000,
        tid: 4001,
        ppid: 3999,
        uid: 65534,
        gid: 65534,
        comm: "api".into(),
        exe: "/app/api".into(),
        argv: vec!["/app/api".into(), "--port=8080".into()],
        ancestors: vec![proto::Ancestor {
            pid: 3999,
            exe: "/bin/sh".into(),
            argv: vec!["sh".into()],
        }],
    };
    let net = |operation: proto::NetworkOperation, family: &str, address: &str, result| {
        Body::Network(proto::NetworkEvent {
            operation: operation as i32,
            protocol: if family == "unix" {
                "unix-stream"
            } else {
                "tcp"
            }
            .into(),
            family: family.into(),
            address: address.into(),
            port: if family == "unix" { 0 } else { 8443 },
            local_address: if family == "ipv6" {
                "fd00::5"
            } else {
                "10.244.1.5"
            }
            .into(),
            local_port: 41000,
            result,
        })
    };
    let open = |path: &str, access: proto::FileAccess, result| {
        Body::Open(proto::FileOpenEvent {
            path: path.into(),
            requested_path: path.trim_start_matches('/').into(),
            access: access as i32,
            create: access != proto::FileAccess::Read,
            truncate: false,
            flags: 0o1101,
            result,
            syscall: "openat".into(),
            ..Default::default()
        })
    };
    let deviation = |kind: &str, verdict: &str, severity: &str, count| {
        Body::Deviation(proto::DeviationEvent {
            kind: kind.into(),
            observed: format!("{kind} thing"),
            profile: "api-api".into(),
            nearest_allowed: if count > 1 { "" } else { "other thing" }.into(),
            verdict: verdict.into(),
            severity: severity.into(),
            count,
            mode: "enforce".into(),
        })
    };
    let shapes = [
        (
            "exec in a pod",
            pod.clone(),
            Body::Exec(proto::ExecEvent {
                path: "/bin/cat".into(),
                argv: vec!["cat".into(), "/etc/passwd".into()],
                argv_truncated: true,
                ..Default::default()
            }),
        ),
        (
            "exec on the host",
            host.clone(),
            Body::Exec(proto::ExecEvent::default()),
        ),
        (
            "exec killed in the kernel",
            pod.clone(),
            Body::Exec(proto::ExecEvent {
                path: "/usr/bin/apt".into(),
                verdict: "killed".into(),
                ..Default::default()
            }),
        ),
        (
            "open judged in the kernel",
            pod.clone(),
            Body::Open(proto::FileOpenEvent {
                path: "/etc/gshadow".into(),
                result: 3,
                verdict: "alerted".into(),
                ..Default::default()
            }),
        ),
        (
            "fork",
            pod.clone(),
            Body::Fork(proto::ForkEvent { child_pid: 4100 }),
        ),
        (
            "exit",
            bare_container.clone(),
            Body::Exit(proto::ExitEvent {
                exit_code: 3,
                signal: 0,
            }),
        ),
        (
            "killed",
            host.clone(),
            Body::Exit(proto::ExitEvent {
                exit_code: 0,
                signal: 9,
            }),
        ),
        (
            "open for read",
            pod.clone(),
            open("/etc/shadow", proto::FileAccess::Read, 5),
        ),
        (
            "failed open",
            pod.clone(),
            open("/var/x", proto::FileAccess::Write, -13),
        ),
        (
            "open rw",
            host.clone(),
            open("/tmp/y", proto::FileAccess::ReadWrite, 4),
        ),
        (
            "open unspecified",
            pod.clone(),
            open("/z", proto::FileAccess::Unspecified, 3),
        ),
        (
            "connect",
            pod.clone(),
            net(Connect, "ipv4", "10.96.0.10", 0),
        ),
        (
            "refused",
            pod.clone(),
            net(Connect, "ipv4", "127.0.0.1", -111),
        ),
        (
            "in progress",
            pod.clone(),
            net(Connect, "ipv6", "2001:db8::1", -115),
        ),
        (
            "unreachable",
            bare_container.clone(),
            net(Connect, "ipv6", "::1", -101),
        ),
        (
            "unix connect",
            pod.clone(),
            net(Connect, "unix", "/run/app.sock", 0),
        ),
        (
            "abstract unix",
            pod.clone(),
            net(Connect, "unix", "@bus", 0),
        ),
        ("unknown peer", pod.clone(), net(Connect, "ipv4", "", 0)),
        ("listen", pod.clone(), net(Listen, "ipv4", "0.0.0.0", 0)),
        ("accept", pod.clone(), net(Accept, "ipv4", "10.244.2.7", 7)),
        (
            "unspecified op",
            host.clone(),
            net(proto::NetworkOperation::Unspecified, "ipv4", "1.1.1.1", 0),
        ),
        (
            "alerted exec",
            pod.clone(),
            deviation("exec", "alerted", "medium", 1),
        ),
        (
            "alerted again",
            pod.clone(),
            deviation("file", "alerted", "high", 4),
        ),
        (
            "blocked connect",
            pod.clone(),
            deviation("connect", "blocked", "critical", 1),
        ),
        (
            "killed syscall",
            bare_container,
            deviation("syscall", "killed", "low", 1),
        ),
        ("odd verdict", pod, deviation("listen", "", "", 1)),
    ];
    shapes
        .into_iter()
        .map(|(name, workload, body)| {
            (
                name,
                proto::Event {
                    time_unix_nano: 1_795_622_400_123_456_789,
                    node: "node-a".into(),
                    workload: Some(workload),
                    process: Some(process.clone()),
                    repeats_suppressed: 2,
                    body: Some(body),
                },
            )
        })
        .collect()
}

#[test]
fn every_event_shape_maps_to_a_valid_ocsf_record() {
    let Some(schemas) = Schemas::load("every_event_shape_maps_to_a_valid_ocsf_record") else {
        return;
    };
    for (name, event) in every_shape() {
        let record = ocsf::to_ocsf(&event).unwrap_or_else(|| panic!("{name}: no record"));
        schemas.check(&record, name);
    }
    // An event with nothing but its kind still validates.
    for body in [
        Body::Exec(Default::default()),
        Body::Open(Default::default()),
        Body::Network(Default::default()),
        Body::Deviation(Default::default()),
    ] {
        let event = proto::Event {
            body: Some(body),
            ..Default::default()
        };
        schemas.check(&ocsf::to_ocsf(&event).expect("a record"), "empty event");
    }
    // And the schema is strict: a wrong enumeration value, type or attribute is caught.
    let (_, exec) = &every_shape()[0];
    let valid = ocsf::to_ocsf(exec).unwrap();
    for (what, path, bad) in [
        ("enumeration", "/activity_id", json!(42)),
        ("type", "/process/pid", json!("4000")),
        ("attribute", "/process/no_such_attribute", json!(1)),
    ] {
        let mut broken = valid.clone();
        let (parent, key) = path.rsplit_once('/').unwrap();
        broken.pointer_mut(parent).unwrap()[key] = bad;
        assert!(
            !schemas.errors(&broken, what).is_empty(),
            "a bad {what} at {path} validated"
        );
    }
}

/// The output's files, oldest first: `custos.jsonl.N` … `custos.jsonl.1`, `custos.jsonl`.
fn output_files(live: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(u32, PathBuf)> = std::fs::read_dir(live.parent().unwrap())
        .unwrap()
        .filter_map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name()?.to_str()?.to_owned();
            let n = name.strip_prefix("custos.jsonl.")?.parse().ok()?;
            Some((n, path))
        })
        .collect();
    rotated.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, path)| path).collect();
    if live.exists() {
        files.push(live.to_path_buf());
    }
    files
}

/// Every complete line of every file, parsed, with where it was.
fn records(live: &Path) -> Vec<(String, Value)> {
    let mut records = Vec::new();
    for file in output_files(live) {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for (n, line) in text.split_inclusive('\n').enumerate() {
            let origin = format!("{}:{}", file.display(), n + 1);
            if !line.ends_with('\n') {
                // Being written; the next read has it whole.
                continue;
            }
            let record = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{origin}: not a JSON line ({e}): {line}"));
            records.push((origin, record));
        }
    }
    records
}

fn in_container<'a>(records: &'a [(String, Value)], id: &str) -> Vec<&'a Value> {
    records
        .iter()
        .map(|(_, record)| record)
        .filter(|r| {
            let container = |path: &str| r.pointer(path).and_then(Value::as_str) == Some(id);
            container("/process/container/uid")
                || container("/actor/process/container/uid")
                || container("/evidences/0/container/uid")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_agent_writes_valid_ocsf_for_exec_file_network_and_deviation() {
    let test = "a_real_agent_writes_valid_ocsf_for_exec_file_network_and_deviation";
    if !privileged(test) {
        return;
    }
    let Some(schemas) = Schemas::load(test) else {
        return;
    };
    ensure_containerd();
    let dir = TempDir::new("ocsf");
    let live = dir.path().join("siem/custos.jsonl");
    let output = format!(
        "jsonl: {{path: {}, maxBytes: {MAX_BYTES}, keep: 1000}}",
        live.display()
    );
    let sections = [("outputs", output.as_str())];
    let config = scenario::config(dir.path(), "learn", &sections);
    let agent = Agent::start_with(["--config".into(), config.into_os_string()]).await;
    let rootfs = scenario::rootfs();
    scenario::learn(&agent, &rootfs).await;
    let odd = scenario::deviate(dir.path(), "monitor", &sections, &rootfs).await;

    // The container's exec, open, connect and deviations arrive.
    type Wanted = (&'static str, fn(&Value) -> bool);
    let wanted: [Wanted; 5] = [
        ("an exec of /bin/ls", |r| {
            r["class_uid"] == 1007 && r["process"]["file"]["path"] == "/bin/ls"
        }),
        ("an open of /etc/shadow", |r| {
            r["class_uid"] == 1001 && r["file"]["path"] == "/etc/shadow"
        }),
        ("a connect to 127.0.0.1:9", |r| {
            r["class_uid"] == 4001
                && r["dst_endpoint"]["ip"] == "127.0.0.1"
                && r["dst_endpoint"]["port"] == 9
        }),
        ("a finding for /etc/shadow", |r| {
            r["class_uid"] == 2004 && r["evidences"][0]["data"]["observed"] == "/etc/shadow read"
        }),
        ("a finding for the connect", |r| {
            r["class_uid"] == 2004 && r["evidences"][0]["data"]["kind"] == "connect"
        }),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let missing = loop {
        let records = records(&live);
        let odd_records = in_container(&records, &odd);
        let missing: Vec<&str> = wanted
            .iter()
            .filter(|(_, wanted)| !odd_records.iter().any(|r| wanted(r)))
            .map(|(what, _)| *what)
            .collect();
        if missing.is_empty() || tokio::time::Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        missing.is_empty(),
        "missing from the output: {missing:?}\n{}",
        agent.log()
    );

    // Everything written so far, whole lines only once the agent is gone.
    drop(agent);
    let files = output_files(&live);
    assert!(
        files.len() >= 3,
        "{MAX_BYTES}-byte files should have rotated: {files:?}"
    );
    for file in &files {
        let text = std::fs::read(file).unwrap();
        assert!(
            text.ends_with(b"\n"),
            "{} ends inside a line",
            file.display()
        );
        // One line may stand alone over the limit; no file holds more than that.
        let lines = text.split_inclusive(|b| *b == b'\n').count();
        assert!(
            text.len() <= MAX_BYTES || lines == 1,
            "{} has {} bytes in {lines} lines",
            file.display(),
            text.len()
        );
    }
    let records = records(&live);
    let mut by_class = BTreeMap::new();
    for (origin, record) in &records {
        schemas.check(record, origin);
        *by_class
            .entry(record["class_uid"].as_u64().unwrap())
            .or_insert(0) += 1;
    }
    for class in Class::ALL {
        assert!(
            by_class.contains_key(&u64::from(class.uid())),
            "no {} record among {} lines: {by_class:?}",
            class.name(),
            records.len()
        );
    }
    eprintln!(
        "validated {} OCSF records in {} files: {by_class:?}",
        records.len(),
        files.len()
    );
}
