//! Syscall sets: which syscalls each traced cgroup has used, as a bitmap per cgroup in
//! `SYSCALL_SETS`, with one record the first time a cgroup enters a syscall.
//!
//! `raw_syscalls:sys_enter` fires for every syscall on the machine, so the path taken by all
//! but first uses is kept to: cgroup id, one per-CPU array read (`LAST_SET`, a copy of the set
//! this CPU used last), bit test, return. Only when the CPU switches cgroups, or the copy lacks
//! the bit, is the set looked up in `SYSCALL_SETS` (which also says "traced").
//!
//! Blocking is opt-in per profile (`syscallPolicy: kill`): for a container in enforce mode
//! whose profile opted in, a syscall outside the profile's set (`SYSCALL_RULES`, checked on
//! every use, not only the first) gets the process SIGKILL and is reported with verdict
//! `killed`, every time. The syscall itself still runs (the signal is acted on when it
//! returns): the exported seccomp profile, which makes it fail instead, is the recommended way
//! to deny syscalls. While no profile opted in, the check is one array read.
//!
//! Setting a bit is not atomic. `core`'s atomics offer no `fetch_or` on `bpfel-unknown-none`
//! (`atomic-cas: false`), and `core::intrinsics::atomic_or` compiles (with `--cpu generic`, and
//! even with `-C target-cpu=v3`) to a non-fetching `lock *(u64 *)(r + 0) |= r`, so its result
//! cannot say which CPU set the bit first. Exactly one event per (container, syscall) is
//! therefore guaranteed in user space (`agent/src/sensors/syscalls.rs`), which keeps its own
//! copy of every set.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_get_current_cgroup_id,
    macros::{map, raw_tracepoint},
    maps::{HashMap, PerCpuArray, ProgramArray},
    programs::RawTracePointContext,
};
use custos_ebpf::{
    Counter, EventKind,
    policy::{VERDICT_KILLED, VERDICT_NONE},
    syscall::{SYSCALL_MAX, SYSCALL_SETS_MAX, SYSCALL_WORDS, SyscallBits, SyscallRecord},
};

use super::{
    common::{
        ACTIVITY, config, count, current_ids, fill_header, is_agent, is_container_runtime,
        wakeup_flags,
    },
    policy::{kill_current, syscall_denied},
    process::{NR_EXECVE, NR_EXECVEAT},
    regs::learn_regs_offset,
};

/// Syscalls used, per cgroup id; a cgroup without a set is not traced here. A plain (not LRU)
/// hash: a set must never be silently forgotten while its cgroup lives. User space inserts the
/// (empty) sets of the containers it traces and deletes those of cgroups that are gone.
#[map]
static SYSCALL_SETS: HashMap<u64, SyscallBits> = HashMap::with_max_entries(SYSCALL_SETS_MAX, 0);

/// A copy of the syscall set of `cgroup_id`, the cgroup this CPU last looked one up for. Copies
/// only ever lack bits (another CPU set them since; the slow path then refreshes the copy),
/// never hold extra ones: a set's bits are never cleared while its cgroup lives, and cgroup ids
/// are not reused. 0 (no cgroup has id 0) until the first refresh.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct LastSet {
    cgroup_id: u64,
    bits: SyscallBits,
}

/// One [`LastSet`] per CPU: a syscall is most often made by the task that made the one before
/// on the same CPU, and an array read is inlined where a hash lookup is a call and a hash.
#[map]
static LAST_SET: PerCpuArray<LastSet> = PerCpuArray::with_max_entries(1, 0);

/// Whether `cgroup_id` is the cgroup of this CPU's [`LastSet`], hence has a syscall set, hence
/// is traced: lets the exit programs skip the `TRACED_CGROUPS` lookup for the task that just
/// entered its syscall on this CPU.
#[inline(always)]
pub(super) fn last_set_is(cgroup_id: u64) -> bool {
    LAST_SET
        .get(0)
        .is_some_and(|last| last.cgroup_id == cgroup_id)
}

/// Indexes of the `sys_enter` raw tracepoint's arguments (`struct pt_regs *regs`, `long id`).
pub(super) const SYS_ENTER_REGS_ARG: usize = 0;
pub(super) const SYS_ENTER_ID_ARG: usize = 1;

/// Programs `sys_enter` hands some syscalls on to (a tail call, same context), filled by user
/// space before `sys_enter` is attached.
#[map]
static SYS_ENTER_TAILS: ProgramArray = ProgramArray::with_max_entries(1, 0);
/// `SYS_ENTER_TAILS` slot of `sys_enter_exec` (probes/process.rs).
const TAIL_EXEC: u32 = 0;

const EEXIST: i32 = 17;

/// A raw tracepoint rather than `raw_syscalls:sys_enter`: it runs on every syscall of the
/// machine, and the raw form skips building the trace record (all six arguments) each time.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    let _ = try_sys_enter(&ctx);
    let id: i64 = ctx.arg(SYS_ENTER_ID_ARG);
    if id == NR_EXECVE || id == NR_EXECVEAT {
        // SAFETY: a tail call with this program's own context. It does not return when it
        // succeeds; if the slot is empty, the exec is reported from `sched_process_exec`
        // without its arguments (`argv_missing`).
        let _ = unsafe { SYS_ENTER_TAILS.tail_call(&ctx, TAIL_EXEC) };
    }
    0
}

#[inline(always)]
fn try_sys_enter(ctx: &RawTracePointContext) -> Result<(), i64> {
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let id: i64 = ctx.arg(SYS_ENTER_ID_ARG);
    if id < 0 || id >= i64::from(SYSCALL_MAX) {
        return Ok(());
    }
    let number = id as u32;
    // Masked, not just range-checked: the verifier (and the optimiser) must see the index stay
    // in bounds, or a bounds-check panic call is left in the program.
    let word = ((number / 64) as usize) & (SYSCALL_WORDS - 1);
    let bit = 1u64 << (number % 64);
    // Every use, not only the first: a syscall first used before the container was put in
    // enforce mode must be stopped as well. One array read while no profile opted in.
    let killed = syscall_denied(cgroup_id, word, bit);
    if killed {
        kill_current();
    }
    let last = LAST_SET.get_ptr_mut(0).ok_or(0i64)?;
    // SAFETY: this CPU's slot, ours while the program runs; `word` is masked in range.
    if !killed && unsafe { (*last).cgroup_id == cgroup_id && (*last).bits.words[word] & bit != 0 } {
        return Ok(());
    }
    // The set doubles as "traced". User space gives a container an empty set when it starts
    // tracing it; host processes get one here, only when they are traced too.
    let set = match SYSCALL_SETS.get_ptr_mut(&cgroup_id) {
        Some(set) => set,
        None if config().trace_host != 0 => {
            learn_regs_offset(ctx.arg(SYS_ENTER_REGS_ARG));
            first_set(cgroup_id)?
        }
        None => return Ok(()),
    };
    // SAFETY: a live value of this map; `word` < SYSCALL_WORDS by the mask above.
    let slot = unsafe { &mut (*set).words[word] };
    let known = *slot & bit != 0;
    if known && !killed {
        // SAFETY: as above; a plain copy of the set into this CPU's slot.
        unsafe {
            (*last).cgroup_id = cgroup_id;
            (*last).bits = *set;
        }
        return Ok(());
    }
    // A traced cgroup's first syscalls all come through here before any of them returns,
    // which is when the file sensor needs the registers' place (probes/regs.rs).
    learn_regs_offset(ctx.arg(SYS_ENTER_REGS_ARG));
    // Rare from here on: a syscall this cgroup has not used before (or the agent itself, when
    // host processes are traced: its bits are never set, it is never reported), or a kill,
    // which is reported every time.
    let (tid, pid) = current_ids();
    if !killed && (is_agent(pid) || is_container_runtime()) {
        return Ok(());
    }
    // A plain read-modify-write, not an atomic one: the BPF target has no fetch-or that
    // compiles to a usable result (see the module documentation). Two CPUs racing here may
    // both send a record (user space drops the duplicate) or lose each other's bit in this
    // word (the lost syscall is sent again on its next use, and user space's own copy of the
    // set keeps it meanwhile).
    *slot |= bit;
    let Some(mut entry) = ACTIVITY.reserve::<SyscallRecord>(0) else {
        // Ring buffer full: forget a new bit so that the next use is reported instead.
        if !known {
            *slot &= !bit;
        }
        count(Counter::ActivityDropped);
        return Ok(());
    };
    // SAFETY: the reserved entry is exclusively ours until submit.
    let record = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut record.header, EventKind::SyscallFirstUse, tid, pid);
    record.number = number;
    record.verdict = if killed { VERDICT_KILLED } else { VERDICT_NONE };
    entry.submit(wakeup_flags(&ACTIVITY, size_of::<SyscallRecord>() as u64));
    count(Counter::ActivitySent);
    Ok(())
}

/// The set of a cgroup seen for the first time: inserts an empty one (another CPU may have
/// done so just before, which is fine) and returns it.
#[inline(always)]
fn first_set(cgroup_id: u64) -> Result<*mut SyscallBits, i64> {
    let empty = SyscallBits {
        words: [0; SYSCALL_WORDS],
    };
    if let Err(error) = SYSCALL_SETS.insert(&cgroup_id, &empty, BPF_NOEXIST as u64)
        && error != -EEXIST
    {
        count(Counter::SyscallSetsFull);
        return Err(i64::from(error));
    }
    SYSCALL_SETS.get_ptr_mut(&cgroup_id).ok_or(0)
}
