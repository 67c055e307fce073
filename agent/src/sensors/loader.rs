//! Loading and attaching the kernel programs, and reading what they send.
use std::{io, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, ProgramArray, RingBuf},
    programs::{BtfTracePoint, CgroupAttachMode, CgroupSockAddr, Lsm, RawTracePoint, TracePoint},
};
use custos_ebpf::{
    Counter, ProbeConfig,
    policy::{CgroupPolicy, ExecRuleKey, NetRuleKey, PathRule, PathRuleKey},
};
use tokio::io::unix::AsyncFd;
use tracing::{debug, info, warn};

use super::{btf, clock::CoarseClock, records::KernelRecord};

/// The kernel programs, built by `build.rs` from `agent-ebpf/`.
static PROBES: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/custos-probes"));

/// How a program hooks into the kernel.
#[derive(Debug, Clone, Copy)]
enum Hook {
    /// A classic tracepoint: (category, name).
    Classic(&'static str, &'static str),
    /// A BTF-typed tracepoint, by name.
    Btf(&'static str),
    /// A raw tracepoint, by name (arguments as the kernel passes them, no trace record).
    Raw(&'static str),
}

/// Every program and where it attaches, in attach order. `sched_process_exec` goes before the
/// syscall-entry probes so that no captured exec argument waits for a consumer that is not
/// there yet. Sensors add their programs here.
const PROGRAMS: &[(&str, Hook)] = &[
    // process lifecycle
    (
        "sched_process_exec",
        Hook::Classic("sched", "sched_process_exec"),
    ),
    (
        "sched_process_exit",
        Hook::Classic("sched", "sched_process_exit"),
    ),
    ("sched_process_fork", Hook::Btf("sched_process_fork")),
    // --- file sensor programs ---
    // Exits only: they read the arguments back from the saved registers (probes/regs.rs).
    (
        "sys_exit_open_any",
        Hook::Classic("syscalls", "sys_exit_open"),
    ),
    (
        "sys_exit_open_any",
        Hook::Classic("syscalls", "sys_exit_openat"),
    ),
    (
        "sys_exit_open_any",
        Hook::Classic("syscalls", "sys_exit_openat2"),
    ),
    (
        "sys_exit_open_any",
        Hook::Classic("syscalls", "sys_exit_creat"),
    ),
    // --- end of file sensor programs ---
    // --- network sensor programs ---
    // Exits only, like the file sensor's.
    (
        "sys_exit_net",
        Hook::Classic("syscalls", "sys_exit_connect"),
    ),
    ("sys_exit_net", Hook::Classic("syscalls", "sys_exit_sendto")),
    ("sys_exit_net", Hook::Classic("syscalls", "sys_exit_listen")),
    ("sys_exit_net", Hook::Classic("syscalls", "sys_exit_accept")),
    (
        "sys_exit_net",
        Hook::Classic("syscalls", "sys_exit_accept4"),
    ),
    // --- end of network sensor programs ---
    // --- syscall sensor programs ---
    ("sys_enter", Hook::Raw("sys_enter")),
    // --- end of syscall sensor programs ---
];

/// What the agent asks of the kernel programs.
#[derive(Debug, Clone, Copy)]
pub struct SensorOptions {
    /// Process whose own actions are never reported (the agent).
    pub agent_pid: u32,
    /// Trace file, network and syscall activity of host processes too (not only containers).
    pub trace_host: bool,
    /// An identical action of one cgroup is sent at most once per window.
    pub repeat_window: std::time::Duration,
}

const TRACEFS: &str = "/sys/kernel/tracing";

#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error(
        "this custos binary was built without its eBPF programs (AYA_BUILD_SKIP was set); \
         rebuild without it"
    )]
    NoPrograms,
    #[error("reading kernel struct layout from BTF")]
    Btf(#[from] btf::BtfError),
    #[error("tracefs is not mounted at {TRACEFS} and mounting it failed (needs root)")]
    Tracefs(#[source] io::Error),
    #[error("loading the eBPF programs into the kernel (needs root or CAP_BPF + CAP_PERFMON)")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("eBPF object has no program or map named {0}")]
    Missing(&'static str),
    #[error("loading program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("attaching program {name} to {hook:?}")]
    Attach {
        name: &'static str,
        hook: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("opening map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("watching the event ring buffer")]
    Poll(#[source] io::Error),
    #[error("starting the thread that advances the kernel programs' coarse clock")]
    ClockThread(#[source] io::Error),
}

/// Counters kept by the kernel programs, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub events_sent: u64,
    pub events_dropped: u64,
    pub pending_exec_dropped: u64,
    pub activity_sent: u64,
    pub activity_dropped: u64,
    pub repeats_suppressed: u64,
    /// Opens not reported: arguments unreadable at exit (see `Counter::OpenArgsLost`).
    pub open_args_lost: u64,
    /// Network calls not reported: arguments unreadable at exit.
    pub net_args_lost: u64,
    pub syscall_sets_full: u64,
    pub processes_killed: u64,
    pub network_blocked: u64,
    pub allowed_in_kernel: u64,
    pub lsm_denied: u64,
}

/// The loaded and attached programs. Dropping it detaches everything.
pub struct Sensors {
    ebpf: Ebpf,
    /// Ticks while the programs that read it are attached.
    _clock: CoarseClock,
}

/// The readers of the two ring buffers: process lifecycle, and activity.
pub struct RecordReaders {
    pub process: RecordReader,
    pub activity: RecordReader,
}

/// User space's handle on the set of traced cgroups (`TRACED_CGROUPS`).
pub struct TracedCgroups {
    map: std::sync::Mutex<aya::maps::HashMap<MapData, u64, u32>>,
    /// The syscall sensor's `SYSCALL_SETS`: a traced container gets its (empty) set there.
    syscall_sets: std::sync::Mutex<super::syscalls::KernelMapHandle>,
    /// What was inserted, so that the hot path does not make a syscall per event.
    known: dashmap::DashSet<u64>,
}

impl TracedCgroups {
    /// Starts tracing the activity of `cgroup_id` (a container's cgroup).
    pub fn trace(&self, cgroup_id: u64) {
        if cgroup_id == 0 || self.known.contains(&cgroup_id) {
            return;
        }
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(error) = map.insert(cgroup_id, 1, 0) {
            warn!(cgroup_id, %error, "cannot trace cgroup");
            return;
        }
        self.known.insert(cgroup_id);
        debug!(cgroup_id, "tracing activity of cgroup");
        let mut sets = self
            .syscall_sets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(error) = sets.give_empty_set(cgroup_id) {
            warn!(cgroup_id, %error, "cannot trace the syscalls of cgroup (SYSCALL_SETS full?)");
        }
    }

    /// Reads the kernel map itself (metrics report how full it is).
    pub fn read_map<R>(&self, read: impl FnOnce(&MapData) -> R) -> R {
        let map = self
            .map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        read(aya::maps::IterableMap::map(&*map))
    }
}

impl Sensors {
    /// Loads the programs, attaches every hook, and returns them with the readers of their
    /// records and the handle on the traced cgroups.
    pub fn load(
        options: SensorOptions,
    ) -> Result<(Self, RecordReaders, TracedCgroups), SensorError> {
        if PROBES.is_empty() {
            return Err(SensorError::NoPrograms);
        }
        ensure_tracefs()?;
        raise_memlock_limit();
        let kernel_btf = btf::KernelBtf::from_sys_fs()?;
        let offsets = btf::kernel_offsets(&kernel_btf)?;
        debug!(?offsets, "kernel struct offsets from BTF");
        let config = ProbeConfig {
            agent_pid: options.agent_pid,
            trace_host: u32::from(options.trace_host),
            repeat_window_ns: u64::try_from(options.repeat_window.as_nanos()).unwrap_or(u64::MAX),
            offsets,
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("CONFIG", &config, true)
            .load(PROBES)
            .map_err(|error| SensorError::Load(Box::new(error)))?;
        let aya_btf = aya::Btf::from_sys_fs()
            .map_err(|error| SensorError::Load(Box::new(aya::EbpfError::BtfError(error))))?;
        fill_tail_calls(&mut ebpf)?;
        let clock = CoarseClock::start(&mut ebpf)?;
        for &(name, hook) in PROGRAMS {
            attach(&mut ebpf, name, hook, &aya_btf)?;
        }
        let readers = RecordReaders {
            process: RecordReader::take(&mut ebpf, "EVENTS")?,
            activity: RecordReader::take(&mut ebpf, "ACTIVITY")?,
        };
        let traced = ebpf
            .take_map("TRACED_CGROUPS")
            .ok_or(SensorError::Missing("TRACED_CGROUPS"))?;
        let traced = TracedCgroups {
            map: std::sync::Mutex::new(aya::maps::HashMap::try_from(traced).map_err(|source| {
                SensorError::Map {
                    name: "TRACED_CGROUPS",
                    source: Box::new(source),
                }
            })?),
            syscall_sets: std::sync::Mutex::new(super::syscalls::open_kernel_map(&ebpf)?),
            known: dashmap::DashSet::new(),
        };
        info!(
            hooks = PROGRAMS.len(),
            trace_host = options.trace_host,
            "eBPF sensors attached"
        );
        Ok((
            Self {
                ebpf,
                _clock: clock,
            },
            readers,
            traced,
        ))
    }

    /// Reads the kernel's counters (sent, dropped, ...), summed over CPUs.
    pub fn counters(&self) -> Result<KernelCounters, SensorError> {
        let map = self
            .ebpf
            .map("COUNTERS")
            .ok_or(SensorError::Missing("COUNTERS"))?;
        let array =
            PerCpuArray::<&MapData, u64>::try_from(map).map_err(|source| SensorError::Map {
                name: "COUNTERS",
                source: Box::new(source),
            })?;
        let sum = |counter: Counter| -> Result<u64, SensorError> {
            let values = array
                .get(&(counter as u32), 0)
                .map_err(|source| SensorError::Map {
                    name: "COUNTERS",
                    source: Box::new(source),
                })?;
            Ok(values.iter().sum())
        };
        Ok(KernelCounters {
            events_sent: sum(Counter::EventsSent)?,
            events_dropped: sum(Counter::EventsDropped)?,
            pending_exec_dropped: sum(Counter::PendingExecDropped)?,
            activity_sent: sum(Counter::ActivitySent)?,
            activity_dropped: sum(Counter::ActivityDropped)?,
            repeats_suppressed: sum(Counter::RepeatsSuppressed)?,
            open_args_lost: sum(Counter::OpenArgsLost)?,
            net_args_lost: sum(Counter::NetArgsLost)?,
            syscall_sets_full: sum(Counter::SyscallSetsFull)?,
            processes_killed: sum(Counter::ProcessesKilled)?,
            network_blocked: sum(Counter::NetworkBlocked)?,
            allowed_in_kernel: sum(Counter::AllowedInKernel)?,
            lsm_denied: sum(Counter::LsmDenied)?,
        })
    }

    /// The loaded eBPF object, for sensors that read their own maps (e.g. syscall sets).
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// Attaches the network enforcement programs (cgroup `connect4/6`, `sendmsg4/6`,
    /// `bind4/6`) to the cgroup2 hierarchy at `cgroup_root`, and hands over the policy maps
    /// that the enforcement module fills. The programs let everything through until a cgroup
    /// is put in enforce mode in `POLICY_CGROUPS`.
    ///
    /// With `want_lsm` (the kernel has BPF LSM active) the `file_open` and
    /// `bprm_check_security` hooks are attached too, so that execs and opens fail with EPERM
    /// instead of being killed; if the kernel refuses them, the SIGKILL path stays.
    pub fn enforcement(
        &mut self,
        cgroup_root: &Path,
        want_lsm: bool,
    ) -> Result<PolicyMaps, SensorError> {
        let root = std::fs::File::open(cgroup_root).map_err(|source| SensorError::Attach {
            name: "enforce_connect4",
            hook: format!("cgroup {}", cgroup_root.display()),
            source: Box::new(aya::programs::ProgramError::IOError(source)),
        })?;
        for &name in ENFORCEMENT_PROGRAMS {
            let program_error = |source| SensorError::Program {
                name,
                source: Box::new(source),
            };
            let program: &mut CgroupSockAddr = program_as(&mut self.ebpf, name)?;
            program.load().map_err(program_error)?;
            program
                .attach(&root, CgroupAttachMode::Single)
                .map_err(|source| SensorError::Attach {
                    name,
                    hook: format!("cgroup {}", cgroup_root.display()),
                    source: Box::new(source),
                })?;
        }
        info!(cgroup = %cgroup_root.display(), "network enforcement programs attached");
        let lsm = if want_lsm {
            match self.attach_lsm() {
                Ok(()) => true,
                Err(error) => {
                    warn!(
                        "{:#}; execs and opens outside a profile are killed instead",
                        anyhow::Error::new(error)
                    );
                    false
                }
            }
        } else {
            false
        };
        let mut take =
            |name: &'static str| self.ebpf.take_map(name).ok_or(SensorError::Missing(name));
        let map_error = |name: &'static str| {
            move |source| SensorError::Map {
                name,
                source: Box::new(source),
            }
        };
        Ok(PolicyMaps {
            lsm,
            cgroups: aya::maps::HashMap::try_from(take("POLICY_CGROUPS")?)
                .map_err(map_error("POLICY_CGROUPS"))?,
            paths: aya::maps::HashMap::try_from(take("PATH_RULES")?)
                .map_err(map_error("PATH_RULES"))?,
            execs: aya::maps::HashMap::try_from(take("EXEC_RULES")?)
                .map_err(map_error("EXEC_RULES"))?,
            nets: aya::maps::HashMap::try_from(take("NET_RULES")?)
                .map_err(map_error("NET_RULES"))?,
            generation: aya::maps::Array::try_from(take("POLICY_GENERATION")?)
                .map_err(map_error("POLICY_GENERATION"))?,
        })
    }
}

/// BPF LSM programs and their hooks.
const LSM_PROGRAMS: &[(&str, &str)] = &[
    ("custos_file_open", "file_open"),
    ("custos_bprm_check", "bprm_check_security"),
];

impl Sensors {
    /// Attaches the BPF LSM hooks and tells the tracepoints (`LSM_ACTIVE`) to leave exec and
    /// open blocking to them.
    fn attach_lsm(&mut self) -> Result<(), SensorError> {
        let btf = aya::Btf::from_sys_fs()
            .map_err(|error| SensorError::Load(Box::new(aya::EbpfError::BtfError(error))))?;
        for &(name, hook) in LSM_PROGRAMS {
            let program_error = |source| SensorError::Program {
                name,
                source: Box::new(source),
            };
            let program: &mut Lsm = program_as(&mut self.ebpf, name)?;
            program.load(hook, &btf).map_err(program_error)?;
            program.attach().map_err(|source| SensorError::Attach {
                name,
                hook: format!("lsm/{hook}"),
                source: Box::new(source),
            })?;
        }
        let map_error = |source| SensorError::Map {
            name: "LSM_ACTIVE",
            source: Box::new(source),
        };
        let mut active: aya::maps::Array<&mut MapData, u32> = aya::maps::Array::try_from(
            self.ebpf
                .map_mut("LSM_ACTIVE")
                .ok_or(SensorError::Missing("LSM_ACTIVE"))?,
        )
        .map_err(map_error)?;
        active.set(0, 1, 0).map_err(map_error)?;
        info!("BPF LSM hooks attached: file_open, bprm_check_security");
        Ok(())
    }
}

/// The cgroup programs that block network calls: connect and sendmsg (egress), bind (listen).
const ENFORCEMENT_PROGRAMS: &[&str] = &[
    "enforce_connect4",
    "enforce_connect6",
    "enforce_sendmsg4",
    "enforce_sendmsg6",
    "enforce_bind4",
    "enforce_bind6",
];

/// The maps profiles are compiled into (see `custos_ebpf::policy`).
pub struct PolicyMaps {
    /// The BPF LSM hooks are attached: execs and opens are denied with EPERM, not killed.
    pub lsm: bool,
    pub cgroups: aya::maps::HashMap<MapData, u64, CgroupPolicy>,
    pub paths: aya::maps::HashMap<MapData, PathRuleKey, PathRule>,
    pub execs: aya::maps::HashMap<MapData, ExecRuleKey, u32>,
    pub nets: aya::maps::HashMap<MapData, NetRuleKey, u32>,
    pub generation: aya::maps::Array<MapData, u32>,
}

/// Attaches an empty program to every hook of [`PROGRAMS`] (`custos bench-floor`), for
/// `cargo xtask bench` to measure what hooking alone costs next to what the agent costs. The
/// programs stay attached while the returned object lives.
pub fn attach_floor() -> Result<Ebpf, SensorError> {
    if PROBES.is_empty() {
        return Err(SensorError::NoPrograms);
    }
    ensure_tracefs()?;
    raise_memlock_limit();
    let mut ebpf = EbpfLoader::new()
        .load(PROBES)
        .map_err(|error| SensorError::Load(Box::new(error)))?;
    let btf = aya::Btf::from_sys_fs()
        .map_err(|error| SensorError::Load(Box::new(aya::EbpfError::BtfError(error))))?;
    for &(_, hook) in PROGRAMS {
        let empty = match hook {
            Hook::Classic(..) => "floor_tracepoint",
            Hook::Raw(_) => "floor_raw_tracepoint",
            Hook::Btf(_) => "floor_btf_tracepoint",
        };
        attach(&mut ebpf, empty, hook, &btf)?;
    }
    info!(hooks = PROGRAMS.len(), "empty programs attached");
    Ok(ebpf)
}

/// Program `name` of the loaded object, as the program type `T` it must be.
fn program_as<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, SensorError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(SensorError::Missing(name))?
        .try_into()
        .map_err(|source| SensorError::Program {
            name,
            source: Box::new(source),
        })
}

/// Programs the raw `sys_enter` tail-calls, by slot of its `SYS_ENTER_TAILS` map (see
/// agent-ebpf/src/probes/syscalls.rs): loaded, not attached.
const SYS_ENTER_TAILS: &[(u32, &str)] = &[(0, "sys_enter_exec")];

/// Loads the tail-called programs and puts them in their slots, before `sys_enter` is attached.
fn fill_tail_calls(ebpf: &mut Ebpf) -> Result<(), SensorError> {
    const MAP: &str = "SYS_ENTER_TAILS";
    let map_error = |source| SensorError::Map {
        name: MAP,
        source: Box::new(source),
    };
    for &(slot, name) in SYS_ENTER_TAILS {
        let program_error = |source| SensorError::Program {
            name,
            source: Box::new(source),
        };
        let program: &mut RawTracePoint = program_as(ebpf, name)?;
        program.load().map_err(program_error)?;
        let fd = program
            .fd()
            .map_err(program_error)?
            .try_clone()
            .map_err(|error| SensorError::Program {
                name,
                source: Box::new(aya::programs::ProgramError::IOError(error)),
            })?;
        let mut tails = ProgramArray::try_from(ebpf.map_mut(MAP).ok_or(SensorError::Missing(MAP))?)
            .map_err(map_error)?;
        tails.set(slot, &fd, 0).map_err(map_error)?;
        debug!(program = name, slot, "tail call ready");
    }
    Ok(())
}

fn attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    hook: Hook,
    btf: &aya::Btf,
) -> Result<(), SensorError> {
    let program_error = |source| SensorError::Program {
        name,
        source: Box::new(source),
    };
    let attach_error = |source| SensorError::Attach {
        name,
        hook: format!("{hook:?}"),
        source: Box::new(source),
    };
    let program = ebpf.program_mut(name).ok_or(SensorError::Missing(name))?;
    match hook {
        Hook::Classic(category, event) => {
            let program: &mut TracePoint = program.try_into().map_err(program_error)?;
            // A program may serve several tracepoints (listed once per tracepoint): it is
            // loaded, and verified, only the first time.
            if program.fd().is_err() {
                program.load().map_err(program_error)?;
            }
            program.attach(category, event).map_err(attach_error)?;
        }
        Hook::Raw(event) => {
            let program: &mut RawTracePoint = program.try_into().map_err(program_error)?;
            program.load().map_err(program_error)?;
            program.attach(event).map_err(attach_error)?;
        }
        Hook::Btf(event) => {
            let program: &mut BtfTracePoint = program.try_into().map_err(program_error)?;
            program.load(event, btf).map_err(program_error)?;
            program.attach().map_err(attach_error)?;
        }
    }
    debug!(program = name, ?hook, "attached");
    Ok(())
}

/// Reads records from the event ring buffer as they arrive.
pub struct RecordReader {
    ring: AsyncFd<RingBuf<MapData>>,
    decode_errors: u64,
}

impl RecordReader {
    fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Self, SensorError> {
        let map = ebpf.take_map(name).ok_or(SensorError::Missing(name))?;
        let ring = RingBuf::try_from(map).map_err(|source| SensorError::Map {
            name,
            source: Box::new(source),
        })?;
        // SAFETY: the ring buffer owns its map fd for as long as the AsyncFd holds it, and
        // `as_raw_fd` always returns that same fd.
        let ring =
            unsafe { AsyncFd::register(ring) }.map_err(|error| SensorError::Poll(error.into()))?;
        Ok(Self {
            ring,
            decode_errors: 0,
        })
    }

    /// Waits until records are available, then appends all of them to `out`.
    pub async fn read(&mut self, out: &mut Vec<KernelRecord>) -> io::Result<()> {
        let mut guard = self.ring.readable_mut().await?;
        Self::drain_ring(guard.get_inner_mut(), &mut self.decode_errors, out);
        guard.clear_ready();
        Ok(())
    }

    /// Appends what is available now to `out`, without waiting.
    pub fn drain(&mut self, out: &mut Vec<KernelRecord>) {
        Self::drain_ring(self.ring.get_mut(), &mut self.decode_errors, out);
    }

    fn drain_ring(
        ring: &mut RingBuf<MapData>,
        decode_errors: &mut u64,
        out: &mut Vec<KernelRecord>,
    ) {
        while let Some(item) = ring.next() {
            match KernelRecord::decode(&item) {
                Ok(record) => out.push(record),
                Err(error) => {
                    *decode_errors += 1;
                    warn!(%error, total = *decode_errors, "undecodable kernel record");
                }
            }
        }
    }

    /// Records that could not be decoded (a kernel/user type mismatch: a bug).
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors
    }
}

/// Tracepoint attach reads `/sys/kernel/tracing/events/...`; fresh hosts may not have tracefs
/// mounted, so mount it as any agent on such a node must.
fn ensure_tracefs() -> Result<(), SensorError> {
    let events = Path::new(TRACEFS).join("events");
    if events.exists() || Path::new("/sys/kernel/debug/tracing/events").exists() {
        return Ok(());
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "tracefs", "tracefs", TRACEFS])
        .status()
        .map_err(SensorError::Tracefs)?;
    if !status.success() || !events.exists() {
        return Err(SensorError::Tracefs(io::Error::other(format!(
            "mount -t tracefs tracefs {TRACEFS}: {status}"
        ))));
    }
    info!("mounted tracefs at {TRACEFS}");
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it so large ring buffers load.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        debug!(
            "could not lift RLIMIT_MEMLOCK: {}",
            io::Error::last_os_error()
        );
    }
}
