//! The syscall sensor's user side: decoding first-use records, syscall names, and the sets of
//! syscalls each container has used.
//!
//! The kernel keeps a bitmap per cgroup (`SYSCALL_SETS`) and sends a record when it sets a bit.
//! Setting a bit is not atomic in the kernel (see `agent-ebpf/src/probes/syscalls.rs`), so two
//! CPUs may both report the same first use, or one may overwrite the other's bit. This module
//! therefore keeps its own copy of every set, fed by the records, and is what guarantees the
//! API's promise: exactly one event per (cgroup, syscall).
//!
//! `GetSyscalls` answers with the union of the kernel's map, read on demand (the truth, which
//! also holds uses by cgroups before their records were processed), and this copy (which holds
//! bits a racing CPU erased from the map). Sets are kept per cgroup and merged per container:
//! a container may own nested cgroups.
//!
//! Sets of cgroups that no longer exist are deleted after [`GONE_GRACE`], from both places, so
//! the bounded kernel map does not fill up with dead containers.
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use custos_ebpf::{
    self as shared,
    syscall::{SYSCALL_RULES_IN_USE_MAP, SYSCALL_RULES_MAP, SYSCALL_SETS_MAP, SyscallBits},
};
use dashmap::DashMap;
use tracing::{debug, info, warn};

use super::{
    loader::SensorError,
    records::{DecodeError, RecordHeader, decode_header, read_struct},
    syscall_names::SYSCALL_NAMES,
};
use crate::{
    api::{
        proto,
        server::{SyscallLookupError, SyscallSetLookup},
    },
    containers::{ContainerRegistry, cgroup::parse_cgroup_path},
};

/// A cgroup used a syscall for the first time, or a process was killed for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyscallRecord {
    pub header: RecordHeader,
    pub number: u32,
    /// The kernel's decision (`policy::VERDICT_*`): killed, or none.
    pub verdict: u32,
}

/// Decodes a `SyscallRecord` (the kind has been checked by the caller).
pub fn decode(bytes: &[u8]) -> Result<SyscallRecord, DecodeError> {
    let raw: shared::syscall::SyscallRecord = read_struct(bytes)?;
    Ok(SyscallRecord {
        header: decode_header(&raw.header),
        number: raw.number,
        verdict: raw.verdict,
    })
}

/// The x86_64 name of syscall `number`, or `syscall_<number>` when it has none in the table.
pub fn syscall_name(number: u32) -> String {
    match SYSCALL_NAMES.get(number as usize) {
        Some(name) if !name.is_empty() => (*name).to_owned(),
        _ => format!("syscall_{number}"),
    }
}

/// The number of syscall `name` (`syscall_<n>` included), `None` for a name not in the table.
pub fn syscall_number(name: &str) -> Option<u32> {
    if name.is_empty() {
        return None;
    }
    if let Some(number) = name.strip_prefix("syscall_") {
        return number.parse().ok();
    }
    SYSCALL_NAMES
        .iter()
        .position(|known| *known == name)
        .and_then(|index| u32::try_from(index).ok())
}

/// The API form of syscall `number`.
pub fn syscall_event(number: u32) -> proto::SyscallEvent {
    proto::SyscallEvent {
        number,
        name: syscall_name(number),
        verdict: String::new(),
    }
}

/// The event of a first-use (or kill) record, with the kernel's verdict.
pub fn record_event(record: &SyscallRecord) -> proto::SyscallEvent {
    proto::SyscallEvent {
        verdict: crate::enforcement::verdict_name(record.verdict).to_owned(),
        ..syscall_event(record.number)
    }
}

/// How long the set of a cgroup that no longer exists is kept (for late `GetSyscalls` and late
/// records) before it is deleted.
pub const GONE_GRACE: Duration = Duration::from_secs(120);
/// How often sets of cgroups that are gone are looked for.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

type KernelMap = BpfHashMap<MapData, u64, SyscallBits>;

/// The syscall sets of all traced cgroups.
pub struct SyscallSets {
    /// Our own handle on the kernel's `SYSCALL_SETS` (opened by id, independent of the loaded
    /// object's); `None` when it could not be opened (sets then come from records only).
    kernel: Option<Mutex<KernelMap>>,
    /// What the records said, per cgroup id.
    seen: DashMap<u64, SyscallBits>,
    /// Cgroups found gone by the sweep, and since when.
    gone: DashMap<u64, Instant>,
    containers: Arc<ContainerRegistry>,
}

impl SyscallSets {
    /// Sets over the kernel's map (see [`open_kernel_map`]), attributed through `containers`.
    pub fn new(kernel: Option<KernelMapHandle>, containers: Arc<ContainerRegistry>) -> Self {
        Self {
            kernel: kernel.map(|handle| Mutex::new(handle.0)),
            seen: DashMap::new(),
            gone: DashMap::new(),
            containers,
        }
    }

    /// Records that `cgroup_id` used `number`; true the first time only (the record is to be
    /// reported), false for a duplicate.
    pub fn first_use(&self, cgroup_id: u64, number: u32) -> bool {
        self.seen.entry(cgroup_id).or_default().insert(number)
    }

    /// Whether `record` is a first use already reported (the kernel may send one twice when
    /// CPUs race). A kill is never a duplicate: each one is reported.
    pub fn is_duplicate(&self, record: &SyscallRecord) -> bool {
        let first = self.first_use(record.header.cgroup_id, record.number);
        !first && record.verdict != custos_ebpf::policy::VERDICT_KILLED
    }

    /// Every (cgroup id, set) known, the kernel's and ours merged.
    fn all_sets(&self) -> Vec<(u64, SyscallBits)> {
        let mut merged: std::collections::HashMap<u64, SyscallBits> = self
            .seen
            .iter()
            .map(|entry| (*entry.key(), *entry.value()))
            .collect();
        if let Some(kernel) = &self.kernel {
            let map = kernel
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for item in map.iter() {
                match item {
                    Ok((cgroup_id, bits)) => merged.entry(cgroup_id).or_default().union(&bits),
                    // An entry deleted while iterating: skip it.
                    Err(error) => debug!(%error, "reading a syscall set"),
                }
            }
        }
        merged.into_iter().collect()
    }

    /// Container id of `cgroup_id`, when it is a container's.
    async fn container_of(&self, cgroup_id: u64) -> Option<String> {
        let path = self.containers.cgroups().resolve(cgroup_id).await?;
        parse_cgroup_path(&path).map(|(id, _)| id.as_str().to_owned())
    }

    /// Deletes the sets of cgroups gone for longer than [`GONE_GRACE`].
    pub async fn sweep(&self) {
        let now = Instant::now();
        for (cgroup_id, _) in self.all_sets() {
            let cgroups = self.containers.cgroups();
            let exists = match cgroups.resolve(cgroup_id).await {
                Some(path) => cgroups.exists(&path),
                None => false,
            };
            if exists {
                self.gone.remove(&cgroup_id);
                continue;
            }
            let since = *self.gone.entry(cgroup_id).or_insert(now);
            if now.duration_since(since) < GONE_GRACE {
                continue;
            }
            if let Some(kernel) = &self.kernel {
                let mut map = kernel
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if let Err(error) = map.remove(&cgroup_id) {
                    debug!(cgroup_id, %error, "removing a syscall set");
                }
            }
            self.seen.remove(&cgroup_id);
            self.gone.remove(&cgroup_id);
            debug!(cgroup_id, "forgot the syscall set of a removed cgroup");
        }
    }

    /// Runs [`Self::sweep`] every [`SWEEP_INTERVAL`].
    pub async fn sweep_loop(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(SWEEP_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.sweep().await;
        }
    }
}

#[tonic::async_trait]
impl SyscallSetLookup for SyscallSets {
    async fn syscall_set(&self, id: &str) -> Result<proto::SyscallSet, SyscallLookupError> {
        let mut found: Vec<(String, SyscallBits)> = Vec::new();
        for (cgroup_id, bits) in self.all_sets() {
            let Some(container_id) = self.container_of(cgroup_id).await else {
                continue;
            };
            if container_id.starts_with(id) {
                found.push((container_id, bits));
            }
        }
        merge_matches(id, found)
    }
}

/// Merges the sets of the cgroups that matched `id`: one container, or an error.
fn merge_matches(
    id: &str,
    found: Vec<(String, SyscallBits)>,
) -> Result<proto::SyscallSet, SyscallLookupError> {
    let mut containers: Vec<&str> = found.iter().map(|(c, _)| c.as_str()).collect();
    containers.sort_unstable();
    containers.dedup();
    match containers.as_slice() {
        [] => Err(SyscallLookupError::NotFound { id: id.to_owned() }),
        [container_id] => {
            let mut bits = SyscallBits::default();
            for (_, set) in &found {
                bits.union(set);
            }
            Ok(proto::SyscallSet {
                container_id: (*container_id).to_owned(),
                syscalls: numbers(&bits).map(syscall_event).collect(),
            })
        }
        many => Err(SyscallLookupError::Ambiguous {
            id: id.to_owned(),
            matches: many.len(),
        }),
    }
}

/// The numbers in `bits`, ascending.
pub fn numbers(bits: &SyscallBits) -> impl Iterator<Item = u32> + '_ {
    (0..shared::syscall::SYSCALL_MAX).filter(|&n| bits.contains(n))
}

/// An open handle on the kernel's `SYSCALL_SETS` map.
pub struct KernelMapHandle(KernelMap);

/// `BPF_NOEXIST` map update flag: insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;

impl KernelMapHandle {
    /// Gives `cgroup_id` an empty set unless it has one: `sys_enter` records the syscalls of a
    /// container only once it has a set (the set doubles as "traced" there).
    pub fn give_empty_set(&mut self, cgroup_id: u64) -> Result<(), aya::maps::MapError> {
        match self
            .0
            .insert(cgroup_id, SyscallBits::default(), BPF_NOEXIST)
        {
            Err(aya::maps::MapError::SyscallError(error))
                if error.io_error.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(())
            }
            other => other,
        }
    }
}

/// A handle of its own on the loaded programs' map `name`, opened by id, so that it lives
/// independently of the loaded object (no lock shared with the rest of the sensors).
fn own_map(ebpf: &aya::Ebpf, name: &'static str) -> Result<aya::maps::Map, SensorError> {
    let map_error = |source| SensorError::Map {
        name,
        source: Box::new(source),
    };
    let map = ebpf.map(name).ok_or(SensorError::Missing(name))?;
    let (aya::maps::Map::HashMap(data) | aya::maps::Map::Array(data)) = map else {
        return Err(SensorError::Missing(name));
    };
    let id = data.info().map_err(map_error)?.id();
    let data = MapData::from_id(id).map_err(map_error)?;
    Ok(match map {
        aya::maps::Map::Array(_) => aya::maps::Map::Array(data),
        _ => aya::maps::Map::HashMap(data),
    })
}

/// Opens the kernel's `SYSCALL_SETS` map of the loaded programs.
pub fn open_kernel_map(ebpf: &aya::Ebpf) -> Result<KernelMapHandle, SensorError> {
    let map = KernelMap::try_from(own_map(ebpf, SYSCALL_SETS_MAP)?).map_err(|source| {
        SensorError::Map {
            name: SYSCALL_SETS_MAP,
            source: Box::new(source),
        }
    })?;
    info!(map = SYSCALL_SETS_MAP, "syscall sets readable");
    Ok(KernelMapHandle(map))
}

/// The kernel's syscall rules of the profiles that opted in to kills (`SYSCALL_RULES`: profile
/// number → allowed set) and their count (`SYSCALL_RULES_IN_USE`), which the enforcement
/// module writes.
pub struct SyscallRuleMaps {
    pub rules: BpfHashMap<MapData, u32, SyscallBits>,
    pub in_use: aya::maps::Array<MapData, u32>,
}

/// Opens the syscall rule maps of the loaded programs.
pub fn open_rule_maps(ebpf: &aya::Ebpf) -> Result<SyscallRuleMaps, SensorError> {
    let map_error = |name: &'static str| {
        move |source| SensorError::Map {
            name,
            source: Box::new(source),
        }
    };
    Ok(SyscallRuleMaps {
        rules: BpfHashMap::try_from(own_map(ebpf, SYSCALL_RULES_MAP)?)
            .map_err(map_error(SYSCALL_RULES_MAP))?,
        in_use: aya::maps::Array::try_from(own_map(ebpf, SYSCALL_RULES_IN_USE_MAP)?)
            .map_err(map_error(SYSCALL_RULES_IN_USE_MAP))?,
    })
}

/// [`open_rule_maps`], logging instead of failing: without them, syscall deviations are only
/// flagged, whatever the profile says.
pub fn open_rule_maps_or_warn(ebpf: &aya::Ebpf) -> Option<SyscallRuleMaps> {
    open_rule_maps(ebpf)
        .inspect_err(|error| {
            warn!(%error, "cannot write the kernel's syscall rules; syscall deviations are only flagged")
        })
        .ok()
}

/// [`open_kernel_map`], logging instead of failing: without the map, sets come from records.
pub fn open_kernel_map_or_warn(ebpf: &aya::Ebpf) -> Option<KernelMapHandle> {
    open_kernel_map(ebpf)
        .inspect_err(|error| {
            warn!(%error, "cannot read the kernel's syscall sets; GetSyscalls answers from events only")
        })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(numbers: &[u32]) -> SyscallBits {
        let mut bits = SyscallBits::default();
        for &n in numbers {
            bits.insert(n);
        }
        bits
    }

    const A: &str = "aaaaaaaaaaaa0000000000000000000000000000000000000000000000000001";
    const B: &str = "aaaaaaaaaaaa0000000000000000000000000000000000000000000000000002";

    #[test]
    fn names_come_from_the_x86_64_table() {
        assert_eq!(syscall_name(0), "read");
        assert_eq!(syscall_name(1), "write");
        assert_eq!(syscall_name(59), "execve");
        assert_eq!(syscall_name(231), "exit_group");
        assert_eq!(syscall_name(257), "openat");
        assert_eq!(syscall_name(318), "getrandom");
        assert_eq!(syscall_name(435), "clone3");
        assert_eq!(syscall_name(462), "mseal");
    }

    #[test]
    fn names_map_back_to_numbers() {
        for number in [0, 1, 59, 231, 257, 435] {
            assert_eq!(syscall_number(&syscall_name(number)), Some(number));
        }
        assert_eq!(syscall_number("syscall_335"), Some(335));
        assert_eq!(syscall_number(""), None);
        assert_eq!(syscall_number("no_such_call"), None);
    }

    #[test]
    fn unknown_numbers_are_named_by_number() {
        assert_eq!(syscall_name(335), "syscall_335");
        assert_eq!(syscall_name(511), "syscall_511");
        assert_eq!(syscall_name(u32::MAX), format!("syscall_{}", u32::MAX));
    }

    #[test]
    fn bitmap_insert_reports_the_first_time_only() {
        let mut set = SyscallBits::default();
        assert!(set.insert(0));
        assert!(!set.insert(0));
        assert!(set.insert(511));
        assert!(!set.insert(512), "out of range is never new");
        assert!(set.contains(0) && set.contains(511) && !set.contains(1));
        assert_eq!(numbers(&set).collect::<Vec<_>>(), [0, 511]);
    }

    #[test]
    fn decodes_a_first_use_record() {
        let raw = shared::syscall::SyscallRecord {
            header: shared::RecordHeader {
                kind: shared::EventKind::SyscallFirstUse as u32,
                tid: 5,
                pid: 4,
                ppid: 3,
                uid: 0,
                gid: 0,
                boot_ns: 9,
                cgroup_id: 77,
                comm: *b"syscall_mix\0\0\0\0\0",
            },
            number: 318,
            verdict: custos_ebpf::policy::VERDICT_KILLED,
        };
        // SAFETY: reading the bytes of a plain-old-data value.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&raw as *const shared::syscall::SyscallRecord).cast::<u8>(),
                std::mem::size_of_val(&raw),
            )
        };
        let record = decode(bytes).unwrap();
        assert_eq!(record.number, 318);
        assert_eq!(record_event(&record).verdict, "killed");
        assert_eq!(record.header.cgroup_id, 77);
        assert_eq!(record.header.comm, "syscall_mix");
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::TooShort { .. })
        ));
    }

    #[test]
    fn matches_merge_per_container_sorted_by_number() {
        let set = merge_matches(
            "aaaaaaaaaaaa",
            vec![(A.into(), bits(&[318, 0])), (A.into(), bits(&[59, 0]))],
        )
        .unwrap();
        assert_eq!(set.container_id, A);
        let got: Vec<(u32, &str)> = set
            .syscalls
            .iter()
            .map(|s| (s.number, s.name.as_str()))
            .collect();
        assert_eq!(got, [(0, "read"), (59, "execve"), (318, "getrandom")]);
    }

    #[test]
    fn no_match_is_not_found_and_two_containers_are_ambiguous() {
        assert!(matches!(
            merge_matches("bbbbbbbbbbbb", vec![]),
            Err(SyscallLookupError::NotFound { .. })
        ));
        assert!(matches!(
            merge_matches(
                "aaaaaaaaaaaa",
                vec![(A.into(), bits(&[0])), (B.into(), bits(&[1]))]
            ),
            Err(SyscallLookupError::Ambiguous { matches: 2, .. })
        ));
    }
}
