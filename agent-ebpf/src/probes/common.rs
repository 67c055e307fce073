//! What every probe uses: settings from user space, the event ring buffer, counters, and the
//! record header.
use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
        bpf_probe_read_kernel,
    },
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use custos_ebpf::{
    COMM_LEN, COUNTER_SLOTS, Counter, EventKind, ProbeConfig, RecordHeader, RepeatKey, RepeatState,
    policy::VERDICT_NONE,
};

/// Written by user space before load (`EbpfLoader::override_global`). All zero here; the
/// offsets in particular are always filled from the running kernel's BTF.
#[unsafe(no_mangle)]
static CONFIG: ProbeConfig = unsafe { core::mem::zeroed() };

/// Process lifecycle records (exec, exit, fork). Kept apart from the high-volume activity so
/// that a flood of file opens can never cost the process tree an exec. 8 MiB holds ~1,700 exec
/// records of burst.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Activity records: file opens, network calls, syscall first uses.
#[map]
pub static ACTIVITY: RingBuf = RingBuf::with_byte_size(16 << 20, 0);

/// Backlog, in bytes, at which a submitted record wakes the reader: the record that takes a
/// ring's unread data past it does. Below it nothing wakes user space, which drains both
/// rings every `RING_POLL_INTERVAL` (agent/src/pipeline.rs) anyway. A wakeup per record (the
/// ring buffer's default whenever the reader has caught up) costs the traced task an
/// `irq_work` and the reader's wake-up: several microseconds each on a virtual machine, more
/// than the rest of an exec's probes together.
const WAKEUP_BACKLOG: u64 = 1 << 20;

/// Flags to submit a record of `size` bytes to `ring` with: see [`WAKEUP_BACKLOG`].
#[inline(always)]
pub fn wakeup_flags(ring: &RingBuf, size: u64) -> u64 {
    let backlog = ring.query(u64::from(BPF_RB_AVAIL_DATA));
    if backlog >= WAKEUP_BACKLOG && backlog.saturating_sub(size) < WAKEUP_BACKLOG {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// cgroups whose activity is traced: the containers, inserted by user space as it learns of
/// them. LRU: cgroups of containers long gone age out without user space cleaning up.
#[map]
static TRACED_CGROUPS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(16384, 0);

/// Actions sent recently, per cgroup, to suppress identical repeats. Bounded: when it is full
/// the least recently seen action is forgotten and will simply be sent again.
#[map]
static RECENT: LruHashMap<RepeatKey, RepeatState> = LruHashMap::with_max_entries(65536, 0);

/// `custos_ebpf::COARSE_CLOCK_MAP`: boot time in ns, as of user space's last tick.
#[map]
static COARSE_CLOCK: Array<u64> = Array::with_max_entries(1, 0);

/// Per-CPU counters indexed by [`Counter`]; user space sums the CPUs.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[inline(always)]
pub fn config() -> &'static ProbeConfig {
    // SAFETY: CONFIG is a plain static. Reading its address through a volatile load hides
    // from the compiler that it points at the all-zero initializer (which user space replaces
    // at load time), so field reads are not constant-folded.
    unsafe { &*core::ptr::read_volatile(&(&CONFIG as *const ProbeConfig)) }
}

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no other writer while this program runs on this CPU.
        unsafe { *slot += 1 };
    }
}

/// (tid, pid) of the current task.
#[inline(always)]
pub fn current_ids() -> (u32, u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    (pid_tgid as u32, (pid_tgid >> 32) as u32)
}

/// True for the agent's own threads, which are never reported (their actions would feed back
/// into the stream they produce).
#[inline(always)]
pub fn is_agent(pid: u32) -> bool {
    config().agent_pid == pid
}

/// Reads a field of the current `task_struct` at `offset`; `None` when the offset is unknown.
#[inline(always)]
pub fn read_task_field<T>(task: u64, offset: u32) -> Option<T> {
    if task == 0 || offset == 0 {
        return None;
    }
    // SAFETY: a probe read of kernel memory; a bad address makes the helper fail, not fault.
    unsafe { bpf_probe_read_kernel((task + offset as u64) as *const T) }.ok()
}

/// Process id of the current task's parent (`real_parent->tgid`), 0 when unknown.
#[inline(always)]
pub fn parent_pid() -> u32 {
    let offsets = config().offsets;
    let task = unsafe { bpf_get_current_task() };
    read_task_field::<u64>(task, offsets.task_real_parent)
        .and_then(|parent| read_task_field::<u32>(parent, offsets.task_tgid))
        .unwrap_or(0)
}

/// The syscall number and return value of a `syscalls:sys_exit_*` tracepoint's record (8-byte
/// common header, `__syscall_nr` padded to 8, then `ret`; see
/// /sys/kernel/tracing/events/syscalls/sys_exit_*/format), loaded straight from the context:
/// two loads instead of two probe-read helper calls on every traced exit.
#[inline(always)]
pub fn syscall_exit(ctx: &TracePointContext) -> (u64, i64) {
    let record = ctx.as_ptr() as *const u8;
    // SAFETY: both fields are inside the record every syscall exit tracepoint passes, at
    // aligned offsets past the first 8 bytes, which is what the verifier allows a tracepoint
    // program to load from its context.
    unsafe {
        let nr = core::ptr::read(record.add(8).cast::<i32>());
        let ret = core::ptr::read(record.add(16).cast::<i64>());
        (nr as u64, ret)
    }
}

/// Fills `header` with the current task's identity.
#[inline(always)]
pub fn fill_header(header: &mut RecordHeader, kind: EventKind, tid: u32, pid: u32) {
    let uid_gid = bpf_get_current_uid_gid();
    header.kind = kind as u32;
    header.tid = tid;
    header.pid = pid;
    header.ppid = parent_pid();
    header.uid = uid_gid as u32;
    header.gid = (uid_gid >> 32) as u32;
    header.boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    header.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    header.comm = bpf_get_current_comm().unwrap_or([0u8; COMM_LEN]);
}

/// Whether file, network and syscall activity of `cgroup_id` is traced: containers always,
/// host processes only when configured. A cgroup whose syscall set this CPU's `sys_enter` just
/// used is traced without a lookup (usually the case: the exit follows its own entry).
#[inline(always)]
pub fn is_traced(cgroup_id: u64) -> bool {
    config().trace_host != 0
        || super::syscalls::last_set_is(cgroup_id)
        || TRACED_CGROUPS.get_ptr(&cgroup_id).is_some()
}

/// What [`check_repeat`] says about an action.
pub enum Repeat {
    /// An identical action was sent less than the repeat window ago (this one is counted);
    /// `verdict` is the decision taken on it then.
    Suppressed { verdict: u32 },
    /// Send it, with the number of repeats suppressed since the last one sent.
    Send { repeats: u64 },
}

/// Decides whether an action identified by (`cgroup_id`, `kind`, `what`) is sent or suppressed
/// as a repeat. A repeat is only suppressed while the policy generation it was judged under is
/// current.
///
/// Time is the coarse clock (`custos_ebpf::COARSE_CLOCK_MAP`): an array read, where
/// `bpf_ktime_get_boot_ns` would be a clock read on every suppressed repeat.
#[inline(always)]
pub fn check_repeat(cgroup_id: u64, kind: EventKind, what: u64) -> Repeat {
    let now_ns = COARSE_CLOCK.get(0).copied().unwrap_or(0);
    let key = repeat_key(cgroup_id, kind, what);
    let generation = super::policy::generation();
    if let Some(state) = RECENT.get_ptr_mut(&key) {
        // SAFETY: a live value of this map; concurrent CPUs may race on the counter, which
        // can only make the count slightly low, never unsafe.
        let state = unsafe { &mut *state };
        if now_ns.wrapping_sub(state.sent_ns) < config().repeat_window_ns
            && state.generation == generation
        {
            state.suppressed += 1;
            count(Counter::RepeatsSuppressed);
            return Repeat::Suppressed {
                verdict: state.verdict,
            };
        }
        let repeats = state.suppressed;
        state.sent_ns = now_ns;
        state.suppressed = 0;
        state.verdict = VERDICT_NONE;
        state.generation = generation;
        return Repeat::Send { repeats };
    }
    let state = RepeatState {
        sent_ns: now_ns,
        suppressed: 0,
        verdict: VERDICT_NONE,
        generation,
    };
    let _ = RECENT.insert(&key, &state, 0);
    Repeat::Send { repeats: 0 }
}

/// Stores the kernel's decision on an action just let through [`check_repeat`], for its repeats.
#[inline(always)]
pub fn remember_verdict(cgroup_id: u64, kind: EventKind, what: u64, verdict: u32) {
    if let Some(state) = RECENT.get_ptr_mut(&repeat_key(cgroup_id, kind, what)) {
        // SAFETY: a live value of this map.
        unsafe { (*state).verdict = verdict };
    }
}

#[inline(always)]
fn repeat_key(cgroup_id: u64, kind: EventKind, what: u64) -> RepeatKey {
    RepeatKey {
        cgroup_id,
        kind: kind as u32,
        _pad: 0,
        what,
    }
}

/// 64-bit FNV-1a of `bytes[..len]`, for repeat keys of actions identified by a string.
#[inline(always)]
pub fn hash_bytes(bytes: &[u8], len: usize) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut index = 0;
    while index < bytes.len() && index < len {
        hash ^= u64::from(bytes[index]);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        index += 1;
    }
    hash
}

/// True while the current task is the container runtime setting the container up: `runc`
/// (re-executed as `runc init`, still loading its libraries), then `runc:[0:PARENT]`,
/// `runc:[1:CHILD]`, `runc:[2:INIT]` until the entrypoint's exec. Their syscalls (mount, pivot_root, ...) are not the workload's: counting them would
/// put them in the workload's set and hide the workload's own first use of shared ones.
#[inline(always)]
pub fn is_container_runtime() -> bool {
    let comm = bpf_get_current_comm().unwrap_or([0u8; 16]);
    let runc = comm[0] == b'r'
        && comm[1] == b'u'
        && comm[2] == b'n'
        && comm[3] == b'c'
        && (comm[4] == b':' || comm[4] == 0);
    // runc re-executing itself from a sealed memfd copy (`memfd:runc_cloned...`).
    let runc_clone = comm.starts_with(b"memfd:runc");
    runc || runc_clone
}
