//! Loading and attaching the kernel programs, and reading what they send.
use std::{io, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use custos_ebpf::{Counter, ProbeConfig};
use tokio::io::unix::AsyncFd;
use tracing::{debug, info, warn};

use super::{btf, records::KernelRecord};

/// The kernel programs, built by `build.rs` from `agent-ebpf/`.
static PROBES: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/custos-probes"));

/// (program, tracepoint category, tracepoint name). `sched_process_exec` goes first so that no
/// captured exec argument waits for a consumer that is not there yet.
const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("sched_process_exec", "sched", "sched_process_exec"),
    ("sched_process_exit", "sched", "sched_process_exit"),
    ("sys_enter_execve", "syscalls", "sys_enter_execve"),
    ("sys_enter_execveat", "syscalls", "sys_enter_execveat"),
];

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
    #[error("attaching program {name} to tracepoint {category}/{event}")]
    Attach {
        name: &'static str,
        category: &'static str,
        event: &'static str,
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
}

/// Counters kept by the kernel programs, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub events_sent: u64,
    pub events_dropped: u64,
    pub pending_exec_dropped: u64,
}

/// The loaded and attached programs. Dropping it detaches everything.
pub struct Sensors {
    ebpf: Ebpf,
}

impl Sensors {
    /// Loads the programs, attaches every tracepoint, and returns them with the reader of
    /// their records. `agent_pid` is the process whose own actions are never reported.
    pub fn load(agent_pid: u32) -> Result<(Self, RecordReader), SensorError> {
        if PROBES.is_empty() {
            return Err(SensorError::NoPrograms);
        }
        ensure_tracefs()?;
        raise_memlock_limit();
        let kernel_btf = btf::KernelBtf::from_sys_fs()?;
        let offsets = btf::kernel_offsets(&kernel_btf)?;
        debug!(?offsets, "kernel struct offsets from BTF");
        let config = ProbeConfig {
            agent_pid,
            _pad: 0,
            offsets,
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("CONFIG", &config, true)
            .load(PROBES)
            .map_err(|error| SensorError::Load(Box::new(error)))?;
        for &(name, category, event) in TRACEPOINTS {
            let program: &mut TracePoint = ebpf
                .program_mut(name)
                .ok_or(SensorError::Missing(name))?
                .try_into()
                .map_err(|source| SensorError::Program {
                    name,
                    source: Box::new(source),
                })?;
            program.load().map_err(|source| SensorError::Program {
                name,
                source: Box::new(source),
            })?;
            program
                .attach(category, event)
                .map_err(|source| SensorError::Attach {
                    name,
                    category,
                    event,
                    source: Box::new(source),
                })?;
            debug!(program = name, "attached to {category}/{event}");
        }
        let events = ebpf
            .take_map("EVENTS")
            .ok_or(SensorError::Missing("EVENTS"))?;
        let ring = RingBuf::try_from(events).map_err(|source| SensorError::Map {
            name: "EVENTS",
            source: Box::new(source),
        })?;
        // SAFETY: the ring buffer owns its map fd for as long as the AsyncFd holds it, and
        // `as_raw_fd` always returns that same fd.
        let ring =
            unsafe { AsyncFd::register(ring) }.map_err(|error| SensorError::Poll(error.into()))?;
        let reader = RecordReader {
            ring,
            decode_errors: 0,
        };
        info!(
            programs = TRACEPOINTS.len(),
            "eBPF sensors attached (exec, exit)"
        );
        Ok((Self { ebpf }, reader))
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
        })
    }
}

/// Reads records from the event ring buffer as they arrive.
pub struct RecordReader {
    ring: AsyncFd<RingBuf<MapData>>,
    decode_errors: u64,
}

impl RecordReader {
    /// Waits until records are available, then appends all of them to `out`.
    pub async fn read(&mut self, out: &mut Vec<KernelRecord>) -> io::Result<()> {
        let mut guard = self.ring.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            match KernelRecord::decode(&item) {
                Ok(record) => out.push(record),
                Err(error) => {
                    self.decode_errors += 1;
                    warn!(%error, total = self.decode_errors, "undecodable kernel record");
                }
            }
        }
        guard.clear_ready();
        Ok(())
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
