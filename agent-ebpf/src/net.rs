//! Records of the network sensor (connect, listen, accept).
//!
//! Addresses travel as raw `struct sockaddr` bytes (`sockaddr_in`, `sockaddr_in6` or
//! `sockaddr_un`, in the kernel's own layout and byte order), whether they come from the
//! caller's memory (connect) or were rebuilt by the probe from the kernel's socket (listen,
//! accept, and the local side of a connect). User space has one decoder for all of them.
use crate::RecordHeader;

/// Bytes kept of a socket address: `sizeof(struct sockaddr_un)` is 110, rounded up.
pub const NET_ADDR_LEN: usize = 112;

/// `AF_UNIX`.
pub const AF_UNIX: u16 = 1;
/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;

/// A socket address as the kernel lays it out.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NetAddr {
    /// Bytes used in `bytes` (the addrlen given to connect, or the size of the structure the
    /// probe built); 0 when unknown.
    pub len: u32,
    pub _pad: u32,
    /// Starts with the family (`u16`, host order), as every `struct sockaddr`.
    pub bytes: [u8; NET_ADDR_LEN],
}

/// A connect, listen or accept (the kind is in the header), sent at the syscall's exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NetRecord {
    pub header: RecordHeader,
    /// Identical actions of this cgroup suppressed since the last one sent.
    pub repeats: u64,
    /// The syscall's return value: 0 or the new fd, or -errno.
    pub result: i64,
    /// `socket.type` (`SOCK_STREAM` = 1, `SOCK_DGRAM` = 2, `SOCK_RAW` = 3, `SOCK_SEQPACKET` = 5);
    /// 0 when the socket could not be read.
    pub sock_type: u32,
    /// `sock.sk_protocol` (`IPPROTO_TCP` = 6, `IPPROTO_UDP` = 17, ...; 0 for unix sockets).
    pub protocol: u32,
    /// connect: the address given; accept: the peer; listen: the bound local address.
    pub remote: NetAddr,
    /// The local side, when known (accept: the listening address; connect: the bound one).
    pub local: NetAddr,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]`, integers and integer arrays only, explicit padding.
    unsafe impl aya::Pod for super::NetAddr {}
    unsafe impl aya::Pod for super::NetRecord {}
}
