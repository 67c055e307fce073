//! Enforcement: compiles the profiles of containers in `monitor` and `enforce` mode into the
//! kernel's policy maps, so that the kernel decides on its own — known-good actions never leave
//! it, and in enforce mode what the profile does not allow is stopped before it takes effect.
//!
//! Mechanisms, chosen at start-up and reported in the log and by `GetStatus`:
//! - `bpf-lsm+cgroup` (BPF LSM active: `lsm=...,bpf`): the `file_open` and
//!   `bprm_check_security` hooks make an unlisted open or exec fail with EPERM and the process
//!   lives on (verdict `blocked`); network as below.
//! - `cgroup+sigkill` (every kernel with cgroup v2): cgroup `connect4/6`, `sendmsg4/6` and
//!   `bind4/6` programs make unlisted network calls fail with EPERM (verdict `blocked`); the
//!   exec and open tracepoints send SIGKILL to a process that runs an unlisted program or
//!   opens an unlisted file (verdict `killed`).
//!
//! Syscalls outside a profile are flagged; a profile may opt in to SIGKILL for them in enforce
//! mode (`syscallPolicy: kill`, the `sys_enter` program; verdict `killed`).
//!
//! User space keeps the maps in step with the modes, the profiles and the containers every
//! [`SYNC_INTERVAL`]; the kernel never waits for it.
pub mod compile;
pub mod global_rules;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use custos_ebpf::policy::{
    CgroupPolicy, ExecRuleKey, MODE_ENFORCE, MODE_MONITOR, NetRuleKey, PathRuleKey,
    VERDICT_ALERTED, VERDICT_BLOCKED, VERDICT_KILLED,
};
use tokio::sync::watch;
use tracing::{info, warn};

use self::compile::{CompiledProfile, compile};
use crate::{
    config::Config,
    containers::ContainerRegistry,
    learning::Learner,
    modes::Mode,
    profiles::WorkloadIdentity,
    sensors::{PolicyMaps, syscalls::SyscallRuleMaps},
};

/// How often the kernel's policy is brought in step with modes, profiles and containers. Well
/// inside the "mode changes take effect within 1 s" promise.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(200);

/// The name of a kernel verdict (`policy::VERDICT_*`), empty for none.
pub fn verdict_name(verdict: u32) -> &'static str {
    match verdict {
        VERDICT_ALERTED => "alerted",
        VERDICT_BLOCKED => "blocked",
        VERDICT_KILLED => "killed",
        _ => "",
    }
}

/// How this node stops deviations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// BPF LSM hooks for exec and open (EPERM), cgroup sock_addr programs for network (EPERM).
    LsmAndCgroup,
    /// cgroup sock_addr programs (EPERM) and SIGKILL from tracepoints.
    CgroupAndSignal,
    /// No enforcement programs could be attached: deviations are only alerted.
    None,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::LsmAndCgroup => "bpf-lsm+cgroup",
            Mechanism::CgroupAndSignal => "cgroup+sigkill",
            Mechanism::None => "none",
        }
    }
}

/// The mechanism chosen at start-up (`GetStatus` reports it); `None` until then.
static MECHANISM: std::sync::OnceLock<Mechanism> = std::sync::OnceLock::new();

/// Records the mechanism chosen at start-up; only the first call counts.
pub fn set_mechanism(mechanism: Mechanism) {
    let _ = MECHANISM.set(mechanism);
}

/// The mechanism in use, `None` before the sensors are loaded.
pub fn mechanism() -> Option<Mechanism> {
    MECHANISM.get().copied()
}

/// Whether the running kernel has BPF LSM active (`bpf` in the LSM list).
pub fn bpf_lsm_active() -> bool {
    std::fs::read_to_string("/sys/kernel/security/lsm")
        .is_ok_and(|list| list.trim().split(',').any(|lsm| lsm == "bpf"))
}

#[derive(Default)]
struct State {
    /// Profile numbers (the key spaces of the rule maps); 0 is never used.
    numbers: HashMap<WorkloadIdentity, u32>,
    next_number: u32,
    /// What is in the rule maps now, per profile number.
    compiled: HashMap<u32, CompiledProfile>,
    /// What is in POLICY_CGROUPS now.
    cgroups: HashMap<u64, CgroupPolicy>,
    generation: u32,
}

pub struct Enforcer {
    maps: Mutex<PolicyMaps>,
    /// `None`: the maps could not be opened, syscall deviations are only flagged.
    syscall_rules: Mutex<Option<SyscallRuleMaps>>,
    state: Mutex<State>,
    learner: Arc<Learner>,
    containers: Arc<ContainerRegistry>,
    config: watch::Receiver<Config>,
}

impl Enforcer {
    pub fn new(
        maps: PolicyMaps,
        syscall_rules: Option<SyscallRuleMaps>,
        learner: Arc<Learner>,
        containers: Arc<ContainerRegistry>,
        config: watch::Receiver<Config>,
    ) -> Arc<Self> {
        Arc::new(Self {
            maps: Mutex::new(maps),
            syscall_rules: Mutex::new(syscall_rules),
            state: Mutex::new(State {
                next_number: 1,
                ..State::default()
            }),
            learner,
            containers,
            config,
        })
    }

    /// Brings the kernel's policy in step every [`SYNC_INTERVAL`].
    pub async fn run(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(SYNC_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.sync().await;
        }
    }

    /// One round: which containers are judged in the kernel, with which compiled profile.
    pub async fn sync(&self) {
        let global = self.config.borrow().enforcement.global_rules;
        let mut wanted_cgroups: HashMap<u64, CgroupPolicy> = HashMap::new();
        let mut wanted_profiles: HashMap<u32, CompiledProfile> = HashMap::new();
        for cgroup_id in self.containers.cgroups().container_cgroup_ids() {
            let workload = self.containers.workload_for_cgroup(cgroup_id).await;
            if workload.host || workload.container_id.is_empty() {
                continue;
            }
            let mode = match self.learner.mode_for(&workload) {
                Mode::Monitor => MODE_MONITOR,
                Mode::Enforce => MODE_ENFORCE,
                Mode::Learn | Mode::Off => continue,
            };
            let Some(identity) = WorkloadIdentity::from_workload(&workload, &()) else {
                continue;
            };
            let number = self.number_of(&identity);
            if let std::collections::hash_map::Entry::Vacant(slot) = wanted_profiles.entry(number) {
                // No profile yet: nothing to judge against, in the kernel or in user space.
                let Some(compiled) = self
                    .learner
                    .with_profile(&identity, |p| p.map(|p| compile(Some(p), &global)))
                else {
                    continue;
                };
                slot.insert(compiled);
            }
            wanted_cgroups.insert(
                cgroup_id,
                CgroupPolicy {
                    profile: number,
                    mode,
                },
            );
        }
        self.apply(wanted_profiles, wanted_cgroups);
    }

    fn number_of(&self, identity: &WorkloadIdentity) -> u32 {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(number) = state.numbers.get(identity) {
            return *number;
        }
        let number = state.next_number;
        state.next_number += 1;
        state.numbers.insert(identity.clone(), number);
        number
    }

    /// Writes the differences: rules first, then the cgroups that use them, then the rules
    /// no cgroup uses any more, so the kernel never sees a cgroup pointing at missing rules.
    fn apply(
        &self,
        wanted_profiles: HashMap<u32, CompiledProfile>,
        wanted_cgroups: HashMap<u64, CgroupPolicy>,
    ) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        let mut syscall_rules = self.syscall_rules.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = false;
        for (number, compiled) in &wanted_profiles {
            let empty = CompiledProfile::default();
            let current = state.compiled.get(number).unwrap_or(&empty);
            if current == compiled {
                continue;
            }
            let written = write_rules(&mut maps, *number, current, compiled).and_then(|()| {
                write_syscall_rule(syscall_rules.as_mut(), *number, current, compiled)
            });
            match written {
                Ok(()) => {
                    state.compiled.insert(*number, compiled.clone());
                }
                Err(error) => {
                    warn!(profile = number, "{error:#}; will retry");
                    // Unknown map contents: rewrite everything next round.
                    state.compiled.remove(number);
                }
            }
            changed = true;
        }
        for (cgroup_id, policy) in &wanted_cgroups {
            if state.cgroups.get(cgroup_id) == Some(policy) {
                continue;
            }
            if let Err(error) = maps.cgroups.insert(cgroup_id, policy, 0) {
                warn!(cgroup_id, %error, "cannot put a container under kernel policy");
                continue;
            }
            info!(
                cgroup_id,
                profile = policy.profile,
                mode = if policy.mode == MODE_ENFORCE {
                    "enforce"
                } else {
                    "monitor"
                },
                "container judged in the kernel"
            );
            state.cgroups.insert(*cgroup_id, *policy);
            changed = true;
        }
        let gone: Vec<u64> = state
            .cgroups
            .keys()
            .filter(|id| !wanted_cgroups.contains_key(id))
            .copied()
            .collect();
        for cgroup_id in gone {
            let _ = maps.cgroups.remove(&cgroup_id);
            state.cgroups.remove(&cgroup_id);
            changed = true;
        }
        let stale: Vec<u32> = state
            .compiled
            .keys()
            .filter(|number| !wanted_profiles.contains_key(number))
            .copied()
            .collect();
        for number in stale {
            if let Some(current) = state.compiled.remove(&number) {
                let empty = CompiledProfile::default();
                let _ = write_rules(&mut maps, number, &current, &empty);
                let _ = write_syscall_rule(syscall_rules.as_mut(), number, &current, &empty);
                changed = true;
            }
        }
        if changed && let Some(syscall_rules) = syscall_rules.as_mut() {
            let in_use = state
                .compiled
                .values()
                .filter(|c| c.syscalls.is_some())
                .count();
            let in_use = u32::try_from(in_use).unwrap_or(u32::MAX);
            if let Err(error) = syscall_rules.in_use.set(0, in_use, 0) {
                warn!(%error, "cannot count the syscall rules in force");
            }
        }
        if changed {
            state.generation = state.generation.wrapping_add(1);
            if let Err(error) = maps.generation.set(0, state.generation, 0) {
                warn!(%error, "cannot bump the policy generation");
            }
        }
    }
}

/// Replaces the syscall rule of profile `number` (present only for a profile that opted in to
/// kills): `current` → `wanted`.
fn write_syscall_rule(
    maps: Option<&mut SyscallRuleMaps>,
    number: u32,
    current: &CompiledProfile,
    wanted: &CompiledProfile,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let Some(maps) = maps else {
        return Ok(());
    };
    match (&current.syscalls, &wanted.syscalls) {
        (current, Some(bits)) if current.as_ref() != Some(bits) => maps
            .rules
            .insert(number, bits, 0)
            .context("writing a syscall rule (SYSCALL_RULES full?)"),
        (Some(_), None) => {
            let _ = maps.rules.remove(&number);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Replaces the rules of profile `number` in the maps: `current` → `wanted`.
fn write_rules(
    maps: &mut PolicyMaps,
    number: u32,
    current: &CompiledProfile,
    wanted: &CompiledProfile,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let path_key = |hash: u64| PathRuleKey {
        profile: number,
        _pad: 0,
        hash,
    };
    for (hash, rule) in &wanted.paths {
        if current.paths.get(hash) != Some(rule) {
            maps.paths
                .insert(path_key(*hash), rule, 0)
                .context("writing a file rule (PATH_RULES full?)")?;
        }
    }
    for hash in current
        .paths
        .keys()
        .filter(|h| !wanted.paths.contains_key(h))
    {
        let _ = maps.paths.remove(&path_key(*hash));
    }
    let exec_key = |(kind, hash): (u32, u64)| ExecRuleKey {
        profile: number,
        kind,
        hash,
    };
    for (key, value) in &wanted.execs {
        if current.execs.get(key) != Some(value) {
            maps.execs
                .insert(exec_key(*key), value, 0)
                .context("writing an exec rule (EXEC_RULES full?)")?;
        }
    }
    for key in current
        .execs
        .keys()
        .filter(|k| !wanted.execs.contains_key(k))
    {
        let _ = maps.execs.remove(&exec_key(*key));
    }
    let net_key = |entry: &compile::NetEntry| NetRuleKey {
        profile: number,
        direction: entry.direction,
        protocol: entry.protocol,
        port: entry.port,
        family: entry.family,
        prefix_len: entry.prefix_len,
        _pad: 0,
        addr: entry.addr,
    };
    for entry in wanted.nets.difference(&current.nets) {
        maps.nets
            .insert(net_key(entry), 1, 0)
            .context("writing a network rule (NET_RULES full?)")?;
    }
    for entry in current.nets.difference(&wanted.nets) {
        let _ = maps.nets.remove(&net_key(entry));
    }
    Ok(())
}
