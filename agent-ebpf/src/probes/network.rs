//! Network sensor: outbound `connect`, inbound `listen` and `accept`/`accept4`.
//!
//! Each call is traced at its exit only, where its arguments (the fd, and for connect the
//! address the caller gave, still in its memory) are read back from the registers saved at
//! entry (probes/regs.rs) and sent with the result. The socket itself is read at exit through the fd table
//! (`task->files->fdt->fd[fd]->private_data` is the `struct socket`), at offsets from BTF: its
//! type and protocol, and the addresses the kernel keeps in `sock_common` (the listening
//! address, the peer of an accepted connection, the local side of a connect).
//!
//! Only traced cgroups are followed, and identical actions of one cgroup are sent once per
//! repeat window (`check_repeat`), the suppressed ones counted in the next record.
//!
//! For a container judged in the kernel (monitor or enforce), an IP connect or listen its
//! profile allows is decided here and never sent (`known_good`), before the repeat check: a
//! known-good action neither takes a slot in the repeat map nor adds to the repeat count of an
//! action that is sent. Accepts and unix sockets are not judged in the kernel.
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_task, bpf_probe_read_kernel,
        generated::{bpf_probe_read_kernel as probe_read_kernel_raw, bpf_probe_read_user},
    },
    macros::{map, tracepoint},
    maps::PerCpuArray,
    programs::TracePointContext,
};
use custos_ebpf::{
    Counter, EventKind,
    net::{AF_INET, AF_INET6, AF_UNIX, NET_ADDR_LEN, NetAddr, NetRecord},
    policy::{NET_EGRESS, NET_LISTEN},
};

use super::{
    common::{
        ACTIVITY, Repeat, check_repeat, config, count, current_ids, fill_header, hash_bytes,
        is_agent, is_traced, syscall_exit, wakeup_flags,
    },
    policy::{net_allowed, policy_of, take_egress_note},
    regs::syscall_regs,
};

/// One record per CPU to build in: it is too large for the stack.
#[map]
static NET_SCRATCH: PerCpuArray<NetRecord> = PerCpuArray::with_max_entries(1, 0);

const EPERM: i64 = 1;
const EBADF: i64 = 9;
const EAGAIN: i64 = 11;
const ENOTSOCK: i64 = 88;
/// `sizeof(struct sockaddr_un)`: the most a unix address can use.
const SOCKADDR_UN_LEN: u32 = 110;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const SOCK_RAW: u32 = 3;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;

/// One program for the exits of connect, sendto, listen, accept and accept4: which one it is
/// comes from the exit record's syscall number.
#[tracepoint]
pub fn sys_exit_net(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

// x86-64 syscall numbers.
const NR_CONNECT: u64 = 42;
const NR_ACCEPT: u64 = 43;
const NR_SENDTO: u64 = 44;
const NR_LISTEN: u64 = 50;
const NR_ACCEPT4: u64 = 288;

/// A call of a traced cgroup, at its exit: which kind, its socket fd and, for connect and
/// sendto, where the caller's peer address is (`(pointer, length)` from the saved registers;
/// probes/regs.rs).
#[inline(always)]
fn try_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let (tid, pid) = current_ids();
    if is_agent(pid) || !is_traced(unsafe { bpf_get_current_cgroup_id() }) {
        return Ok(());
    }
    let (nr, ret) = syscall_exit(ctx);
    let Some(regs) = syscall_regs(unsafe { bpf_get_current_task() }, nr) else {
        count(Counter::NetArgsLost);
        return Ok(());
    };
    let (kind, address) = match nr {
        NR_CONNECT => (EventKind::Connect, Some((regs.arg(1), regs.arg(2)))),
        // sendto(fd, buf, len, flags, dest_addr, addrlen): with an address, an unconnected
        // datagram send reaches a peer as a connect would (musl's DNS resolver does this), so
        // it is reported as a connect to that peer: learned as an egress peer, judged by
        // `sendmsg4/6`. Without one (every TCP send) it is not an action.
        NR_SENDTO if regs.arg(4) != 0 => (EventKind::Connect, Some((regs.arg(4), regs.arg(5)))),
        NR_LISTEN => (EventKind::Listen, None),
        NR_ACCEPT | NR_ACCEPT4 => (EventKind::Accept, None),
        _ => return Ok(()),
    };
    // A non-blocking accept with nothing queued is not an action.
    if matches!(kind, EventKind::Accept) && ret == -EAGAIN {
        return Ok(());
    }
    // A known-good connect the cgroup hook already judged: nothing to read or send.
    if nr == NR_CONNECT
        && let Some(note) = take_egress_note(tid)
        && ret != -EPERM
        && note.is_for(regs.arg(1))
    {
        count(Counter::AllowedInKernel);
        return Ok(());
    }
    let fd = regs.arg(0) as i32;
    emit(kind, tid, pid, fd, address, ret)
}

/// Reads the peer address the caller gave (user memory) into `addr`; an unreadable one is left
/// empty.
#[inline(always)]
fn read_user_address(addr: &mut NetAddr, user_addr: u64, addr_len: u64) {
    // One volatile read: `addr_len` lives in the registers read onto the stack, and LLVM would
    // otherwise load it again from there for the call, after the checks, as a value 6.1's
    // verifier knows no bounds of ("R2 min value is negative").
    let addr_len = unsafe { core::ptr::read_volatile(&addr_len) } as i64;
    let len = if addr_len < 0 {
        0
    } else if addr_len as usize > NET_ADDR_LEN {
        NET_ADDR_LEN as u32
    } else {
        addr_len as u32
    };
    // SAFETY: a probe read into a buffer of NET_ADDR_LEN bytes, `len` <= NET_ADDR_LEN.
    let read = unsafe {
        bpf_probe_read_user(
            addr.bytes.as_mut_ptr().cast(),
            len,
            user_addr as *const core::ffi::c_void,
        )
    };
    addr.len = if read == 0 { len } else { 0 };
}

#[inline(always)]
fn emit(
    kind: EventKind,
    tid: u32,
    pid: u32,
    fd: i32,
    address: Option<(u64, u64)>,
    ret: i64,
) -> Result<(), i64> {
    let record = NET_SCRATCH.get_ptr_mut(0).ok_or(0i64)?;
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program.
    let record = unsafe { &mut *record };
    record.remote.len = 0;
    record.local.len = 0;
    record.sock_type = 0;
    record.protocol = 0;
    record.result = ret;

    // The socket the call was about: for a successful accept, the new connection. When the fd
    // was not a socket at all, there is nothing to read.
    let sock_fd = if matches!(kind, EventKind::Accept) && ret >= 0 {
        ret as i32
    } else {
        fd
    };
    let sk = if ret == -EBADF || ret == -ENOTSOCK {
        0
    } else {
        match socket_of_fd(sock_fd) {
            Some((socket, sk)) => {
                let offsets = &config().offsets;
                record.sock_type =
                    u32::from(read::<u16>(socket, offsets.net_socket_type).unwrap_or(0));
                record.protocol = u32::from(read::<u16>(sk, offsets.net_sk_protocol).unwrap_or(0));
                sk
            }
            None => 0,
        }
    };

    match kind {
        EventKind::Connect => {
            if let Some((user_addr, addr_len)) = address {
                read_user_address(&mut record.remote, user_addr, addr_len);
            }
            sock_address(sk, false, &mut record.local);
        }
        EventKind::Listen => sock_address(sk, false, &mut record.remote),
        _ => {
            if ret >= 0 {
                sock_address(sk, true, &mut record.remote);
            }
            sock_address(sk, false, &mut record.local);
        }
    }

    let family = family_of(&record.remote).unwrap_or(family_of(&record.local).unwrap_or(0));
    // Only IP and unix sockets; a connect to AF_UNSPEC is a UDP "disconnect", not an action.
    if family != AF_INET && family != AF_INET6 && family != AF_UNIX {
        return Ok(());
    }
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if let Some(policy) = policy_of(cgroup_id)
        && known_good(kind, record, policy.profile)
    {
        count(Counter::AllowedInKernel);
        return Ok(());
    }
    let what = repeat_key(kind, record);
    let Repeat::Send { repeats } = check_repeat(cgroup_id, kind, what) else {
        return Ok(());
    };
    record.repeats = repeats;
    fill_header(&mut record.header, kind, tid, pid);
    match ACTIVITY.output::<NetRecord>(
        &*record,
        wakeup_flags(&ACTIVITY, size_of::<NetRecord>() as u64),
    ) {
        Ok(()) => count(Counter::ActivitySent),
        Err(_) => count(Counter::ActivityDropped),
    }
    Ok(())
}

/// Reads a `T` at `base + offset` of kernel memory; `None` for a NULL base or a failed read.
#[inline(always)]
fn read<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: a probe read; a bad address makes the helper fail, not fault.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.ok()
}

/// `(struct socket *, struct sock *)` of the current task's `fd`.
#[inline(always)]
fn socket_of_fd(fd: i32) -> Option<(u64, u64)> {
    if fd < 0 {
        return None;
    }
    let offsets = &config().offsets;
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(task, offsets.net_task_files)?;
    let fdt: u64 = read(files, offsets.net_files_fdt)?;
    let max_fds: u32 = read(fdt, offsets.net_fdt_max_fds)?;
    if fd as u32 >= max_fds {
        return None;
    }
    let fd_array: u64 = read(fdt, offsets.net_fdt_fd)?;
    let file: u64 = read(fd_array, fd as u32 * 8)?;
    let socket: u64 = read(file, offsets.net_file_private_data)?;
    let sk: u64 = read(socket, offsets.net_socket_sk)?;
    if sk == 0 {
        return None;
    }
    Some((socket, sk))
}

/// Writes the local (`peer == false`) or peer address of `sk` into `out` as a sockaddr; leaves
/// `out.len` 0 when it cannot be read. Unix peers are not known: just the family.
#[inline(always)]
fn sock_address(sk: u64, peer: bool, out: &mut NetAddr) {
    out.len = 0;
    let offsets = &config().offsets;
    let Some(family) = read::<u16>(sk, offsets.net_skc_family) else {
        return;
    };
    out.bytes[0..2].copy_from_slice(&family.to_ne_bytes());
    if family == AF_INET || family == AF_INET6 {
        // Ports go into the sockaddr in network order: skc_dport already is, skc_num is not.
        let port = if peer {
            read::<u16>(sk, offsets.net_skc_dport).unwrap_or(0)
        } else {
            read::<u16>(sk, offsets.net_skc_num).unwrap_or(0).to_be()
        };
        out.bytes[2..4].copy_from_slice(&port.to_ne_bytes());
        if family == AF_INET {
            let offset = if peer {
                offsets.net_skc_daddr
            } else {
                offsets.net_skc_rcv_saddr
            };
            let addr = read::<u32>(sk, offset).unwrap_or(0);
            out.bytes[4..8].copy_from_slice(&addr.to_ne_bytes());
            out.bytes[8..16].copy_from_slice(&[0u8; 8]);
            out.len = 16;
        } else {
            let offset = if peer {
                offsets.net_skc_v6_daddr
            } else {
                offsets.net_skc_v6_rcv_saddr
            };
            let addr = read::<[u8; 16]>(sk, offset).unwrap_or([0u8; 16]);
            out.bytes[4..8].copy_from_slice(&[0u8; 4]);
            out.bytes[8..24].copy_from_slice(&addr);
            out.bytes[24..28].copy_from_slice(&[0u8; 4]);
            out.len = 28;
        }
    } else if family == AF_UNIX {
        out.len = 2;
        if peer {
            return;
        }
        // `unix_sock.addr`: NULL while unbound; else `len` bytes of sockaddr_un in `name`.
        let Some(addr) = read::<u64>(sk, offsets.net_unix_addr) else {
            return;
        };
        // Read unsigned and clamped in one step: a signed length checked for < 0 and spilled to
        // the stack loses its bound on 6.1's verifier ("R2 min value is negative").
        let Some(len) = read::<u32>(addr, offsets.net_unix_address_len) else {
            return;
        };
        let len = len.min(SOCKADDR_UN_LEN);
        // SAFETY: a probe read of at most SOCKADDR_UN_LEN (< NET_ADDR_LEN) bytes into `bytes`.
        let read = unsafe {
            probe_read_kernel_raw(
                out.bytes.as_mut_ptr().cast(),
                len,
                (addr + u64::from(offsets.net_unix_address_name)) as *const core::ffi::c_void,
            )
        };
        if read == 0 && len >= 2 {
            out.len = len;
        }
    }
}

#[inline(always)]
fn family_of(addr: &NetAddr) -> Option<u16> {
    if addr.len < 2 {
        return None;
    }
    Some(u16::from_ne_bytes([addr.bytes[0], addr.bytes[1]]))
}

/// Whether `profile` allows this IP connect (egress) or listen, keyed the way
/// `enforcement::compile` keys `NET_RULES`: protocol as the user-space decoder names it
/// (`protocol_name`), address bytes in network order with IPv4-mapped IPv6 addresses as IPv4
/// (`canonical_ip`), port in host order. What the kernel cannot key exactly is not known-good
/// and goes to user space: accepts, unix and raw sockets, unreadable addresses, IPv6 addresses
/// with a scope id (user space never matches them against an address rule), and a connect that
/// failed with EPERM (in enforce mode the cgroup program refused it: the judge reports it as
/// `blocked`).
#[inline(always)]
fn known_good(kind: EventKind, record: &NetRecord, profile: u32) -> bool {
    let direction = match kind {
        EventKind::Connect if record.result != -EPERM => NET_EGRESS,
        EventKind::Listen => NET_LISTEN,
        _ => return false,
    };
    let protocol = match (record.sock_type & 0xf, record.protocol) {
        (SOCK_RAW, _) => return false,
        (_, IPPROTO_TCP) | (SOCK_STREAM, 0) => IPPROTO_TCP as u8,
        (_, IPPROTO_UDP) | (SOCK_DGRAM, 0) => IPPROTO_UDP as u8,
        _ => return false,
    };
    let sockaddr = &record.remote;
    let bytes = &sockaddr.bytes;
    let port = u16::from_be_bytes([bytes[2], bytes[3]]);
    let mut addr = [0u8; 16];
    let family = match family_of(sockaddr) {
        Some(AF_INET) if sockaddr.len >= 8 => {
            addr[..4].copy_from_slice(&bytes[4..8]);
            4
        }
        Some(AF_INET6) if sockaddr.len >= 24 => {
            let scoped = sockaddr.len >= 28 && bytes[24..28] != [0u8; 4];
            if scoped {
                return false;
            }
            let mapped = bytes[8..18] == [0u8; 10] && bytes[18] == 0xff && bytes[19] == 0xff;
            if mapped {
                addr[..4].copy_from_slice(&bytes[20..24]);
                4
            } else {
                addr.copy_from_slice(&bytes[8..24]);
                6
            }
        }
        _ => return false,
    };
    net_allowed(profile, direction, protocol, family, addr, port)
}

/// What makes two calls identical. connect: protocol, family, peer address and port; listen:
/// the local address and port; accept: the peer address and the local port (not the peer's
/// random port). The result's sign (success or which error) is part of it: a refused connect
/// followed by one that works are two different things.
#[inline(always)]
fn repeat_key(kind: EventKind, record: &NetRecord) -> u64 {
    let (addr, with_port) = match kind {
        EventKind::Accept => (&record.remote, false),
        _ => (&record.remote, true),
    };
    let family = family_of(addr).unwrap_or(0);
    let mut hash = match family {
        AF_INET => hash_bytes(&addr.bytes[4..8], 4),
        AF_INET6 => hash_bytes(&addr.bytes[8..24], 16),
        AF_UNIX => hash_bytes(&addr.bytes[2..], addr.len.saturating_sub(2) as usize),
        _ => 0,
    };
    let port = if with_port {
        u16::from_ne_bytes([addr.bytes[2], addr.bytes[3]])
    } else {
        // accept: the listening port.
        u16::from_ne_bytes([record.local.bytes[2], record.local.bytes[3]])
    };
    // accept on a unix socket: the listening path stands in for the port.
    if matches!(kind, EventKind::Accept) && family_of(&record.local) == Some(AF_UNIX) {
        hash ^= hash_bytes(
            &record.local.bytes[2..],
            record.local.len.saturating_sub(2) as usize,
        );
    }
    let result = if matches!(kind, EventKind::Accept) && record.result >= 0 {
        0
    } else {
        record.result as u64
    };
    for word in [
        u64::from(family) | (u64::from(port) << 16) | (u64::from(record.protocol) << 32),
        u64::from(record.sock_type),
        result,
    ] {
        hash ^= word;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}
