//! Process lifecycle: exec (with its path and arguments) and exit (with its status).
//!
//! Arguments live in the caller's memory, which a successful exec replaces, so they are read at
//! syscall entry (`sys_enter_exec`, tail-called from the raw `sys_enter`) into `PENDING_EXECS` (per thread) and sent from
//! `sched_process_exec`, which only fires for execs that succeeded.
use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_task, bpf_probe_read_kernel_buf,
        bpf_probe_read_kernel_str_bytes, bpf_probe_read_user, generated::bpf_probe_read_user_str,
    },
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use custos_ebpf::{
    Counter, EXEC_ARGV_LIMIT, EXEC_FLAG_ARGV_MISSING, EXEC_FLAG_ARGV_TRUNCATED, EXEC_FLAG_KILLED,
    EXEC_FLAG_PATH_TRUNCATED, EXEC_MAX_ARGS, EXEC_PATH_LEN, EventKind, ExecArgs, ExecRecord,
    ExitRecord, ForkRecord, policy::MODE_ENFORCE,
};

use super::common::{
    EVENTS, config, count, current_ids, fill_header, is_agent, read_task_field, wakeup_flags,
};
use super::lsm::lsm_active;
use super::policy::{exec_allowed, kill_current, policy_of};
use super::regs::regs_at;
use super::syscalls::{SYS_ENTER_ID_ARG, SYS_ENTER_REGS_ARG};

const AT_FDCWD: i32 = -100;

/// Arguments of execs in flight, by thread id. LRU so that execs that fail (and never reach
/// `sched_process_exec`) age out instead of filling the map.
#[map]
pub(super) static PENDING_EXECS: LruHashMap<u32, ExecArgs> = LruHashMap::with_max_entries(4096, 0);

/// One `ExecArgs` per CPU to build an entry in: it is far larger than the 512-byte stack.
#[map]
static EXEC_SCRATCH: PerCpuArray<ExecArgs> = PerCpuArray::with_max_entries(1, 0);

// Offsets in `sched_process_exec`'s record.
const SCHED_EXEC_FILENAME_LOC: usize = 8;
const SCHED_EXEC_OLD_PID: usize = 16;

// x86-64 syscall numbers.
pub(super) const NR_EXECVE: i64 = 59;
pub(super) const NR_EXECVEAT: i64 = 322;

/// Captures an exec's path and arguments at syscall entry. Not attached itself: the raw
/// `sys_enter` program (probes/syscalls.rs) tail-calls it for execve and execveat, so no
/// classic `syscalls:sys_enter_*` program is attached at all and no syscall of the node pays
/// for their dispatch (docs/architecture.md, "Performance").
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter_exec(ctx: RawTracePointContext) -> i32 {
    let _ = try_capture_exec(&ctx);
    0
}

#[inline(always)]
fn try_capture_exec(ctx: &RawTracePointContext) -> Result<(), i64> {
    let (tid, pid) = current_ids();
    if is_agent(pid) {
        return Ok(());
    }
    let regs = regs_at(ctx.arg(SYS_ENTER_REGS_ARG)).ok_or(0i64)?;
    // execve(filename, argv, envp); execveat(dirfd, filename, argv, envp, flags)
    let id: i64 = ctx.arg(SYS_ENTER_ID_ARG);
    let (dirfd, filename, argv) = if id == NR_EXECVEAT {
        (regs.arg(0) as i32, regs.arg(1), regs.arg(2))
    } else {
        (AT_FDCWD, regs.arg(0), regs.arg(1))
    };
    let args = EXEC_SCRATCH.get_ptr_mut(0).ok_or(0i64)?;
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program.
    let args = unsafe { &mut *args };
    args.flags = 0;
    args.dirfd = dirfd;

    let path_len = unsafe {
        bpf_probe_read_user_str(
            args.path.as_mut_ptr().cast(),
            EXEC_PATH_LEN as u32,
            filename as *const core::ffi::c_void,
        )
    };
    args.path_len = if path_len > 0 {
        (path_len - 1) as u32
    } else {
        0
    };
    if path_len as usize >= EXEC_PATH_LEN {
        args.flags |= EXEC_FLAG_PATH_TRUNCATED;
    }

    args.argv_len = read_argv(argv as *const *const u8, args) as u32;

    if exec_denied_in_enforce(args) {
        // The process dies before the new program runs, and the exec itself is cut short by
        // the pending SIGKILL, so `sched_process_exec` will not fire: send the record now.
        args.flags |= EXEC_FLAG_KILLED;
        kill_current();
        send_exec(tid, pid, args);
        return Ok(());
    }

    if PENDING_EXECS.insert(&tid, &*args, 0).is_err() {
        count(Counter::PendingExecDropped);
    }
    Ok(())
}

/// True when the current task's container is in enforce mode and its profile (or a global
/// rule) does not allow this exec.
#[inline(always)]
fn exec_denied_in_enforce(args: &ExecArgs) -> bool {
    let Some(policy) = policy_of(unsafe { bpf_get_current_cgroup_id() }) else {
        return false;
    };
    // With BPF LSM the bprm_check_security hook makes the exec fail instead.
    policy.mode == MODE_ENFORCE
        && !lsm_active()
        && exec_allowed(policy.profile, &args.path, args.path_len as usize) == Some(false)
}

/// Sends an exec record built from `args` (a map value) on the process ring buffer.
#[inline(always)]
pub(super) fn send_exec(tid: u32, pid: u32, args: &ExecArgs) {
    let Some(mut entry) = EVENTS.reserve::<ExecRecord>(0) else {
        count(Counter::EventsDropped);
        return;
    };
    // SAFETY: the reserved entry is exclusively ours until submit/discard.
    let record = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut record.header, EventKind::Exec, tid, pid);
    // SAFETY: `record.args` is exactly `size_of::<ExecArgs>()` bytes of the reservation.
    let bytes = unsafe {
        core::slice::from_raw_parts_mut(
            (&mut record.args as *mut ExecArgs).cast::<u8>(),
            core::mem::size_of::<ExecArgs>(),
        )
    };
    if unsafe { bpf_probe_read_kernel_buf((args as *const ExecArgs).cast(), bytes) }.is_err() {
        entry.discard(0);
        return;
    }
    entry.submit(wakeup_flags(&EVENTS, size_of::<ExecRecord>() as u64));
    count(Counter::EventsSent);
}

/// Copies up to `EXEC_MAX_ARGS` arguments, each followed by its NUL, into `args.argv`; returns
/// the bytes used and sets `EXEC_FLAG_ARGV_TRUNCATED` when anything was left out.
#[inline(always)]
fn read_argv(argv: *const *const u8, args: &mut ExecArgs) -> usize {
    let mut used = 0usize;
    for index in 0..EXEC_MAX_ARGS {
        let Ok(arg) = (unsafe { bpf_probe_read_user(argv.wrapping_add(index)) }) else {
            return used;
        };
        if arg.is_null() {
            return used;
        }
        if used >= EXEC_ARGV_LIMIT {
            args.flags |= EXEC_FLAG_ARGV_TRUNCATED;
            return used;
        }
        // `used` < EXEC_ARGV_LIMIT and the read is at most EXEC_ARGV_LIMIT bytes, so it stays
        // inside the 2 * EXEC_ARGV_LIMIT buffer; the mask lets the verifier see that.
        let start = used & (EXEC_ARGV_LIMIT - 1);
        let read = unsafe {
            bpf_probe_read_user_str(
                args.argv.as_mut_ptr().wrapping_add(start).cast(),
                EXEC_ARGV_LIMIT as u32,
                arg.cast(),
            )
        };
        if read <= 0 {
            args.flags |= EXEC_FLAG_ARGV_TRUNCATED;
            return used;
        }
        if read as usize >= EXEC_ARGV_LIMIT {
            args.flags |= EXEC_FLAG_ARGV_TRUNCATED;
        }
        used = start + read as usize;
    }
    // All EXEC_MAX_ARGS slots used: truncated if there is one more.
    if let Ok(next) = unsafe { bpf_probe_read_user(argv.wrapping_add(EXEC_MAX_ARGS)) }
        && !next.is_null()
    {
        args.flags |= EXEC_FLAG_ARGV_TRUNCATED;
    }
    used
}

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let _ = try_sched_process_exec(&ctx);
    0
}

fn try_sched_process_exec(ctx: &TracePointContext) -> Result<(), i64> {
    let (tid, pid) = current_ids();
    // Everything that can fail is read before the reservation: an early return while holding
    // it would leak it (and the verifier refuses that).
    let old_tid: u32 = unsafe { ctx.read_at::<i32>(SCHED_EXEC_OLD_PID) }? as u32;
    let filename_loc: u32 = unsafe { ctx.read_at(SCHED_EXEC_FILENAME_LOC) }?;
    let Some(mut entry) = EVENTS.reserve::<ExecRecord>(0) else {
        count(Counter::EventsDropped);
        let _ = PENDING_EXECS.remove(&old_tid);
        return Ok(());
    };
    // SAFETY: the reserved entry is exclusively ours until submit/discard.
    let record = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut record.header, EventKind::Exec, tid, pid);
    match PENDING_EXECS.get_ptr(&old_tid) {
        Some(pending) => {
            // SAFETY: `pending` points at a live map value of exactly this type.
            let bytes = unsafe {
                core::slice::from_raw_parts_mut(
                    (&mut record.args as *mut ExecArgs).cast::<u8>(),
                    core::mem::size_of::<ExecArgs>(),
                )
            };
            if unsafe { bpf_probe_read_kernel_buf(pending.cast(), bytes) }.is_err() {
                entry.discard(0);
                return Ok(());
            }
            let _ = PENDING_EXECS.remove(&old_tid);
        }
        None => {
            // The exec entered the kernel before the agent attached: the tracepoint still
            // gives the path, but the arguments are gone.
            record.args.flags = EXEC_FLAG_ARGV_MISSING;
            record.args.dirfd = AT_FDCWD;
            record.args.argv_len = 0;
            let src = unsafe { (ctx.as_ptr() as *const u8).add((filename_loc & 0xffff) as usize) };
            record.args.path_len =
                match unsafe { bpf_probe_read_kernel_str_bytes(src, &mut record.args.path) } {
                    Ok(path) => path.len() as u32,
                    Err(_) => 0,
                };
        }
    }
    entry.submit(wakeup_flags(&EVENTS, size_of::<ExecRecord>() as u64));
    count(Counter::EventsSent);
    Ok(())
}

#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let _ = try_sched_process_exit();
    0
}

fn try_sched_process_exit() -> Result<(), i64> {
    let (tid, pid) = current_ids();
    // One exit per process: when its main thread ends.
    if tid != pid || is_agent(pid) {
        return Ok(());
    }
    let Some(mut entry) = EVENTS.reserve::<ExitRecord>(0) else {
        count(Counter::EventsDropped);
        return Ok(());
    };
    let record = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut record.header, EventKind::Exit, tid, pid);
    let task = unsafe { bpf_get_current_task() };
    record.exit_code = read_task_field::<u32>(task, config().offsets.task_exit_code).unwrap_or(0);
    record._pad = 0;
    entry.submit(wakeup_flags(&EVENTS, size_of::<ExitRecord>() as u64));
    count(Counter::EventsSent);
    Ok(())
}

/// `sched_process_fork(parent, child)` as a BTF tracepoint: its arguments are the two tasks,
/// whose layout does not change between kernels the way the classic tracepoint's record does.
/// Runs in the parent's context. Threads (child pid != child tgid) are not processes: skipped.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> u32 {
    let _ = try_sched_process_fork(&ctx);
    0
}

fn try_sched_process_fork(ctx: &BtfTracePointContext) -> Result<(), i64> {
    let (tid, pid) = current_ids();
    if is_agent(pid) {
        return Ok(());
    }
    let child: u64 = ctx.arg(1);
    let offsets = &config().offsets;
    let child_pid = read_task_field::<u32>(child, offsets.task_pid).ok_or(0i64)?;
    let child_tgid = read_task_field::<u32>(child, offsets.task_tgid).ok_or(0i64)?;
    if child_pid != child_tgid {
        return Ok(());
    }
    let Some(mut entry) = EVENTS.reserve::<ForkRecord>(0) else {
        count(Counter::EventsDropped);
        return Ok(());
    };
    // SAFETY: the reserved entry is exclusively ours until submit.
    let record = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut record.header, EventKind::Fork, tid, pid);
    record.child_pid = child_pid;
    record._pad = 0;
    entry.submit(wakeup_flags(&EVENTS, size_of::<ForkRecord>() as u64));
    count(Counter::EventsSent);
    Ok(())
}
