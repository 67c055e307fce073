//! `custos agent`: wires the sensors, container attribution, the pipeline and the gRPC API
//! together, and runs until SIGINT or SIGTERM.
//!
//! Cheap checks of the operator's input (configuration, state dir, socket path) come before
//! loading anything into the kernel, so a typo never leaves probes behind or half a daemon.
use std::{path::Path, sync::Arc, time::Duration};

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
    config::{self, Config},
    containers::ContainerRegistry,
    enforcement::{self, Enforcer, Mechanism},
    judge::Judge,
    learning::Learner,
    metrics::{self, MetricsServer, bpf_maps},
    outputs,
    pipeline::{self, BootClock, Enricher},
    processes::ProcessTable,
    sensors::{
        KernelCounters, PolicyMaps, SensorOptions, Sensors, TracedCgroups,
        syscalls::{self, SyscallSets},
    },
};

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    init_logging();
    let config = Config::for_agent(&args)?;
    prepare_state_dir(&config.state_dir)?;
    let node = node_name();

    let hub = EventHub::new(config.events.subscriber_queue);
    let metrics = MetricsServer::bind(&config.metrics, &hub).await?;
    let outputs = outputs::start(&config.outputs, &hub)?;
    let sensors: SharedSensors = Arc::default();
    let api = ApiServer::bind(
        hub.clone(),
        status_provider(node.clone(), Arc::clone(&sensors)),
        &config.api.unix_socket,
        crate::api::tls::tcp_endpoint(&config.api)?,
    )
    .await?;

    // The process table is read from /proc before the sensors attach: a process that starts
    // in between is in both, which is harmless; the other order would miss it.
    let processes = Arc::new(ProcessTable::from_proc());
    let (mut loaded, readers, traced) = Sensors::load(SensorOptions {
        agent_pid: std::process::id(),
        trace_host: config.sensors.trace_host,
        repeat_window: Duration::from_millis(config.sensors.repeat_window_ms),
    })
    .context("starting the kernel sensors")?;
    let syscall_map = syscalls::open_kernel_map_or_warn(loaded.ebpf());
    let syscall_rules = syscalls::open_rule_maps_or_warn(loaded.ebpf());
    let policy_maps = attach_enforcement(&mut loaded);
    *sensors
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(loaded);
    let traced = Arc::new(traced);
    let containers = ContainerRegistry::start(config.containerd.socket.clone()).await?;
    trace_running_containers(&containers, &traced);
    let syscall_sets = Arc::new(SyscallSets::new(syscall_map, Arc::clone(&containers)));
    let api = api.with_syscalls(Arc::clone(&syscall_sets) as _);
    let config_updates = config::watch(args.config.clone(), config.clone(), {
        let args = args.clone();
        move |config| config.apply_flags(&args)
    });
    let learner = Learner::open(
        &config.state_dir,
        config_updates.clone(),
        Arc::clone(&containers),
    )
    .context("opening the profile store")?;
    let enforcer = policy_maps.map(|maps| {
        Enforcer::new(
            maps,
            syscall_rules,
            Arc::clone(&learner),
            Arc::clone(&containers),
            config_updates.clone(),
        )
    });
    let api = api.with_profiles(Arc::clone(&learner) as _);
    let judge = Judge::new(Arc::clone(&learner), hub.clone(), config_updates);
    let metrics_addr = metrics.as_ref().and_then(|server| server.local_addr().ok());
    let metrics_task = metrics.map(|server| {
        tokio::spawn(server.serve(metrics::Sources {
            node: node.clone(),
            hub: hub.clone(),
            kernel: Box::new(kernel_counters(Arc::clone(&sensors))),
            bpf_maps: Box::new({
                let (sensors, traced) = (Arc::clone(&sensors), Arc::clone(&traced));
                move || bpf_maps::fill_levels(&sensors, &traced)
            }),
            profiles: Some(Arc::clone(&learner) as _),
            outputs,
        }))
    });
    let clock = BootClock::now();
    let enricher = Arc::new(Enricher {
        node: node.clone(),
        clock,
        containers,
        processes,
        traced: Some(traced),
        syscalls: Some(Arc::clone(&syscall_sets)),
        learner: Some(Arc::clone(&learner)),
        judge: Some(Arc::clone(&judge)),
    });
    let enforcer_task = enforcer.map(|enforcer| tokio::spawn(enforcer.run()));
    let tasks = [
        tokio::spawn(pipeline::run(readers, enricher, hub.clone())),
        tokio::spawn(syscall_sets.sweep_loop()),
        tokio::spawn(Arc::clone(&learner).run_flusher()),
        tokio::spawn(judge.run_reporter()),
        tokio::spawn(pipeline::report_drops(
            kernel_counters(Arc::clone(&sensors)),
            node.clone(),
            clock,
            hub,
        )),
    ];

    info!(
        node,
        socket = %api.unix_path().display(),
        tcp = ?api.tcp_addr(),
        state_dir = %config.state_dir.display(),
        "custos agent running"
    );
    // With the jsonl output on stdout, stdout carries its records only.
    let announce = |line: String| match config.outputs.uses_stdout() {
        true => eprintln!("{line}"),
        false => println!("{line}"),
    };
    announce(format!(
        "custos agent listening on unix:{}",
        api.unix_path().display()
    ));
    if let Some(addr) = api.tcp_addr() {
        announce(format!("custos agent listening on tcp:{addr}"));
    }
    if let Some(addr) = metrics_addr {
        info!("metrics at http://{addr}/metrics");
        announce(format!("custos agent metrics at http://{addr}/metrics"));
    }

    if let Some(dir) = config.profiles.directory.clone() {
        tokio::spawn(Arc::clone(&learner).watch_directory(dir));
    }
    let result = api.serve(shutdown_signal()).await;
    for task in tasks.into_iter().chain(metrics_task).chain(enforcer_task) {
        task.abort();
    }
    // Whatever was learned since the last flush.
    learner.flush();
    if let Err(error) = &result {
        error!("gRPC API failed: {error:#}");
    }
    info!("custos agent stopped");
    result
}

/// Attaches the kernel's enforcement programs and returns the policy maps. Without them the
/// agent still runs, but says loudly that enforce mode can only alert.
fn attach_enforcement(sensors: &mut Sensors) -> Option<PolicyMaps> {
    let root = match crate::containers::cgroup::discover_cgroup2_mount() {
        Ok(mount) => mount.mount_point,
        Err(error) => {
            enforcement::set_mechanism(Mechanism::None);
            error!("{error:#}; enforcement is off: deviations can only be alerted");
            return None;
        }
    };
    match sensors.enforcement(&root, enforcement::bpf_lsm_active()) {
        Ok(maps) => {
            let (mechanism, how) = if maps.lsm {
                (Mechanism::LsmAndCgroup, "fail with EPERM")
            } else {
                (Mechanism::CgroupAndSignal, "are killed")
            };
            enforcement::set_mechanism(mechanism);
            info!(
                mechanism = mechanism.name(),
                "enforcement ready: network calls outside a profile fail with EPERM, execs and \
                 opens outside a profile {how}"
            );
            Some(maps)
        }
        Err(error) => {
            enforcement::set_mechanism(Mechanism::None);
            error!(
                "{:#}; enforcement is off: deviations can only be alerted",
                anyhow::Error::new(error)
            );
            None
        }
    }
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

type SharedSensors = Arc<std::sync::Mutex<Option<Sensors>>>;

/// Reads the kernel counters; `None` until the sensors are loaded.
fn kernel_counters(sensors: SharedSensors) -> impl Fn() -> Option<KernelCounters> {
    move || {
        sensors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .and_then(|sensors| sensors.counters().ok())
    }
}

/// Containers already running when the agent starts have their activity traced at once
/// (new ones are traced from their first event).
fn trace_running_containers(containers: &ContainerRegistry, traced: &TracedCgroups) {
    for cgroup_id in containers.cgroups().container_cgroup_ids() {
        traced.trace(cgroup_id);
    }
}

fn status_provider(node: String, sensors: SharedSensors) -> StatusProvider {
    let counters = kernel_counters(sensors);
    Arc::new(move || {
        let counters = counters();
        let ring_buffers = counters
            .map(|counters| {
                vec![
                    proto::RingBufferStats {
                        name: "process".into(),
                        events: counters.events_sent,
                        drops: counters.events_dropped,
                    },
                    proto::RingBufferStats {
                        name: "activity".into(),
                        events: counters.activity_sent,
                        drops: counters.activity_dropped,
                    },
                ]
            })
            .unwrap_or_default();
        proto::AgentStatus {
            version: env!("CARGO_PKG_VERSION").into(),
            node: node.clone(),
            ring_buffers,
            repeats_suppressed: counters.map_or(0, |c| c.repeats_suppressed),
            enforcement: enforcement::mechanism()
                .map(|m| m.name().to_owned())
                .unwrap_or_default(),
            ..Default::default()
        }
    })
}

/// `custos bench-floor`: empty programs on every hook the sensors use, until SIGINT or
/// SIGTERM; prints `attached` once they are (`cargo xtask bench` waits for that line).
pub async fn bench_floor() -> anyhow::Result<()> {
    let floor = crate::sensors::attach_floor().context("attaching the empty programs")?;
    println!("attached");
    shutdown_signal().await;
    drop(floor);
    Ok(())
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
