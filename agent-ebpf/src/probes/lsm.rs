//! BPF LSM hooks: on kernels with BPF LSM active, an exec or an open outside the profile of a
//! container in enforce mode fails with EPERM and the process lives on (verdict `blocked`),
//! instead of the SIGKILL the tracepoints send otherwise. Same rules, same maps
//! (`probes/policy.rs`); user space attaches these only where the kernel allows LSM programs
//! and then sets `LSM_ACTIVE`, which turns the tracepoints' SIGKILL off.
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_task, generated::bpf_probe_read_kernel_str,
    },
    macros::{lsm, map},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::LsmContext,
};
use custos_ebpf::{
    Counter, EXEC_FLAG_BLOCKED, EXEC_PATH_LEN,
    file::{FILE_FLAG_NO_PATH, FILE_FLAG_OUTSIDE_ROOT, FILE_FLAG_PATH_TRUNCATED, FileOpenRecord},
    policy::{ACCESS_READ, ACCESS_WRITE, CgroupPolicy, MODE_ENFORCE},
};

use super::{
    common::{config, count, current_ids, is_agent},
    files::{file_path, fs_path, is_open_syscall, read_at, walk_path},
    policy::{exec_allowed, path_allowed, policy_of},
    process::{PENDING_EXECS, send_exec},
    regs::current_regs,
};

/// 1 once user space has attached the LSM hooks.
#[map]
static LSM_ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

/// Threads whose last open the `file_open` hook denied: the open's exit tracepoint reports it
/// with verdict `blocked`.
#[map]
static BLOCKED_OPENS: LruHashMap<u32, u32> = LruHashMap::with_max_entries(4096, 0);

/// Where the `file_open` hook walks the path (the open tracepoints have their own scratch).
#[map]
static LSM_SCRATCH: PerCpuArray<FileOpenRecord> = PerCpuArray::with_max_entries(1, 0);

/// Where the `bprm_check_security` hook reads the program's path.
#[map]
static LSM_EXEC_PATH: PerCpuArray<[u8; EXEC_PATH_LEN]> = PerCpuArray::with_max_entries(1, 0);

const EPERM: i32 = 1;
// `fmode_t` bits of `struct file`.
const FMODE_READ: u32 = 1 << 0;
const FMODE_WRITE: u32 = 1 << 1;
const FMODE_EXEC: u32 = 1 << 5;

#[inline(always)]
pub fn lsm_active() -> bool {
    LSM_ACTIVE.get(0).copied().unwrap_or(0) != 0
}

/// Whether the `file_open` hook denied the current thread's open (and forgets it).
#[inline(always)]
pub fn took_blocked_open(tid: u32) -> bool {
    // SAFETY: only presence matters.
    let blocked = unsafe { BLOCKED_OPENS.get(&tid) }.is_some();
    if blocked {
        let _ = BLOCKED_OPENS.remove(&tid);
    }
    blocked
}

/// The policy of the current task's container when it is in enforce mode (never the agent).
#[inline(always)]
fn enforced() -> Option<CgroupPolicy> {
    let policy = policy_of(unsafe { bpf_get_current_cgroup_id() })?;
    (policy.mode == MODE_ENFORCE && !is_agent(current_ids().1)).then_some(policy)
}

/// The return value of a hook whose last argument (`previous_arg`) is the previous LSM program's verdict:
/// a denial by an earlier program stands; otherwise `decide` says, and "cannot tell" allows.
#[inline(always)]
fn hook_result(
    ctx: &LsmContext,
    previous_arg: usize,
    decide: impl FnOnce(&LsmContext) -> Option<bool>,
) -> i32 {
    let previous: i32 = ctx.arg(previous_arg);
    if previous != 0 {
        return previous;
    }
    if decide(ctx).unwrap_or(true) {
        0
    } else {
        count(Counter::LsmDenied);
        -EPERM
    }
}

#[lsm(hook = "file_open")]
pub fn custos_file_open(ctx: LsmContext) -> i32 {
    hook_result(&ctx, 1, file_open_allowed)
}

/// `None` when the kernel cannot tell; the open then goes ahead and user space judges it.
///
/// Only opens made by an open syscall (the saved registers say which syscall the task is in)
/// are judged here: the file sensor follows those, and its exit then reports the denial (verdict `blocked`). The kernel's own opens (the program file of an
/// exec, judged by `bprm_check_security` instead; io_uring; ...) are left alone, so nothing is
/// ever denied without a report.
#[inline(always)]
fn file_open_allowed(ctx: &LsmContext) -> Option<bool> {
    let policy = enforced()?;
    let task = unsafe { bpf_get_current_task() };
    if !is_open_syscall(current_regs(task)?.orig_ax) {
        return None;
    }
    let file: u64 = ctx.arg(0);
    let offsets = &config().offsets;
    let mode: u32 = read_at(file, offsets.file_f_mode)?;
    if mode & FMODE_EXEC != 0 {
        return None;
    }
    let access = match (mode & FMODE_READ != 0, mode & FMODE_WRITE != 0) {
        (_, false) => ACCESS_READ,
        (false, true) => ACCESS_WRITE,
        (true, true) => ACCESS_READ | ACCESS_WRITE,
    };
    let record = LSM_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program.
    let record = unsafe { &mut *record };
    record.flags = 0;
    record.path_len = 0;
    walk_path(
        record,
        file_path(file)?,
        fs_path(task, offsets.fs_root_mnt, offsets.fs_root_dentry)?,
    );
    if record.flags & (FILE_FLAG_PATH_TRUNCATED | FILE_FLAG_OUTSIDE_ROOT | FILE_FLAG_NO_PATH) != 0 {
        return None;
    }
    let allowed = path_allowed(
        policy.profile,
        &record.path,
        record.path_len as usize,
        access,
    )?;
    if !allowed {
        let _ = BLOCKED_OPENS.insert(&current_ids().0, &1, 0);
    }
    Some(allowed)
}

#[lsm(hook = "bprm_check_security")]
pub fn custos_bprm_check(ctx: LsmContext) -> i32 {
    hook_result(&ctx, 1, exec_allowed_by_lsm)
}

#[inline(always)]
fn exec_allowed_by_lsm(ctx: &LsmContext) -> Option<bool> {
    let policy = enforced()?;
    let bprm: u64 = ctx.arg(0);
    let filename: u64 = read_at(bprm, config().offsets.binprm_filename)?;
    let path = LSM_EXEC_PATH.get_ptr_mut(0)?;
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program.
    let path = unsafe { &mut *path };
    let read = unsafe {
        bpf_probe_read_kernel_str(
            path.as_mut_ptr().cast(),
            EXEC_PATH_LEN as u32,
            filename as *const core::ffi::c_void,
        )
    };
    if read <= 0 {
        return None;
    }
    let allowed = exec_allowed(policy.profile, path, (read - 1) as usize)?;
    if !allowed {
        // The exec fails, so `sched_process_exec` will not report it: send what
        // `sys_enter_execve` captured, marked blocked.
        let (tid, pid) = current_ids();
        if let Some(args) = PENDING_EXECS.get_ptr_mut(&tid) {
            // SAFETY: a live value of this map, ours until removed below.
            let args = unsafe { &mut *args };
            args.flags |= EXEC_FLAG_BLOCKED;
            send_exec(tid, pid, args);
            let _ = PENDING_EXECS.remove(&tid);
        }
    }
    Some(allowed)
}
