//! Compiling a profile (and the global rules) into the entries of the kernel's policy maps.
//!
//! The kernel matches exact hashes only, so wildcard patterns are widened to what it can check,
//! never narrowed (narrowing would kill legitimate actions):
//! - a file pattern whose only wildcard is in its last segment (`/tmp/out.*`) allows the
//!   directory's direct children (`/tmp/<anything>`) for the same access; a wildcard higher up
//!   (`/proc/*/stat`) allows the subtree of the literal part (`/proc/...`);
//! - a network peer grouped by a prefix the kernel does not try is widened to the next shorter
//!   one it does (IPv4 /32, /16, any; IPv6 /128, /48, any); a peer given by host name allows any
//!   address on its port;
//! - a wildcard executable makes the kernel leave that profile's execs to user space.
//!
//! A profile that opted in to syscall kills (`syscallPolicy: kill`) also gets its syscall set
//! as a bitmap, with what is always allowed on top: the signal-return syscalls, the readiness
//! waits a `socket` implies, and the hand-over and exit calls the seccomp export allows too.
//! Names with no number on this architecture are left out (a syscall the kernel cannot number
//! is never made).
//!
//! Known-good actions never leave the kernel, so what only a widened rule allows (`/tmp/evil`
//! next to a learned `/tmp/out.*`) is neither flagged nor blocked. That is the price of deciding
//! in the kernel without waiting; literal entries, the common case, are judged exactly.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use custos_ebpf::{
    policy::{
        ACCESS_EXEC, ACCESS_READ, ACCESS_WRITE, EXEC_ALLOW, EXEC_DENY, EXEC_KEY_NAME,
        EXEC_KEY_PATH, EXEC_KEY_UNDECIDED, NET_EGRESS, NET_LISTEN, NET_PREFIXES_V4,
        NET_PREFIXES_V6, PathRule, forward_hash, suffix_hash,
    },
    syscall::SyscallBits,
};

use super::global_rules::GlobalRulesConfig;
use crate::{
    profiles::{
        FileAccess, Profile, Protocol,
        generalize::implied_syscalls,
        model::{SIGNAL_RETURN_SYSCALLS, SyscallPolicy},
        pattern::{PathPattern, Peer},
        seccomp::BASELINE_SYSCALLS,
    },
    sensors::syscalls::syscall_number,
};

/// A network rule without its profile number (see `NetRuleKey`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetEntry {
    pub direction: u8,
    pub protocol: u8,
    pub port: u16,
    pub family: u8,
    pub prefix_len: u8,
    pub addr: [u8; 16],
}

/// The kernel's view of one profile: map entries without the profile number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompiledProfile {
    /// Path hash → rule.
    pub paths: BTreeMap<u64, PathRule>,
    /// (kind, hash) → EXEC_ALLOW / EXEC_DENY.
    pub execs: BTreeMap<(u32, u64), u32>,
    pub nets: BTreeSet<NetEntry>,
    /// Syscalls allowed, for a profile that opted in to syscall kills; `None`: flag only.
    pub syscalls: Option<SyscallBits>,
}

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// Compiles `profile` (none: the global rules only) with the global rules on top.
pub fn compile(profile: Option<&Profile>, global: &GlobalRulesConfig) -> CompiledProfile {
    let mut compiled = CompiledProfile::default();
    if let Some(profile) = profile {
        compile_execs(profile, &mut compiled);
        compile_files(profile, &mut compiled);
        compile_network(profile, &mut compiled);
        if profile.syscall_policy == SyscallPolicy::Kill {
            compiled.syscalls = Some(syscall_bits(profile));
        }
    }
    for name in global.denied_programs() {
        compiled
            .execs
            .insert((EXEC_KEY_NAME, forward_hash(name.as_bytes())), EXEC_DENY);
    }
    for dir in global.write_protected_dirs() {
        compiled
            .paths
            .entry(suffix_hash(dir))
            .or_default()
            .deny_subtree |= ACCESS_WRITE;
    }
    for file in global.read_protected_files() {
        compiled
            .paths
            .entry(suffix_hash(file))
            .or_default()
            .deny_exact |= ACCESS_READ;
    }
    compiled
}

fn compile_execs(profile: &Profile, compiled: &mut CompiledProfile) {
    for rule in &profile.executables {
        if rule.path.is_literal() {
            let hash = forward_hash(rule.path.as_str().as_bytes());
            compiled.execs.insert((EXEC_KEY_PATH, hash), EXEC_ALLOW);
        } else {
            compiled.execs.insert((EXEC_KEY_UNDECIDED, 0), EXEC_ALLOW);
        }
    }
}

/// The syscalls a profile that opted in to kills may make (see the module documentation).
fn syscall_bits(profile: &Profile) -> SyscallBits {
    let learned = profile.syscalls.iter().map(String::as_str);
    let implied = profile
        .syscalls
        .iter()
        .flat_map(|name| implied_syscalls(name).iter().copied());
    let always = SIGNAL_RETURN_SYSCALLS
        .iter()
        .chain(BASELINE_SYSCALLS)
        .copied();
    let mut bits = SyscallBits::default();
    for number in learned
        .chain(implied)
        .chain(always)
        .filter_map(syscall_number)
    {
        bits.insert(number);
    }
    bits
}

fn access_bits(accesses: &BTreeSet<FileAccess>) -> u32 {
    accesses
        .iter()
        .map(|access| match access {
            FileAccess::Read => ACCESS_READ,
            FileAccess::Write => ACCESS_WRITE,
            FileAccess::Exec => ACCESS_EXEC,
        })
        .fold(0, |bits, bit| bits | bit)
}

fn compile_files(profile: &Profile, compiled: &mut CompiledProfile) {
    for (pattern, accesses) in &profile.files {
        let bits = access_bits(accesses);
        let (hash, widened) = kernel_path_rule(pattern);
        let rule = compiled.paths.entry(hash).or_default();
        match widened {
            Widened::Exact => rule.exact |= bits,
            Widened::Children => rule.children |= bits,
            Widened::Subtree => rule.subtree |= bits,
        }
    }
}

enum Widened {
    Exact,
    Children,
    Subtree,
}

/// Where the kernel rule of a file pattern sits, and how it applies.
fn kernel_path_rule(pattern: &PathPattern) -> (u64, Widened) {
    if pattern.is_literal() {
        return (suffix_hash(pattern.as_str()), Widened::Exact);
    }
    let segments: Vec<&str> = pattern.segments().collect();
    let first_wild = segments
        .iter()
        .position(|segment| segment.contains('*'))
        .unwrap_or(segments.len());
    let dir = format!("/{}", segments[..first_wild].join("/"));
    let how = if first_wild + 1 == segments.len() {
        Widened::Children
    } else {
        Widened::Subtree
    };
    (suffix_hash(&dir), how)
}

fn ip_protocol(protocol: Protocol) -> Option<u8> {
    match protocol {
        Protocol::Tcp => Some(IPPROTO_TCP),
        Protocol::Udp => Some(IPPROTO_UDP),
        _ => None,
    }
}

fn compile_network(profile: &Profile, compiled: &mut CompiledProfile) {
    for rule in &profile.egress {
        let Some(protocol) = ip_protocol(rule.protocol) else {
            continue;
        };
        let entry = |family: u8, prefix_len: u8, addr: [u8; 16]| NetEntry {
            direction: NET_EGRESS,
            protocol,
            port: rule.port,
            family,
            prefix_len,
            addr,
        };
        match &rule.address {
            Peer::Ip(ip) => {
                let (family, prefix, addr) = ip_key(*ip, 128);
                compiled.nets.insert(entry(family, prefix, addr));
            }
            Peer::Net(net) => {
                let (family, prefix, addr) = ip_key(net.addr(), net.prefix());
                compiled.nets.insert(entry(family, prefix, addr));
            }
            Peer::Host(_) => {
                compiled.nets.insert(entry(4, 0, [0; 16]));
                compiled.nets.insert(entry(6, 0, [0; 16]));
            }
            Peer::Unix(_) => {}
        }
    }
    for rule in &profile.listen {
        let Some(protocol) = ip_protocol(rule.protocol) else {
            continue;
        };
        for family in [4, 6] {
            compiled.nets.insert(NetEntry {
                direction: NET_LISTEN,
                protocol,
                port: rule.port,
                family,
                prefix_len: 0,
                addr: [0; 16],
            });
        }
    }
}

/// (family, prefix the kernel tries, masked address) for `ip` grouped by `prefix` bits (an
/// IPv4 prefix counts in IPv4 bits). IPv4-mapped IPv6 addresses are IPv4.
fn ip_key(ip: IpAddr, prefix: u8) -> (u8, u8, [u8; 16]) {
    let ip = crate::profiles::pattern::canonical_ip(ip);
    let (family, octets, tried): (u8, Vec<u8>, &[u8]) = match ip {
        IpAddr::V4(v4) => (4, v4.octets().to_vec(), &NET_PREFIXES_V4),
        IpAddr::V6(v6) => (6, v6.octets().to_vec(), &NET_PREFIXES_V6),
    };
    let max = if family == 4 { 32 } else { 128 };
    let prefix = prefix.min(max);
    // The longest prefix the kernel tries that is not longer than the rule's.
    let kernel_prefix = tried.iter().copied().find(|p| *p <= prefix).unwrap_or(0);
    let mut addr = [0u8; 16];
    for (index, byte) in octets.iter().enumerate() {
        let bit = u32::try_from(index * 8).unwrap_or(u32::MAX);
        let keep = u32::from(kernel_prefix).saturating_sub(bit).min(8);
        addr[index] = if keep == 0 {
            0
        } else {
            byte & (0xffu8 << (8 - keep))
        };
    }
    (family, kernel_prefix, addr)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::profiles::{Observation, WorkloadIdentity};

    /// The walk form the kernel builds (names leaf first, NUL after each) hashed from the end,
    /// written out the slow way: what `suffix_hash` must agree with.
    fn kernel_hash(path: &str) -> u64 {
        let mut walk = Vec::new();
        for segment in path.split('/').filter(|s| !s.is_empty()).rev() {
            walk.extend_from_slice(segment.as_bytes());
            walk.push(0);
        }
        walk.iter()
            .rev()
            .fold(custos_ebpf::policy::SUFFIX_HASH_INIT, |hash, byte| {
                custos_ebpf::policy::suffix_hash_step(hash, *byte)
            })
    }

    fn profile(observations: &[Observation]) -> Profile {
        let mut profile = Profile::new(WorkloadIdentity {
            workload: "web".into(),
            container: "web".into(),
            image: "busybox".into(),
        });
        for observation in observations {
            profile.learn(observation);
        }
        profile
    }

    #[test]
    fn path_hashes_agree_with_the_kernel_walk_form() {
        for path in ["/", "/etc", "/etc/nginx/nginx.conf", "/a/b/c/d"] {
            assert_eq!(suffix_hash(path), kernel_hash(path), "{path}");
        }
        assert_ne!(suffix_hash("/etc/passwd"), suffix_hash("/etc/shadow"));
        assert_ne!(suffix_hash("/ab/c"), suffix_hash("/a/bc"));
    }

    #[test]
    fn files_compile_to_exact_children_and_subtree_rules() {
        let p = profile(&[
            Observation::File {
                path: "/etc/nginx/nginx.conf".into(),
                access: FileAccess::Read,
            },
            Observation::File {
                path: "/tmp/out.a8Xk2".into(),
                access: FileAccess::Write,
            },
            Observation::File {
                path: "/proc/42/stat".into(),
                access: FileAccess::Read,
            },
        ]);
        let compiled = compile(Some(&p), &GlobalRulesConfig::default());
        assert_eq!(
            compiled.paths[&suffix_hash("/etc/nginx/nginx.conf")].exact,
            ACCESS_READ
        );
        assert_eq!(compiled.paths[&suffix_hash("/tmp")].children, ACCESS_WRITE);
        assert_eq!(compiled.paths[&suffix_hash("/proc")].subtree, ACCESS_READ);
        // Global rules ride along.
        assert_eq!(
            compiled.paths[&suffix_hash("/etc/shadow")].deny_exact,
            ACCESS_READ
        );
        assert_eq!(
            compiled.paths[&suffix_hash("/etc")].deny_subtree,
            ACCESS_WRITE
        );
        assert!(!compiled.paths.contains_key(&suffix_hash("/etc/passwd")));
    }

    #[test]
    fn execs_and_network_compile_to_exact_keys() {
        let p = profile(&[
            Observation::Exec {
                path: "/bin/httpd".into(),
                parent_exe: None,
            },
            Observation::Connect {
                protocol: Protocol::Tcp,
                address: "127.0.0.1".into(),
                port: 8080,
            },
            Observation::Connect {
                protocol: Protocol::Tcp,
                address: "10.1.2.3".into(),
                port: 443,
            },
            Observation::Listen {
                protocol: Protocol::Tcp,
                port: 80,
            },
        ]);
        let compiled = compile(Some(&p), &GlobalRulesConfig::default());
        assert_eq!(
            compiled.execs[&(EXEC_KEY_PATH, forward_hash(b"/bin/httpd"))],
            EXEC_ALLOW
        );
        assert_eq!(
            compiled.execs[&(EXEC_KEY_NAME, forward_hash(b"sshd"))],
            EXEC_DENY
        );
        assert!(!compiled.execs.contains_key(&(EXEC_KEY_UNDECIDED, 0)));
        let mut loopback = [0u8; 16];
        loopback[..4].copy_from_slice(&Ipv4Addr::LOCALHOST.octets());
        assert!(compiled.nets.contains(&NetEntry {
            direction: NET_EGRESS,
            protocol: IPPROTO_TCP,
            port: 8080,
            family: 4,
            prefix_len: 32,
            addr: loopback,
        }));
        // A pod address is grouped by /16 by the generaliser, and so in the kernel.
        let mut pod_net = [0u8; 16];
        pod_net[..2].copy_from_slice(&[10, 1]);
        assert!(compiled.nets.contains(&NetEntry {
            direction: NET_EGRESS,
            protocol: IPPROTO_TCP,
            port: 443,
            family: 4,
            prefix_len: 16,
            addr: pod_net,
        }));
        assert!(
            compiled
                .nets
                .iter()
                .any(|n| n.direction == NET_LISTEN && n.port == 80)
        );
    }

    #[test]
    fn syscalls_compile_only_for_a_profile_that_opted_in_to_kills() {
        let mut p = profile(&[Observation::Syscall {
            name: "socket".into(),
        }]);
        p.syscalls.insert("syscall_400".into());
        p.syscalls.insert("not_a_syscall".into());
        assert_eq!(
            compile(Some(&p), &GlobalRulesConfig::default()).syscalls,
            None
        );
        p.syscall_policy = SyscallPolicy::Kill;
        let bits = compile(Some(&p), &GlobalRulesConfig::default())
            .syscalls
            .expect("a kill profile has a syscall set");
        let number = |name| syscall_number(name).unwrap();
        // Learned, implied by socket, signal returns, hand-over and exit; nothing else.
        for name in [
            "socket",
            "poll",
            "epoll_wait",
            "rt_sigreturn",
            "restart_syscall",
            "execve",
            "exit_group",
            "syscall_400",
        ] {
            assert!(bits.contains(number(name)), "{name} not allowed");
        }
        for name in ["read", "openat", "ptrace", "mount"] {
            assert!(!bits.contains(number(name)), "{name} allowed");
        }
    }

    #[test]
    fn no_profile_means_global_rules_only() {
        let compiled = compile(None, &GlobalRulesConfig::default());
        assert!(compiled.nets.is_empty());
        assert!(compiled.execs.values().all(|v| *v == EXEC_DENY));
    }
}
