//! Records of the syscall sensor (first use of a syscall by a cgroup).
//!
//! The kernel keeps, per cgroup, a bitmap of the syscall numbers its tasks have entered
//! ([`SyscallBits`] in the `SYSCALL_SETS` map) and sends a [`SyscallRecord`] only when a bit is
//! set for the first time. User space reads the map for a container's whole set.
use crate::RecordHeader;

/// Syscall numbers tracked: `0..SYSCALL_MAX`. Larger numbers (none exist on x86_64 today; the
/// highest is in the 460s) are ignored.
pub const SYSCALL_MAX: u32 = 512;
/// `u64` words in a [`SyscallBits`].
pub const SYSCALL_WORDS: usize = SYSCALL_MAX as usize / 64;
/// Entries in the `SYSCALL_SETS` map: cgroups tracked at once.
pub const SYSCALL_SETS_MAX: u32 = 16384;
/// Name of the per-cgroup bitmap map, for user space.
pub const SYSCALL_SETS_MAP: &str = "SYSCALL_SETS";
/// Name of the map of syscalls allowed per profile (key: profile number, value:
/// [`SyscallBits`]), for profiles that opted in to killing on a syscall outside their set.
pub const SYSCALL_RULES_MAP: &str = "SYSCALL_RULES";
/// Entries in the `SYSCALL_RULES` map: opted-in profiles in force at once.
pub const SYSCALL_RULES_MAX: u32 = 4096;
/// Name of the one-slot array holding how many `SYSCALL_RULES` entries there are: while it is
/// 0, the per-syscall check costs one array read.
pub const SYSCALL_RULES_IN_USE_MAP: &str = "SYSCALL_RULES_IN_USE";

/// Value of the `SYSCALL_SETS` map (key: cgroup id): bit `n % 64` of word `n / 64` is set once
/// a task of the cgroup entered syscall `n`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallBits {
    pub words: [u64; SYSCALL_WORDS],
}

impl SyscallBits {
    /// Whether syscall `number` is in the set (false for numbers out of range).
    pub fn contains(&self, number: u32) -> bool {
        number < SYSCALL_MAX && self.words[(number / 64) as usize] & (1u64 << (number % 64)) != 0
    }

    /// Adds syscall `number`; returns true if it was not in the set (false also when out of
    /// range).
    pub fn insert(&mut self, number: u32) -> bool {
        if number >= SYSCALL_MAX {
            return false;
        }
        let word = &mut self.words[(number / 64) as usize];
        let bit = 1u64 << (number % 64);
        let new = *word & bit == 0;
        *word |= bit;
        new
    }

    /// Adds every syscall of `other`.
    pub fn union(&mut self, other: &SyscallBits) {
        for (word, other) in self.words.iter_mut().zip(other.words.iter()) {
            *word |= *other;
        }
    }
}

/// A cgroup entered a syscall it had never entered before (`EventKind::SyscallFirstUse`), or
/// a process was killed for entering one outside its profile (sent on every kill, first use
/// or not).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SyscallRecord {
    pub header: RecordHeader,
    /// The syscall number (x86_64 numbering on x86_64).
    pub number: u32,
    /// `policy::VERDICT_KILLED` when the process was sent SIGKILL for this syscall (enforce
    /// mode, profile opted in); `policy::VERDICT_NONE` otherwise.
    pub verdict: u32,
}

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]`, only integers, no padding; every bit pattern is a valid value.
unsafe impl aya::Pod for SyscallBits {}
