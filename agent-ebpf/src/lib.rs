//! Types and constants shared by the kernel programs (`src/main.rs`, built for
//! `bpfel-unknown-none`) and the user-space agent, which decodes what the kernel sends.
//!
//! Every struct is `#[repr(C)]` with explicit padding so both sides agree byte for byte; flags
//! are `u32`, never `bool`. User space turns on the `user` feature to get `aya::Pod`.
#![no_std]

/// Bytes kept of an executed file's path (as given to execve).
pub const EXEC_PATH_LEN: usize = 512;
/// Bytes of argument vector read at most (NUL-separated arguments).
pub const EXEC_ARGV_LIMIT: usize = 2048;
/// Size of the argv buffer: twice the limit, so the kernel side can prove to the verifier that
/// a read of up to `EXEC_ARGV_LIMIT` bytes starting below `EXEC_ARGV_LIMIT` stays in bounds.
pub const EXEC_ARGV_LEN: usize = 2 * EXEC_ARGV_LIMIT;
/// Arguments read at most; more are reported as truncation.
pub const EXEC_MAX_ARGS: usize = 32;
/// Bytes of a task name, as the kernel's `TASK_COMM_LEN`.
pub const COMM_LEN: usize = 16;

/// Kinds of record the kernel sends; the first `u32` of every record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Exec = 1,
    Exit = 2,
    Fork = 3,
    FileOpen = 4,
    Connect = 5,
    Listen = 6,
    Accept = 7,
    SyscallFirstUse = 8,
}

impl EventKind {
    pub fn from_u32(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::Exec),
            2 => Some(Self::Exit),
            3 => Some(Self::Fork),
            4 => Some(Self::FileOpen),
            5 => Some(Self::Connect),
            6 => Some(Self::Listen),
            7 => Some(Self::Accept),
            8 => Some(Self::SyscallFirstUse),
            _ => None,
        }
    }
}

pub mod file;
pub mod net;
pub mod policy;
pub mod syscall;

/// `ExecRecord::flags`: the argument vector was cut (too many or too long arguments).
pub const EXEC_FLAG_ARGV_TRUNCATED: u32 = 1 << 0;
/// `ExecRecord::flags`: the path was longer than [`EXEC_PATH_LEN`].
pub const EXEC_FLAG_PATH_TRUNCATED: u32 = 1 << 1;
/// `ExecRecord::flags`: the exec began before the agent was attached, so argv is unknown.
pub const EXEC_FLAG_ARGV_MISSING: u32 = 1 << 2;
/// The exec was outside the profile of a container in enforce mode: the process was killed
/// before the new program ran.
pub const EXEC_FLAG_KILLED: u32 = 1 << 3;
/// The exec was outside the profile of a container in enforce mode and BPF LSM made it fail
/// with EPERM; the process lives on.
pub const EXEC_FLAG_BLOCKED: u32 = 1 << 4;

/// What every record starts with: who acted, when, and in which cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RecordHeader {
    /// An [`EventKind`] value.
    pub kind: u32,
    /// Thread id (the kernel's `pid`).
    pub tid: u32,
    /// Process id (the kernel's `tgid`).
    pub pid: u32,
    /// Parent process id; 0 when the kernel could not tell.
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Nanoseconds since boot (`bpf_ktime_get_boot_ns`); user space adds the boot time.
    pub boot_ns: u64,
    /// cgroup v2 id of the task (inode number of its cgroup directory).
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

/// A successful exec, sent from `sched_process_exec`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecRecord {
    pub header: RecordHeader,
    pub args: ExecArgs,
}

/// A new process (not a thread), sent from `sched_process_fork` in the parent's context: the
/// header is the parent's, `child_pid` the new process.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkRecord {
    pub header: RecordHeader,
    pub child_pid: u32,
    pub _pad: u32,
}

/// A process (thread group) ended, sent from `sched_process_exit` for the group leader.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitRecord {
    pub header: RecordHeader,
    /// The kernel's `task_struct::exit_code`: `(status << 8) | signal`.
    pub exit_code: u32,
    pub _pad: u32,
}

/// What an exec looked like when it entered the kernel. Kept per thread from `sys_enter_execve*`
/// until `sched_process_exec` confirms it succeeded (the caller's memory is gone by then), then
/// copied whole into the [`ExecRecord`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecArgs {
    /// `EXEC_FLAG_*` bits.
    pub flags: u32,
    /// Bytes used in `path`, without the terminating NUL.
    pub path_len: u32,
    /// Bytes used in `argv` (arguments, each followed by a NUL).
    pub argv_len: u32,
    /// `dirfd` given to execveat, or `AT_FDCWD` (-100) for execve.
    pub dirfd: i32,
    pub path: [u8; EXEC_PATH_LEN],
    pub argv: [u8; EXEC_ARGV_LEN],
}

/// Index of each counter in the `COUNTERS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug)]
pub enum Counter {
    /// Records written to the process ring buffer (`EVENTS`: exec, exit, fork).
    EventsSent = 0,
    /// Records lost because the process ring buffer was full.
    EventsDropped = 1,
    /// Execs whose arguments could not be kept (pending map full).
    PendingExecDropped = 2,
    /// Records written to the activity ring buffer (`ACTIVITY`: files, network, syscalls).
    ActivitySent = 3,
    /// Records lost because the activity ring buffer was full.
    ActivityDropped = 4,
    /// Actions not sent because an identical one from the same cgroup was sent recently.
    RepeatsSuppressed = 5,
    /// File opens not reported because their arguments could not be read back at exit (the
    /// saved registers' place not learned yet, or not those of an open).
    OpenArgsLost = 6,
    /// Network calls not reported because their arguments could not be read back at exit
    /// (see `OpenArgsLost`).
    NetArgsLost = 7,
    /// Syscall first uses not recorded because the per-cgroup bitmap map was full.
    SyscallSetsFull = 8,
    /// Processes sent SIGKILL for an exec or open outside their profile (enforce).
    ProcessesKilled = 9,
    /// connect / sendmsg / bind calls failed with EPERM (enforce).
    NetworkBlocked = 10,
    /// Actions of judged containers found known-good in the kernel and not sent.
    AllowedInKernel = 11,
    /// Execs and opens made to fail with EPERM by the BPF LSM hooks (enforce).
    LsmDenied = 12,
}

/// Number of slots in the `COUNTERS` map (room to grow without changing its size).
pub const COUNTER_SLOTS: u32 = 16;

/// Key of the `RECENT` LRU map that suppresses repeated identical actions of one cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RepeatKey {
    pub cgroup_id: u64,
    /// An [`EventKind`] value.
    pub kind: u32,
    pub _pad: u32,
    /// What makes two actions identical, reduced by the probe (e.g. device + inode + flags
    /// for a successful open, a hash of the path for a failed one).
    pub what: u64,
}

/// Value of the `RECENT` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RepeatState {
    /// When the action was last sent (boot ns).
    pub sent_ns: u64,
    /// Identical actions suppressed since then.
    pub suppressed: u64,
    /// The kernel's decision on the action (`policy::VERDICT_*`), repeated for the suppressed
    /// ones: a denied open stays denied without walking its path again.
    pub verdict: u32,
    /// `POLICY_GENERATION` when the decision was taken; a stale one is not reused.
    pub generation: u32,
}

/// Byte offsets of kernel struct fields, read from the running kernel's BTF by user space and
/// written into the programs before load, so one object works on many kernels.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelOffsets {
    /// `task_struct.real_parent`
    pub task_real_parent: u32,
    /// `task_struct.tgid`
    pub task_tgid: u32,
    /// `task_struct.exit_code`
    pub task_exit_code: u32,
    /// `task_struct.pid`
    pub task_pid: u32,
    // --- file sensor offsets (paths, fds): add below, keep the count of u32s even ---
    /// `task_struct.files`
    pub task_files: u32,
    /// `task_struct.fs`
    pub task_fs: u32,
    /// `files_struct.fdt`
    pub files_fdt: u32,
    /// `fdtable.max_fds`
    pub fdtable_max_fds: u32,
    /// `fdtable.fd`
    pub fdtable_fd: u32,
    /// `file.f_path.dentry`
    pub file_dentry: u32,
    /// `file.f_path.mnt`
    pub file_mnt: u32,
    /// `file.f_inode`
    pub file_inode: u32,
    /// `fs_struct.root.dentry`
    pub fs_root_dentry: u32,
    /// `fs_struct.root.mnt`
    pub fs_root_mnt: u32,
    /// `fs_struct.pwd.dentry`
    pub fs_pwd_dentry: u32,
    /// `fs_struct.pwd.mnt`
    pub fs_pwd_mnt: u32,
    /// `dentry.d_parent`
    pub dentry_parent: u32,
    /// `dentry.d_name.name`
    pub dentry_name: u32,
    /// `vfsmount.mnt_root`
    pub vfsmount_root: u32,
    /// `mount.mnt` (the embedded `vfsmount`: container_of goes back by this much)
    pub mount_mnt: u32,
    /// `mount.mnt_parent`
    pub mount_parent: u32,
    /// `mount.mnt_mountpoint`
    pub mount_mountpoint: u32,
    // --- end of file sensor offsets ---
    // --- network sensor offsets (sockets): add below, keep the count of u32s even ---
    /// `task_struct.files`
    pub net_task_files: u32,
    /// `files_struct.fdt`
    pub net_files_fdt: u32,
    /// `fdtable.max_fds` (0 on current kernels: offsets here may legitimately be 0)
    pub net_fdt_max_fds: u32,
    /// `fdtable.fd`
    pub net_fdt_fd: u32,
    /// `file.private_data` (a `struct socket *` for sockets)
    pub net_file_private_data: u32,
    /// `socket.type` (SOCK_STREAM, SOCK_DGRAM, ...; a 2-byte integer)
    pub net_socket_type: u32,
    /// `socket.sk`
    pub net_socket_sk: u32,
    /// `sock.sk_protocol` (2 bytes)
    pub net_sk_protocol: u32,
    /// `sock.__sk_common.skc_family` (2 bytes)
    pub net_skc_family: u32,
    /// `sock.__sk_common.skc_num`: local port, host order (2 bytes)
    pub net_skc_num: u32,
    /// `sock.__sk_common.skc_dport`: peer port, network order (2 bytes)
    pub net_skc_dport: u32,
    /// `sock.__sk_common.skc_daddr`: IPv4 peer address
    pub net_skc_daddr: u32,
    /// `sock.__sk_common.skc_rcv_saddr`: IPv4 local address
    pub net_skc_rcv_saddr: u32,
    /// `sock.__sk_common.skc_v6_daddr`: IPv6 peer address (16 bytes)
    pub net_skc_v6_daddr: u32,
    /// `sock.__sk_common.skc_v6_rcv_saddr`: IPv6 local address (16 bytes)
    pub net_skc_v6_rcv_saddr: u32,
    /// `unix_sock.addr` (a `struct unix_address *`, NULL while unbound)
    pub net_unix_addr: u32,
    /// `unix_address.len`: bytes used in `name`
    pub net_unix_address_len: u32,
    /// `unix_address.name`: a `struct sockaddr_un`
    pub net_unix_address_name: u32,
    // --- end of network sensor offsets ---
    // --- enforcement offsets (BPF LSM hooks): add below, keep the count of u32s even ---
    pub file_f_mode: u32,
    pub binprm_filename: u32,
    // --- end of enforcement offsets ---
    // --- syscall argument offsets (probes/regs.rs): keep the count of u32s even ---
    /// `task_struct.stack`
    pub task_stack: u32,
    /// `pt_regs.r10`, where the run of registers the probes read begins (`r10` .. `orig_ax`,
    /// consecutive: checked against BTF)
    pub pt_regs_r10: u32,
    // --- end of syscall argument offsets ---
}

/// Name of the one-slot array holding the coarse clock: `CLOCK_BOOTTIME` in nanoseconds,
/// written by user space before the programs are attached and then every
/// [`COARSE_CLOCK_TICK_MS`]. The repeat check reads it instead of calling
/// `bpf_ktime_get_boot_ns`, which costs about as much as the rest of a suppressed open's
/// check on a virtual machine; repeat windows are seconds long, so a tick's staleness is noise.
pub const COARSE_CLOCK_MAP: &str = "COARSE_CLOCK";
/// How often user space advances the coarse clock.
pub const COARSE_CLOCK_TICK_MS: u64 = 50;

/// Settings written into the programs before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProbeConfig {
    /// Process id of the agent itself, whose actions are never reported.
    pub agent_pid: u32,
    /// 1: trace file, network and syscall activity of host processes too; 0: containers only
    /// (cgroups user space put in `TRACED_CGROUPS`).
    pub trace_host: u32,
    /// An identical action of the same cgroup is sent again at most once per window; the
    /// repeats in between are counted in the next one sent.
    pub repeat_window_ns: u64,
    pub offsets: KernelOffsets,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all these types are `#[repr(C)]`, made only of integers and integer arrays, with
    // explicit padding fields, so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::ProbeConfig {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::ExecArgs {}
    unsafe impl aya::Pod for super::RepeatKey {}
    unsafe impl aya::Pod for super::RepeatState {}
}
