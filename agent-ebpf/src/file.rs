//! Records of the file sensor (opens).
//!
//! One [`FileOpenRecord`] per open (`open`, `openat`, `openat2`, `creat`) of a traced cgroup that
//! was not suppressed as a repeat. The kernel does not build the path string itself: it walks the
//! dentries from the file up to the task's root and writes each name, leaf first, followed by a
//! NUL ([`FileOpenRecord::path`]); user space reverses and joins them. This keeps the kernel
//! loop simple (append only) and its cost proportional to the depth.
//!
//! The record is sent with only the used part of `path`: its length on the wire is
//! `FILE_OPEN_PATH_OFFSET + path_len`, not `size_of::<FileOpenRecord>()`.
use crate::RecordHeader;

/// Bytes of path components the kernel writes at most; a longer path is cut (and flagged).
/// A power of two: the write offset is masked with `FILE_PATH_LIMIT - 1` for the verifier.
pub const FILE_PATH_LIMIT: usize = 4096;
/// Bytes read per component at most: `NAME_MAX` (255) plus the NUL.
pub const FILE_NAME_LEN: usize = 256;
/// Size of the component buffer: a component may start anywhere below `FILE_PATH_LIMIT` and
/// take `FILE_NAME_LEN` bytes, so the verifier can prove every write stays in bounds.
pub const FILE_PATH_LEN: usize = FILE_PATH_LIMIT + FILE_NAME_LEN;
/// Bytes kept of the path as given to the syscall (with its NUL). Longer ones are cut
/// ([`FILE_FLAG_REQUESTED_TRUNCATED`]); the resolved path of a successful open is not affected.
pub const FILE_REQUESTED_LEN: usize = 256;
/// Steps of the dentry walk at most: one per component or mount point crossed. Deeper paths are
/// cut ([`FILE_FLAG_PATH_TRUNCATED`]), keeping the leaf end.
pub const FILE_MAX_DEPTH: usize = 40;

/// `FileOpenRecord::flags`: the walk stopped before reaching the task's root (too deep, or the
/// component buffer full): `path` holds the leaf end only.
pub const FILE_FLAG_PATH_TRUNCATED: u32 = 1 << 0;
/// `FileOpenRecord::flags`: `requested` was longer than [`FILE_REQUESTED_LEN`].
pub const FILE_FLAG_REQUESTED_TRUNCATED: u32 = 1 << 1;
/// `FileOpenRecord::flags`: the open failed and the requested path is relative; `path` holds the
/// directory it is resolved against (cwd, or the dirfd's directory).
pub const FILE_FLAG_PATH_IS_BASE: u32 = 1 << 2;
/// `FileOpenRecord::flags`: the kernel has no path for this open (a failed open of an absolute
/// path needs none; a failed relative open whose dirfd is not an open file has none).
pub const FILE_FLAG_NO_PATH: u32 = 1 << 3;
/// `FileOpenRecord::flags`: the walk reached a filesystem root that is not the task's root
/// (a file outside the task's root, e.g. passed in from the host): `path` is relative to it.
pub const FILE_FLAG_OUTSIDE_ROOT: u32 = 1 << 4;

/// The syscall that opened, in `FileOpenRecord::syscall`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenSyscall {
    Open = 1,
    Openat = 2,
    Openat2 = 3,
    Creat = 4,
}

impl OpenSyscall {
    pub fn from_u32(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::Open),
            2 => Some(Self::Openat),
            3 => Some(Self::Openat2),
            4 => Some(Self::Creat),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Openat => "openat",
            Self::Openat2 => "openat2",
            Self::Creat => "creat",
        }
    }
}

/// An open's arguments, read back from the saved registers at its exit. Only pointers and
/// numbers: the strings are read only if the open is sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenArgs {
    /// User-space address of the path argument.
    pub filename: u64,
    /// Open flags (`O_*`); for `creat`, `O_CREAT | O_WRONLY | O_TRUNC`.
    pub open_flags: u32,
    pub mode: u32,
    /// `dirfd` of openat/openat2, `AT_FDCWD` (-100) for open and creat.
    pub dirfd: i32,
    /// An [`OpenSyscall`] value.
    pub syscall: u32,
}

/// An open, sent at syscall exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FileOpenRecord {
    pub header: RecordHeader,
    /// Identical opens of the same cgroup suppressed since the last one sent.
    pub repeats: u64,
    /// Open flags (`O_*`) as the kernel got them.
    pub open_flags: u32,
    pub mode: u32,
    /// The new fd, or -errno.
    pub result: i32,
    /// An [`OpenSyscall`] value.
    pub syscall: u32,
    pub dirfd: i32,
    /// `FILE_FLAG_*` bits.
    pub flags: u32,
    /// Bytes used in `path`.
    pub path_len: u32,
    /// Bytes used in `requested`, without the NUL.
    pub requested_len: u32,
    /// The kernel's decision (`policy::VERDICT_*`): set for containers judged in the kernel.
    pub verdict: u32,
    pub _pad: u32,
    /// The path as given to the syscall.
    pub requested: [u8; FILE_REQUESTED_LEN],
    /// Names from the file (or, see [`FILE_FLAG_PATH_IS_BASE`], the base directory) up to the
    /// task's root, leaf first, each followed by a NUL. Empty: the root itself.
    pub path: [u8; FILE_PATH_LEN],
}

/// Bytes of a [`FileOpenRecord`] before `path`: the shortest record on the wire.
pub const FILE_OPEN_PATH_OFFSET: usize = core::mem::offset_of!(FileOpenRecord, path);
