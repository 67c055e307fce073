//! Decoding of the records the kernel programs write into the event ring buffer.
//!
//! Records are `#[repr(C)]` structs from `custos_ebpf`. Each is length-checked and read with
//! `read_unaligned` (ring buffer items are 8-byte aligned, but we do not rely on it); a short or
//! unknown record is an error, never a panic.
use custos_ebpf as shared;

/// Identity of the task that acted, common to all records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub tid: u32,
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Nanoseconds since boot.
    pub boot_ns: u64,
    pub cgroup_id: u64,
    pub comm: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRecord {
    pub header: RecordHeader,
    /// The path given to execve, as bytes may not be UTF-8 (lossily converted).
    pub path: String,
    pub path_truncated: bool,
    pub argv: Vec<String>,
    pub argv_truncated: bool,
    /// The exec began before the agent attached: argv is unknown, not empty.
    pub argv_missing: bool,
    /// `dirfd` of execveat, `AT_FDCWD` for execve.
    pub dirfd: i32,
    /// The kernel killed the process for this exec (enforce mode); it never ran.
    pub killed: bool,
    /// BPF LSM made this exec fail with EPERM (enforce mode); the process lives on.
    pub blocked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitRecord {
    pub header: RecordHeader,
    /// Status passed to exit(), when the process exited by itself.
    pub exit_code: i32,
    /// Signal that ended the process, 0 when it exited by itself.
    pub signal: i32,
}

/// A new process; the header is its parent's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkRecord {
    pub header: RecordHeader,
    pub child_pid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelRecord {
    Exec(ExecRecord),
    Exit(ExitRecord),
    Fork(ForkRecord),
    // --- activity records (files, network, syscalls): add variants below ---
    /// open, openat, openat2, creat.
    FileOpen(super::files::FileOpenRecord),
    /// connect, listen, accept.
    Network(super::network::NetworkRecord),
    /// First use of a syscall by a cgroup.
    SyscallFirstUse(super::syscalls::SyscallRecord),
    // --- end of activity records ---
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is too short for its kind (needs {needed})")]
    TooShort { len: usize, needed: usize },
    #[error("record has unknown kind {kind}")]
    UnknownKind { kind: u32 },
}

impl KernelRecord {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let kind = u32::from_ne_bytes(read_prefix::<4>(bytes)?);
        match shared::EventKind::from_u32(kind) {
            Some(shared::EventKind::Exec) => {
                let raw: shared::ExecRecord = read_struct(bytes)?;
                Ok(Self::Exec(decode_exec(&raw)))
            }
            Some(shared::EventKind::Exit) => {
                let raw: shared::ExitRecord = read_struct(bytes)?;
                Ok(Self::Exit(decode_exit(&raw)))
            }
            Some(shared::EventKind::Fork) => {
                let raw: shared::ForkRecord = read_struct(bytes)?;
                Ok(Self::Fork(ForkRecord {
                    header: decode_header(&raw.header),
                    child_pid: raw.child_pid,
                }))
            }
            // --- activity record kinds: add arms below ---
            Some(shared::EventKind::FileOpen) => Ok(Self::FileOpen(super::files::decode(bytes)?)),
            Some(
                network @ (shared::EventKind::Connect
                | shared::EventKind::Listen
                | shared::EventKind::Accept),
            ) => Ok(Self::Network(super::network::decode(network, bytes)?)),
            Some(shared::EventKind::SyscallFirstUse) => {
                Ok(Self::SyscallFirstUse(super::syscalls::decode(bytes)?))
            }
            // --- end of activity record kinds ---
            #[allow(unreachable_patterns)]
            Some(_) | None => Err(DecodeError::UnknownKind { kind }),
        }
    }

    pub fn header(&self) -> &RecordHeader {
        match self {
            Self::Exec(exec) => &exec.header,
            Self::Exit(exit) => &exit.header,
            Self::Fork(fork) => &fork.header,
            // --- activity record headers: add arms below ---
            Self::FileOpen(open) => &open.header,
            Self::Network(network) => &network.header,
            Self::SyscallFirstUse(syscall) => &syscall.header,
            // --- end of activity record headers ---
        }
    }
}

fn read_prefix<const N: usize>(bytes: &[u8]) -> Result<[u8; N], DecodeError> {
    bytes
        .get(..N)
        .and_then(|prefix| prefix.try_into().ok())
        .ok_or(DecodeError::TooShort {
            len: bytes.len(),
            needed: N,
        })
}

/// Reads a plain-old-data record from the start of `bytes`.
pub(crate) fn read_struct<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    let needed = std::mem::size_of::<T>();
    if bytes.len() < needed {
        return Err(DecodeError::TooShort {
            len: bytes.len(),
            needed,
        });
    }
    // SAFETY: the length was checked above, and the shared record types are `#[repr(C)]`
    // integers and integer arrays, valid for any bit pattern.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

pub(crate) fn decode_header(raw: &shared::RecordHeader) -> RecordHeader {
    RecordHeader {
        tid: raw.tid,
        pid: raw.pid,
        ppid: raw.ppid,
        uid: raw.uid,
        gid: raw.gid,
        boot_ns: raw.boot_ns,
        cgroup_id: raw.cgroup_id,
        comm: c_string(&raw.comm),
    }
}

fn decode_exec(raw: &shared::ExecRecord) -> ExecRecord {
    let args = &raw.args;
    let path_len = (args.path_len as usize).min(args.path.len());
    let argv_len = (args.argv_len as usize).min(args.argv.len());
    ExecRecord {
        header: decode_header(&raw.header),
        path: c_string(&args.path[..path_len]),
        path_truncated: args.flags & shared::EXEC_FLAG_PATH_TRUNCATED != 0,
        argv: split_argv(&args.argv[..argv_len]),
        argv_truncated: args.flags & shared::EXEC_FLAG_ARGV_TRUNCATED != 0,
        argv_missing: args.flags & shared::EXEC_FLAG_ARGV_MISSING != 0,
        dirfd: args.dirfd,
        killed: args.flags & shared::EXEC_FLAG_KILLED != 0,
        blocked: args.flags & shared::EXEC_FLAG_BLOCKED != 0,
    }
}

fn decode_exit(raw: &shared::ExitRecord) -> ExitRecord {
    // The kernel's exit_code is `(status << 8) | signal` (wait(2) encoding).
    ExitRecord {
        header: decode_header(&raw.header),
        exit_code: ((raw.exit_code >> 8) & 0xff) as i32,
        signal: (raw.exit_code & 0x7f) as i32,
    }
}

/// The bytes up to the first NUL (or all of them), lossily as UTF-8.
pub(crate) fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Splits NUL-terminated arguments (as in `/proc/<pid>/cmdline` too); a last argument without
/// its NUL (cut short) is kept.
pub(crate) fn split_argv(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|&b| b == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_bytes<T: Copy>(value: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain-old-data value.
        unsafe {
            std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    fn header(kind: shared::EventKind) -> shared::RecordHeader {
        let mut comm = [0u8; shared::COMM_LEN];
        comm[..3].copy_from_slice(b"cat");
        shared::RecordHeader {
            kind: kind as u32,
            tid: 11,
            pid: 10,
            ppid: 9,
            uid: 1000,
            gid: 1001,
            boot_ns: 42,
            cgroup_id: 7,
            comm,
        }
    }

    fn exec_record(path: &[u8], argv: &[u8], flags: u32) -> shared::ExecRecord {
        let mut args = shared::ExecArgs {
            flags,
            path_len: path.len() as u32,
            argv_len: argv.len() as u32,
            dirfd: -100,
            path: [0xAA; shared::EXEC_PATH_LEN],
            argv: [0xBB; shared::EXEC_ARGV_LEN],
        };
        args.path[..path.len()].copy_from_slice(path);
        args.argv[..argv.len()].copy_from_slice(argv);
        shared::ExecRecord {
            header: header(shared::EventKind::Exec),
            args,
        }
    }

    #[test]
    fn decodes_exec_with_exact_argv_ignoring_bytes_past_lengths() {
        let raw = exec_record(b"/bin/cat", b"/bin/cat\0/etc/hostname\0", 0);
        let KernelRecord::Exec(exec) = KernelRecord::decode(&as_bytes(&raw)).unwrap() else {
            panic!("not an exec");
        };
        assert_eq!(exec.path, "/bin/cat");
        assert_eq!(exec.argv, vec!["/bin/cat", "/etc/hostname"]);
        assert!(!exec.argv_truncated && !exec.path_truncated && !exec.argv_missing);
        assert_eq!(
            exec.header,
            RecordHeader {
                tid: 11,
                pid: 10,
                ppid: 9,
                uid: 1000,
                gid: 1001,
                boot_ns: 42,
                cgroup_id: 7,
                comm: "cat".into()
            }
        );
    }

    #[test]
    fn keeps_empty_arguments_and_a_cut_last_argument() {
        let raw = exec_record(
            b"/bin/echo",
            b"echo\0\0abc",
            shared::EXEC_FLAG_ARGV_TRUNCATED,
        );
        let KernelRecord::Exec(exec) = KernelRecord::decode(&as_bytes(&raw)).unwrap() else {
            panic!("not an exec");
        };
        assert_eq!(exec.argv, vec!["echo", "", "abc"]);
        assert!(exec.argv_truncated);
    }

    #[test]
    fn lengths_larger_than_buffers_are_clamped() {
        let mut raw = exec_record(b"/x", b"", 0);
        raw.args.path_len = u32::MAX;
        raw.args.argv_len = u32::MAX;
        let KernelRecord::Exec(exec) = KernelRecord::decode(&as_bytes(&raw)).unwrap() else {
            panic!("not an exec");
        };
        assert!(exec.path.starts_with("/x"));
    }

    #[test]
    fn decodes_exit_status_and_signal() {
        let raw = shared::ExitRecord {
            header: header(shared::EventKind::Exit),
            exit_code: 3 << 8,
            _pad: 0,
        };
        let KernelRecord::Exit(exit) = KernelRecord::decode(&as_bytes(&raw)).unwrap() else {
            panic!("not an exit");
        };
        assert_eq!((exit.exit_code, exit.signal), (3, 0));
        let killed = shared::ExitRecord {
            exit_code: 9,
            ..raw
        };
        let KernelRecord::Exit(exit) = KernelRecord::decode(&as_bytes(&killed)).unwrap() else {
            panic!("not an exit");
        };
        assert_eq!((exit.exit_code, exit.signal), (0, 9));
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        let raw = exec_record(b"/bin/cat", b"", 0);
        let bytes = as_bytes(&raw);
        for len in [0, 3, 4, 100, bytes.len() - 1] {
            assert!(
                matches!(
                    KernelRecord::decode(&bytes[..len]),
                    Err(DecodeError::TooShort { .. })
                ),
                "length {len} decoded"
            );
        }
        let mut unknown = bytes.clone();
        unknown[..4].copy_from_slice(&99u32.to_ne_bytes());
        assert_eq!(
            KernelRecord::decode(&unknown),
            Err(DecodeError::UnknownKind { kind: 99 })
        );
    }
}
