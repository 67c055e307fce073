//! Decisions in the kernel: the profiles in force, compiled by user space into bounded maps (see
//! `custos_ebpf::policy`), and the checks the sensors and the cgroup programs run against them.
//! Nothing here waits for user space: a lookup that finds nothing means "not known-good".
use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_probe_read_user, generated::bpf_send_signal},
    macros::{cgroup_sock_addr, map},
    maps::{Array, HashMap, LruHashMap},
    programs::SockAddrContext,
};
use custos_ebpf::{
    Counter,
    net::{AF_INET, AF_INET6},
    policy::{
        ACCESS_READ, ACCESS_WRITE, CgroupPolicy, EXEC_ALLOW, EXEC_DENY, EXEC_KEY_NAME,
        EXEC_KEY_PATH, EXEC_KEY_UNDECIDED, ExecRuleKey, MODE_ENFORCE, NET_EGRESS, NET_LISTEN,
        NET_PREFIXES_V4, NET_PREFIXES_V6, NetRuleKey, POLICY_PATH_LIMIT, PathRule, PathRuleKey,
        SUFFIX_HASH_INIT, suffix_hash_step,
    },
};

use super::common::{count, current_ids, is_agent, is_container_runtime};

/// Container cgroups judged in the kernel, with their profile number and mode.
#[map]
pub static POLICY_CGROUPS: HashMap<u64, CgroupPolicy> = HashMap::with_max_entries(8192, 0);

/// File rules of every profile in force (and the global rules, in each profile's key space).
#[map]
static PATH_RULES: HashMap<PathRuleKey, PathRule> = HashMap::with_max_entries(65536, 0);

/// Exec rules: invoked paths allowed, base names denied.
#[map]
static EXEC_RULES: HashMap<ExecRuleKey, u32> = HashMap::with_max_entries(16384, 0);

/// Network rules: egress peers and listening ports allowed.
#[map]
static NET_RULES: HashMap<NetRuleKey, u32> = HashMap::with_max_entries(16384, 0);

/// Bumped by user space whenever the rules change, so that a cached decision (the repeat
/// suppression state) taken under older rules is not reused.
#[map]
pub static POLICY_GENERATION: Array<u32> = Array::with_max_entries(1, 0);

const SIGKILL: u32 = 9;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;

/// The policy of `cgroup_id`, if it is judged in the kernel. The container runtime setting a
/// container up (`runc init`, which also runs for `exec` into a running container) is not the
/// workload and is never judged; the user-space judge makes the same exception.
#[inline(always)]
pub fn policy_of(cgroup_id: u64) -> Option<CgroupPolicy> {
    // SAFETY: a plain-data value copied out of the map.
    let policy = unsafe { POLICY_CGROUPS.get(&cgroup_id) }.copied()?;
    (!is_container_runtime()).then_some(policy)
}

#[inline(always)]
pub fn generation() -> u32 {
    POLICY_GENERATION.get(0).copied().unwrap_or(0)
}

/// Kills the current process (all its threads) before it returns to user space.
#[inline(always)]
pub fn kill_current() {
    // SAFETY: a helper call with a constant signal number.
    let _ = unsafe { bpf_send_signal(SIGKILL) };
    count(Counter::ProcessesKilled);
}

/// Open flags → the access bits they ask for.
#[inline(always)]
pub fn open_access(open_flags: u32) -> u32 {
    match open_flags & 0o3 {
        0 => ACCESS_READ,
        1 => ACCESS_WRITE,
        _ => ACCESS_READ | ACCESS_WRITE,
    }
}

/// Whether `access` to the path in `walk[..len]` (the dentry walk's leaf-first form) is
/// allowed by `profile`. `None` when the kernel cannot tell (path too long to hash).
#[inline(always)]
pub fn path_allowed(profile: u32, walk: &[u8], len: usize, access: u32) -> Option<bool> {
    if len > POLICY_PATH_LIMIT || len > walk.len() {
        return None;
    }
    let lookup = |hash: u64| -> PathRule {
        let key = PathRuleKey {
            profile,
            _pad: 0,
            hash,
        };
        // SAFETY: a plain-data value copied out of the map.
        unsafe { PATH_RULES.get(&key) }.copied().unwrap_or_default()
    };
    // "/" itself: its subtree rules, and its children rules when the file is directly in it.
    let root = lookup(SUFFIX_HASH_INIT);
    let mut allowed = root.subtree;
    let mut denied = root.deny_subtree;
    let mut parent_children = root.children;
    let mut hash = SUFFIX_HASH_INIT;
    let mut index = len;
    for _ in 0..POLICY_PATH_LIMIT {
        if index == 0 {
            break;
        }
        index -= 1;
        let byte = walk[index & (POLICY_PATH_LIMIT - 1)];
        hash = suffix_hash_step(hash, byte);
        if index == 0 {
            let rule = lookup(hash);
            allowed |= rule.exact | parent_children;
            denied |= rule.deny_exact;
        } else if walk[(index - 1) & (POLICY_PATH_LIMIT - 1)] == 0 {
            // A directory above the file.
            let rule = lookup(hash);
            allowed |= rule.subtree;
            denied |= rule.deny_subtree;
            parent_children = rule.children;
        }
    }
    if len == 0 {
        // The root directory itself.
        allowed |= root.exact;
        denied |= root.deny_exact;
    }
    Some(access & denied == 0 && access & !allowed == 0)
}

/// Whether an exec of `path[..len]` (as invoked) is allowed by `profile`: its base name is not
/// denied and its absolute path is allowed. `None` when the kernel cannot tell (relative or
/// too long a path).
#[inline(always)]
pub fn exec_allowed(profile: u32, path: &[u8], len: usize) -> Option<bool> {
    if len == 0 || len >= POLICY_PATH_LIMIT || len > path.len() || path[0] != b'/' {
        return None;
    }
    let mut hash = SUFFIX_HASH_INIT;
    let mut name_hash = SUFFIX_HASH_INIT;
    for index in 0..POLICY_PATH_LIMIT {
        if index >= len {
            break;
        }
        let byte = path[index & (POLICY_PATH_LIMIT - 1)];
        hash = suffix_hash_step(hash, byte);
        name_hash = if byte == b'/' {
            SUFFIX_HASH_INIT
        } else {
            suffix_hash_step(name_hash, byte)
        };
    }
    let rule = |kind: u32, hash: u64| {
        let key = ExecRuleKey {
            profile,
            kind,
            hash,
        };
        // SAFETY: a plain-data value copied out of the map.
        unsafe { EXEC_RULES.get(&key) }.copied().unwrap_or(0)
    };
    if rule(EXEC_KEY_NAME, name_hash) == EXEC_DENY {
        return Some(false);
    }
    if rule(EXEC_KEY_UNDECIDED, 0) != 0 {
        return None;
    }
    Some(rule(EXEC_KEY_PATH, hash) == EXEC_ALLOW)
}

/// Whether the network rules of `profile` allow (`direction`, protocol, address, port), trying
/// the exact address, then the generaliser's prefixes, then "any address".
#[inline(always)]
pub fn net_allowed(
    profile: u32,
    direction: u8,
    protocol: u8,
    family: u8,
    addr: [u8; 16],
    port: u16,
) -> bool {
    let prefixes = if family == 4 {
        NET_PREFIXES_V4
    } else {
        NET_PREFIXES_V6
    };
    for prefix_len in prefixes {
        let mut masked = [0u8; 16];
        let mut bit = 0u32;
        for (index, byte) in addr.iter().enumerate() {
            let keep = u32::from(prefix_len).saturating_sub(bit).min(8);
            masked[index] = if keep == 0 {
                0
            } else {
                byte & (0xffu8 << (8 - keep))
            };
            bit += 8;
        }
        let key = NetRuleKey {
            profile,
            direction,
            protocol,
            port,
            family,
            prefix_len,
            _pad: 0,
            addr: masked,
        };
        // SAFETY: a lookup; only presence matters.
        if unsafe { NET_RULES.get(&key) }.is_some() {
            return true;
        }
    }
    false
}

/// What a cgroup `connect4`/`connect6` hook saw of a connect it found known-good: the peer as
/// the caller gave it (sockaddr family, port and address bytes, before any IPv4-mapped
/// canonicalisation) and the rules' generation.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EgressNote {
    family: u16,
    port: [u8; 2],
    generation: u32,
    addr: [u8; 16],
}

/// Known-good connects of judged containers, by thread, from the cgroup connect hooks to the
/// connect's syscall exit (probes/network.rs): the exit recognises its own call by the peer
/// and skips reading the socket. A thread has one connect in flight; the hook writes or clears
/// its note on every judged connect and the exit takes it back. LRU: bounded, and a note
/// whose exit was not traced ages out.
#[map]
static EGRESS_NOTES: LruHashMap<u32, EgressNote> = LruHashMap::with_max_entries(4096, 0);

/// Takes the current thread's note back (see [`EGRESS_NOTES`]), if it was written under the
/// rules in force.
#[inline(always)]
pub fn take_egress_note(tid: u32) -> Option<EgressNote> {
    // SAFETY: a plain-data value copied out of the map.
    let note = unsafe { EGRESS_NOTES.get(&tid) }.copied()?;
    let _ = EGRESS_NOTES.remove(&tid);
    (note.generation == generation()).then_some(note)
}

impl EgressNote {
    /// Whether the caller's sockaddr, read from user memory at `user_addr`, is the peer this
    /// note is about. IPv6 peers with a scope id never match (the kernel does not judge them).
    #[inline(always)]
    pub fn is_for(&self, user_addr: u64) -> bool {
        // SAFETY (both reads): probe reads of user memory; a fault makes them fail.
        let Ok(head) = (unsafe { bpf_probe_read_user(user_addr as *const [u8; 8]) }) else {
            return false;
        };
        if u16::from_ne_bytes([head[0], head[1]]) != self.family || head[2..4] != self.port {
            return false;
        }
        match self.family {
            AF_INET => head[4..8] == self.addr[..4],
            AF_INET6 => {
                // sin6_flowinfo at 4, then sin6_addr at 8 and sin6_scope_id at 24.
                let Ok(tail) = (unsafe { bpf_probe_read_user((user_addr + 8) as *const [u8; 20]) })
                else {
                    return false;
                };
                tail[..16] == self.addr && tail[16..] == [0u8; 4]
            }
            _ => false,
        }
    }
}

/// What a cgroup sock_addr hook decides about a call.
enum SockAddrVerdict {
    /// Not an IPv4/IPv6 TCP or UDP peer or listening port the kernel judges.
    NotJudged,
    /// Known-good, with what a connect hook notes for the call's exit.
    Allowed(EgressNote),
    /// Outside the profile.
    Denied,
}

/// The common part of the cgroup sock_addr programs: 1 lets the call through, 0 makes it fail
/// with EPERM. IPv4/IPv6 TCP and UDP calls of judged containers are judged; only enforce mode
/// refuses them. A connect hook (`notes`) also leaves the thread an [`EgressNote`] when the
/// connect is known-good, and clears any older one otherwise.
#[inline(always)]
fn judge_sock_addr(ctx: &SockAddrContext, direction: u8, family: u8, notes: bool) -> i32 {
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let Some(policy) = policy_of(cgroup_id) else {
        return 1;
    };
    let (tid, pid) = current_ids();
    if is_agent(pid) {
        return 1;
    }
    // SAFETY: the context the kernel gave this program.
    let sock = unsafe { &*ctx.sock_addr };
    let verdict = sock_addr_verdict(sock, direction, family, policy.profile);
    if notes {
        match &verdict {
            SockAddrVerdict::Allowed(note) => {
                let _ = EGRESS_NOTES.insert(&tid, note, 0);
            }
            _ => {
                let _ = EGRESS_NOTES.remove(&tid);
            }
        }
    }
    match verdict {
        SockAddrVerdict::Denied if policy.mode == MODE_ENFORCE => {
            count(Counter::NetworkBlocked);
            0
        }
        _ => 1,
    }
}

/// Judges the peer (egress) or local port (listen) of a sock_addr call against `profile`.
#[inline(always)]
fn sock_addr_verdict(
    sock: &aya_ebpf::bindings::bpf_sock_addr,
    direction: u8,
    family: u8,
    profile: u32,
) -> SockAddrVerdict {
    let protocol = match sock.type_ {
        SOCK_STREAM => IPPROTO_TCP,
        SOCK_DGRAM => IPPROTO_UDP,
        _ => return SockAddrVerdict::NotJudged,
    };
    // Each program reads only the address fields of its own family (the verifier refuses the
    // others).
    let mut addr = [0u8; 16];
    if family == 4 {
        addr[..4].copy_from_slice(&sock.user_ip4.to_ne_bytes());
    } else {
        for (index, word) in sock.user_ip6.iter().enumerate() {
            addr[index * 4..index * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
    }
    // The peer as the caller gave it, for the note; `addr` may be canonicalised below.
    let caller_addr = addr;
    // user_port is in network byte order in the low 16 bits.
    let port_bytes = (sock.user_port as u16).to_ne_bytes();
    let port = u16::from_be_bytes(port_bytes);
    if direction == NET_LISTEN && (protocol != IPPROTO_TCP || port == 0) {
        // Binding a UDP socket or an ephemeral port is not a listen.
        return SockAddrVerdict::NotJudged;
    }
    // An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is the IPv4 peer, as the compiler keys it.
    let caller_family = if family == 4 { AF_INET } else { AF_INET6 };
    let mut family = family;
    if family == 6 && addr[..10] == [0; 10] && addr[10] == 0xff && addr[11] == 0xff {
        addr.copy_within(12..16, 0);
        addr[4..].fill(0);
        family = 4;
    }
    if net_allowed(profile, direction, protocol, family, addr, port) {
        SockAddrVerdict::Allowed(EgressNote {
            family: caller_family,
            port: port_bytes,
            generation: generation(),
            addr: caller_addr,
        })
    } else {
        SockAddrVerdict::Denied
    }
}

#[cgroup_sock_addr(connect4)]
pub fn enforce_connect4(ctx: SockAddrContext) -> i32 {
    judge_sock_addr(&ctx, NET_EGRESS, 4, true)
}

#[cgroup_sock_addr(connect6)]
pub fn enforce_connect6(ctx: SockAddrContext) -> i32 {
    judge_sock_addr(&ctx, NET_EGRESS, 6, true)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn enforce_sendmsg4(ctx: SockAddrContext) -> i32 {
    judge_sock_addr(&ctx, NET_EGRESS, 4, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn enforce_sendmsg6(ctx: SockAddrContext) -> i32 {
    judge_sock_addr(&ctx, NET_EGRESS, 6, false)
}

#[cgroup_sock_addr(bind4)]
pub fn enforce_bind4(ctx: SockAddrContext) -> i32 {
    judge_sock_addr(&ctx, NET_LISTEN, 4, false)
}

#[cgroup_sock_addr(bind6)]
pub fn enforce_bind6(ctx: SockAddrContext) -> i32 {
    judge_sock_addr(&ctx, NET_LISTEN, 6, false)
}

/// Syscalls allowed, per profile number, for the profiles that opted in to killing a process
/// that enters a syscall outside their set (`syscallPolicy: kill`); other profiles have no
/// entry and their syscall deviations are only flagged.
#[map]
static SYSCALL_RULES: HashMap<u32, custos_ebpf::syscall::SyscallBits> =
    HashMap::with_max_entries(custos_ebpf::syscall::SYSCALL_RULES_MAX, 0);

/// Slot 0: how many entries `SYSCALL_RULES` has. While none, the check on every syscall is one
/// array read.
#[map]
static SYSCALL_RULES_IN_USE: Array<u32> = Array::with_max_entries(1, 0);

/// Whether the current task of `cgroup_id` is to be killed for entering the syscall at
/// (`word`, `bit`) of a [`SyscallBits`]: its container is in enforce mode under a profile that
/// opted in, whose set lacks it. The agent and the container runtime are never judged.
#[inline(always)]
pub fn syscall_denied(cgroup_id: u64, word: usize, bit: u64) -> bool {
    if SYSCALL_RULES_IN_USE.get(0).copied().unwrap_or(0) == 0 {
        return false;
    }
    // SAFETY: plain-data values read in place.
    let Some(policy) = (unsafe { POLICY_CGROUPS.get(&cgroup_id) }) else {
        return false;
    };
    if policy.mode != MODE_ENFORCE {
        return false;
    }
    let Some(allowed) = (unsafe { SYSCALL_RULES.get(&policy.profile) }) else {
        return false;
    };
    if allowed.words[word & (custos_ebpf::syscall::SYSCALL_WORDS - 1)] & bit != 0 {
        return false;
    }
    !is_agent(current_ids().1) && !is_container_runtime()
}
