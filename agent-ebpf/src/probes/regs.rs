//! A syscall's arguments, read back from the user registers the kernel saved at its entry.
//!
//! A syscall's `struct pt_regs` sits at a fixed place on its task's kernel stack, where it
//! stays until the syscall returns (`task_pt_regs`), and the argument registers in it are not
//! changed by the syscall. So an exit program can read the arguments itself, and the syscall
//! needs no entry program and no per-thread map to carry them: on this path each tracepoint
//! run costs more than the work it does (see docs/architecture.md, "Performance").
//!
//! Where `pt_regs` lies relative to `task->stack` (`THREAD_SIZE` minus its size, minus any
//! padding) is a build constant of the kernel that BTF does not give. The raw `sys_enter`
//! program, which receives the `pt_regs` pointer, learns it ([`learn_regs_offset`]) on the
//! rare path of a traced cgroup's first use of a syscall, which comes before any exit of that
//! cgroup. Every read is checked against the syscall number (`orig_ax`), so a wrong offset is
//! never taken for arguments.
use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_probe_read_kernel},
    macros::map,
    maps::Array,
};

use super::common::{config, read_task_field};

/// `pt_regs` address minus `task->stack`, learned by `sys_enter`; 0 until then.
#[map]
static PT_REGS_OFFSET: Array<u64> = Array::with_max_entries(1, 0);

/// The x86-64 `pt_regs` fields from `r10` to `orig_ax`, in their kernel order: the syscall
/// arguments (`di`, `si`, `dx`, `r10`, `r8`, `r9`) and number. User space checks this layout
/// against the kernel's BTF before load (`pt_regs_r10` in the offsets).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SyscallRegs {
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub ax: u64,
    pub cx: u64,
    pub dx: u64,
    pub si: u64,
    pub di: u64,
    pub orig_ax: u64,
}

impl SyscallRegs {
    /// Syscall argument `index` (0-based) in the x86-64 calling convention.
    #[inline(always)]
    pub fn arg(&self, index: usize) -> u64 {
        match index {
            0 => self.di,
            1 => self.si,
            2 => self.dx,
            3 => self.r10,
            4 => self.r8,
            _ => self.r9,
        }
    }
}

/// Records where `regs` (the current task's saved registers, from `sys_enter`) lies relative to
/// its stack, once.
#[inline(always)]
pub fn learn_regs_offset(regs: u64) {
    let Some(slot) = PT_REGS_OFFSET.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a live array slot; every CPU that writes it writes the same value.
    if unsafe { *slot } != 0 {
        return;
    }
    let task = unsafe { bpf_get_current_task() };
    if let Some(stack) = read_task_field::<u64>(task, config().offsets.task_stack)
        && stack != 0
        && regs > stack
    {
        unsafe { *slot = regs - stack };
    }
}

/// The saved registers at `regs` (a `struct pt_regs *`, as `sys_enter` is handed).
#[inline(always)]
pub fn regs_at(regs: u64) -> Option<SyscallRegs> {
    if regs == 0 {
        return None;
    }
    let at = regs + u64::from(config().offsets.pt_regs_r10);
    // SAFETY: a probe read; a bad address makes the helper fail, not fault.
    unsafe { bpf_probe_read_kernel(at as *const SyscallRegs) }.ok()
}

/// The current syscall's saved registers, if they are known and belong to syscall `nr`.
#[inline(always)]
pub fn syscall_regs(task: u64, nr: u64) -> Option<SyscallRegs> {
    let regs = current_regs(task)?;
    (regs.orig_ax == nr).then_some(regs)
}

/// The current task's saved registers, whatever syscall it is in (`orig_ax` says which; it
/// is `u64::MAX` outside a syscall).
#[inline(always)]
pub fn current_regs(task: u64) -> Option<SyscallRegs> {
    let offset = PT_REGS_OFFSET.get(0).copied().unwrap_or(0);
    if offset == 0 {
        return None;
    }
    let stack: u64 = read_task_field(task, config().offsets.task_stack)?;
    if stack == 0 {
        return None;
    }
    regs_at(stack + offset)
}
