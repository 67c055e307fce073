//! Event outputs besides gRPC: a sink subscribes to the event hub like a gRPC client does
//! (so it sees what clients see, with its own bounded queue: a slow disk loses events, counted,
//! and never slows the pipeline) and writes the events elsewhere.
//!
//! The one sink today writes OCSF records ([`ocsf`]) as JSON lines ([`jsonl`]) to standard
//! output or to a file rotated by size, for a SIEM's log shipper to pick up. Outputs are set
//! when the agent starts; a change to `outputs` in the configuration file needs a restart.
pub mod jsonl;
pub mod ocsf;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::Context as _;
use serde::Deserialize;
use tracing::{info, warn};

use crate::api::{EventFilter, EventHub, Subscription, filter::EventKind, proto};
use jsonl::LineWriter;

/// The `outputs` section of the configuration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutputsConfig {
    /// OCSF JSON lines; off when absent or null.
    #[serde(default)]
    pub jsonl: Option<JsonlConfig>,
}

/// `outputs.jsonl`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JsonlConfig {
    /// `stdout`, or the absolute path of the live file.
    pub path: PathBuf,
    /// The live file is rotated before it would grow past this size.
    #[serde(default = "JsonlConfig::default_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept (`<path>.1` newest … `<path>.<keep>` oldest).
    #[serde(default = "JsonlConfig::default_keep")]
    pub keep: u32,
}

impl JsonlConfig {
    /// Smallest `maxBytes`: below this a file would hold a handful of events.
    pub const MIN_MAX_BYTES: u64 = 4096;
    /// Most rotated files kept.
    pub const MAX_KEEP: u32 = 1000;

    fn default_max_bytes() -> u64 {
        100 << 20
    }

    fn default_keep() -> u32 {
        5
    }

    fn is_stdout(&self) -> bool {
        self.path.as_os_str() == "stdout"
    }
}

impl OutputsConfig {
    /// Checks what the parser cannot; the message names the setting and the bad value.
    pub fn validate(&self) -> Result<(), String> {
        let Some(jsonl) = &self.jsonl else {
            return Ok(());
        };
        if !jsonl.is_stdout() && !jsonl.path.is_absolute() {
            return Err(format!(
                "outputs.jsonl.path is {:?}: give `stdout` or an absolute file path",
                jsonl.path
            ));
        }
        if jsonl.max_bytes < JsonlConfig::MIN_MAX_BYTES {
            return Err(format!(
                "outputs.jsonl.maxBytes is {}: it must be at least {}",
                jsonl.max_bytes,
                JsonlConfig::MIN_MAX_BYTES
            ));
        }
        if jsonl.keep > JsonlConfig::MAX_KEEP {
            return Err(format!(
                "outputs.jsonl.keep is {}: at most {} rotated files are kept",
                jsonl.keep,
                JsonlConfig::MAX_KEEP
            ));
        }
        Ok(())
    }

    /// Whether an output writes to standard output (which then carries nothing else).
    pub fn uses_stdout(&self) -> bool {
        self.jsonl.as_ref().is_some_and(JsonlConfig::is_stdout)
    }
}

/// What one sink has done, for metrics.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Records written.
    pub written: AtomicU64,
    /// Events lost because the sink's queue was full.
    pub dropped: AtomicU64,
    /// Records lost because writing failed (disk full, closed stdout, ...).
    pub write_errors: AtomicU64,
    pub rotations: AtomicU64,
}

/// The running outputs.
#[derive(Debug, Default, Clone)]
pub struct Outputs {
    /// (output name, its counters).
    pub sinks: Vec<(&'static str, Arc<SinkStats>)>,
}

impl Outputs {
    /// Hub subscriptions held by outputs (the hub's other subscribers are gRPC clients).
    pub fn subscriptions(&self) -> usize {
        self.sinks.len()
    }

    /// Events the outputs lost to full queues, summed.
    pub fn dropped(&self) -> u64 {
        self.sinks
            .iter()
            .map(|(_, stats)| stats.dropped.load(Ordering::Relaxed))
            .sum()
    }
}

/// Opens the configured outputs and starts feeding them from `hub`. Fails (naming the file)
/// when a file cannot be opened, before anything else starts.
pub fn start(config: &OutputsConfig, hub: &EventHub) -> anyhow::Result<Outputs> {
    let mut outputs = Outputs::default();
    let Some(jsonl) = &config.jsonl else {
        return Ok(outputs);
    };
    let writer: Box<dyn LineWriter> = if jsonl.is_stdout() {
        Box::new(jsonl::Stdout::new())
    } else {
        Box::new(
            jsonl::RotatingFile::open(&jsonl.path, jsonl.max_bytes, jsonl.keep)
                .with_context(|| format!("opening outputs.jsonl.path {}", jsonl.path.display()))?,
        )
    };
    let stats = Arc::new(SinkStats::default());
    let subscription = hub.subscribe(ocsf_filter());
    let runtime = tokio::runtime::Handle::current();
    let sink_stats = Arc::clone(&stats);
    // A thread of its own: file and pipe writes block, and must not hold up the runtime.
    std::thread::Builder::new()
        .name("custos-jsonl".into())
        .spawn(move || run_jsonl(&runtime, subscription, writer, &sink_stats))
        .context("starting the jsonl output thread")?;
    info!(path = %jsonl.path.display(), max_bytes = jsonl.max_bytes, keep = jsonl.keep,
        ocsf = ocsf::VERSION, "jsonl output started");
    outputs.sinks.push(("jsonl", stats));
    Ok(outputs)
}

/// The kinds that have an OCSF class: the sink's queue never holds events it would skip.
fn ocsf_filter() -> EventFilter {
    let kinds = EventKind::ALL
        .into_iter()
        .filter(|kind| !matches!(kind, EventKind::Syscall | EventKind::Drop))
        .map(|kind| kind.name().to_owned())
        .collect();
    EventFilter::try_from_proto(&proto::EventFilter {
        kinds,
        ..Default::default()
    })
    .expect("event kind names are valid filter kinds")
}

/// Most records written between two flushes.
const BATCH: usize = 512;

fn run_jsonl(
    runtime: &tokio::runtime::Handle,
    mut subscription: Subscription,
    mut writer: Box<dyn LineWriter>,
    stats: &SinkStats,
) {
    let mut line = Vec::with_capacity(4096);
    let mut failing = false;
    while let Some(first) = runtime.block_on(subscription.recv()) {
        let mut next = Some(first);
        let mut batch = 0;
        while let Some(event) = next.take() {
            if let Some(record) = ocsf::to_ocsf(&event) {
                line.clear();
                // A Value always serializes.
                let _ = serde_json::to_writer(&mut line, &record);
                line.push(b'\n');
                if note(writer.write_line(&line), &mut failing, stats) {
                    stats.written.fetch_add(1, Ordering::Relaxed);
                }
            }
            batch += 1;
            if batch < BATCH {
                next = subscription.try_recv();
            }
        }
        note(writer.flush(), &mut failing, stats);
        stats.rotations.store(writer.rotations(), Ordering::Relaxed);
        stats
            .dropped
            .store(subscription.lagged(), Ordering::Relaxed);
    }
}

/// Counts a failed write, and logs once when writing starts failing and once when it works
/// again; returns whether it worked.
fn note(result: std::io::Result<()>, failing: &mut bool, stats: &SinkStats) -> bool {
    match result {
        Ok(()) => {
            if std::mem::take(failing) {
                info!("jsonl output writes again");
            }
            true
        }
        Err(error) => {
            stats.write_errors.fetch_add(1, Ordering::Relaxed);
            if !std::mem::replace(failing, true) {
                warn!(%error, "jsonl output cannot write; dropping records until it can");
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::proto::event::Body;

    fn config(text: &str) -> Result<OutputsConfig, String> {
        let config: OutputsConfig = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        config.validate().map(|()| config)
    }

    #[test]
    fn jsonl_settings_parse_with_defaults_and_bad_values_are_named() {
        let parsed = config("jsonl: {path: /var/log/custos/events.jsonl}").unwrap();
        let jsonl = parsed.jsonl.unwrap();
        assert_eq!(jsonl.max_bytes, 100 << 20);
        assert_eq!(jsonl.keep, 5);
        assert!(config("jsonl: null").unwrap().jsonl.is_none());
        assert!(config("jsonl: {path: stdout}").unwrap().uses_stdout());

        let error = config("jsonl: {path: events.jsonl}").unwrap_err();
        assert!(error.contains("outputs.jsonl.path") && error.contains("events.jsonl"));
        let error = config("jsonl: {path: /x.jsonl, maxBytes: 10}").unwrap_err();
        assert!(error.contains("maxBytes is 10"), "{error}");
        let error = config("jsonl: {path: /x.jsonl, keep: 5000}").unwrap_err();
        assert!(error.contains("keep is 5000"), "{error}");
        let error = config("jsonl: {path: /x.jsonl, maxbytes: 10}").unwrap_err();
        assert!(error.contains("maxbytes"), "{error}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_sink_writes_ocsf_lines_of_the_events_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/custos.jsonl");
        let hub = EventHub::new(64);
        let outputs = start(
            &OutputsConfig {
                jsonl: Some(JsonlConfig {
                    path: path.clone(),
                    max_bytes: 1 << 20,
                    keep: 1,
                }),
            },
            &hub,
        )
        .unwrap();
        assert_eq!(outputs.subscriptions(), 1);
        for body in [
            Body::Exec(proto::ExecEvent {
                path: "/bin/true".into(),
                ..Default::default()
            }),
            Body::Syscall(proto::SyscallEvent::default()),
            Body::Exit(proto::ExitEvent::default()),
        ] {
            hub.publish(Arc::new(proto::Event {
                body: Some(body),
                ..Default::default()
            }));
        }
        let stats = Arc::clone(&outputs.sinks[0].1);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while stats.written.load(Ordering::Relaxed) < 2 {
            assert!(std::time::Instant::now() < deadline, "nothing written");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let classes: Vec<u64> = text
            .lines()
            .map(|line| {
                serde_json::from_str::<serde_json::Value>(line).unwrap()["class_uid"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        // The syscall event has no OCSF class and is not written.
        assert_eq!(classes, [1007, 1007]);
    }
}
