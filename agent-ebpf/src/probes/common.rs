//! What every probe uses: settings from user space, the event ring buffer, counters, and the
//! record header.
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
        bpf_probe_read_kernel,
    },
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use custos_ebpf::{
    COMM_LEN, COUNTER_SLOTS, Counter, EventKind, KernelOffsets, ProbeConfig, RecordHeader,
};

/// Written by user space before load (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static CONFIG: ProbeConfig = ProbeConfig {
    agent_pid: 0,
    _pad: 0,
    offsets: KernelOffsets {
        task_real_parent: 0,
        task_tgid: 0,
        task_exit_code: 0,
        _pad: 0,
    },
};

/// Every record for user space. 8 MiB holds ~1,700 exec records of burst.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Per-CPU counters indexed by [`Counter`]; user space sums the CPUs.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[inline(always)]
pub fn config() -> ProbeConfig {
    // SAFETY: CONFIG is a plain static; the volatile read stops the compiler from folding the
    // zero initializer that user space replaces at load time.
    unsafe { core::ptr::read_volatile(&CONFIG) }
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
