//! File opens: `open`, `openat`, `openat2` and `creat`, with the opened file's path as seen from
//! the task's root (its container), the mode asked for and the result.
//!
//! Only the syscalls' exits are traced: for traced cgroups only, the exit reads the arguments
//! (pointers and numbers, no strings) back from the registers saved at entry (probes/regs.rs),
//! so an open costs one program run, not two and a map entry. Then:
//! - success: the new fd gives the `struct file` (`task->files->fdt->fd[fd]`). The repeat key is
//!   its inode pointer plus the access/create/truncate bits, checked *before* any string work,
//!   so a loop opening one file costs two map operations per open once suppressed. Only when the
//!   open is sent is the path walked: dentry by dentry (`d_parent`, `d_name`) up to the task's
//!   root (`task->fs->root`), crossing mount points (`struct mount`: `mnt_parent`,
//!   `mnt_mountpoint`). This is what the kernel itself opened, so it needs no `..`/symlink
//!   resolution, and because the walk stops at the task's root an overlayfs-rooted container
//!   sees `/tmp/x`, never the host's overlay path.
//! - failure: there is no file. The requested string is read and hashed (with flags, errno and
//!   the base directory) for the repeat key; a relative path gets the base directory (cwd, or
//!   the dirfd's directory) walked the same way, and user space joins the two.
//!
//! The inode pointer (rather than device + inode number) keeps the key to one read; an inode
//! stays allocated while it is open or cached, and a reused pointer at worst costs one
//! suppressed event within a repeat window. Hard links and bind mounts of one inode count as
//! the same file for suppression only: each sent event carries the path actually opened.
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_task, bpf_probe_read_kernel,
        bpf_probe_read_user,
        generated::{bpf_probe_read_kernel_str, bpf_probe_read_user_str},
    },
    macros::{map, tracepoint},
    maps::PerCpuArray,
    programs::TracePointContext,
};
use custos_ebpf::{
    Counter, EventKind,
    file::{
        FILE_FLAG_NO_PATH, FILE_FLAG_OUTSIDE_ROOT, FILE_FLAG_PATH_IS_BASE,
        FILE_FLAG_PATH_TRUNCATED, FILE_FLAG_REQUESTED_TRUNCATED, FILE_MAX_DEPTH, FILE_NAME_LEN,
        FILE_OPEN_PATH_OFFSET, FILE_PATH_LEN, FILE_PATH_LIMIT, FILE_REQUESTED_LEN, FileOpenRecord,
        OpenArgs, OpenSyscall,
    },
    policy::{
        CgroupPolicy, MODE_ENFORCE, VERDICT_ALERTED, VERDICT_BLOCKED, VERDICT_KILLED, VERDICT_NONE,
    },
};

use super::common::{
    ACTIVITY, Repeat, check_repeat, config, count, current_ids, fill_header, hash_bytes, is_agent,
    is_traced, remember_verdict, syscall_exit, wakeup_flags,
};
use super::lsm::{lsm_active, took_blocked_open};
use super::policy::{kill_current, open_access, path_allowed, policy_of};
use super::regs::syscall_regs;

const AT_FDCWD: i32 = -100;
const O_ACCMODE: u32 = 0o3;
const O_WRONLY: u32 = 0o1;
const O_CREAT: u32 = 0o100;
const O_TRUNC: u32 = 0o1000;

/// One record per CPU to build in: ~4.7 KiB, far beyond the 512-byte stack.
#[map]
static OPEN_SCRATCH: PerCpuArray<FileOpenRecord> = PerCpuArray::with_max_entries(1, 0);

// x86-64 syscall numbers of the opens.
const NR_OPEN: u64 = 2;
const NR_CREAT: u64 = 85;
const NR_OPENAT: u64 = 257;
const NR_OPENAT2: u64 = 437;

/// Whether `nr` is one of the open syscalls this sensor follows.
#[inline(always)]
pub(super) fn is_open_syscall(nr: u64) -> bool {
    matches!(nr, NR_OPEN | NR_CREAT | NR_OPENAT | NR_OPENAT2)
}

/// The arguments of the open syscall `nr` the current task is returning from, read from its
/// saved registers (probes/regs.rs).
#[inline(always)]
fn open_args(task: u64, nr: u64) -> Option<OpenArgs> {
    let regs = syscall_regs(task, nr)?;
    let (syscall, dirfd, filename, open_flags, mode) = match nr {
        // open(filename, flags, mode)
        NR_OPEN => (
            OpenSyscall::Open,
            AT_FDCWD,
            regs.arg(0),
            regs.arg(1) as u32,
            regs.arg(2) as u32,
        ),
        // creat(pathname, mode): open(pathname, O_CREAT | O_WRONLY | O_TRUNC, mode)
        NR_CREAT => (
            OpenSyscall::Creat,
            AT_FDCWD,
            regs.arg(0),
            O_CREAT | O_WRONLY | O_TRUNC,
            regs.arg(1) as u32,
        ),
        // openat(dfd, filename, flags, mode)
        NR_OPENAT => (
            OpenSyscall::Openat,
            regs.arg(0) as i32,
            regs.arg(1),
            regs.arg(2) as u32,
            regs.arg(3) as u32,
        ),
        // openat2(dfd, filename, how, size): flags and mode are the first two u64 of
        // `struct open_how` in user memory. A bad `how` failed the syscall with EFAULT; the
        // open is still reported.
        _ => {
            let how = regs.arg(2);
            (
                OpenSyscall::Openat2,
                regs.arg(0) as i32,
                regs.arg(1),
                unsafe { bpf_probe_read_user(how as *const u64) }.unwrap_or(0) as u32,
                unsafe { bpf_probe_read_user((how + 8) as *const u64) }.unwrap_or(0) as u32,
            )
        }
    };
    Some(OpenArgs {
        filename,
        open_flags,
        mode,
        dirfd,
        syscall: syscall as u32,
    })
}

/// One program for the exits of open, openat, openat2 and creat: their exit records share one
/// layout, so user space attaches this program to all four tracepoints (one verification, not
/// four).
#[tracepoint]
pub fn sys_exit_open_any(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

/// Reads a pointer-sized or smaller value at `base + offset` of kernel memory. Unlike
/// `read_task_field`, offset 0 is valid here (`vfsmount.mnt_root` and `fdtable.max_fds` are
/// first fields); a null base is refused.
#[inline(always)]
pub(super) fn read_at<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: a probe read; a bad address makes the helper fail, not fault.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.ok()
}

/// The `struct file` behind `fd` of `task`: `task->files->fdt->fd[fd]`.
#[inline(always)]
fn fd_file(task: u64, fd: i64) -> Option<u64> {
    let offsets = &config().offsets;
    let files: u64 = read_at(task, offsets.task_files)?;
    let fdt: u64 = read_at(files, offsets.files_fdt)?;
    let max_fds: u32 = read_at(fdt, offsets.fdtable_max_fds)?;
    if fd < 0 || fd >= i64::from(max_fds) {
        return None;
    }
    let array: u64 = read_at(fdt, offsets.fdtable_fd)?;
    let file: u64 = read_at(array, (fd as u32).wrapping_mul(8))?;
    (file != 0).then_some(file)
}

/// A (mount, dentry) pair: where a walk starts or must stop.
#[derive(Clone, Copy)]
pub(super) struct PathRef {
    mnt: u64,
    dentry: u64,
}

#[inline(always)]
pub(super) fn fs_path(task: u64, mnt_offset: u32, dentry_offset: u32) -> Option<PathRef> {
    let fs: u64 = read_at(task, config().offsets.task_fs)?;
    Some(PathRef {
        mnt: read_at(fs, mnt_offset)?,
        dentry: read_at(fs, dentry_offset)?,
    })
}

#[inline(always)]
pub(super) fn file_path(file: u64) -> Option<PathRef> {
    let offsets = &config().offsets;
    Some(PathRef {
        mnt: read_at(file, offsets.file_mnt)?,
        dentry: read_at(file, offsets.file_dentry)?,
    })
}

/// Writes the names from `from` up to `root` into `record.path`, leaf first, each followed by a
/// NUL, as the kernel's own `d_path` walks: at a mount's root, continue from the mount point in
/// the parent mount. Sets `path_len` and the `FILE_FLAG_*` bits that say how the walk ended.
///
/// Verifier cost: the bytes used so far live in `record.path_len` (map memory) and are re-read
/// with a volatile load each step, so the verifier sees an unknown value masked into range
/// rather than a precise one per path. States reaching the loop head then differ only in the
/// pointers (unknown scalars), and it prunes them; with the count in a register it explored
/// every mix of "crossed a mount" / "wrote a name" steps and did not finish.
#[inline(always)]
pub(super) fn walk_path(record: &mut FileOpenRecord, from: PathRef, root: PathRef) {
    let offsets = &config().offsets;
    let mut dentry = from.dentry;
    let mut mnt = from.mnt;
    let path_len = core::ptr::addr_of_mut!(record.path_len);
    let flags = core::ptr::addr_of_mut!(record.flags);
    let buffer = record.path.as_mut_ptr();
    // SAFETY (all volatile accesses below): fields of the per-CPU record we own.
    unsafe { core::ptr::write_volatile(path_len, 0) };
    for _ in 0..FILE_MAX_DEPTH {
        if dentry == root.dentry && mnt == root.mnt {
            return;
        }
        let Some(mnt_root) = read_at::<u64>(mnt, offsets.vfsmount_root) else {
            break;
        };
        let parent: u64 = read_at(dentry, offsets.dentry_parent).unwrap_or(0);
        if dentry == mnt_root || parent == dentry {
            // At the root of a mount: step to where it is mounted, in the parent mount.
            let mount = mnt.wrapping_sub(offsets.mount_mnt as u64);
            let parent_mount: u64 = read_at(mount, offsets.mount_parent).unwrap_or(0);
            if parent_mount == 0 || parent_mount == mount || dentry != mnt_root {
                // The global root (or a detached filesystem) before the task's root.
                unsafe { core::ptr::write_volatile(flags, *flags | FILE_FLAG_OUTSIDE_ROOT) };
                return;
            }
            let Some(mountpoint) = read_at::<u64>(mount, offsets.mount_mountpoint) else {
                break;
            };
            dentry = mountpoint;
            mnt = parent_mount + offsets.mount_mnt as u64;
            continue;
        }
        let used = unsafe { core::ptr::read_volatile(path_len) } as usize;
        if used >= FILE_PATH_LIMIT {
            break;
        }
        let Some(name) = read_at::<u64>(dentry, offsets.dentry_name) else {
            break;
        };
        // `start` < FILE_PATH_LIMIT and the read is at most FILE_NAME_LEN bytes, inside the
        // FILE_PATH_LIMIT + FILE_NAME_LEN buffer; the mask lets the verifier see it.
        let start = used & (FILE_PATH_LIMIT - 1);
        let read = unsafe {
            bpf_probe_read_kernel_str(
                buffer.wrapping_add(start).cast(),
                FILE_NAME_LEN as u32,
                name as *const core::ffi::c_void,
            )
        };
        if read <= 0 {
            break;
        }
        unsafe { core::ptr::write_volatile(path_len, (start + read as usize) as u32) };
        dentry = parent;
    }
    // Out of steps, buffer full or unreadable: what was written is the leaf end.
    unsafe { core::ptr::write_volatile(flags, *flags | FILE_FLAG_PATH_TRUNCATED) };
}

/// Reads the requested path (user memory) into the record; its length without the NUL.
#[inline(always)]
fn read_requested(record: &mut FileOpenRecord, filename: u64) -> usize {
    let read = unsafe {
        bpf_probe_read_user_str(
            record.requested.as_mut_ptr().cast(),
            FILE_REQUESTED_LEN as u32,
            filename as *const core::ffi::c_void,
        )
    };
    if read <= 0 {
        record.requested[0] = 0;
        record.requested_len = 0;
        return 0;
    }
    if read as usize >= FILE_REQUESTED_LEN {
        record.flags |= FILE_FLAG_REQUESTED_TRUNCATED;
    }
    let len = (read - 1) as usize;
    record.requested_len = len as u32;
    len
}

/// The kernel's decision on a successful open of a judged container, `None` when it cannot
/// tell (the walk did not reach the container's root, or the path is too long to hash): the
/// open then goes to user space undecided. A denied open in enforce mode kills the process
/// before the open returns to it.
#[inline(always)]
fn judge_open(record: &FileOpenRecord, policy: &CgroupPolicy, open_flags: u32) -> Option<u32> {
    let unsure = FILE_FLAG_PATH_TRUNCATED | FILE_FLAG_OUTSIDE_ROOT | FILE_FLAG_NO_PATH;
    if record.flags & unsure != 0 {
        return None;
    }
    let allowed = path_allowed(
        policy.profile,
        &record.path,
        record.path_len as usize,
        open_access(open_flags),
    )?;
    Some(if allowed {
        VERDICT_NONE
    } else if policy.mode == MODE_ENFORCE && !lsm_active() {
        kill_current();
        VERDICT_KILLED
    } else {
        // Monitor; or enforce with BPF LSM, whose hook denied nothing here (an open it denies
        // never succeeds), e.g. a rule that changed in between: flagged.
        VERDICT_ALERTED
    })
}

/// The access/create/truncate bits that, with the file, make two opens identical.
#[inline(always)]
fn mode_bits(open_flags: u32) -> u64 {
    let access = u64::from(open_flags & O_ACCMODE);
    let create = u64::from(open_flags & O_CREAT != 0) << 2;
    let truncate = u64::from(open_flags & O_TRUNC != 0) << 3;
    access | create | truncate
}

fn try_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let (tid, pid) = current_ids();
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if is_agent(pid) || !is_traced(cgroup_id) {
        return Ok(());
    }
    let (nr, ret) = syscall_exit(ctx);
    let task = unsafe { bpf_get_current_task() };
    let Some(pending) = open_args(task, nr) else {
        count(Counter::OpenArgsLost);
        return Ok(());
    };
    let record = OPEN_SCRATCH.get_ptr_mut(0).ok_or(0i64)?;
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program.
    let record = unsafe { &mut *record };
    record.flags = 0;
    record.path_len = 0;
    record.verdict = VERDICT_NONE;
    let offsets = &config().offsets;
    // The repeat key of a successful open: the kernel's decision on it is remembered there.
    let mut decided = None;

    // Where the path walk starts; one walk for both outcomes keeps the verifier's work single.
    let from = if ret >= 0 {
        // Success: identify the file before doing anything costly.
        let file = fd_file(task, ret).ok_or(0i64)?;
        let inode: u64 = read_at(file, offsets.file_inode).ok_or(0i64)?;
        // Kernel pointers have their top bits all set, so shifting them out loses nothing.
        let what = (inode << 4) | mode_bits(pending.open_flags);
        match check_repeat(cgroup_id, EventKind::FileOpen, what) {
            Repeat::Suppressed { verdict } => {
                if verdict == VERDICT_KILLED {
                    kill_current();
                }
                return Ok(());
            }
            Repeat::Send { repeats } => record.repeats = repeats,
        }
        decided = Some(what);
        read_requested(record, pending.filename);
        file_path(file)
    } else {
        // Failure: the requested string is all there is.
        let len = read_requested(record, pending.filename);
        let relative = len > 0 && record.requested[0] != b'/';
        let base = if !relative {
            None
        } else if pending.dirfd == AT_FDCWD {
            fs_path(task, offsets.fs_pwd_mnt, offsets.fs_pwd_dentry)
        } else {
            fd_file(task, i64::from(pending.dirfd)).and_then(file_path)
        };
        let what = hash_bytes(&record.requested, len)
            ^ (u64::from(pending.open_flags) << 32 | (ret as u64 & 0xffff_ffff))
            ^ base.map_or(0, |base| base.dentry.rotate_left(17));
        let blocked = took_blocked_open(tid);
        let Repeat::Send { repeats } = check_repeat(cgroup_id, EventKind::FileOpen, what) else {
            return Ok(());
        };
        record.repeats = repeats;
        if blocked {
            record.verdict = VERDICT_BLOCKED;
        }
        if base.is_some() {
            record.flags |= FILE_FLAG_PATH_IS_BASE;
        }
        base
    };
    match (
        from,
        fs_path(task, offsets.fs_root_mnt, offsets.fs_root_dentry),
    ) {
        (Some(from), Some(root)) => walk_path(record, from, root),
        _ => record.flags = (record.flags & !FILE_FLAG_PATH_IS_BASE) | FILE_FLAG_NO_PATH,
    }

    if let Some(what) = decided
        && let Some(policy) = policy_of(cgroup_id)
    {
        match judge_open(record, &policy, pending.open_flags) {
            Some(VERDICT_NONE) => {
                // Known-good: it never leaves the kernel.
                remember_verdict(cgroup_id, EventKind::FileOpen, what, VERDICT_NONE);
                count(Counter::AllowedInKernel);
                return Ok(());
            }
            Some(verdict) => {
                record.verdict = verdict;
                remember_verdict(cgroup_id, EventKind::FileOpen, what, verdict);
            }
            None => {}
        }
    }

    record.open_flags = pending.open_flags;
    record.mode = pending.mode;
    record.result = ret as i32;
    record.syscall = pending.syscall;
    record.dirfd = pending.dirfd;
    fill_header(&mut record.header, EventKind::FileOpen, tid, pid);
    // Send only the used part of the path buffer.
    let len = FILE_OPEN_PATH_OFFSET + (record.path_len as usize).min(FILE_PATH_LEN);
    // SAFETY: `len` is at most the size of the record, which lives in a map value.
    let bytes =
        unsafe { core::slice::from_raw_parts((record as *const FileOpenRecord).cast::<u8>(), len) };
    if ACTIVITY
        .output::<[u8]>(bytes, wakeup_flags(&ACTIVITY, len as u64))
        .is_ok()
    {
        count(Counter::ActivitySent);
    } else {
        count(Counter::ActivityDropped);
    }
    Ok(())
}
