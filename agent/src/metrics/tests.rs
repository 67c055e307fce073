use std::collections::BTreeMap;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;
use crate::api::{EventFilter, server::ProfilesError};
use crate::outputs::SinkStats;

struct FixedProfiles(Vec<&'static str>);

#[tonic::async_trait]
impl ProfilesApi for FixedProfiles {
    async fn list(&self) -> Vec<proto::ProfileSummary> {
        self.0
            .iter()
            .map(|status| proto::ProfileSummary {
                status: (*status).into(),
                ..Default::default()
            })
            .collect()
    }
    async fn export(&self, _: &[String]) -> Result<String, ProfilesError> {
        Err(ProfilesError::Internal("not here".into()))
    }
    async fn import(&self, _: &str, _: &str) -> Result<Vec<String>, ProfilesError> {
        Err(ProfilesError::Internal("not here".into()))
    }
    async fn container_profile(&self, _: &str) -> Result<proto::ContainerProfile, ProfilesError> {
        Err(ProfilesError::Internal("not here".into()))
    }
}

fn event(body: proto::event::Body) -> Arc<proto::Event> {
    Arc::new(proto::Event {
        body: Some(body),
        ..Default::default()
    })
}

fn deviation(kind: &str, verdict: &str, count: u64) -> Arc<proto::Event> {
    event(proto::event::Body::Deviation(proto::DeviationEvent {
        kind: kind.into(),
        verdict: verdict.into(),
        count,
        ..Default::default()
    }))
}

/// Parses the exposition into `name{labels}` → value, checking every line's shape.
fn parse(text: &str) -> BTreeMap<String, u64> {
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let value = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "twice: {line}"
        );
    }
    samples
}

/// A bound endpoint with fixed sources, and the hub it counts.
async fn server(outputs: Outputs) -> (MetricsServer, Sources) {
    let hub = EventHub::new(1);
    let config = MetricsConfig {
        listen: Some("127.0.0.1:0".parse().unwrap()),
    };
    let server = MetricsServer::bind(&config, &hub).await.unwrap().unwrap();
    let sources = Sources {
        node: "node-\"1\"".into(),
        hub,
        kernel: Box::new(|| {
            Some(KernelCounters {
                events_sent: 10,
                events_dropped: 1,
                activity_sent: 20,
                activity_dropped: 2,
                repeats_suppressed: 7,
                processes_killed: 5,
                ..Default::default()
            })
        }),
        bpf_maps: Box::new(|| {
            vec![MapFill {
                name: "RECENT".into(),
                entries: 3,
                capacity: 65536,
            }]
        }),
        profiles: Some(Arc::new(FixedProfiles(vec![
            "learning", "stable", "learning",
        ]))),
        outputs,
    };
    (server, sources)
}

async fn get(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn a_scrape_reports_every_source_in_the_text_format() {
    let sink = Arc::new(SinkStats::default());
    sink.written.store(5, Ordering::Relaxed);
    sink.dropped.store(2, Ordering::Relaxed);
    let outputs = Outputs {
        sinks: vec![("jsonl", Arc::clone(&sink))],
    };
    let (server, sources) = server(outputs).await;
    let addr = server.local_addr().unwrap();
    let hub = sources.hub.clone();
    // One output and one gRPC client subscribed; the client's queue (1) overflows once.
    let _output = hub.subscribe(EventFilter::all());
    let _client = hub.subscribe(EventFilter::all());
    hub.publish(event(proto::event::Body::Exec(Default::default())));
    hub.publish(event(proto::event::Body::Exec(Default::default())));
    hub.publish(deviation("exec", "alerted", 1));
    hub.publish(deviation("exec", "alerted", 3));
    hub.publish(deviation("file", "blocked", 1));
    let task = tokio::spawn(server.serve(sources));

    let response = get(addr, "/metrics").await;
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let samples = parse(body);
    let expect = [
        (r#"custos_events_total{kind="exec"}"#, 2),
        (r#"custos_events_total{kind="deviation"}"#, 3),
        (r#"custos_events_total{kind="open"}"#, 0),
        (r#"custos_ring_buffer_events_total{ring="activity"}"#, 20),
        (r#"custos_ring_buffer_dropped_total{ring="process"}"#, 1),
        (r#"custos_ring_buffer_suppressed_total{ring="activity"}"#, 7),
        (r#"custos_kernel_enforced_total{action="killed"}"#, 5),
        (r#"custos_kernel_enforced_total{action="blocked"}"#, 0),
        (r#"custos_kernel_enforced_total{action="lsm_denied"}"#, 0),
        (r#"custos_bpf_map_entries{map="RECENT"}"#, 3),
        (r#"custos_bpf_map_capacity{map="RECENT"}"#, 65536),
        (r#"custos_profiles{status="learning"}"#, 2),
        (r#"custos_profiles{status="stable"}"#, 1),
        (
            r#"custos_deviations_total{kind="exec",verdict="alerted"}"#,
            4,
        ),
        (
            r#"custos_deviations_total{kind="file",verdict="blocked"}"#,
            1,
        ),
        (r#"custos_blocks_total{kind="file",verdict="blocked"}"#, 1),
        ("custos_grpc_subscribers", 1),
        // 5 published, 1 fits each queue: 4 lost by each of the two; 2 of the output's are
        // known to its stats.
        ("custos_grpc_subscriber_dropped_events_total", 6),
        (r#"custos_output_events_total{output="jsonl"}"#, 5),
        (r#"custos_output_dropped_events_total{output="jsonl"}"#, 2),
    ];
    for (series, value) in expect {
        assert_eq!(samples.get(series), Some(&value), "{series} in:\n{body}");
    }
    let info = format!(
        r#"custos_agent_info{{version="{}",node="node-\"1\""}}"#,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(samples.get(&info), Some(&1), "{info} in:\n{body}");
    assert!(
        !samples.contains_key(r#"custos_blocks_total{kind="exec",verdict="alerted"}"#),
        "alerts are not blocks"
    );

    assert!(get(addr, "/").await.starts_with("HTTP/1.1 404"));
    task.abort();
}

#[tokio::test]
async fn off_unless_an_address_is_given_and_a_taken_port_is_named() {
    let hub = EventHub::new(1);
    assert!(
        MetricsServer::bind(&MetricsConfig::default(), &hub)
            .await
            .unwrap()
            .is_none()
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = MetricsConfig {
        listen: Some(taken.local_addr().unwrap()),
    };
    let error = MetricsServer::bind(&config, &hub)
        .await
        .err()
        .expect("a taken port fails")
        .to_string();
    assert!(error.contains("metrics.listen"), "{error}");
    assert!(
        error.contains(&taken.local_addr().unwrap().to_string()),
        "{error}"
    );
}
