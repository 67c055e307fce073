//! `cargo xtask bench`: what the agent costs the workloads it watches, how many events it
//! delivers, and how much memory it takes.
//!
//! * Overhead: the same workload (`tests/workloads/bench.c`, static, in a real containerd
//!   container) runs with the agent attached (running, with one gRPC subscriber draining every
//!   event), not attached (no agent), and attached with the workload learned and in `enforce`
//!   mode (under kernel policy, see `bench/enforce.rs`), in a different order each round, for
//!   several rounds; the ratios of the medians of the workload's own ns/op to the not-attached
//!   median are reported.
//! * Throughput: a container offers events at increasing rates; one subscriber counts what it
//!   receives, and `GetStatus` gives what was lost in the kernel and in the subscriber's queue.
//! * Agent RSS from /proc.
//!
//! Results go to stdout (markdown), `docs/bench/latest.md`, `docs/bench/latest.json`, and the
//! README's benchmark section (between its `bench:start` / `bench:end` markers).

mod enforce;
mod grpc;

use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::cmd::{self, note, step};

pub struct Options {
    /// Rounds of (attached, detached) pairs.
    pub rounds: usize,
    /// Seconds each offered-load step of the throughput test lasts.
    pub storm_seconds: f64,
}

/// One overhead workload: a mode of bench.c and its iteration count.
struct Workload {
    mode: &'static str,
    what: &'static str,
    iterations: u64,
    /// Ratio attached/detached (and enforced/detached) not to exceed.
    target: f64,
}

/// Iteration counts give roughly half a second of timed loop each on the 2-core reference
/// machine; bench.c also runs a tenth of them untimed first.
const WORKLOADS: &[Workload] = &[
    Workload {
        mode: "open",
        what: "open+close one file",
        iterations: 100_000,
        target: 1.10,
    },
    Workload {
        mode: "exec",
        what: "fork+exec static binary",
        iterations: 400,
        target: 1.10,
    },
    Workload {
        mode: "connect",
        what: "TCP connect+close, loopback",
        iterations: 5_000,
        target: 1.10,
    },
    Workload {
        mode: "getppid",
        what: "getppid",
        iterations: 1_000_000,
        target: 1.5,
    },
];

const THROUGHPUT_TARGET: f64 = 200_000.0;

/// Event sources for the throughput test, preferred first: the first one whose events the
/// current agent reports is used. `kind` is the event kind one operation produces.
struct Source {
    storm: &'static str,
    kind: &'static str,
    probe_rate: u64,
    /// Offered operations/s, increasing; 0 means as fast as the workload goes.
    rates: &'static [u64],
}

const SOURCES: &[Source] = &[
    Source {
        storm: "open",
        kind: "open",
        probe_rate: 20_000,
        rates: &[25_000, 50_000, 100_000, 200_000, 400_000, 0],
    },
    Source {
        storm: "connect",
        kind: "network",
        probe_rate: 5_000,
        rates: &[5_000, 10_000, 20_000, 0],
    },
    Source {
        storm: "exec",
        kind: "*",
        probe_rate: 500,
        rates: &[250, 500, 1_000, 2_000, 0],
    },
];

pub fn run(root: &Path, target_dir: &Path, custos: &Path, options: &Options) -> Result<()> {
    let started = Instant::now();
    let load_before = loadavg();
    if options.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if !cmd::succeeds_within(Command::new("ctr").arg("version"), Duration::from_secs(10)) {
        bail!("containerd does not answer (`ctr version` failed): run `cargo xtask setup`");
    }
    let work = target_dir.join("bench");
    let rootfs = build_rootfs(root, &work)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let mut env = Env {
        runtime,
        custos: custos.to_owned(),
        work,
        rootfs,
        others_seen: 0,
    };

    step("enforce mode: learning the bench workload's profile");
    let enforce = enforce::learn(&mut env, root)?;

    step(format!(
        "overhead: {} workloads x {} rounds, attached, not attached and enforcing",
        WORKLOADS.len(),
        options.rounds
    ));
    let overhead = overhead(&mut env, &enforce, options.rounds)?;
    step("throughput: one subscriber, increasing offered load");
    let throughput = throughput(&mut env, options.storm_seconds)?;

    let load = format!("{load_before} before, {} after", loadavg());
    let report = report(
        &env,
        options,
        &overhead,
        &throughput,
        started.elapsed(),
        &load,
    );
    let markdown = markdown(&report);
    println!("{markdown}");
    let docs = root.join("docs/bench");
    fs::create_dir_all(&docs).with_context(|| format!("cannot create {}", docs.display()))?;
    fs::write(docs.join("latest.md"), &markdown)?;
    fs::write(
        docs.join("latest.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    note(format!(
        "wrote {} and latest.json",
        docs.join("latest.md").display()
    ));
    update_readme(&root.join("README.md"), &markdown)?;
    step(format!(
        "bench finished in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

struct Env {
    runtime: tokio::runtime::Runtime,
    custos: PathBuf,
    work: PathBuf,
    rootfs: PathBuf,
    /// Most other `custos agent` processes seen at once (they would disturb the numbers).
    others_seen: usize,
}

/// Compiles bench.c statically into a container root filesystem: /bin/bench and /tmp.
fn build_rootfs(root: &Path, work: &Path) -> Result<PathBuf> {
    let rootfs = work.join("rootfs");
    fs::create_dir_all(rootfs.join("bin"))?;
    fs::create_dir_all(rootfs.join("tmp"))?;
    let source = root.join("tests/workloads/bench.c");
    step("building the workload (static)");
    cmd::run(
        Command::new(std::env::var_os("CC").unwrap_or_else(|| "cc".into()))
            .args(["-static", "-O2", "-pthread", "-Wall", "-o"])
            .arg(rootfs.join("bin/bench"))
            .arg(&source),
    )?;
    Ok(rootfs)
}

/// A random 64-hex container id.
fn container_id() -> Result<String> {
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Runs `/bin/bench ARGS` in a new container (`ctr_args`: more `ctr run` options, such as
/// labels); returns its id and its stdout's last line.
fn run_container(env: &Env, args: &[String], ctr_args: &[String]) -> Result<(String, String)> {
    let id = container_id()?;
    let mut child = Command::new("ctr")
        .args([
            "run",
            "--rm",
            "--label",
            "io.kubernetes.pod.namespace=custos-bench",
        ])
        .args(ctr_args)
        .arg("--rootfs")
        .arg(&env.rootfs)
        .arg(&id)
        .arg("/bin/bench")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run `ctr run`")?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = Command::new("ctr")
                .args(["task", "kill", "-s", "SIGKILL", &id])
                .status();
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "`bench {}` in container {id} did not finish",
                args.join(" ")
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if !status.success() {
        bail!(
            "`bench {}` in container {id} failed ({status}): {}",
            args.join(" "),
            err.trim()
        );
    }
    let line = out.lines().last().unwrap_or_default().to_owned();
    Ok((id, line))
}

/// `custos bench-floor` running: empty programs on the agent's hooks.
struct Floor {
    child: Child,
}

impl Floor {
    fn start(env: &Env) -> Result<Self> {
        let mut child = Command::new(&env.custos)
            .arg("bench-floor")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot run `custos bench-floor`")?;
        let stdout = child.stdout.take().expect("piped");
        let mut first = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first)?;
        if first.trim() != "attached" {
            let status = child.wait()?;
            bail!("`custos bench-floor` did not attach its programs ({status})");
        }
        Ok(Self { child })
    }

    fn stop(mut self) -> Result<()> {
        // SAFETY: plain syscall on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait()?;
        if !status.success() {
            bail!("`custos bench-floor` failed: {status}");
        }
        Ok(())
    }
}

impl Drop for Floor {
    /// A bench that stops early must not leave the empty programs attached.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running agent with one subscriber counting everything it sends.
struct Agent {
    child: Child,
    socket: PathBuf,
    subscriber: Option<grpc::Subscriber>,
    log: PathBuf,
}

impl Agent {
    fn start(env: &mut Env) -> Result<Self> {
        Self::start_with(env, None, None)
    }

    /// Starts the agent with a configuration file (else the built-in one) and a state
    /// directory (else a fresh one).
    fn start_with(env: &mut Env, config: Option<&Path>, state_dir: Option<&Path>) -> Result<Self> {
        let dir = env.work.join("agent");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let socket = dir.join("s.sock");
        let log = env.work.join("agent.log");
        let mut command = Command::new(&env.custos);
        command.arg("agent");
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let child = command
            .arg("--listen-unix")
            .arg(&socket)
            .arg("--state-dir")
            .arg(state_dir.map_or_else(|| dir.join("st"), Path::to_owned))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("cannot start {}", env.custos.display()))?;
        let mut agent = Self {
            child,
            socket,
            subscriber: None,
            log,
        };
        // Loading (verifying) the eBPF programs can take a while.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = agent.child.try_wait()? {
                bail!(
                    "the agent exited at start ({status}); its log is {}",
                    agent.log.display()
                );
            }
            if env
                .runtime
                .block_on(grpc::get_status(&agent.socket))
                .is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent did not answer GetStatus within 120 s; its log is {}",
                    agent.log.display()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        let subscriber = env
            .runtime
            .block_on(async { grpc::Subscriber::start(&agent.socket).await })?;
        agent.subscriber = Some(subscriber);
        env.others_seen = env.others_seen.max(other_agents(agent.child.id()));
        Ok(agent)
    }

    fn subscriber(&self) -> &grpc::Subscriber {
        self.subscriber.as_ref().expect("started")
    }

    fn status(&self, env: &Env) -> Result<grpc::AgentStatus> {
        env.runtime.block_on(grpc::get_status(&self.socket))
    }

    /// VmRSS and VmHWM, in KiB.
    fn memory(&self) -> Result<(u64, u64)> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok((field("VmRSS:"), field("VmHWM:")))
    }

    /// Waits until no event has arrived for `quiet` (at most `max`).
    fn drain(&self, quiet: Duration, max: Duration) {
        let start = Instant::now();
        thread::sleep(quiet.min(max));
        while start.elapsed() < max {
            match self.subscriber().last_event() {
                Some(last) if last.elapsed() < quiet => thread::sleep(Duration::from_millis(50)),
                _ => break,
            }
        }
    }

    /// SIGTERM, then waits for the agent to exit (SIGKILL after 10 s).
    fn stop(mut self) -> Result<()> {
        let pid = libc::pid_t::try_from(self.child.id()).context("pid")?;
        // SAFETY: kill has no memory-safety preconditions; pid is our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                note("the agent did not stop within 10 s of SIGTERM: killing it");
                self.child.kill()?;
                break self.child.wait()?;
            }
            thread::sleep(Duration::from_millis(20));
        };
        if let Some(subscriber) = self.subscriber.take() {
            subscriber.abort();
        }
        if !status.success() {
            note(format!("the agent exited with {status} after SIGTERM"));
        }
        Ok(())
    }
}

impl Drop for Agent {
    /// On errors: no agent outlives the bench. (After [`Agent::stop`] the child is reaped and
    /// this does nothing.)
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Other running `custos agent` processes (not `ours`): their eBPF programs would make the
/// "not attached" runs attached too.
fn other_agents(ours: u32) -> usize {
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
                return false;
            };
            if pid == ours {
                return false;
            }
            let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
                return false;
            };
            let mut args = cmdline.split(|b| *b == 0);
            let exe = args.next().unwrap_or_default();
            exe.ends_with(b"custos") && args.next() == Some(b"agent".as_slice())
        })
        .count()
}

/// The four ways a workload runs in the overhead test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Condition {
    /// The agent runs with one subscriber; the bench containers are not profiled.
    Attached,
    /// No agent.
    Detached,
    /// The agent runs with one subscriber and the bench workload's learned profile enforced.
    Enforced,
    /// No agent, but empty programs on every hook the agent uses (`custos bench-floor`): what
    /// hooking alone costs on this kernel, the least any agent built on these hooks can cost.
    Floor,
}

impl Condition {
    fn letter(self) -> &'static str {
        match self {
            Condition::Attached => "A",
            Condition::Detached => "B",
            Condition::Enforced => "E",
            Condition::Floor => "F",
        }
    }
}

/// The orders of the four conditions, one per round in turn: each goes first in turn and
/// follows each other one.
const ORDERS: [[Condition; 4]; 4] = {
    use Condition::{Attached as A, Detached as B, Enforced as E, Floor as F};
    [[A, B, E, F], [B, F, A, E], [E, A, F, B], [F, E, B, A]]
};

/// One workload's samples (ns/op per run) and events received per run.
#[derive(Default)]
struct Samples {
    detached: Vec<f64>,
    attached: Vec<f64>,
    enforced: Vec<f64>,
    floor: Vec<f64>,
    attached_events: Vec<u64>,
    enforced_events: Vec<u64>,
}

struct Overhead {
    samples: Vec<Samples>,
    /// Agent memory (VmRSS, VmHWM KiB) at the end of each attached round.
    memory: Vec<(u64, u64)>,
    /// The kernel's enforcement counters of each enforce round's agent.
    counters: Vec<enforce::KernelCounters>,
    order: Vec<&'static str>,
}

fn overhead(env: &mut Env, enforcing: &enforce::Enforce, rounds: usize) -> Result<Overhead> {
    let mut result = Overhead {
        samples: WORKLOADS.iter().map(|_| Samples::default()).collect(),
        memory: Vec::new(),
        counters: Vec::new(),
        order: Vec::new(),
    };
    for round in 0..rounds {
        for condition in ORDERS[round % ORDERS.len()] {
            result.order.push(condition.letter());
            let agent = match condition {
                Condition::Attached => Some(Agent::start(env)?),
                Condition::Enforced => {
                    let agent = Agent::start_with(
                        env,
                        Some(&enforcing.config),
                        Some(&enforcing.state_dir),
                    )?;
                    // The learned profile is loaded, and compiled into the kernel's maps within
                    // one enforcement sync (200 ms).
                    enforce::wait_for_profile(env, &agent, false)?;
                    thread::sleep(Duration::from_millis(500));
                    Some(agent)
                }
                Condition::Detached | Condition::Floor => {
                    let others = other_agents(0);
                    env.others_seen = env.others_seen.max(others);
                    None
                }
            };
            let floor = match condition {
                Condition::Floor => Some(Floor::start(env)?),
                _ => None,
            };
            let ctr_args = if condition == Condition::Enforced {
                enforce::ctr_args()
            } else {
                Vec::new()
            };
            let mut ids = Vec::new();
            for (w, workload) in WORKLOADS.iter().enumerate() {
                let args = [workload.mode.to_owned(), workload.iterations.to_string()];
                let (id, line) = run_container(env, &args, &ctr_args).with_context(|| {
                    format!(
                        "{condition:?} run of the {} loop (agent log: {})",
                        workload.mode,
                        env.work.join("agent.log").display()
                    )
                })?;
                let ns = parse_ns_per_op(&line, workload)?;
                let samples = &mut result.samples[w];
                match condition {
                    Condition::Attached => samples.attached.push(ns),
                    Condition::Detached => samples.detached.push(ns),
                    Condition::Enforced => samples.enforced.push(ns),
                    Condition::Floor => samples.floor.push(ns),
                }
                ids.push(id);
            }
            if let Some(floor) = floor {
                floor.stop()?;
            }
            let Some(agent) = agent else { continue };
            agent.drain(Duration::from_millis(200), Duration::from_secs(3));
            for (w, id) in ids.iter().enumerate() {
                let seen = agent.subscriber().container(id).total;
                if seen == 0 {
                    bail!(
                        "the subscriber received no event from container {id} \
                         ({} workload, {condition:?}): is the agent tracing containers? log: {}",
                        WORKLOADS[w].mode,
                        agent.log.display()
                    );
                }
                let samples = &mut result.samples[w];
                if condition == Condition::Enforced {
                    samples.enforced_events.push(seen);
                } else {
                    samples.attached_events.push(seen);
                }
            }
            if condition == Condition::Enforced {
                let counters = enforce::kernel_counters(agent.child.id())?;
                if counters.processes_killed > 0 || counters.network_blocked > 0 {
                    note(format!(
                        "enforce round {}: the kernel stopped actions of the learned workload: \
                         {counters:?}",
                        round + 1
                    ));
                }
                result.counters.push(counters);
            } else {
                result.memory.push(agent.memory()?);
            }
            agent.stop()?;
        }
        let line: Vec<String> = WORKLOADS
            .iter()
            .zip(&result.samples)
            .map(|(w, s)| {
                let last = |v: &[f64]| v.last().copied().unwrap_or(0.0);
                format!(
                    "{} {:.0}/{:.0}/{:.0}/{:.0}",
                    w.mode,
                    last(&s.attached),
                    last(&s.enforced),
                    last(&s.floor),
                    last(&s.detached)
                )
            })
            .collect();
        note(format!(
            "round {}/{rounds} (ns/op attached/enforced/floor/detached): {}",
            round + 1,
            line.join(", ")
        ));
    }
    Ok(result)
}

/// `<mode> <n> <total_ns> <ns_per_op>` → ns/op.
fn parse_ns_per_op(line: &str, workload: &Workload) -> Result<f64> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    match fields.as_slice() {
        [mode, n, total, _] if *mode == workload.mode => {
            let n: f64 = n.parse()?;
            let total: f64 = total.parse()?;
            Ok(total / n)
        }
        _ => bail!("unexpected output of `bench {}`: {line:?}", workload.mode),
    }
}

struct Step {
    offered_ops: f64,
    achieved_ops: f64,
    seconds: f64,
    delivered: u64,
    kernel_drops: u64,
    lagged: u64,
    /// CPU used by the agent and by the subscriber (this process), in % of one core, over the
    /// step (storm and drain).
    agent_cpu: f64,
    subscriber_cpu: f64,
}

struct Throughput {
    source: &'static str,
    kind: &'static str,
    /// Events of `kind` per operation, from the probe.
    events_per_op: f64,
    probes: Vec<(String, f64)>,
    steps: Vec<Step>,
    memory: (u64, u64),
}

/// Runs `bench storm KIND RATE SECONDS`; returns (container id, ops, seconds).
fn storm(env: &Env, kind: &str, rate: u64, seconds: f64) -> Result<(String, f64, f64)> {
    let args = [
        "storm".to_owned(),
        kind.to_owned(),
        rate.to_string(),
        seconds.to_string(),
    ];
    let (id, line) = run_container(env, &args, &[])?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    match fields.as_slice() {
        ["storm", _, ops, total_ns, _] => Ok((id, ops.parse()?, total_ns.parse::<f64>()? / 1e9)),
        _ => bail!("unexpected output of `bench storm {kind}`: {line:?}"),
    }
}

/// User + system CPU time of process `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after "(comm)": state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}

fn count_of(counts: &grpc::ContainerCounts, kind: &str) -> u64 {
    if kind == "*" {
        counts.total
    } else {
        counts.by_kind.get(kind).copied().unwrap_or(0)
    }
}

fn throughput(env: &mut Env, seconds: f64) -> Result<Throughput> {
    let agent = Agent::start(env)?;
    // Which event source does this agent report? The first whose events show up.
    let mut chosen = None;
    let mut probes = Vec::new();
    for source in SOURCES {
        let (id, ops, _) = storm(env, source.storm, source.probe_rate, 0.5)?;
        agent.drain(Duration::from_millis(300), Duration::from_secs(5));
        let counts = agent.subscriber().container(&id);
        let per_op = count_of(&counts, source.kind) as f64 / ops.max(1.0);
        note(format!(
            "probe {}: {ops:.0} operations, {per_op:.2} {} events each",
            source.storm, source.kind
        ));
        probes.push((source.storm.to_owned(), per_op));
        if per_op >= 0.5 {
            chosen = Some((source, per_op));
            break;
        }
    }
    let Some((source, events_per_op)) = chosen else {
        bail!("no event source produced events in the throughput probe");
    };
    note(format!(
        "throughput source: {} storm ({events_per_op:.2} {} events per operation)",
        source.storm, source.kind
    ));
    let mut steps = Vec::new();
    for &rate in source.rates {
        let before = agent.status(env)?;
        let cpu_before = (
            cpu_seconds(agent.child.id()),
            cpu_seconds(std::process::id()),
        );
        let wall = Instant::now();
        let (id, ops, secs) = storm(env, source.storm, rate, seconds)?;
        agent.drain(Duration::from_millis(300), Duration::from_secs(10));
        let wall = wall.elapsed().as_secs_f64();
        let cpu_after = (
            cpu_seconds(agent.child.id()),
            cpu_seconds(std::process::id()),
        );
        let after = agent.status(env)?;
        let delivered = count_of(&agent.subscriber().container(&id), source.kind);
        let step = Step {
            offered_ops: rate as f64,
            achieved_ops: ops / secs,
            seconds: secs,
            delivered,
            kernel_drops: after.kernel_drops().saturating_sub(before.kernel_drops()),
            lagged: after
                .subscriber_lagged_events
                .saturating_sub(before.subscriber_lagged_events),
            agent_cpu: 100.0 * (cpu_after.0 - cpu_before.0) / wall,
            subscriber_cpu: 100.0 * (cpu_after.1 - cpu_before.1) / wall,
        };
        note(format!(
            "offered {} ops/s: ran {:.0} ops/s, delivered {:.0} events/s, kernel drops {}, \
             subscriber lag {}, agent CPU {:.0}%, subscriber CPU {:.0}%",
            if rate == 0 {
                "max".to_owned()
            } else {
                rate.to_string()
            },
            step.achieved_ops,
            step.delivered as f64 / step.seconds,
            step.kernel_drops,
            step.lagged,
            step.agent_cpu,
            step.subscriber_cpu
        ));
        steps.push(step);
    }
    let memory = agent.memory()?;
    agent.stop()?;
    Ok(Throughput {
        source: source.storm,
        kind: source.kind,
        events_per_op,
        probes,
        steps,
        memory,
    })
}

fn median(samples: &[f64]) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Bootstrap resamples behind [`ratio_interval`].
const BOOTSTRAP_RESAMPLES: usize = 2000;

/// A 90% bootstrap interval of `median(x) / median(base)`: both sample sets are resampled with
/// replacement and the 5th and 95th percentiles of the resampled ratios taken. The generator is
/// seeded from nothing but the samples, so a report's intervals can be recomputed from its JSON.
/// With a handful of rounds on a noisy machine, it tells whether a ratio's distance from its
/// target means anything.
fn ratio_interval(base: &[f64], x: &[f64]) -> (f64, f64) {
    if base.is_empty() || x.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    // splitmix64: small, good enough to draw indexes.
    let mut state = base
        .iter()
        .chain(x)
        .fold(0x9e37_79b9_7f4a_7c15_u64, |h, v| {
            h.rotate_left(7) ^ v.to_bits()
        });
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut resample = |samples: &[f64]| -> Vec<f64> {
        (0..samples.len())
            .map(|_| samples[(next() % samples.len() as u64) as usize])
            .collect()
    };
    let mut ratios: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| median(&resample(x)) / median(&resample(base)))
        .collect();
    ratios.sort_by(f64::total_cmp);
    let at = |q: f64| ratios[((ratios.len() - 1) as f64 * q).round() as usize];
    (at(0.05), at(0.95))
}

/// The 1-minute load average: other work on the machine disturbs the numbers.
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn text(cmd: &mut Command) -> String {
    cmd::output(cmd).unwrap_or_else(|_| "unknown".into())
}

fn cpu_model() -> String {
    let info = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    format!("{model} ({cores} cores)")
}

fn report(
    env: &Env,
    options: &Options,
    overhead: &Overhead,
    throughput: &Throughput,
    elapsed: Duration,
    load: &str,
) -> Value {
    let workloads: Vec<Value> = WORKLOADS
        .iter()
        .zip(&overhead.samples)
        .map(|(w, s)| {
            let (d, a, e, f) = (
                median(&s.detached),
                median(&s.attached),
                median(&s.enforced),
                median(&s.floor),
            );
            let (ratio, enforce_ratio, floor_ratio) = (a / d, e / d, f / d);
            let interval = |x: &[f64]| {
                let (low, high) = ratio_interval(&s.detached, x);
                json!([round3(low), round3(high)])
            };
            json!({
                "mode": w.mode,
                "workload": w.what,
                "iterations": w.iterations,
                "detached_ns_per_op": s.detached,
                "attached_ns_per_op": s.attached,
                "enforced_ns_per_op": s.enforced,
                "floor_ns_per_op": s.floor,
                "median_detached_ns": round1(d),
                "median_attached_ns": round1(a),
                "median_enforced_ns": round1(e),
                "median_floor_ns": round1(f),
                "ratio": round3(ratio),
                "enforce_ratio": round3(enforce_ratio),
                "floor_ratio": round3(floor_ratio),
                "ratio_interval_90": interval(&s.attached),
                "enforce_ratio_interval_90": interval(&s.enforced),
                "floor_ratio_interval_90": interval(&s.floor),
                "target_ratio_max": w.target,
                "pass": ratio <= w.target,
                "enforce_pass": enforce_ratio <= w.target,
                "events_received_per_attached_run": s.attached_events,
                "events_received_per_enforced_run": s.enforced_events,
            })
        })
        .collect();
    let counters = |f: fn(&enforce::KernelCounters) -> u64| {
        overhead.counters.iter().map(f).collect::<Vec<_>>()
    };
    let steps: Vec<Value> = throughput
        .steps
        .iter()
        .map(|s| {
            json!({
                "offered_ops_per_s": if s.offered_ops == 0.0 { Value::from("max") } else { Value::from(s.offered_ops) },
                "achieved_ops_per_s": s.achieved_ops.round(),
                "seconds": round3(s.seconds),
                "events_delivered": s.delivered,
                "delivered_events_per_s": (s.delivered as f64 / s.seconds).round(),
                "kernel_drops": s.kernel_drops,
                "subscriber_lagged_events": s.lagged,
                "agent_cpu_percent": s.agent_cpu.round(),
                "subscriber_cpu_percent": s.subscriber_cpu.round(),
            })
        })
        .collect();
    let best = best_lossless(throughput);
    let (rss, hwm) = overhead.memory.last().copied().unwrap_or((0, 0));
    json!({
        "date": text(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M:%S UTC"])),
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpu": cpu_model(),
        "agent": env.custos.display().to_string(),
        "agent_version": text(Command::new(&env.custos).arg("--version")),
        "rounds": options.rounds,
        "order": overhead.order.join(" "),
        "runtime_s": elapsed.as_secs(),
        "loadavg_1m": load,
        "other_agents_running": env.others_seen,
        "overhead": workloads,
        "enforce": {
            "learned_workload": "bench (namespace custos-bench)",
            "kernel_counters_per_enforce_round": {
                "allowed_in_kernel": counters(|c| c.allowed_in_kernel),
                "processes_killed": counters(|c| c.processes_killed),
                "network_blocked": counters(|c| c.network_blocked),
            },
        },
        "throughput": {
            "source": throughput.source,
            "event_kind": throughput.kind,
            "events_per_op": round3(throughput.events_per_op),
            "probes": throughput.probes.iter().map(|(k, v)| json!({"storm": k, "events_per_op": round3(*v)})).collect::<Vec<_>>(),
            "storm_seconds": options.storm_seconds,
            "steps": steps,
            "max_lossless_events_per_s": best.round(),
            "target_events_per_s_min": THROUGHPUT_TARGET,
            "pass": best >= THROUGHPUT_TARGET,
        },
        "memory_kib": {
            "after_overhead_round": {"vm_rss": rss, "vm_hwm": hwm},
            "after_throughput": {"vm_rss": throughput.memory.0, "vm_hwm": throughput.memory.1},
        },
    })
}

/// Highest delivered rate of a step with no loss at all.
fn best_lossless(throughput: &Throughput) -> f64 {
    throughput
        .steps
        .iter()
        .filter(|s| s.kernel_drops == 0 && s.lagged == 0)
        .map(|s| s.delivered as f64 / s.seconds)
        .fold(0.0, f64::max)
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn pass(ok: bool) -> &'static str {
    if ok { "pass" } else { "**FAIL**" }
}

fn markdown(r: &Value) -> String {
    let mut md = String::new();
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    md += &format!(
        "Measured {} on {}, kernel {}, `{}`; {} rounds (order {}), whole bench {} s; \
         1-min load average {}.\n\n",
        s(&r["date"]),
        s(&r["cpu"]),
        s(&r["kernel"]),
        s(&r["agent_version"]),
        r["rounds"],
        s(&r["order"]),
        r["runtime_s"],
        s(&r["loadavg_1m"])
    );
    if r["other_agents_running"].as_u64().unwrap_or(0) > 0 {
        md += &format!(
            "**Warning:** {} other `custos agent` process(es) ran during the bench; \
             \"not attached\" runs were not free of eBPF programs.\n\n",
            r["other_agents_running"]
        );
    }
    md += "Attached (A): the agent runs with one gRPC subscriber. Enforce (E): the same, with the \
           bench workload's profile learned beforehand and the workload in `enforce` mode, so its \
           loops run under kernel policy (the container waits 1 s before its loop). Floor (F): no \
           agent, but an empty program on every hook the agent uses (`custos bench-floor`): what \
           hooking alone costs on this kernel, and so the least any agent built on these hooks \
           can cost. Ratios are to the not-attached (B) median; in brackets, their 90% \
           bootstrap interval over the rounds' samples (how far run-to-run noise alone moves \
           them).\n\n";
    md += "| Workload (in a container) | Iterations | Not attached, median ns/op \
           | Attached, median ns/op | Attached ratio | Enforce, median ns/op | Enforce ratio \
           | Floor, median ns/op | Floor ratio | Target |\n";
    md += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let bracket = |v: &Value| format!("[{:.2}–{:.2}]", num(&v[0]), num(&v[1]));
    for w in r["overhead"].as_array().into_iter().flatten() {
        md += &format!(
            "| {} | {} | {:.1} | {:.1} | {:.3} {} {} | {:.1} | {:.3} {} {} | {:.1} | {:.3} {} | ≤ {:.2} |\n",
            s(&w["workload"]),
            w["iterations"],
            num(&w["median_detached_ns"]),
            num(&w["median_attached_ns"]),
            num(&w["ratio"]),
            bracket(&w["ratio_interval_90"]),
            pass(w["pass"].as_bool().unwrap_or(false)),
            num(&w["median_enforced_ns"]),
            num(&w["enforce_ratio"]),
            bracket(&w["enforce_ratio_interval_90"]),
            pass(w["enforce_pass"].as_bool().unwrap_or(false)),
            num(&w["median_floor_ns"]),
            num(&w["floor_ratio"]),
            bracket(&w["floor_ratio_interval_90"]),
            num(&w["target_ratio_max"]),
        );
    }
    let k = &r["enforce"]["kernel_counters_per_enforce_round"];
    let total = |v: &Value| -> u64 {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .sum()
    };
    let per_run = |mode: &str| {
        r["overhead"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|w| w["mode"] == mode)
            .map(|w| {
                median(
                    &w["events_received_per_enforced_run"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_f64)
                        .collect::<Vec<_>>(),
                )
            })
            .unwrap_or(f64::NAN)
    };
    md += &format!(
        "\nKernel counters over all enforce rounds: {} actions of the learned workload allowed in \
         the kernel (never sent to user space), {} processes killed, {} network calls blocked. \
         Events received per enforce run (median): open {:.0}, exec {:.0}, connect {:.0}.\n",
        total(&k["allowed_in_kernel"]),
        total(&k["processes_killed"]),
        total(&k["network_blocked"]),
        per_run("open"),
        per_run("exec"),
        per_run("connect"),
    );
    let t = &r["throughput"];
    md += &format!(
        "\nThroughput, ring buffer → agent → one gRPC subscriber: `{}` storm in a container, \
         {} `{}` event(s) per operation, {} s per step.\n\n",
        s(&t["source"]),
        t["events_per_op"],
        s(&t["event_kind"]),
        t["storm_seconds"]
    );
    md += "| Offered ops/s | Achieved ops/s | Delivered events/s | Kernel drops | Subscriber lag \
           | Agent CPU | Subscriber CPU |\n";
    md += "|---:|---:|---:|---:|---:|---:|---:|\n";
    for step in t["steps"].as_array().into_iter().flatten() {
        let offered = match &step["offered_ops_per_s"] {
            Value::String(m) => m.clone(),
            v => format!("{:.0}", v.as_f64().unwrap_or(0.0)),
        };
        md += &format!(
            "| {offered} | {:.0} | {:.0} | {} | {} | {:.0}% | {:.0}% |\n",
            step["achieved_ops_per_s"].as_f64().unwrap_or(0.0),
            step["delivered_events_per_s"].as_f64().unwrap_or(0.0),
            step["kernel_drops"],
            step["subscriber_lagged_events"],
            step["agent_cpu_percent"].as_f64().unwrap_or(0.0),
            step["subscriber_cpu_percent"].as_f64().unwrap_or(0.0)
        );
    }
    md += &format!(
        "\nMost events/s delivered without any loss: {:.0} (target ≥ {:.0}): {}\n",
        t["max_lossless_events_per_s"].as_f64().unwrap_or(0.0),
        THROUGHPUT_TARGET,
        pass(t["pass"].as_bool().unwrap_or(false))
    );
    let m = &r["memory_kib"];
    let mib = |v: &Value| v.as_f64().unwrap_or(0.0) / 1024.0;
    md += &format!(
        "\nAgent memory: VmRSS {:.1} MiB (peak VmHWM {:.1} MiB) after an overhead round; \
         VmRSS {:.1} MiB (peak {:.1} MiB) after the throughput test.\n",
        mib(&m["after_overhead_round"]["vm_rss"]),
        mib(&m["after_overhead_round"]["vm_hwm"]),
        mib(&m["after_throughput"]["vm_rss"]),
        mib(&m["after_throughput"]["vm_hwm"])
    );
    md
}

const README_START: &str = "<!-- bench:start -->";
const README_END: &str = "<!-- bench:end -->";

/// Replaces what is between the README's bench markers with `markdown`, if it has them.
fn update_readme(path: &Path, markdown: &str) -> Result<()> {
    let readme = fs::read_to_string(path)?;
    let (Some(start), Some(end)) = (readme.find(README_START), readme.find(README_END)) else {
        note("README.md has no bench markers: left as it is");
        return Ok(());
    };
    if end < start {
        return Ok(());
    }
    let mut updated = String::new();
    updated += &readme[..start + README_START.len()];
    updated += "\n";
    updated += markdown;
    updated += &readme[end..];
    fs::write(path, updated)?;
    note("updated the benchmark table in README.md");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn ratio_interval_brackets_the_ratio_and_is_exact_without_noise() {
        assert_eq!(ratio_interval(&[100.0; 7], &[150.0; 7]), (1.5, 1.5));
        let base = [100.0, 104.0, 97.0, 120.0, 99.0, 101.0, 98.0];
        let x = [130.0, 160.0, 128.0, 131.0, 170.0, 129.0, 133.0];
        let ratio = median(&x) / median(&base);
        let (low, high) = ratio_interval(&base, &x);
        assert!(low < ratio && ratio < high, "{low} < {ratio} < {high}");
        assert!(low > 1.2 && high < 1.8, "[{low}, {high}]");
        // Reproducible: the same samples give the same interval.
        assert_eq!(ratio_interval(&base, &x), (low, high));
    }

    #[test]
    fn parses_workload_output() {
        let w = &WORKLOADS[0];
        assert_eq!(
            parse_ns_per_op("open 200000 400000000 2000.0", w).unwrap(),
            2000.0
        );
        assert!(parse_ns_per_op("exec 1 2 3", w).is_err());
    }
}
