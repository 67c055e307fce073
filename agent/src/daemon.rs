//! `custos agent`: wires the sensors, container attribution, the pipeline and the gRPC API
//! together, and runs until SIGINT or SIGTERM.
//!
//! Cheap checks of the operator's input (configuration, state dir, socket path) come before
//! loading anything into the kernel, so a typo never leaves probes behind or half a daemon.
use std::{path::Path, sync::Arc};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};

use crate::{
    api::{
        hub::EventHub,
        proto,
        server::{ApiServer, StatusProvider},
    },
    cli::AgentArgs,
    config::Config,
    containers::ContainerRegistry,
    pipeline::{self, BootClock, Enricher},
    sensors::Sensors,
};

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    init_logging();
    let config = Config::for_agent(&args)?;
    prepare_state_dir(&config.state_dir)?;
    let node = node_name();

    let hub = EventHub::new(config.events.subscriber_queue);
    let sensors: Arc<std::sync::Mutex<Option<Sensors>>> = Arc::default();
    let api = ApiServer::bind(
        hub.clone(),
        status_provider(node.clone(), Arc::clone(&sensors)),
        &config.api.unix_socket,
        config.api.tcp,
    )
    .await?;

    let (loaded, reader) =
        Sensors::load(std::process::id()).context("starting the kernel sensors")?;
    *sensors
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(loaded);
    let containers = ContainerRegistry::start(config.containerd.socket.clone()).await?;
    let enricher = Enricher {
        node: node.clone(),
        clock: BootClock::now(),
        containers,
    };
    let pipeline = tokio::spawn(pipeline::run(reader, enricher, hub));

    info!(
        node,
        socket = %api.unix_path().display(),
        tcp = ?api.tcp_addr(),
        state_dir = %config.state_dir.display(),
        "custos agent running"
    );
    println!(
        "custos agent listening on unix:{}",
        api.unix_path().display()
    );
    if let Some(addr) = api.tcp_addr() {
        println!("custos agent listening on tcp:{addr}");
    }

    let result = api.serve(shutdown_signal()).await;
    pipeline.abort();
    if let Err(error) = &result {
        error!("gRPC API failed: {error:#}");
    }
    info!("custos agent stopped");
    result
}

/// Logs go to stderr; `RUST_LOG` picks the level (default: info).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Creates the state dir if needed and proves it is writable, so that state is never lost to
/// a directory we only find out later we cannot write.
fn prepare_state_dir(dir: &Path) -> anyhow::Result<()> {
    let usable = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let probe = dir.join(".custos-write-check");
        std::fs::write(&probe, b"ok")?;
        std::fs::remove_file(&probe)
    };
    usable().with_context(|| format!("state dir {} is not usable", dir.display()))
}

fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn status_provider(
    node: String,
    sensors: Arc<std::sync::Mutex<Option<Sensors>>>,
) -> StatusProvider {
    Arc::new(move || {
        let counters = sensors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .and_then(|sensors| sensors.counters().ok());
        let ring_buffers = counters
            .map(|counters| {
                vec![proto::RingBufferStats {
                    name: "events".into(),
                    events: counters.events_sent,
                    drops: counters.events_dropped,
                }]
            })
            .unwrap_or_default();
        proto::AgentStatus {
            version: env!("CARGO_PKG_VERSION").into(),
            node: node.clone(),
            ring_buffers,
            ..Default::default()
        }
    })
}

async fn shutdown_signal() {
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        error!("cannot install signal handlers; stop the agent with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => info!("SIGINT received, stopping"),
        _ = terminate.recv() => info!("SIGTERM received, stopping"),
    }
}
