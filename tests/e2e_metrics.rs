//! `/metrics` end to end: a real agent with its metrics endpoint on, scraped over HTTP before
//! and after real containers act (run, are learned, deviate in monitor mode, are stopped in
//! enforce mode) and a gRPC client subscribes without reading.
//! Every scrape must parse as the Prometheus text format, and the counters of events, ring
//! buffers, BPF maps, profiles, deviations and subscribers must move. Needs root.
mod scenario;
mod support;

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use custos::api::proto;
use support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// One scrape: series (`name{labels}` as written) → value, and the declared families.
#[derive(Debug, Default)]
struct Scrape {
    samples: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    fn get(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in the scrape: {:#?}", self.samples))
    }
}

/// Parses the text exposition format strictly: every line is a `# HELP`, a `# TYPE` or a
/// sample of a declared family, with valid names, quoted and escaped label values and a
/// number; counters end in `_total`; no series twice.
fn parse(text: &str) -> Scrape {
    fn is_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    /// Checks `name="value",...` up to the closing brace; returns the rest after it.
    fn labels<'a>(mut rest: &'a str, line: &str) -> &'a str {
        loop {
            let (label, after) = rest
                .split_once("=\"")
                .unwrap_or_else(|| panic!("label: {line}"));
            assert!(is_name(label), "label name {label:?}: {line}");
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => {
                        let escaped = chars.next().map(|(_, c)| c);
                        assert!(matches!(escaped, Some('\\' | '"' | 'n')), "escape: {line}");
                    }
                    Some((i, '"')) => break i,
                    Some(_) => {}
                    None => panic!("unterminated label value: {line}"),
                }
            };
            rest = &after[end + 1..];
            if let Some(next) = rest.strip_prefix(',') {
                rest = next;
            } else {
                return rest
                    .strip_prefix('}')
                    .unwrap_or_else(|| panic!("labels: {line}"));
            }
        }
    }
    let mut scrape = Scrape::default();
    for line in text.lines() {
        if let Some(help) = line.strip_prefix("# HELP ") {
            let name = help.split(' ').next().unwrap_or_default();
            assert!(is_name(name), "HELP of {name:?}");
            continue;
        }
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let (name, kind) = declared.split_once(' ').expect("TYPE name kind");
            assert!(is_name(name), "TYPE of {name:?}");
            assert!(matches!(kind, "counter" | "gauge"), "TYPE {kind}: {line}");
            assert!(
                kind != "counter" || name.ends_with("_total"),
                "counter {name} does not end in _total"
            );
            assert!(
                scrape.types.insert(name.into(), kind.into()).is_none(),
                "{name} declared twice"
            );
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("sample: {line}"));
        let name = &line[..name_end];
        assert!(is_name(name), "sample name {name:?}");
        assert!(
            scrape.types.contains_key(name),
            "{name} has no TYPE before it"
        );
        let rest = match line[name_end..].strip_prefix('{') {
            Some(inside) => labels(inside, line),
            None => &line[name_end..],
        };
        let value = rest
            .strip_prefix(' ')
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("value: {line}"));
        let series = &line[..line.len() - rest.len()];
        assert!(
            scrape.samples.insert(series.into(), value).is_none(),
            "{series} twice"
        );
    }
    scrape
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to /metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: custos\r\nConnection: close\r\n\r\n")
        .await
        .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    parse(body)
}

/// The address the agent says its metrics are at (port 0 in the configuration).
async fn metrics_addr(agent: &Agent) -> SocketAddr {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = agent.log();
        let found = log.lines().find_map(|line| {
            let (_, after) = line.split_once("metrics at http://")?;
            after.split('/').next()?.parse().ok()
        });
        if let Some(addr) = found {
            return addr;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent did not log its metrics address:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_when_a_container_acts() {
    if !privileged("metrics_move_when_a_container_acts") {
        return;
    }
    ensure_containerd();
    let dir = TempDir::new("metrics");
    // Subscribers' queues hold one event: a client that does not read loses the rest.
    let sections = [
        ("metrics", "listen: 127.0.0.1:0"),
        ("events", "subscriberQueue: 1"),
    ];
    let config = scenario::config(dir.path(), "learn", &sections);
    let agent = Agent::start_with(["--config".into(), config.into_os_string()]).await;
    let addr = metrics_addr(&agent).await;

    let before = scrape(addr).await;
    for family in [
        "custos_events_total",
        "custos_ring_buffer_events_total",
        "custos_ring_buffer_dropped_total",
        "custos_ring_buffer_suppressed_total",
        "custos_bpf_map_entries",
        "custos_bpf_map_capacity",
        "custos_profiles",
        "custos_deviations_total",
        "custos_blocks_total",
        "custos_kernel_enforced_total",
        "custos_grpc_subscribers",
        "custos_grpc_subscriber_dropped_events_total",
    ] {
        assert!(before.types.contains_key(family), "no {family} family");
    }
    for ring in ["process", "activity"] {
        before.get(&format!(
            "custos_ring_buffer_dropped_total{{ring=\"{ring}\"}}"
        ));
        before.get(&format!(
            "custos_ring_buffer_suppressed_total{{ring=\"{ring}\"}}"
        ));
    }
    for map in ["TRACED_CGROUPS", "RECENT", "SYSCALL_SETS"] {
        let entries = before.get(&format!("custos_bpf_map_entries{{map=\"{map}\"}}"));
        let capacity = before.get(&format!("custos_bpf_map_capacity{{map=\"{map}\"}}"));
        assert!(
            capacity > 0.0 && entries <= capacity,
            "{map}: {entries}/{capacity}"
        );
    }
    assert_eq!(before.get("custos_grpc_subscribers"), 0.0);
    assert_eq!(before.get(r#"custos_profiles{status="learning"}"#), 0.0);

    // A gRPC client subscribes, and never reads.
    let mut client = agent.client().await;
    let _stream = subscribe(&mut client, proto::EventFilter::default()).await;
    assert_eq!(scrape(addr).await.get("custos_grpc_subscribers"), 1.0);

    // A container runs and is learned.
    let rootfs = scenario::rootfs();
    scenario::learn(&agent, &rootfs).await;
    let learned = scrape(addr).await;
    let moved = |series: &str, from: &Scrape, to: &Scrape| {
        assert!(
            to.get(series) > from.get(series),
            "{series} did not move: {} -> {}",
            from.get(series),
            to.get(series)
        );
    };
    for series in [
        r#"custos_events_total{kind="exec"}"#,
        r#"custos_events_total{kind="fork"}"#,
        r#"custos_events_total{kind="exit"}"#,
        r#"custos_events_total{kind="open"}"#,
        r#"custos_events_total{kind="syscall"}"#,
        r#"custos_ring_buffer_events_total{ring="process"}"#,
        r#"custos_ring_buffer_events_total{ring="activity"}"#,
        // The container's cgroup is traced, its syscalls recorded.
        r#"custos_bpf_map_entries{map="TRACED_CGROUPS"}"#,
        r#"custos_bpf_map_entries{map="SYSCALL_SETS"}"#,
        r#"custos_profiles{status="learning"}"#,
    ] {
        moved(series, &before, &learned);
    }

    // Then it deviates: counted by kind and verdict.
    scenario::deviate(dir.path(), "monitor", &sections, &rootfs).await;
    let kinds = ["exec", "file", "connect"];
    let series =
        |kind: &str| format!(r#"custos_deviations_total{{kind="{kind}",verdict="alerted"}}"#);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let deviated = loop {
        let now = scrape(addr).await;
        if kinds
            .iter()
            .all(|kind| now.samples.get(&series(kind)).is_some_and(|v| *v >= 1.0))
        {
            break now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deviations not counted: {:#?}\n{}",
            now.samples,
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    moved(
        r#"custos_events_total{kind="deviation"}"#,
        &learned,
        &deviated,
    );
    moved(
        r#"custos_events_total{kind="connect"}"#,
        &learned,
        &deviated,
    );
    // Monitor mode blocks nothing.
    assert!(
        !deviated
            .samples
            .keys()
            .any(|series| series.starts_with("custos_blocks_total")),
        "blocks in monitor mode: {:#?}",
        deviated.samples
    );
    moved(
        "custos_grpc_subscriber_dropped_events_total",
        &before,
        &deviated,
    );
    assert_eq!(deviated.get("custos_grpc_subscribers"), 1.0);

    // In enforce mode the same unlearned exec is killed in the kernel: a block.
    scenario::deviate(dir.path(), "enforce", &sections, &rootfs).await;
    let killed = r#"custos_blocks_total{kind="exec",verdict="killed"}"#;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let enforced = loop {
        let now = scrape(addr).await;
        if now.samples.get(killed).is_some_and(|v| *v >= 1.0) {
            break now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no block counted: {:#?}\n{}",
            now.samples,
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    moved(
        r#"custos_kernel_enforced_total{action="killed"}"#,
        &deviated,
        &enforced,
    );
    assert!(
        enforced.get(r#"custos_deviations_total{kind="exec",verdict="killed"}"#) >= 1.0,
        "a block is a deviation too"
    );
}
