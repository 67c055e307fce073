//! Decoding of the network sensor's records: outbound `connect`, inbound `listen` and
//! `accept`/`accept4` (kernel side: `agent-ebpf/src/probes/network.rs`).
//!
//! The kernel sends addresses as raw `struct sockaddr` bytes (`sockaddr_in`, `sockaddr_in6`,
//! `sockaddr_un`); they are turned into text here: "127.0.0.1", "::1", a unix socket's path, or
//! "@name" for an abstract unix name.
use std::net::{Ipv4Addr, Ipv6Addr};

use custos_ebpf::{
    EventKind,
    net::{AF_INET, AF_INET6, AF_UNIX, NetAddr, NetRecord},
};

use crate::api::proto;

use super::records::{DecodeError, RecordHeader, c_string, decode_header, read_struct};

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const SOCK_RAW: u32 = 3;
const SOCK_SEQPACKET: u32 = 5;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;

/// Which call a [`NetworkRecord`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetOperation {
    Connect,
    Listen,
    Accept,
}

/// A decoded socket address.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SocketAddress {
    /// "ipv4", "ipv6" or "unix".
    pub family: &'static str,
    /// The address as text; for unix sockets the path, "@name" when abstract, "" unnamed.
    pub address: String,
    /// Host order; 0 for unix sockets.
    pub port: u16,
}

/// A connect, listen or accept as the kernel saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRecord {
    pub header: RecordHeader,
    pub operation: NetOperation,
    /// "tcp", "udp", "unix-stream", "unix-dgram", "unix-seqpacket", "raw" or "other".
    pub protocol: &'static str,
    /// connect: the address given; accept: the peer; listen: the bound local address. `None`
    /// when unknown (e.g. the caller's address could not be read).
    pub remote: Option<SocketAddress>,
    /// The local side when known (accept: the listening address; connect: the bound one).
    pub local: Option<SocketAddress>,
    /// 0 or the new fd (accept), or -errno.
    pub result: i32,
    /// Identical actions of the same cgroup suppressed in the kernel since the last one sent.
    pub repeats: u64,
}

impl NetworkRecord {
    /// "ipv4", "ipv6" or "unix": of the address reported, else of the local side.
    pub fn family(&self) -> &'static str {
        self.remote
            .as_ref()
            .or(self.local.as_ref())
            .map_or("", |address| address.family)
    }
}

/// The API's view of a network record.
pub fn network_event(record: &NetworkRecord) -> proto::NetworkEvent {
    let operation = match record.operation {
        NetOperation::Connect => proto::NetworkOperation::Connect,
        NetOperation::Listen => proto::NetworkOperation::Listen,
        NetOperation::Accept => proto::NetworkOperation::Accept,
    };
    let remote = record.remote.clone().unwrap_or_default();
    let local = record.local.clone().unwrap_or_default();
    proto::NetworkEvent {
        operation: operation as i32,
        protocol: record.protocol.into(),
        family: record.family().into(),
        address: remote.address,
        port: remote.port.into(),
        local_address: local.address,
        local_port: local.port.into(),
        result: record.result,
    }
}

/// Decodes a record whose header says `kind` (connect, listen or accept).
pub fn decode(kind: EventKind, bytes: &[u8]) -> Result<NetworkRecord, DecodeError> {
    let raw: NetRecord = read_struct(bytes)?;
    let operation = match kind {
        EventKind::Connect => NetOperation::Connect,
        EventKind::Listen => NetOperation::Listen,
        EventKind::Accept => NetOperation::Accept,
        other => {
            return Err(DecodeError::UnknownKind { kind: other as u32 });
        }
    };
    let remote = socket_address(&raw.remote);
    // An IP socket with no local port is not bound (e.g. a connect refused at once): unknown.
    let local =
        socket_address(&raw.local).filter(|local| local.family == "unix" || local.port != 0);
    let family = raw_family(&raw.remote)
        .filter(|_| remote.is_some())
        .or(raw_family(&raw.local).filter(|_| local.is_some()))
        .unwrap_or(0);
    Ok(NetworkRecord {
        header: decode_header(&raw.header),
        operation,
        protocol: protocol_name(family, raw.sock_type, raw.protocol),
        remote,
        local,
        // The kernel's return value is a long holding an int (fd or -errno).
        result: i32::try_from(raw.result).unwrap_or(i32::MIN),
        repeats: raw.repeats,
    })
}

fn raw_family(addr: &NetAddr) -> Option<u16> {
    if addr.len < 2 {
        return None;
    }
    Some(u16::from_ne_bytes([addr.bytes[0], addr.bytes[1]]))
}

/// Decodes a `struct sockaddr` of an IP or unix socket; `None` for anything else or too short.
pub fn socket_address(addr: &NetAddr) -> Option<SocketAddress> {
    let len = (addr.len as usize).min(addr.bytes.len());
    let bytes = &addr.bytes[..len];
    let family = raw_family(addr)?;
    let port = |bytes: &[u8]| u16::from_be_bytes([bytes[2], bytes[3]]);
    match family {
        AF_INET if len >= 8 => {
            let ip = Ipv4Addr::new(bytes[4], bytes[5], bytes[6], bytes[7]);
            Some(SocketAddress {
                family: "ipv4",
                address: ip.to_string(),
                port: port(bytes),
            })
        }
        AF_INET6 if len >= 24 => {
            let octets: [u8; 16] = bytes[8..24].try_into().ok()?;
            let ip = Ipv6Addr::from(octets);
            let scope = bytes
                .get(24..28)
                .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
            let address = if scope == 0 {
                ip.to_string()
            } else {
                format!("{ip}%{scope}")
            };
            Some(SocketAddress {
                family: "ipv6",
                address,
                port: port(bytes),
            })
        }
        AF_UNIX => {
            let path = &bytes[2..];
            let address = match path.split_first() {
                // Abstract: a leading NUL, then exactly the remaining bytes (NULs included).
                Some((0, name)) => format!("@{}", String::from_utf8_lossy(name)),
                // A path, NUL-terminated or not.
                Some(_) => c_string(path),
                // Unnamed (unbound) socket.
                None => String::new(),
            };
            Some(SocketAddress {
                family: "unix",
                address,
                port: 0,
            })
        }
        _ => None,
    }
}

/// The protocol as the API names it.
pub fn protocol_name(family: u16, sock_type: u32, protocol: u32) -> &'static str {
    // socket.type may carry no flags, but mask like the kernel's SOCK_TYPE_MASK anyway.
    let sock_type = sock_type & 0xf;
    match family {
        AF_UNIX => match sock_type {
            SOCK_STREAM => "unix-stream",
            SOCK_DGRAM => "unix-dgram",
            SOCK_SEQPACKET => "unix-seqpacket",
            _ => "other",
        },
        AF_INET | AF_INET6 => match (sock_type, protocol) {
            (SOCK_RAW, _) => "raw",
            (_, IPPROTO_TCP) | (SOCK_STREAM, 0) => "tcp",
            (_, IPPROTO_UDP) | (SOCK_DGRAM, 0) => "udp",
            _ => "other",
        },
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use custos_ebpf::{COMM_LEN, net::NET_ADDR_LEN};

    use super::*;
    use crate::sensors::KernelRecord;

    fn as_bytes<T: Copy>(value: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain-old-data value.
        unsafe {
            std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    fn addr(bytes: &[u8]) -> NetAddr {
        let mut addr = NetAddr {
            len: bytes.len() as u32,
            _pad: 0,
            bytes: [0xAA; NET_ADDR_LEN],
        };
        addr.bytes[..bytes.len()].copy_from_slice(bytes);
        addr
    }

    fn v4(ip: [u8; 4], port: u16) -> NetAddr {
        let mut bytes = vec![];
        bytes.extend_from_slice(&AF_INET.to_ne_bytes());
        bytes.extend_from_slice(&port.to_be_bytes());
        bytes.extend_from_slice(&ip);
        bytes.extend_from_slice(&[0; 8]);
        addr(&bytes)
    }

    fn v6(ip: Ipv6Addr, port: u16) -> NetAddr {
        let mut bytes = vec![];
        bytes.extend_from_slice(&AF_INET6.to_ne_bytes());
        bytes.extend_from_slice(&port.to_be_bytes());
        bytes.extend_from_slice(&[0; 4]);
        bytes.extend_from_slice(&ip.octets());
        bytes.extend_from_slice(&[0; 4]);
        addr(&bytes)
    }

    fn unix(path: &[u8]) -> NetAddr {
        let mut bytes = AF_UNIX.to_ne_bytes().to_vec();
        bytes.extend_from_slice(path);
        addr(&bytes)
    }

    fn record(kind: EventKind, remote: NetAddr, local: NetAddr) -> NetRecord {
        let mut comm = [0u8; COMM_LEN];
        comm[..2].copy_from_slice(b"nc");
        NetRecord {
            header: custos_ebpf::RecordHeader {
                kind: kind as u32,
                tid: 5,
                pid: 5,
                ppid: 1,
                uid: 0,
                gid: 0,
                boot_ns: 1,
                cgroup_id: 9,
                comm,
            },
            repeats: 3,
            result: 0,
            sock_type: SOCK_STREAM,
            protocol: IPPROTO_TCP,
            remote,
            local,
        }
    }

    fn decode_network(raw: &NetRecord) -> NetworkRecord {
        match KernelRecord::decode(&as_bytes(raw)).expect("decodes") {
            KernelRecord::Network(network) => network,
            other => panic!("not a network record: {other:?}"),
        }
    }

    #[test]
    fn decodes_an_ipv4_tcp_connect_with_its_local_side() {
        let mut raw = record(
            EventKind::Connect,
            v4([127, 0, 0, 1], 8080),
            v4([127, 0, 0, 1], 40000),
        );
        raw.result = -115;
        let network = decode_network(&raw);
        assert_eq!(network.operation, NetOperation::Connect);
        assert_eq!(network.protocol, "tcp");
        assert_eq!(network.family(), "ipv4");
        assert_eq!(
            network.remote,
            Some(SocketAddress {
                family: "ipv4",
                address: "127.0.0.1".into(),
                port: 8080
            })
        );
        assert_eq!(network.local.as_ref().map(|l| l.port), Some(40000));
        assert_eq!(network.result, -115);
        assert_eq!(network.repeats, 3);
        assert_eq!(network.header.comm, "nc");
    }

    #[test]
    fn decodes_an_ipv6_udp_accept_and_listen() {
        let mut raw = record(
            EventKind::Accept,
            v6(Ipv6Addr::LOCALHOST, 51000),
            v6(Ipv6Addr::LOCALHOST, 9000),
        );
        raw.sock_type = SOCK_DGRAM;
        raw.protocol = IPPROTO_UDP;
        raw.result = 4;
        let network = decode_network(&raw);
        assert_eq!(network.operation, NetOperation::Accept);
        assert_eq!(network.protocol, "udp");
        assert_eq!(network.family(), "ipv6");
        let remote = network.remote.unwrap();
        assert_eq!((remote.address.as_str(), remote.port), ("::1", 51000));
        assert_eq!(network.local.unwrap().port, 9000);
        assert_eq!(network.result, 4);

        let listen = decode_network(&record(
            EventKind::Listen,
            v6(Ipv6Addr::UNSPECIFIED, 80),
            addr(&[]),
        ));
        assert_eq!(listen.operation, NetOperation::Listen);
        assert_eq!(listen.remote.unwrap().address, "::");
        assert_eq!(listen.local, None);
    }

    #[test]
    fn decodes_unix_paths_abstract_names_and_unnamed_sockets() {
        let mut raw = record(EventKind::Connect, unix(b"/run/app.sock\0"), addr(&[]));
        raw.protocol = 0;
        let network = decode_network(&raw);
        assert_eq!(network.protocol, "unix-stream");
        assert_eq!(network.family(), "unix");
        assert_eq!(network.remote.unwrap().address, "/run/app.sock");

        // Path given without its NUL, addrlen exact.
        let path = socket_address(&unix(b"/tmp/x")).unwrap();
        assert_eq!(path.address, "/tmp/x");
        let abstract_name = socket_address(&unix(b"\0custos-test")).unwrap();
        assert_eq!(abstract_name.address, "@custos-test");
        let unnamed = socket_address(&unix(b"")).unwrap();
        assert_eq!((unnamed.family, unnamed.address.as_str()), ("unix", ""));

        let mut dgram = record(EventKind::Connect, unix(b"/dev/log"), addr(&[]));
        dgram.sock_type = SOCK_DGRAM;
        dgram.protocol = 0;
        assert_eq!(decode_network(&dgram).protocol, "unix-dgram");
    }

    #[test]
    fn short_or_unknown_addresses_are_none_not_garbage() {
        let mut short = v4([10, 0, 0, 1], 1);
        short.len = 6;
        assert_eq!(socket_address(&short), None);
        let mut huge = v4([10, 0, 0, 1], 1);
        huge.len = u32::MAX;
        assert_eq!(socket_address(&huge).unwrap().address, "10.0.0.1");
        assert_eq!(socket_address(&addr(&[16, 0, 0, 0])), None);
        assert_eq!(socket_address(&addr(&[])), None);
    }

    #[test]
    fn protocol_names() {
        assert_eq!(protocol_name(AF_INET, SOCK_STREAM, IPPROTO_TCP), "tcp");
        assert_eq!(protocol_name(AF_INET6, SOCK_DGRAM, IPPROTO_UDP), "udp");
        assert_eq!(protocol_name(AF_INET, SOCK_RAW, 1), "raw");
        assert_eq!(protocol_name(AF_INET, SOCK_STREAM, 132), "other");
        assert_eq!(protocol_name(AF_UNIX, SOCK_SEQPACKET, 0), "unix-seqpacket");
    }

    #[test]
    fn short_records_are_errors() {
        let raw = record(EventKind::Listen, v4([0; 4], 80), addr(&[]));
        let bytes = as_bytes(&raw);
        assert!(matches!(
            KernelRecord::decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::TooShort { .. })
        ));
    }
}
