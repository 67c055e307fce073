//! Profiles compiled for the kernel: what the enforcement programs look up to decide, without
//! asking user space, whether an action of a container is known-good.
//!
//! User space (`agent/src/enforcement`) gives every profile in force a small number and fills:
//! - `POLICY_CGROUPS`: container cgroup → [`CgroupPolicy`] (profile number and mode). Cgroups
//!   without an entry are not judged in the kernel (learn, off, or no profile yet).
//! - `PATH_RULES`: (profile, path hash) → [`PathRule`], for file opens. A path is hashed in the
//!   form the kernel's dentry walk produces (names leaf first, each followed by a NUL), *from
//!   the end*, so that every directory above the file is a suffix of the same walk: one pass
//!   over the bytes yields the hash of `/`, `/etc`, `/etc/nginx` and `/etc/nginx/nginx.conf`,
//!   each looked up once. [`suffix_hash`] is the one definition both sides use.
//! - `EXEC_RULES`: (profile, kind, hash) → allow/deny, for execs: the invoked absolute path
//!   (allow) and the program's base name (deny: global rules such as "no sshd").
//! - `NET_RULES`: (profile, protocol, port, address masked to a prefix) → allowed, for connect
//!   and sendmsg (egress) and bind (listen).
//!
//! Global rules (deny lists that apply whatever the baseline says) are compiled into every
//! profile's key space, so a lookup answers both questions at once.

/// [`CgroupPolicy::mode`]: report what the profile does not allow, let it happen.
pub const MODE_MONITOR: u32 = 1;
/// [`CgroupPolicy::mode`]: stop what the profile does not allow.
pub const MODE_ENFORCE: u32 = 2;

/// Access bits of [`PathRule`] fields and of an open: what the open asked for.
pub const ACCESS_READ: u32 = 1 << 0;
pub const ACCESS_WRITE: u32 = 1 << 1;
pub const ACCESS_EXEC: u32 = 1 << 2;

/// Bytes of a path the kernel hashes at most; a longer path is never known-good in the kernel
/// (it goes to user space, which judges it).
pub const POLICY_PATH_LIMIT: usize = 512;

/// `ExecRuleKey::kind`: the hash is of the whole invoked path.
pub const EXEC_KEY_PATH: u32 = 1;
/// `ExecRuleKey::kind`: the hash is of the base name (the last path segment).
pub const EXEC_KEY_NAME: u32 = 2;
/// `ExecRuleKey::kind` with hash 0: the profile has wildcard executables, which the kernel
/// cannot match, so its execs are left to user space.
pub const EXEC_KEY_UNDECIDED: u32 = 3;
/// Values of `EXEC_RULES`.
pub const EXEC_ALLOW: u32 = 1;
pub const EXEC_DENY: u32 = 2;

/// Verdicts the kernel attaches to a record (`FileOpenRecord::verdict`, exec flags).
pub const VERDICT_NONE: u32 = 0;
/// Outside the profile, let through (monitor).
pub const VERDICT_ALERTED: u32 = 1;
/// Outside the profile, the call failed with EPERM.
pub const VERDICT_BLOCKED: u32 = 2;
/// Outside the profile, the process was sent SIGKILL.
pub const VERDICT_KILLED: u32 = 3;

/// Value of `POLICY_CGROUPS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupPolicy {
    /// The profile's number (its key space in the rule maps).
    pub profile: u32,
    /// [`MODE_MONITOR`] or [`MODE_ENFORCE`].
    pub mode: u32,
}

/// Key of `PATH_RULES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PathRuleKey {
    pub profile: u32,
    pub _pad: u32,
    /// [`suffix_hash`] of the path.
    pub hash: u64,
}

/// Value of `PATH_RULES`: access bits allowed or denied at one path.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathRule {
    /// Allowed on this very path.
    pub exact: u32,
    /// Allowed on the files directly in this directory.
    pub children: u32,
    /// Allowed on everything below this directory.
    pub subtree: u32,
    /// Denied on this very path (global rules); wins over any allow.
    pub deny_exact: u32,
    /// Denied on everything below this directory (global rules); wins over any allow.
    pub deny_subtree: u32,
    pub _pad: u32,
}

/// Key of `EXEC_RULES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExecRuleKey {
    pub profile: u32,
    /// [`EXEC_KEY_PATH`] or [`EXEC_KEY_NAME`].
    pub kind: u32,
    pub hash: u64,
}

/// Key of `NET_RULES`. The address is masked to `prefix_len` bits; the kernel looks up the
/// exact address, then the prefixes user space says are in use ([`NET_PREFIXES`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NetRuleKey {
    pub profile: u32,
    /// [`NET_EGRESS`] or [`NET_LISTEN`].
    pub direction: u8,
    /// IPPROTO_TCP (6) or IPPROTO_UDP (17).
    pub protocol: u8,
    pub port: u16,
    /// 4 or 6.
    pub family: u8,
    /// Bits of `addr` that count (0 for a listen rule: any local address).
    pub prefix_len: u8,
    pub _pad: u16,
    /// IPv4 in the first 4 bytes, network order.
    pub addr: [u8; 16],
}

pub const NET_EGRESS: u8 = 1;
pub const NET_LISTEN: u8 = 2;
/// Prefixes the kernel tries after the exact address: the private-range grouping of the
/// generaliser (IPv4 /16, IPv6 /48), and 0 for "any address".
pub const NET_PREFIXES_V4: [u8; 3] = [32, 16, 0];
pub const NET_PREFIXES_V6: [u8; 3] = [128, 48, 0];

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Starting value of [`suffix_hash_step`].
pub const SUFFIX_HASH_INIT: u64 = FNV_OFFSET;

/// One step of the suffix hash: FNV-1a over the bytes taken from the end towards the start.
#[inline(always)]
pub fn suffix_hash_step(hash: u64, byte: u8) -> u64 {
    (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
}

/// The hash the kernel computes for a path: FNV-1a over its leaf-first walk form (`name\0`
/// per segment, leaf first), taken from the last byte to the first. `/` hashes to
/// [`SUFFIX_HASH_INIT`]. `path` is absolute and canonical.
pub fn suffix_hash(path: &str) -> u64 {
    // Root-first segments, each followed by NUL, read backwards = the walk form read from the
    // end: the root-most segment's NUL first, then its bytes reversed, and so on.
    let mut hash = SUFFIX_HASH_INIT;
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        hash = suffix_hash_step(hash, 0);
        for byte in segment.bytes().rev() {
            hash = suffix_hash_step(hash, byte);
        }
    }
    hash
}

/// FNV-1a forward over `bytes`: the hash of an invoked exec path or of its base name.
pub fn forward_hash(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(FNV_OFFSET, |hash, byte| suffix_hash_step(hash, *byte))
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]`, integers and integer arrays only, explicit padding.
    unsafe impl aya::Pod for super::CgroupPolicy {}
    unsafe impl aya::Pod for super::PathRuleKey {}
    unsafe impl aya::Pod for super::PathRule {}
    unsafe impl aya::Pod for super::ExecRuleKey {}
    unsafe impl aya::Pod for super::NetRuleKey {}
}
