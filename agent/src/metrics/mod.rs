//! Prometheus metrics: `GET /metrics` on a plain-HTTP address of its own (off unless
//! `metrics.listen` is set), in the text exposition format.
//!
//! Two kinds of numbers: counters kept here from every event the hub publishes (events by
//! kind, deviations and blocks by kind and verdict), and values read from their owners at
//! scrape time (kernel counters, BPF map fill levels, profiles by status, the hub's
//! subscribers and losses, the outputs' counters), so that nothing is counted twice.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `custos_agent_info` | gauge (1) | `version`, `node` |
//! | `custos_events_total` | counter | `kind` (exec, exit, fork, open, connect, listen, accept, syscall, drop, deviation) |
//! | `custos_ring_buffer_events_total` | counter | `ring` (process, activity): records the kernel sent |
//! | `custos_ring_buffer_dropped_total` | counter | `ring`: records lost to a full ring |
//! | `custos_ring_buffer_suppressed_total` | counter | `ring`: identical actions counted, not sent (activity only) |
//! | `custos_kernel_pending_dropped_total` | counter | `table` (exec, open, network): calls lost between entry and exit |
//! | `custos_kernel_enforced_total` | counter | `action` (killed, blocked): actions stopped in the kernel |
//! | `custos_kernel_allowed_total` | counter | (none): known-good actions of judged containers, not sent |
//! | `custos_bpf_map_entries`, `custos_bpf_map_capacity` | gauge | `map` |
//! | `custos_profiles` | gauge | `status` (learning, stable) |
//! | `custos_deviations_total` | counter | `kind`, `verdict` (alerted, blocked, killed) |
//! | `custos_blocks_total` | counter | `kind`, `verdict` (blocked, killed) |
//! | `custos_grpc_subscribers` | gauge | |
//! | `custos_grpc_subscriber_dropped_events_total` | counter | |
//! | `custos_output_events_total`, `_dropped_events_total`, `_write_errors_total`, `_rotations_total` | counter | `output` |
pub mod bpf_maps;
mod exposition;
mod http;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::Context as _;
use serde::Deserialize;

use crate::{
    api::{EventHub, filter::EventKind, proto, server::ProfilesApi},
    outputs::{Outputs, SinkStats},
    sensors::KernelCounters,
};
use bpf_maps::MapFill;
use exposition::Exposition;

/// The `metrics` section of the configuration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricsConfig {
    /// Address of the plain-HTTP `/metrics` endpoint, e.g. `127.0.0.1:9447`; off when null.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

/// Counters kept from the published events.
#[derive(Debug, Default)]
pub struct EventCounters {
    /// By kind, in the order of [`EventKind::ALL`].
    by_kind: [AtomicU64; EventKind::ALL.len()],
    /// Occurrences of deviations by (kind, verdict); rare, so a lock is fine.
    deviations: Mutex<BTreeMap<(String, String), u64>>,
}

impl EventCounters {
    /// Counts one published event; cheap (an atomic add, a lock only for deviations).
    pub fn observe(&self, event: &proto::Event) {
        let Some(kind) = EventKind::of(event) else {
            return;
        };
        if let Some(slot) = EventKind::ALL.iter().position(|k| *k == kind) {
            self.by_kind[slot].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(proto::event::Body::Deviation(deviation)) = &event.body {
            let mut deviations = self
                .deviations
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *deviations
                .entry((deviation.kind.clone(), deviation.verdict.clone()))
                .or_default() += deviation.count.max(1);
        }
    }

    fn deviations(&self) -> BTreeMap<(String, String), u64> {
        self.deviations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Where scrape-time values come from.
pub struct Sources {
    pub node: String,
    pub hub: EventHub,
    /// Kernel counters; `None` until the sensors are loaded.
    pub kernel: Box<dyn Fn() -> Option<KernelCounters> + Send + Sync>,
    /// Fill levels of the BPF maps (blocking: map keys are walked with syscalls).
    pub bpf_maps: Box<dyn Fn() -> Vec<MapFill> + Send + Sync>,
    pub profiles: Option<Arc<dyn ProfilesApi>>,
    pub outputs: Outputs,
}

/// The `/metrics` endpoint, bound but not yet serving.
pub struct MetricsServer {
    listener: tokio::net::TcpListener,
    counters: Arc<EventCounters>,
}

impl MetricsServer {
    /// Binds `config.listen` (so that a taken port fails the start, naming the address) and
    /// starts counting what `hub` publishes. `None` when metrics are off.
    pub async fn bind(config: &MetricsConfig, hub: &EventHub) -> anyhow::Result<Option<Self>> {
        let Some(addr) = config.listen else {
            return Ok(None);
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics endpoint (metrics.listen) {addr}"))?;
        let counters = Arc::new(EventCounters::default());
        let observer = Arc::clone(&counters);
        if hub
            .set_observer(Box::new(move |event| observer.observe(event)))
            .is_err()
        {
            anyhow::bail!("the event hub already has an observer: metrics would miss events");
        }
        Ok(Some(Self { listener, counters }))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Answers scrapes until the task is dropped.
    pub async fn serve(self, sources: Sources) {
        let metrics = Arc::new(Metrics {
            counters: self.counters,
            sources,
        });
        http::serve(self.listener, metrics).await;
    }
}

/// Everything a scrape reads.
pub(crate) struct Metrics {
    counters: Arc<EventCounters>,
    sources: Sources,
}

impl Metrics {
    /// The whole exposition, read now.
    pub(crate) async fn render(self: &Arc<Self>) -> String {
        let profiles = match &self.sources.profiles {
            Some(profiles) => Some(profiles.list().await),
            None => None,
        };
        let maps = {
            let metrics = Arc::clone(self);
            tokio::task::spawn_blocking(move || (metrics.sources.bpf_maps)())
                .await
                .unwrap_or_default()
        };
        let mut out = Exposition::default();
        self.render_agent(&mut out);
        self.render_events(&mut out);
        render_kernel(&mut out, (self.sources.kernel)());
        render_maps(&mut out, &maps);
        if let Some(profiles) = profiles {
            render_profiles(&mut out, &profiles);
        }
        self.render_deviations(&mut out);
        self.render_subscribers(&mut out);
        out.finish()
    }

    fn render_agent(&self, out: &mut Exposition) {
        out.family(
            "custos_agent_info",
            "gauge",
            "The agent's version and node (value 1).",
        );
        out.sample(
            "custos_agent_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("node", &self.sources.node),
            ],
            1,
        );
    }

    fn render_events(&self, out: &mut Exposition) {
        out.family(
            "custos_events_total",
            "counter",
            "Events published to subscribers and outputs, by kind.",
        );
        for (kind, count) in EventKind::ALL.iter().zip(&self.counters.by_kind) {
            out.sample(
                "custos_events_total",
                &[("kind", kind.name())],
                count.load(Ordering::Relaxed),
            );
        }
    }

    fn render_deviations(&self, out: &mut Exposition) {
        let deviations = self.counters.deviations();
        out.family(
            "custos_deviations_total",
            "counter",
            "Actions outside a workload's profile, by kind and verdict (alerted, blocked, killed).",
        );
        for ((kind, verdict), count) in &deviations {
            out.sample(
                "custos_deviations_total",
                &[("kind", kind), ("verdict", verdict)],
                *count,
            );
        }
        out.family(
            "custos_blocks_total",
            "counter",
            "Deviations that were prevented, by kind and verdict (blocked, killed).",
        );
        for ((kind, verdict), count) in &deviations {
            if verdict != "alerted" {
                out.sample(
                    "custos_blocks_total",
                    &[("kind", kind), ("verdict", verdict)],
                    *count,
                );
            }
        }
    }

    fn render_subscribers(&self, out: &mut Exposition) {
        let hub = self.sources.hub.stats();
        let outputs = &self.sources.outputs;
        // Outputs subscribe to the hub too; the rest are gRPC clients.
        out.family(
            "custos_grpc_subscribers",
            "gauge",
            "gRPC clients subscribed to events now.",
        );
        out.sample(
            "custos_grpc_subscribers",
            &[],
            hub.subscribers.saturating_sub(outputs.subscriptions()) as u64,
        );
        out.family(
            "custos_grpc_subscriber_dropped_events_total",
            "counter",
            "Events gRPC subscribers lost because they read too slowly (their queue was full).",
        );
        out.sample(
            "custos_grpc_subscriber_dropped_events_total",
            &[],
            hub.lagged_events.saturating_sub(outputs.dropped()),
        );
        type Field = fn(&SinkStats) -> &AtomicU64;
        let families: [(&str, &str, Field); 4] = [
            (
                "custos_output_events_total",
                "Records an output wrote.",
                |s| &s.written,
            ),
            (
                "custos_output_dropped_events_total",
                "Events an output lost because its queue was full.",
                |s| &s.dropped,
            ),
            (
                "custos_output_write_errors_total",
                "Records an output could not write.",
                |s| &s.write_errors,
            ),
            (
                "custos_output_rotations_total",
                "Files an output rotated.",
                |s| &s.rotations,
            ),
        ];
        for (name, help, field) in families {
            out.family(name, "counter", help);
            for (output, stats) in &outputs.sinks {
                out.sample(
                    name,
                    &[("output", output)],
                    field(stats).load(Ordering::Relaxed),
                );
            }
        }
    }
}

fn render_kernel(out: &mut Exposition, counters: Option<KernelCounters>) {
    let Some(c) = counters else {
        return;
    };
    out.family(
        "custos_ring_buffer_events_total",
        "counter",
        "Records the kernel programs sent through each ring buffer.",
    );
    out.sample(
        "custos_ring_buffer_events_total",
        &[("ring", "process")],
        c.events_sent,
    );
    out.sample(
        "custos_ring_buffer_events_total",
        &[("ring", "activity")],
        c.activity_sent,
    );
    out.family(
        "custos_ring_buffer_dropped_total",
        "counter",
        "Records lost because a ring buffer was full.",
    );
    out.sample(
        "custos_ring_buffer_dropped_total",
        &[("ring", "process")],
        c.events_dropped,
    );
    out.sample(
        "custos_ring_buffer_dropped_total",
        &[("ring", "activity")],
        c.activity_dropped,
    );
    out.family(
        "custos_ring_buffer_suppressed_total",
        "counter",
        "Identical actions counted in the kernel instead of sent (process lifecycle records are \
         never suppressed).",
    );
    out.sample(
        "custos_ring_buffer_suppressed_total",
        &[("ring", "process")],
        0,
    );
    out.sample(
        "custos_ring_buffer_suppressed_total",
        &[("ring", "activity")],
        c.repeats_suppressed,
    );
    out.family(
        "custos_kernel_pending_dropped_total",
        "counter",
        "Syscalls not reported because their arguments were lost between entry and exit: exec \
         entries not kept (table full), opens and network calls whose saved registers could not \
         be read.",
    );
    for (table, value) in [
        ("exec", c.pending_exec_dropped),
        ("open", c.open_args_lost),
        ("network", c.net_args_lost),
    ] {
        out.sample(
            "custos_kernel_pending_dropped_total",
            &[("table", table)],
            value,
        );
    }
    out.family(
        "custos_kernel_enforced_total",
        "counter",
        "Actions stopped in the kernel (enforce): processes killed for an exec or open, network \
         calls failed with EPERM (blocked), execs and opens failed with EPERM by BPF LSM \
         (lsm_denied).",
    );
    out.sample(
        "custos_kernel_enforced_total",
        &[("action", "killed")],
        c.processes_killed,
    );
    out.sample(
        "custos_kernel_enforced_total",
        &[("action", "blocked")],
        c.network_blocked,
    );
    out.sample(
        "custos_kernel_enforced_total",
        &[("action", "lsm_denied")],
        c.lsm_denied,
    );
    out.family(
        "custos_kernel_allowed_total",
        "counter",
        "Actions of judged containers the kernel found in their profile and did not send.",
    );
    out.sample("custos_kernel_allowed_total", &[], c.allowed_in_kernel);
    out.family(
        "custos_syscall_sets_full_total",
        "counter",
        "Syscalls of containers not recorded in the kernel because its syscall-set map was full.",
    );
    out.sample("custos_syscall_sets_full_total", &[], c.syscall_sets_full);
}

fn render_maps(out: &mut Exposition, maps: &[MapFill]) {
    out.family(
        "custos_bpf_map_entries",
        "gauge",
        "Entries in each hash map of the kernel programs.",
    );
    for map in maps {
        out.sample(
            "custos_bpf_map_entries",
            &[("map", &map.name)],
            u64::from(map.entries),
        );
    }
    out.family(
        "custos_bpf_map_capacity",
        "gauge",
        "Most entries each hash map can hold (LRU maps evict the oldest beyond it).",
    );
    for map in maps {
        out.sample(
            "custos_bpf_map_capacity",
            &[("map", &map.name)],
            u64::from(map.capacity),
        );
    }
}

fn render_profiles(out: &mut Exposition, profiles: &[proto::ProfileSummary]) {
    let mut by_status: BTreeMap<&str, u64> = [("learning", 0), ("stable", 0)].into();
    for profile in profiles {
        *by_status.entry(profile.status.as_str()).or_default() += 1;
    }
    out.family("custos_profiles", "gauge", "Behaviour profiles by status.");
    for (status, count) in by_status {
        out.sample("custos_profiles", &[("status", status)], count);
    }
}

#[cfg(test)]
mod tests;
