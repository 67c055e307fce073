//! How `custos events` prints events: `-o json` (one JSON object per line, for programs) and
//! `-o compact` (one short line per event, for people).
//!
//! # JSON shape
//! Every line is one object with the same keys in the same order; strings that are unknown are
//! empty, never missing:
//! ```json
//! {"time":"2026-11-25T16:00:00.123456789Z","time_unix_nano":1795622400123456789,
//!  "node":"node-1","kind":"exec",
//!  "workload":{"host":false,"container_id":"0123…","runtime":"containerd","namespace":"qa",
//!              "pod":"web-1","container":"web","image":"nginx:1.27","cgroup_id":4242,
//!              "cgroup_path":"/kubepods/…"},
//!  "process":{"pid":123,"tid":123,"ppid":100,"uid":0,"gid":0,"comm":"cat",
//!             "exe":"/bin/busybox","argv":["cat","/etc/hostname"],
//!             "ancestors":[{"pid":100,"exe":"/bin/busybox","argv":["sh"]}]},
//!  "repeats_suppressed":0,
//!  "exec":{"path":"/bin/cat","argv":["cat","/etc/hostname"],"argv_truncated":false,
//!          "path_truncated":false}}
//! ```
//! (shown wrapped; each event is one line). `time` is RFC 3339 in UTC with nanoseconds;
//! `time_unix_nano` is the same instant as an integer (beyond 2^53: parse it as a 64-bit
//! integer, not a double). `kind` is `exec` or `exit` (`unknown` if an agent newer than this
//! client sends a kind it does not know); the kind's details are under a key of that name:
//! `"exec":{...}` as above or `"exit":{"exit_code":0,"signal":0}`. A host event has
//! `"host":true` and empty container fields.
//!
//! # Compact line
//! `16:00:00.123 qa/web-1/web exec pid=123 ppid=100 /bin/cat /etc/hostname`: UTC time of day,
//! the workload (`namespace/pod/container`, `host`, or `container:<short id>` for containers
//! without pod labels), the kind and its details. Strings that come from the watched
//! processes are escaped so that they cannot forge a line or a field.
use std::borrow::Cow;
use std::fmt::Write as _;
use std::io;

use serde::Serialize;

use crate::api::filter::event_kind_name;
use crate::api::proto;
use crate::cli::OutputFormat;

/// Writes `event` as one line (with its newline) in `format`.
pub fn write_event(
    out: &mut impl io::Write,
    format: OutputFormat,
    event: &proto::Event,
) -> io::Result<()> {
    match format {
        OutputFormat::Json => {
            serde_json::to_writer(&mut *out, &JsonEvent::from(event)).map_err(io::Error::from)?;
        }
        OutputFormat::Compact => out.write_all(compact_line(event).as_bytes())?,
    }
    out.write_all(b"\n")
}

/// `event` in `format`, without a newline.
pub fn render(format: OutputFormat, event: &proto::Event) -> String {
    match format {
        OutputFormat::Json => json_line(event),
        OutputFormat::Compact => compact_line(event),
    }
}

/// `event` as one JSON object (the shape in the module documentation), without a newline.
pub fn json_line(event: &proto::Event) -> String {
    // Serialising plain strings and integers cannot fail.
    serde_json::to_string(&JsonEvent::from(event)).unwrap_or_default()
}

/// `event` as a [`serde_json::Value`] (the shape in the module documentation).
pub fn json_value(event: &proto::Event) -> serde_json::Value {
    serde_json::to_value(JsonEvent::from(event)).unwrap_or_default()
}

#[derive(Serialize)]
struct JsonEvent<'a> {
    time: String,
    time_unix_nano: u64,
    node: &'a str,
    kind: &'static str,
    workload: Cow<'a, proto::Workload>,
    process: Cow<'a, proto::Process>,
    repeats_suppressed: u64,
    /// The kind's details, under the body's name (`"exec": {...}`, `"network": {...}`).
    #[serde(flatten)]
    body: Option<&'a proto::event::Body>,
}

impl<'a> From<&'a proto::Event> for JsonEvent<'a> {
    fn from(event: &'a proto::Event) -> Self {
        // An event without a workload is not attributed to a container: a host event.
        let workload = event.workload.as_ref().map_or_else(
            || {
                Cow::Owned(proto::Workload {
                    host: true,
                    ..Default::default()
                })
            },
            Cow::Borrowed,
        );
        JsonEvent {
            time: rfc3339_nanos(event.time_unix_nano),
            time_unix_nano: event.time_unix_nano,
            node: &event.node,
            kind: event_kind_name(event),
            workload,
            process: event
                .process
                .as_ref()
                .map_or_else(|| Cow::Owned(proto::Process::default()), Cow::Borrowed),
            repeats_suppressed: event.repeats_suppressed,
            body: event.body.as_ref(),
        }
    }
}

/// Serializes a `FileAccess` field by name (`"read"`, `"write"`, `"read_write"`).
pub fn file_access_name<S: serde::Serializer>(
    value: &i32,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let name = match proto::FileAccess::try_from(*value) {
        Ok(proto::FileAccess::Read) => "read",
        Ok(proto::FileAccess::Write) => "write",
        Ok(proto::FileAccess::ReadWrite) => "read_write",
        Ok(proto::FileAccess::Unspecified) | Err(_) => "unspecified",
    };
    serializer.serialize_str(name)
}

/// Serializes a `NetworkOperation` field by name (`"connect"`, `"listen"`, `"accept"`).
pub fn network_operation_name<S: serde::Serializer>(
    value: &i32,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let name = match proto::NetworkOperation::try_from(*value) {
        Ok(proto::NetworkOperation::Connect) => "connect",
        Ok(proto::NetworkOperation::Listen) => "listen",
        Ok(proto::NetworkOperation::Accept) => "accept",
        Ok(proto::NetworkOperation::Unspecified) | Err(_) => "unspecified",
    };
    serializer.serialize_str(name)
}

/// `event` as one short human line (see the module documentation), without a newline.
pub fn compact_line(event: &proto::Event) -> String {
    let mut line = String::with_capacity(96);
    let nanos = event.time_unix_nano % NANOS_PER_SEC;
    let secs_of_day = (event.time_unix_nano / NANOS_PER_SEC) % 86_400;
    let _ = write!(
        line,
        "{:02}:{:02}:{:02}.{:03} ",
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60,
        nanos / 1_000_000
    );
    push_workload(&mut line, event.workload.as_ref());
    line.push(' ');
    line.push_str(event_kind_name(event));
    let process = event.process.clone().unwrap_or_default();
    let _ = write!(line, " pid={} ppid={}", process.pid, process.ppid);
    match &event.body {
        Some(proto::event::Body::Exec(exec)) => {
            line.push(' ');
            push_word(&mut line, &exec.path);
            if exec.path_truncated {
                line.push('…');
            }
            for arg in exec.argv.iter().skip(1) {
                line.push(' ');
                push_word(&mut line, arg);
            }
            if exec.argv_truncated {
                line.push_str(" …");
            }
        }
        Some(proto::event::Body::Exit(exit)) => {
            line.push_str(" comm=");
            push_word(&mut line, &process.comm);
            if exit.signal != 0 {
                let _ = match signal_name(exit.signal) {
                    Some(name) => write!(line, " signal={name}"),
                    None => write!(line, " signal={}", exit.signal),
                };
            } else {
                let _ = write!(line, " code={}", exit.exit_code);
            }
        }
        Some(proto::event::Body::Fork(fork)) => {
            let _ = write!(line, " child={}", fork.child_pid);
        }
        Some(proto::event::Body::Open(open)) => {
            line.push(' ');
            push_word(&mut line, &open.path);
            let access = match open.access() {
                proto::FileAccess::Read => "r",
                proto::FileAccess::Write => "w",
                proto::FileAccess::ReadWrite => "rw",
                proto::FileAccess::Unspecified => "?",
            };
            let _ = write!(line, " mode={access}");
            if open.create {
                line.push_str(",create");
            }
            if open.truncate {
                line.push_str(",trunc");
            }
            let _ = write!(line, " result={}", open.result);
        }
        Some(proto::event::Body::Network(network)) => {
            line.push(' ');
            push_word(&mut line, &network.protocol);
            line.push(' ');
            push_word(&mut line, &network.address);
            if network.port != 0 {
                let _ = write!(line, " port={}", network.port);
            }
            let _ = write!(line, " result={}", network.result);
        }
        Some(proto::event::Body::Syscall(syscall)) => {
            line.push(' ');
            push_word(&mut line, &syscall.name);
        }
        Some(proto::event::Body::Deviation(deviation)) => {
            let _ = write!(
                line,
                " {} {} {} ",
                deviation.verdict, deviation.severity, deviation.kind
            );
            push_word(&mut line, &deviation.observed);
            if deviation.count > 1 {
                let _ = write!(line, " x{}", deviation.count);
            }
        }
        Some(proto::event::Body::Drop(drop)) => {
            let _ = write!(
                line,
                " ring={} dropped={} in={}ms",
                drop.ring_buffer, drop.dropped, drop.interval_ms
            );
        }
        None => {
            line.push_str(" comm=");
            push_word(&mut line, &process.comm);
        }
    }
    if event.repeats_suppressed > 0 {
        let _ = write!(line, " (+{} repeats)", event.repeats_suppressed);
    }
    line
}

fn push_workload(line: &mut String, workload: Option<&proto::Workload>) {
    let Some(w) = workload.filter(|w| !w.host) else {
        line.push_str("host");
        return;
    };
    if !w.namespace.is_empty() || !w.pod.is_empty() {
        for (i, part) in [&w.namespace, &w.pod, &w.container].into_iter().enumerate() {
            if i > 0 {
                line.push('/');
            }
            push_word(line, if part.is_empty() { "?" } else { part });
        }
    } else if !w.container_id.is_empty() {
        line.push_str("container:");
        push_word(line, w.container_id.get(..12).unwrap_or(&w.container_id));
    } else {
        let _ = write!(line, "cgroup:{}", w.cgroup_id);
    }
}

/// Appends `word` as one shell-like word: as it is when it is plain, otherwise in double
/// quotes with `"`, `\` and control characters escaped (so a newline or a space in an argument
/// cannot forge a line or split a word).
fn push_word(line: &mut String, word: &str) {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && !matches!(c, '"' | '\\' | '\''));
    if plain {
        line.push_str(word);
        return;
    }
    line.push('"');
    for c in word.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\t' => line.push_str("\\t"),
            '\r' => line.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(line, "\\u{{{:x}}}", c as u32);
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

/// Name of a Linux signal number, for the common ones.
pub fn signal_name(signal: i32) -> Option<&'static str> {
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    let index = usize::try_from(signal).ok()?.checked_sub(1)?;
    NAMES.get(index).copied()
}

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Nanoseconds since the Unix epoch as RFC 3339 in UTC with nine fractional digits:
/// `2026-11-25T16:00:00.123456789Z`.
pub fn rfc3339_nanos(unix_nanos: u64) -> String {
    let secs = unix_nanos / NANOS_PER_SEC;
    let nanos = unix_nanos % NANOS_PER_SEC;
    let days = secs / 86_400;
    let secs_of_day = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60,
    )
}

/// (year, month, day) of the proleptic Gregorian calendar for `days` since 1970-01-01.
/// Howard Hinnant's `civil_from_days`, for non-negative day counts.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so that leap days fall at the end of a year.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097; // [0, 146096]
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365; // [0, 399]
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // [0, 365]
    let mp = (5 * day_of_year + 2) / 153; // [0, 11], March = 0
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    /// 2026-11-25T16:00:00.123456789Z
    const T: u64 = 1_795_622_400 * NANOS_PER_SEC + 123_456_789;

    fn pod_exec() -> proto::Event {
        proto::Event {
            time_unix_nano: T,
            node: "node-1".to_owned(),
            workload: Some(proto::Workload {
                host: false,
                container_id: ID.to_owned(),
                runtime: "containerd".to_owned(),
                namespace: "qa".to_owned(),
                pod: "web-1".to_owned(),
                container: "web".to_owned(),
                image: "nginx:1.27".to_owned(),
                cgroup_id: 4242,
                cgroup_path: "/kubepods/pod1/abc".to_owned(),
                pod_labels: Default::default(),
            }),
            process: Some(proto::Process {
                pid: 123,
                tid: 123,
                ppid: 100,
                uid: 0,
                gid: 0,
                comm: "cat".to_owned(),
                exe: "/bin/busybox".to_owned(),
                argv: vec!["cat".to_owned(), "/etc/hostname".to_owned()],
                ancestors: vec![proto::Ancestor {
                    pid: 100,
                    exe: "/bin/busybox".to_owned(),
                    argv: vec!["sh".to_owned()],
                }],
            }),
            repeats_suppressed: 0,
            body: Some(proto::event::Body::Exec(proto::ExecEvent {
                path: "/bin/cat".to_owned(),
                argv: vec!["cat".to_owned(), "/etc/hostname".to_owned()],
                argv_truncated: false,
                path_truncated: false,
                verdict: String::new(),
            })),
        }
    }

    fn host_exit(exit_code: i32, signal: i32) -> proto::Event {
        proto::Event {
            time_unix_nano: T,
            node: "node-1".to_owned(),
            workload: Some(proto::Workload {
                host: true,
                cgroup_id: 1,
                cgroup_path: "/system.slice/cron.service".to_owned(),
                ..Default::default()
            }),
            process: Some(proto::Process {
                pid: 77,
                tid: 77,
                ppid: 1,
                uid: 0,
                gid: 0,
                comm: "cron".to_owned(),
                ..Default::default()
            }),
            repeats_suppressed: 0,
            body: Some(proto::event::Body::Exit(proto::ExitEvent {
                exit_code,
                signal,
            })),
        }
    }

    #[test]
    fn rfc3339() {
        assert_eq!(rfc3339_nanos(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339_nanos(T), "2026-11-25T16:00:00.123456789Z");
        // Leap days, century rules, end of year.
        let cases = [
            (951_782_400, "2000-02-29T00:00:00"),
            (951_868_799, "2000-02-29T23:59:59"),
            (951_868_800, "2000-03-01T00:00:00"),
            (1_709_164_800, "2024-02-29T00:00:00"),
            (4_107_542_400, "2100-03-01T00:00:00"), // 2100 is not a leap year
            (4_107_542_399, "2100-02-28T23:59:59"),
            (1_767_225_599, "2025-12-31T23:59:59"),
            (1_767_225_600, "2026-01-01T00:00:00"),
            (68_169_600, "1972-02-29T00:00:00"),
        ];
        for (secs, want) in cases {
            let got = rfc3339_nanos(secs * NANOS_PER_SEC + 5);
            assert_eq!(got, format!("{want}.000000005Z"), "{secs}");
        }
        assert_eq!(rfc3339_nanos(u64::MAX), "2554-07-21T23:34:33.709551615Z");
    }

    #[test]
    fn civil_from_days_agrees_with_counting_days() {
        // Walk day by day from 1970 through 2400 and check against a naive calendar.
        let (mut y, mut m, mut d) = (1970, 1, 1);
        for days in 0..(430 * 366) {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let month_len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > month_len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn json_exec_shape() {
        let got: serde_json::Value = serde_json::from_str(&json_line(&pod_exec())).unwrap();
        let want = serde_json::json!({
            "time": "2026-11-25T16:00:00.123456789Z",
            "time_unix_nano": T,
            "node": "node-1",
            "kind": "exec",
            "workload": {
                "host": false, "container_id": ID, "runtime": "containerd", "namespace": "qa",
                "pod": "web-1", "container": "web", "image": "nginx:1.27", "cgroup_id": 4242,
                "cgroup_path": "/kubepods/pod1/abc", "pod_labels": {}
            },
            "process": {
                "pid": 123, "tid": 123, "ppid": 100, "uid": 0, "gid": 0, "comm": "cat",
                "exe": "/bin/busybox", "argv": ["cat", "/etc/hostname"],
                "ancestors": [{"pid": 100, "exe": "/bin/busybox", "argv": ["sh"]}]
            },
            "repeats_suppressed": 0,
            "exec": {
                "path": "/bin/cat", "argv": ["cat", "/etc/hostname"], "argv_truncated": false,
                "path_truncated": false, "verdict": ""
            }
        });
        assert_eq!(got, want);
        assert_eq!(json_value(&pod_exec()), want);
    }

    #[test]
    fn json_keys_keep_their_order_and_the_line_is_one_line() {
        let mut event = pod_exec();
        if let Some(proto::event::Body::Exec(exec)) = &mut event.body {
            exec.argv.push("a\nb".to_owned());
        }
        let line = json_line(&event);
        assert!(!line.contains('\n'), "{line}");
        let keys = [
            "time",
            "time_unix_nano",
            "node",
            "kind",
            "workload",
            "process",
            "exec",
        ];
        let positions: Vec<usize> = keys
            .iter()
            .map(|k| line.find(&format!("\"{k}\":")).unwrap())
            .collect();
        assert!(positions.is_sorted(), "{line}");
        assert!(
            line.starts_with(
                r#"{"time":"2026-11-25T16:00:00.123456789Z","time_unix_nano":1795622400123456789,"#
            ),
            "{line}"
        );
    }

    #[test]
    fn json_exit_and_host() {
        let got = json_value(&host_exit(0, 9));
        assert_eq!(got["kind"], "exit");
        assert_eq!(
            got["exit"],
            serde_json::json!({"exit_code": 0, "signal": 9})
        );
        assert!(got.get("exec").is_none());
        assert_eq!(got["workload"]["host"], true);
        assert_eq!(got["workload"]["container_id"], "");
        assert_eq!(got["workload"]["namespace"], "");
        assert_eq!(got["workload"]["cgroup_path"], "/system.slice/cron.service");

        // Missing parts still give the full shape.
        let empty = json_value(&proto::Event::default());
        assert_eq!(empty["kind"], "unknown");
        assert_eq!(empty["workload"]["host"], true);
        assert_eq!(empty["process"]["pid"], 0);
        assert_eq!(empty["process"]["comm"], "");
        assert_eq!(empty["time"], "1970-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn write_event_writes_one_line() {
        let mut out = Vec::new();
        write_event(&mut out, OutputFormat::Json, &pod_exec()).unwrap();
        write_event(&mut out, OutputFormat::Compact, &pod_exec()).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], render(OutputFormat::Json, &pod_exec()));
        assert_eq!(lines[1], render(OutputFormat::Compact, &pod_exec()));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn compact_exec() {
        assert_eq!(
            compact_line(&pod_exec()),
            "16:00:00.123 qa/web-1/web exec pid=123 ppid=100 /bin/cat /etc/hostname"
        );
    }

    #[test]
    fn compact_exit() {
        assert_eq!(
            compact_line(&host_exit(3, 0)),
            "16:00:00.123 host exit pid=77 ppid=1 comm=cron code=3"
        );
        assert_eq!(
            compact_line(&host_exit(0, 9)),
            "16:00:00.123 host exit pid=77 ppid=1 comm=cron signal=SIGKILL"
        );
        assert_eq!(
            compact_line(&host_exit(0, 64)),
            "16:00:00.123 host exit pid=77 ppid=1 comm=cron signal=64"
        );
    }

    #[test]
    fn compact_escapes_what_processes_control() {
        let mut event = pod_exec();
        if let Some(proto::event::Body::Exec(exec)) = &mut event.body {
            exec.path = "/tmp/my prog".to_owned();
            exec.argv = vec![
                "x".to_owned(),
                "a\nb".to_owned(),
                String::new(),
                "say \"hi\"".to_owned(),
                "\u{1b}[31m".to_owned(),
                "ok".to_owned(),
            ];
            exec.argv_truncated = true;
        }
        assert_eq!(
            compact_line(&event),
            r#"16:00:00.123 qa/web-1/web exec pid=123 ppid=100 "/tmp/my prog" "a\nb" "" "say \"hi\"" "\u{1b}[31m" ok …"#
        );
    }

    #[test]
    fn compact_workloads() {
        let mut event = pod_exec();
        let workload = event.workload.as_mut().unwrap();
        workload.namespace.clear();
        workload.pod.clear();
        assert!(compact_line(&event).starts_with("16:00:00.123 container:0123456789ab exec "));
        let workload = event.workload.as_mut().unwrap();
        workload.container_id.clear();
        assert!(compact_line(&event).starts_with("16:00:00.123 cgroup:4242 exec "));
        event.workload = None;
        assert!(compact_line(&event).starts_with("16:00:00.123 host exec "));
        assert_eq!(
            compact_line(&proto::Event::default()),
            "00:00:00.000 host unknown pid=0 ppid=0 comm=\"\""
        );
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(9), Some("SIGKILL"));
        assert_eq!(signal_name(15), Some("SIGTERM"));
        assert_eq!(signal_name(31), Some("SIGSYS"));
        assert_eq!(signal_name(0), None);
        assert_eq!(signal_name(32), None);
        assert_eq!(signal_name(-1), None);
    }
}
