//! Decoding of the file sensor's records (opens) and assembly of their paths.
//!
//! The kernel sends the names from the opened file up to the task's root, leaf first, each
//! followed by a NUL (see `custos_ebpf::file`). Here they are reversed and joined into an
//! absolute path as the process sees it (inside its container). A failed open has no file: the
//! kernel sends the requested string and, for a relative one, the directory it was resolved
//! against; the two are joined and normalized lexically.
//!
//! Records are variable-length on the wire (only the used part of the path buffer is sent), so
//! decoding checks the fixed part and then the announced path length against what arrived.
use custos_ebpf::file as shared;

use super::records::{DecodeError, RecordHeader, c_string, decode_header};
use crate::{api::proto, pipeline::normalize};

/// `O_ACCMODE` and the bits read from it.
const O_ACCMODE: u32 = 0o3;
const O_RDONLY: u32 = 0o0;
const O_WRONLY: u32 = 0o1;
const O_RDWR: u32 = 0o2;
const O_CREAT: u32 = 0o100;
const O_TRUNC: u32 = 0o1000;

/// A file open, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOpenRecord {
    pub header: RecordHeader,
    /// Identical opens of the same cgroup suppressed in the kernel since the last one sent.
    pub repeats: u64,
    /// Raw open flags (`O_*`).
    pub open_flags: u32,
    pub mode: u32,
    /// The new fd, or -errno.
    pub result: i32,
    /// "open", "openat", "openat2" or "creat" ("" if the kernel sent an unknown value).
    pub syscall: &'static str,
    pub dirfd: i32,
    /// The path as given to the syscall.
    pub requested_path: String,
    /// Absolute and canonical, as seen from the process's root; see [`assemble_path`].
    pub path: String,
    /// The path (or, for a failed open, the requested path it is built from) was cut.
    pub path_truncated: bool,
    /// The kernel's decision (`policy::VERDICT_*`), for containers judged in the kernel.
    pub verdict: u32,
}

/// How a file was opened, from `O_ACCMODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
    /// `O_ACCMODE` (3): no read or write access (a Linux special case used for ioctl-only opens).
    Neither,
}

impl FileOpenRecord {
    pub fn access(&self) -> Access {
        access_of(self.open_flags)
    }

    pub fn create(&self) -> bool {
        self.open_flags & O_CREAT != 0
    }

    pub fn truncate(&self) -> bool {
        self.open_flags & O_TRUNC != 0
    }
}

pub fn access_of(open_flags: u32) -> Access {
    match open_flags & O_ACCMODE {
        O_RDONLY => Access::Read,
        O_WRONLY => Access::Write,
        O_RDWR => Access::ReadWrite,
        _ => Access::Neither,
    }
}

/// Decodes a `FileOpenRecord` of `bytes.len()` bytes (its fixed part plus `path_len` bytes).
pub fn decode(bytes: &[u8]) -> Result<FileOpenRecord, DecodeError> {
    let fixed = shared::FILE_OPEN_PATH_OFFSET;
    if bytes.len() < fixed {
        return Err(DecodeError::TooShort {
            len: bytes.len(),
            needed: fixed,
        });
    }
    // The kernel sends only the used part of the path buffer: copy what came into a zeroed
    // record on the stack (no heap allocation on this hot path).
    // SAFETY: the shared record is `#[repr(C)]` integers and byte arrays, valid when zeroed
    // and for any bytes copied over its prefix; `copied` never exceeds its size.
    let raw: shared::FileOpenRecord = unsafe {
        let mut raw = std::mem::MaybeUninit::<shared::FileOpenRecord>::zeroed();
        let copied = bytes
            .len()
            .min(std::mem::size_of::<shared::FileOpenRecord>());
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), raw.as_mut_ptr().cast::<u8>(), copied);
        raw.assume_init()
    };
    let path_len = (raw.path_len as usize).min(shared::FILE_PATH_LEN);
    if bytes.len() < fixed + path_len {
        return Err(DecodeError::TooShort {
            len: bytes.len(),
            needed: fixed + path_len,
        });
    }
    let requested_len = (raw.requested_len as usize).min(raw.requested.len());
    let requested_path = c_string(&raw.requested[..requested_len]);
    let (path, path_truncated) = assemble_path(
        raw.flags,
        &raw.path[..path_len],
        &requested_path,
        raw.result,
    );
    Ok(FileOpenRecord {
        header: decode_header(&raw.header),
        repeats: raw.repeats,
        open_flags: raw.open_flags,
        mode: raw.mode,
        result: raw.result,
        syscall: shared::OpenSyscall::from_u32(raw.syscall).map_or("", |s| s.name()),
        dirfd: raw.dirfd,
        requested_path,
        path,
        path_truncated,
        verdict: raw.verdict,
    })
}

/// Builds the event's path from what the kernel sent: `components` (leaf first, NUL after
/// each), the `FILE_FLAG_*` bits and the requested path. Returns the path and whether it was
/// cut.
///
/// - Success: the components, reversed, under `/`. A walk cut short keeps the leaf end under
///   `/` (flagged); a file outside the process's root is shown from the root of its filesystem.
/// - Failure of a relative path: base directory + requested path, normalized lexically (no
///   `..`, no `//`); the kernel resolved nothing, so this is the path that was asked for.
/// - Failure of an absolute path: the requested path, normalized.
/// - Failure of a relative path with no known base: the requested path as given.
pub fn assemble_path(
    flags: u32,
    components: &[u8],
    requested: &str,
    result: i32,
) -> (String, bool) {
    let requested_cut = flags & shared::FILE_FLAG_REQUESTED_TRUNCATED != 0;
    let walk_cut = flags & shared::FILE_FLAG_PATH_TRUNCATED != 0;
    if result >= 0 {
        return (join_components(components), walk_cut);
    }
    if flags & shared::FILE_FLAG_NO_PATH != 0 {
        let path = if requested.starts_with('/') {
            normalize(requested)
        } else {
            requested.to_owned()
        };
        return (path, requested_cut);
    }
    if flags & shared::FILE_FLAG_PATH_IS_BASE != 0 {
        let base = join_components(components);
        return (
            normalize(&format!("{base}/{requested}")),
            walk_cut || requested_cut,
        );
    }
    // A failure with neither flag: only the requested path is meaningful.
    (normalize(requested), requested_cut)
}

/// `b"x\0tmp\0"` (leaf first) → `/tmp/x`; nothing → `/`.
pub fn join_components(components: &[u8]) -> String {
    let components = components.strip_suffix(&[0]).unwrap_or(components);
    if components.is_empty() {
        return "/".to_owned();
    }
    let mut path = String::with_capacity(components.len() + 1);
    for name in components.rsplit(|&b| b == 0) {
        // A "/" name is the root of a filesystem reached outside the walk's end: skip it.
        if name.is_empty() || name == b"/" {
            continue;
        }
        path.push('/');
        path.push_str(&String::from_utf8_lossy(name));
    }
    if path.is_empty() {
        path.push('/');
    }
    path
}

/// The API event of an open.
pub fn open_event(open: FileOpenRecord) -> proto::FileOpenEvent {
    let access = match open.access() {
        Access::Read => proto::FileAccess::Read,
        Access::Write => proto::FileAccess::Write,
        Access::ReadWrite => proto::FileAccess::ReadWrite,
        Access::Neither => proto::FileAccess::Unspecified,
    };
    proto::FileOpenEvent {
        access: access as i32,
        create: open.create(),
        truncate: open.truncate(),
        flags: open.open_flags,
        result: open.result,
        syscall: open.syscall.to_owned(),
        path_truncated: open.path_truncated,
        path: open.path,
        requested_path: open.requested_path,
        verdict: crate::enforcement::verdict_name(open.verdict).to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_ebpf::{EventKind, RecordHeader as RawHeader};

    fn record(result: i32, flags: u32, open_flags: u32, requested: &str, path: &[u8]) -> Vec<u8> {
        let mut raw = shared::FileOpenRecord {
            header: RawHeader {
                kind: EventKind::FileOpen as u32,
                tid: 5,
                pid: 4,
                ppid: 3,
                uid: 0,
                gid: 0,
                boot_ns: 9,
                cgroup_id: 77,
                comm: *b"cat\0\0\0\0\0\0\0\0\0\0\0\0\0",
            },
            repeats: 12,
            open_flags,
            mode: 0o644,
            result,
            syscall: shared::OpenSyscall::Openat as u32,
            dirfd: -100,
            flags,
            verdict: 0,
            _pad: 0,
            path_len: path.len() as u32,
            requested_len: requested.len() as u32,
            requested: [0xAA; shared::FILE_REQUESTED_LEN],
            path: [0xBB; shared::FILE_PATH_LEN],
        };
        raw.requested[..requested.len()].copy_from_slice(requested.as_bytes());
        raw.requested[requested.len()] = 0;
        raw.path[..path.len()].copy_from_slice(path);
        // SAFETY: reading the bytes of a plain-old-data value.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&raw as *const shared::FileOpenRecord).cast::<u8>(),
                std::mem::size_of::<shared::FileOpenRecord>(),
            )
        };
        // As on the wire: only the used part of the path buffer.
        bytes[..shared::FILE_OPEN_PATH_OFFSET + path.len()].to_vec()
    }

    #[test]
    fn decodes_a_successful_open_with_the_path_reversed() {
        let bytes = record(3, 0, 0, "./x", b"x\0tmp\0");
        let open = decode(&bytes).unwrap();
        assert_eq!(open.path, "/tmp/x");
        assert_eq!(open.requested_path, "./x");
        assert_eq!(open.result, 3);
        assert_eq!(open.syscall, "openat");
        assert_eq!(open.repeats, 12);
        assert_eq!(open.header.cgroup_id, 77);
        assert_eq!(open.header.comm, "cat");
        assert_eq!(open.access(), Access::Read);
        assert!(!open.create() && !open.truncate() && !open.path_truncated);
    }

    #[test]
    fn the_root_itself_has_an_empty_walk() {
        assert_eq!(join_components(b""), "/");
        assert_eq!(join_components(b"etc\0"), "/etc");
        assert_eq!(join_components(b"c\0b\0a\0"), "/a/b/c");
        // A cut last name (no NUL) still counts.
        assert_eq!(join_components(b"c\0b"), "/b/c");
    }

    #[test]
    fn failed_relative_open_joins_base_and_normalizes() {
        let flags = shared::FILE_FLAG_PATH_IS_BASE;
        let (path, cut) = assemble_path(flags, b"tmp\0", "../etc//./nope", -2);
        assert_eq!((path.as_str(), cut), ("/etc/nope", false));
        let (path, _) = assemble_path(flags, b"", "missing", -2);
        assert_eq!(path, "/missing");
    }

    #[test]
    fn failed_absolute_open_is_the_requested_path_normalized() {
        let (path, cut) = assemble_path(shared::FILE_FLAG_NO_PATH, b"", "/a//b/../c", -13);
        assert_eq!((path.as_str(), cut), ("/a/c", false));
        let (path, cut) = assemble_path(
            shared::FILE_FLAG_NO_PATH | shared::FILE_FLAG_REQUESTED_TRUNCATED,
            b"",
            "rel/x",
            -9,
        );
        assert_eq!((path.as_str(), cut), ("rel/x", true));
    }

    #[test]
    fn truncated_walk_is_flagged() {
        let (path, cut) = assemble_path(shared::FILE_FLAG_PATH_TRUNCATED, b"x\0deep\0", "x", 4);
        assert_eq!((path.as_str(), cut), ("/deep/x", true));
    }

    #[test]
    fn maps_access_create_truncate() {
        assert_eq!(access_of(0), Access::Read);
        assert_eq!(access_of(0o1), Access::Write);
        assert_eq!(access_of(0o2), Access::ReadWrite);
        assert_eq!(access_of(0o3), Access::Neither);
        // O_WRONLY | O_CREAT | O_TRUNC, what `echo x > f` and creat() use.
        let bytes = record(1, 0, 0o1101, "/tmp/new", b"new\0tmp\0");
        let open = decode(&bytes).unwrap();
        assert_eq!(open.access(), Access::Write);
        assert!(open.create() && open.truncate());
        // O_RDWR | O_CLOEXEC: extra flags do not change the access mode.
        assert_eq!(access_of(0o2 | 0o2000000), Access::ReadWrite);
    }

    #[test]
    fn short_records_are_errors() {
        let bytes = record(3, 0, 0, "/tmp/x", b"x\0tmp\0");
        for len in [0, 10, shared::FILE_OPEN_PATH_OFFSET - 1, bytes.len() - 1] {
            assert!(
                matches!(decode(&bytes[..len]), Err(DecodeError::TooShort { .. })),
                "length {len} decoded"
            );
        }
    }

    #[test]
    fn lengths_beyond_buffers_are_clamped_or_refused() {
        let mut bytes = record(3, 0, 0, "/x", b"x\0");
        // requested_len far too large: clamped to the buffer, cut at the NUL.
        let requested_len_at = std::mem::offset_of!(shared::FileOpenRecord, requested_len);
        bytes[requested_len_at..requested_len_at + 4].copy_from_slice(&u32::MAX.to_ne_bytes());
        let open = decode(&bytes).unwrap();
        assert_eq!(open.requested_path, "/x");
        // path_len larger than what arrived: refused, not read past the end.
        let path_len_at = std::mem::offset_of!(shared::FileOpenRecord, path_len);
        bytes[path_len_at..path_len_at + 4].copy_from_slice(&100u32.to_ne_bytes());
        assert!(matches!(decode(&bytes), Err(DecodeError::TooShort { .. })));
    }
}
