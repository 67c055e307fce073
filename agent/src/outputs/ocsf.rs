//! Custos events in OCSF (Open Cybersecurity Schema Framework, <https://schema.ocsf.io>)
//! version [`VERSION`], the form SIEMs ingest without a custom parser.
//!
//! | Custos event            | OCSF class (uid)               | activity                       |
//! |-------------------------|--------------------------------|--------------------------------|
//! | exec, fork              | Process Activity (1007)        | Launch                         |
//! | exit                    | Process Activity (1007)        | Terminate                      |
//! | open                    | File System Activity (1001)    | Open                           |
//! | connect, accept         | Network Activity (4001)        | Open, or Refuse / Fail on error|
//! | listen                  | Network Activity (4001)        | Listen                         |
//! | deviation               | Detection Finding (2004)       | Create (first), Update (repeat)|
//!
//! Syscall first-use and ring-buffer drop events have no OCSF class: they are not mapped (the
//! drops are counted in `/metrics`, syscall sets are served by `GetSyscalls`).
//!
//! Profiles used: `host` (device, actor), `container` (`process.container`) and, on findings,
//! `security_control` (`action_id`, `disposition_id`: what the verdict did). The container's
//! Kubernetes identity is in `process.container.tags` under the kubelet's label names. Fields
//! OCSF has no place for are under `unmapped.custos`. Empty strings, lists and objects are left
//! out rather than sent empty.
use std::borrow::Cow;

use serde_json::{Map, Value, json};

use crate::api::proto;
use crate::output::rfc3339_nanos;

/// The OCSF schema version of every record (`metadata.version`).
pub const VERSION: &str = "1.5.0";

/// The OCSF classes Custos events map to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    ProcessActivity,
    FileSystemActivity,
    NetworkActivity,
    DetectionFinding,
}

impl Class {
    pub const ALL: [Class; 4] = [
        Class::ProcessActivity,
        Class::FileSystemActivity,
        Class::NetworkActivity,
        Class::DetectionFinding,
    ];

    /// `class_uid`.
    pub fn uid(self) -> u32 {
        match self {
            Class::ProcessActivity => 1007,
            Class::FileSystemActivity => 1001,
            Class::NetworkActivity => 4001,
            Class::DetectionFinding => 2004,
        }
    }

    /// `class_name`, as the schema captions it.
    pub fn name(self) -> &'static str {
        match self {
            Class::ProcessActivity => "Process Activity",
            Class::FileSystemActivity => "File System Activity",
            Class::NetworkActivity => "Network Activity",
            Class::DetectionFinding => "Detection Finding",
        }
    }

    /// (`category_uid`, `category_name`).
    fn category(self) -> (u32, &'static str) {
        match self {
            Class::ProcessActivity | Class::FileSystemActivity => (1, "System Activity"),
            Class::NetworkActivity => (4, "Network Activity"),
            Class::DetectionFinding => (2, "Findings"),
        }
    }

    /// The OCSF profiles whose attributes records of this class use (`metadata.profiles`).
    pub fn profiles(self) -> &'static [&'static str] {
        match self {
            Class::DetectionFinding => &["container", "host", "security_control"],
            _ => &["container", "host"],
        }
    }
}

/// The OCSF class `event` maps to; `None` for kinds OCSF has no class for.
pub fn class_of(event: &proto::Event) -> Option<Class> {
    use proto::event::Body;
    match event.body.as_ref()? {
        Body::Exec(_) | Body::Fork(_) | Body::Exit(_) => Some(Class::ProcessActivity),
        Body::Open(_) => Some(Class::FileSystemActivity),
        Body::Network(_) => Some(Class::NetworkActivity),
        Body::Deviation(_) => Some(Class::DetectionFinding),
        Body::Syscall(_) | Body::Drop(_) => None,
    }
}

/// `event` as one OCSF record; `None` for kinds OCSF has no class for (see the module
/// documentation).
pub fn to_ocsf(event: &proto::Event) -> Option<Value> {
    use proto::event::Body;
    let class = class_of(event)?;
    let subject = Subject::of(event);
    let Record {
        activity,
        severity,
        repeats,
        fields,
    } = match event.body.as_ref()? {
        Body::Exec(exec) => exec_record(&subject, exec),
        Body::Fork(fork) => fork_record(&subject, fork),
        Body::Exit(exit) => exit_record(&subject, exit),
        Body::Open(open) => open_record(&subject, open),
        Body::Network(network) => network_record(&subject, network),
        Body::Deviation(deviation) => finding_record(&subject, deviation),
        Body::Syscall(_) | Body::Drop(_) => return None,
    };
    let mut value = base(event, class, activity, severity);
    if let Value::Object(map) = &mut value {
        map.extend(fields);
        if repeats > 1 {
            map.insert("count".into(), repeats.into());
        }
    }
    prune(&mut value);
    Some(value)
}

/// What a mapping gives besides the common attributes.
struct Record {
    /// (`activity_id`, `activity_name`).
    activity: (u32, &'static str),
    severity: Severity,
    /// Occurrences the record stands for (`count` when more than one).
    repeats: u64,
    fields: Map<String, Value>,
}

impl Record {
    /// An activity of severity Informational that stands for the event and its suppressed
    /// repeats.
    fn activity(subject: &Subject, activity: (u32, &'static str), fields: Value) -> Self {
        Self {
            activity,
            severity: Severity::Informational,
            repeats: subject.event.repeats_suppressed.saturating_add(1),
            fields: into_map(fields),
        }
    }
}

/// The acting process and its workload, shared by every mapping.
struct Subject<'a> {
    event: &'a proto::Event,
    process: Cow<'a, proto::Process>,
    workload: Option<&'a proto::Workload>,
}

impl<'a> Subject<'a> {
    fn of(event: &'a proto::Event) -> Self {
        Self {
            event,
            process: event
                .process
                .as_ref()
                .map_or_else(|| Cow::Owned(proto::Process::default()), Cow::Borrowed),
            workload: event.workload.as_ref().filter(|w| !w.host),
        }
    }

    /// The OCSF `process` object of the acting process.
    fn process(&self) -> Value {
        process_object(&self.process, self.workload)
    }

    /// An `actor` that is the acting process.
    fn actor(&self) -> Value {
        json!({ "process": self.process(), "user": user(self.process.uid) })
    }

    /// An `actor` that is the acting process's parent (who launched it).
    fn parent_actor(&self) -> Value {
        json!({
            "process": parent_process(&self.process),
            "user": user(self.process.uid),
        })
    }
}

/// Attributes every record has: classification, time, metadata, device.
fn base(
    event: &proto::Event,
    class: Class,
    (activity_id, activity_name): (u32, &str),
    severity: Severity,
) -> Value {
    let (category_uid, category_name) = class.category();
    // A device must be named.
    let node = match event.node.as_str() {
        "" => "unknown",
        node => node,
    };
    json!({
        "class_uid": class.uid(),
        "class_name": class.name(),
        "category_uid": category_uid,
        "category_name": category_name,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": u64::from(class.uid()) * 100 + u64::from(activity_id),
        "type_name": format!("{}: {activity_name}", class.name()),
        "severity_id": severity.id(),
        "severity": severity.caption(),
        "time": event.time_unix_nano / 1_000_000,
        "timezone_offset": 0,
        "metadata": {
            "version": VERSION,
            "product": {
                "name": "Custos",
                "vendor_name": "Custos",
                "version": env!("CARGO_PKG_VERSION"),
            },
            "profiles": class.profiles(),
            "event_code": crate::api::event_kind_name(event),
            "log_name": "events",
            // The kernel's time with nanoseconds; `time` has milliseconds.
            "original_time": rfc3339_nanos(event.time_unix_nano),
        },
        "device": {
            "hostname": node,
            "name": node,
            "type_id": 0,
            "type": "Unknown",
        },
    })
}

fn exec_record(subject: &Subject, exec: &proto::ExecEvent) -> Record {
    let mut process = subject.process();
    // The image just executed, as given to execve (the event's process may still carry it).
    if let Value::Object(map) = &mut process {
        if !exec.path.is_empty() {
            map.insert("file".into(), executable(&exec.path));
        }
        if !exec.argv.is_empty() {
            map.insert("cmd_line".into(), cmd_line(&exec.argv).into());
        }
    }
    let mut fields = json!({
        "process": process,
        "actor": subject.parent_actor(),
        "message": format!("exec {}", exec.path),
        "status_id": 1,
        "status": "Success",
        "unmapped": { "custos": {
            "argv_truncated": exec.argv_truncated,
            "path_truncated": exec.path_truncated,
            "verdict": exec.verdict,
        }},
    });
    add_kernel_verdict(&mut fields, &exec.verdict);
    Record::activity(subject, (1, "Launch"), fields)
}

fn fork_record(subject: &Subject, fork: &proto::ForkEvent) -> Record {
    // The child runs its parent's image until it execs.
    let parent = &subject.process;
    let child = json!({
        "pid": fork.child_pid,
        "name": parent.comm,
        "cmd_line": cmd_line(&parent.argv),
        "file": executable(&parent.exe),
        "user": user(parent.uid),
        "parent_process": subject.process(),
        "container": container(subject.workload),
    });
    Record::activity(
        subject,
        (1, "Launch"),
        json!({
            "process": child,
            "actor": subject.actor(),
            "message": format!("fork {} -> {}", parent.pid, fork.child_pid),
            "status_id": 1,
            "status": "Success",
        }),
    )
}

fn exit_record(subject: &Subject, exit: &proto::ExitEvent) -> Record {
    let message = match (exit.signal, crate::output::signal_name(exit.signal)) {
        (0, _) => format!("exit code {}", exit.exit_code),
        (_, Some(name)) => format!("killed by {name}"),
        (signal, None) => format!("killed by signal {signal}"),
    };
    Record::activity(
        subject,
        (2, "Terminate"),
        json!({
            "process": subject.process(),
            "actor": subject.actor(),
            "exit_code": exit.exit_code,
            "message": message,
            "unmapped": { "custos": { "signal": exit.signal } },
        }),
    )
}

fn open_record(subject: &Subject, open: &proto::FileOpenEvent) -> Record {
    let access = match open.access() {
        proto::FileAccess::Read => "read",
        proto::FileAccess::Write => "write",
        proto::FileAccess::ReadWrite => "read_write",
        proto::FileAccess::Unspecified => "unspecified",
    };
    // The canonical path, or what was asked for when it could not be resolved.
    let path = match open.path.as_str() {
        "" => open.requested_path.as_str(),
        path => path,
    };
    let mut fields = json!({
        "file": {
            // A file must be named.
            "name": match basename(path) { "" => "unknown", name => name },
            "path": path,
            // An open does not tell what kind of file it reached.
            "type_id": 0,
            "type": "Unknown",
        },
        "actor": subject.actor(),
        // Linux open flags (O_*): this platform's native access request.
        "access_mask": open.flags,
        "message": format!("open {path} {access}"),
        "unmapped": { "custos": {
            "access": access,
            "create": open.create,
            "truncate": open.truncate,
            "syscall": open.syscall,
            "requested_path": open.requested_path,
            "path_truncated": open.path_truncated,
            "verdict": open.verdict,
        }},
    });
    add_status(&mut fields, open.result, false);
    add_kernel_verdict(&mut fields, &open.verdict);
    Record::activity(subject, (14, "Open"), fields)
}

fn network_record(subject: &Subject, network: &proto::NetworkEvent) -> Record {
    const ECONNREFUSED: i32 = 111;
    const EINPROGRESS: i32 = 115;
    let peer = endpoint(network, &network.address, network.port);
    let local = endpoint(network, &network.local_address, network.local_port);
    let succeeded = network.result >= 0 || network.result == -EINPROGRESS;
    let (activity, direction, src, dst) = match network.operation() {
        proto::NetworkOperation::Connect => {
            let activity = match network.result {
                _ if succeeded => (1, "Open"),
                result if result == -ECONNREFUSED => (5, "Refuse"),
                _ => (4, "Fail"),
            };
            (activity, Direction::Outbound, local, peer)
        }
        // The listening socket is the responder of the connections to come.
        proto::NetworkOperation::Listen => ((7, "Listen"), Direction::Inbound, Value::Null, peer),
        proto::NetworkOperation::Accept => {
            let activity = if succeeded { (1, "Open") } else { (4, "Fail") };
            (activity, Direction::Inbound, peer, local)
        }
        proto::NetworkOperation::Unspecified => ((0, "Unknown"), Direction::Unknown, local, peer),
    };
    let (protocol_num, protocol_ver_id) = (
        match network.protocol.as_str() {
            "tcp" => Some(6),
            "udp" => Some(17),
            _ => None,
        },
        match network.family.as_str() {
            "ipv4" => Some(4),
            "ipv6" => Some(6),
            _ => None,
        },
    );
    let mut fields = json!({
        "src_endpoint": src,
        "dst_endpoint": dst,
        "connection_info": {
            "direction_id": direction.id(),
            "direction": direction.caption(),
            "protocol_name": network.protocol,
            "protocol_num": protocol_num,
            "protocol_ver_id": protocol_ver_id,
        },
        "actor": subject.actor(),
        "message": format!(
            "{} {} {}",
            activity.1.to_lowercase(),
            network.protocol,
            endpoint_text(&network.address, network.port)
        ),
        "unmapped": { "custos": { "family": network.family, "result": network.result } },
    });
    // Network Activity needs at least one endpoint; an unknown address still names one.
    if fields["src_endpoint"].is_null() && fields["dst_endpoint"].is_null() {
        fields["dst_endpoint"] = json!({ "name": "unknown" });
    }
    add_status(&mut fields, network.result, network.result == -EINPROGRESS);
    Record::activity(subject, activity, fields)
}

fn finding_record(subject: &Subject, deviation: &proto::DeviationEvent) -> Record {
    let severity = Severity::from_name(&deviation.severity);
    let workload = subject.workload.cloned().unwrap_or_default();
    // The judge reports a deviation once per (container, kind, value), then again with a
    // count: one finding, created then updated.
    let finding_uid = format!(
        "custos-{:016x}",
        fnv1a(&[
            workload.container_id.as_bytes(),
            deviation.kind.as_bytes(),
            deviation.observed.as_bytes(),
        ])
    );
    let activity = if deviation.count > 1 {
        (2, "Update")
    } else {
        (1, "Create")
    };
    let nearest = if deviation.nearest_allowed.is_empty() {
        format!("the profile allows no {} at all", deviation.kind)
    } else {
        format!("nearest allowed: {}", deviation.nearest_allowed)
    };
    let (action_id, action, disposition_id, disposition) = match deviation.verdict.as_str() {
        "alerted" => (1, "Allowed", 19, "Alert"),
        "blocked" => (2, "Denied", 2, "Blocked"),
        // OCSF has no disposition for a killed process: Other, with the word.
        "killed" => (2, "Denied", 99, "Killed"),
        _ => (0, "Unknown", 0, "Unknown"),
    };
    let mut resources = Vec::new();
    if !workload.pod.is_empty() {
        resources.push(json!({
            "type": "Pod",
            "name": workload.pod,
            "namespace": workload.namespace,
        }));
    }
    if !workload.container_id.is_empty() {
        resources.push(json!({
            "type": "Container",
            "uid": workload.container_id,
            "name": workload.container,
            "namespace": workload.namespace,
        }));
    }
    let fields = json!({
        "finding_info": {
            "uid": finding_uid,
            "title": format!("{} outside the behaviour profile: {}", deviation.kind, deviation.observed),
            "desc": format!(
                "{} is not in profile {} ({nearest}); mode {}, verdict {}",
                deviation.observed, deviation.profile, deviation.mode, deviation.verdict
            ),
            "types": [format!("deviation/{}", deviation.kind)],
            "analytic": {
                "name": "Custos behaviour profile",
                "type_id": 2,
                "type": "Behavioral",
                "uid": deviation.profile,
            },
        },
        "is_alert": true,
        "status_id": 1,
        "status": "New",
        "action_id": action_id,
        "action": action,
        "disposition_id": disposition_id,
        "disposition": disposition,
        "actor": subject.actor(),
        "evidences": [{
            "process": subject.process(),
            "container": container(subject.workload),
            "data": {
                "kind": deviation.kind,
                "observed": deviation.observed,
                "nearest_allowed": deviation.nearest_allowed,
                "profile": deviation.profile,
            },
        }],
        "resources": resources,
        "message": format!(
            "{} {} deviation: {}",
            deviation.verdict, deviation.kind, deviation.observed
        ),
        "unmapped": { "custos": { "mode": deviation.mode, "verdict": deviation.verdict } },
    });
    Record {
        activity,
        severity,
        repeats: deviation.count,
        fields: into_map(fields),
    }
}

/// The OCSF `process` object of `process`, with its parent and container.
fn process_object(process: &proto::Process, workload: Option<&proto::Workload>) -> Value {
    json!({
        "pid": process.pid,
        "tid": (process.tid != 0).then_some(process.tid),
        "name": process.comm,
        "cmd_line": cmd_line(&process.argv),
        "file": executable(&process.exe),
        "user": user(process.uid),
        "parent_process": parent_process(process),
        // Executables of the ancestors, nearest first.
        "lineage": process.ancestors.iter().map(|a| a.exe.as_str()).filter(|e| !e.is_empty())
            .collect::<Vec<_>>(),
        "container": container(workload),
    })
}

/// The parent of `process` as an OCSF `process` object, from its ancestry; null when unknown.
/// Without a container: the parent of a container's first process lives on the host.
fn parent_process(process: &proto::Process) -> Value {
    let ancestor = process.ancestors.first().filter(|a| a.pid == process.ppid);
    if process.ppid == 0 && ancestor.is_none() {
        return Value::Null;
    }
    json!({
        "pid": process.ppid,
        "cmd_line": ancestor.map(|a| cmd_line(&a.argv)),
        "file": ancestor.map_or(Value::Null, |a| executable(&a.exe)),
    })
}

/// The OCSF `container` object of a container's workload; null for the host.
fn container(workload: Option<&proto::Workload>) -> Value {
    let Some(w) = workload.filter(|w| !w.container_id.is_empty()) else {
        return Value::Null;
    };
    let tags: Vec<Value> = [
        ("io.kubernetes.pod.namespace", &w.namespace),
        ("io.kubernetes.pod.name", &w.pod),
        ("io.kubernetes.container.name", &w.container),
    ]
    .into_iter()
    .filter(|(_, value)| !value.is_empty())
    .map(|(name, value)| json!({ "name": name, "value": value }))
    .collect();
    json!({
        "uid": w.container_id,
        "name": w.container,
        "runtime": w.runtime,
        // The reference is the only identity of the image the agent has (no digest).
        "image": (!w.image.is_empty()).then(|| json!({ "name": w.image, "uid": w.image })),
        "orchestrator": (!w.pod.is_empty()).then_some("Kubernetes"),
        "tags": tags,
    })
}

/// An executable file; null when the path is unknown.
fn executable(path: &str) -> Value {
    if path.is_empty() {
        return Value::Null;
    }
    json!({ "name": basename(path), "path": path, "type_id": 1, "type": "Regular File" })
}

fn user(uid: u32) -> Value {
    json!({ "uid": uid.to_string() })
}

/// A network endpoint: an IP address and port, or a unix socket's path as its name; null when
/// the address is unknown.
fn endpoint(network: &proto::NetworkEvent, address: &str, port: u32) -> Value {
    if address.is_empty() {
        return Value::Null;
    }
    match network.family.as_str() {
        "ipv4" | "ipv6" => json!({ "ip": address, "port": (port != 0).then_some(port) }),
        _ => json!({ "name": address }),
    }
}

fn endpoint_text(address: &str, port: u32) -> String {
    match port {
        0 => address.to_owned(),
        port if address.contains(':') => format!("[{address}]:{port}"),
        port => format!("{address}:{port}"),
    }
}

/// Sets `status_id`, `status` and, on failure, the errno as `status_code` and its text as
/// `status_detail`, from a syscall result (>= 0, or -errno).
fn add_status(fields: &mut Value, result: i32, in_progress: bool) {
    let Value::Object(map) = fields else { return };
    if result >= 0 || in_progress {
        map.insert("status_id".into(), 1.into());
        map.insert("status".into(), "Success".into());
        if in_progress {
            map.insert("status_detail".into(), "in progress".into());
        }
        return;
    }
    let errno = result.saturating_neg();
    map.insert("status_id".into(), 2.into());
    map.insert("status".into(), "Failure".into());
    map.insert("status_code".into(), errno.to_string().into());
    let detail = std::io::Error::from_raw_os_error(errno).to_string();
    map.insert("status_detail".into(), detail.into());
}

/// A process the kernel killed for the action (enforce mode, outside its profile): the
/// action failed, whatever the syscall's result. The Detection Finding of the same action
/// says why.
fn add_kernel_verdict(fields: &mut Value, verdict: &str) {
    if verdict == "killed" {
        fields["status_id"] = 2.into();
        fields["status"] = "Failure".into();
        fields["status_detail"] = "process killed: outside its profile (enforce)".into();
    }
}

/// `connection_info.direction_id`.
#[derive(Clone, Copy)]
enum Direction {
    Unknown,
    Inbound,
    Outbound,
}

impl Direction {
    fn id(self) -> u32 {
        match self {
            Direction::Unknown => 0,
            Direction::Inbound => 1,
            Direction::Outbound => 2,
        }
    }

    fn caption(self) -> &'static str {
        match self {
            Direction::Unknown => "Unknown",
            Direction::Inbound => "Inbound",
            Direction::Outbound => "Outbound",
        }
    }
}

/// `severity_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Severity {
    Unknown,
    Informational,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    /// From a deviation's severity word.
    fn from_name(name: &str) -> Self {
        match name {
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            _ => Severity::Unknown,
        }
    }

    fn id(self) -> u32 {
        match self {
            Severity::Unknown => 0,
            Severity::Informational => 1,
            Severity::Low => 2,
            Severity::Medium => 3,
            Severity::High => 4,
            Severity::Critical => 5,
        }
    }

    fn caption(self) -> &'static str {
        match self {
            Severity::Unknown => "Unknown",
            Severity::Informational => "Informational",
            Severity::Low => "Low",
            Severity::Medium => "Medium",
            Severity::High => "High",
            Severity::Critical => "Critical",
        }
    }
}

/// Arguments joined by spaces (as `/proc/<pid>/cmdline` reads, with spaces for NULs).
fn cmd_line(argv: &[String]) -> String {
    argv.join(" ")
}

fn basename(path: &str) -> &str {
    path.rsplit('/')
        .find(|part| !part.is_empty())
        .unwrap_or(path)
}

fn into_map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Removes nulls and empty strings, lists and objects (innermost first); returns whether
/// `value` itself is worth keeping.
fn prune(value: &mut Value) -> bool {
    match value {
        Value::Null => false,
        Value::String(text) => !text.is_empty(),
        Value::Array(items) => {
            items.retain_mut(prune);
            !items.is_empty()
        }
        Value::Object(map) => {
            map.retain(|_, field| prune(field));
            !map.is_empty()
        }
        Value::Bool(_) | Value::Number(_) => true,
    }
}

/// 64-bit FNV-1a over `parts`, each followed by a 0 byte: a stable identifier across agents
/// and restarts (std's hasher is not stable across Rust versions).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in parts.iter().flat_map(|part| part.iter().chain(&[0u8])) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests;
