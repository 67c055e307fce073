//! Patterns a profile is made of: path globs, IP networks and peers.
//!
//! A profile never stores raw strings it would have to interpret later: every entry is one of
//! the validated types here, so a profile loaded from disk or imported from YAML matches the
//! same way as one learned from events. The matching rules are deliberately narrow, because
//! every wildcard widens what a compromised workload may do unnoticed:
//!
//! - `*` matches one or more characters **within one path segment**; it never matches `/`.
//!   `/tmp/*` allows `/tmp/a` but not `/tmp/a/b`; `/tmp/tmp.*` allows `/tmp/tmp.Zq81p` but not
//!   `/tmp/other`. There is no `**` and no `?`: a recursive wildcard is never learned and is
//!   rejected on import.
//! - A network is an address and a prefix length (`10.1.0.0/16`), with no host bits set.

use std::cmp::Ordering;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a pattern, network or peer was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("path pattern `{pattern}` must be absolute (start with `/`)")]
    NotAbsolute { pattern: String },
    #[error("path pattern `{pattern}` has an empty segment (`//` or a trailing `/`)")]
    EmptySegment { pattern: String },
    #[error("path pattern `{pattern}` has a `.` or `..` segment; paths must be canonical")]
    DotSegment { pattern: String },
    #[error(
        "path pattern `{pattern}` uses `**`; only `*` (one or more characters within one \
         segment) is supported"
    )]
    RecursiveWildcard { pattern: String },
    #[error("path pattern `{pattern}` contains a control character")]
    ControlCharacter { pattern: String },
    #[error("`{text}` is not an IP network (`address/prefix`)")]
    InvalidNetwork { text: String },
    #[error("network `{text}` has a prefix longer than {max} bits")]
    PrefixTooLong { text: String, max: u8 },
    #[error("network `{text}` has host bits set; did you mean `{suggestion}`?")]
    HostBitsSet { text: String, suggestion: String },
    #[error(
        "peer `{text}` is neither an IP address, a network, a unix socket path (`/...` or \
         `@...`) nor a host name"
    )]
    InvalidPeer { text: String },
}

/// Deserialises a string and validates it *inside* the visitor, so that a format which tracks
/// positions (YAML) reports the error at the offending scalar rather than at the enclosing
/// mapping.
pub(crate) fn deserialize_str_with<'de, D, T, E, F>(
    deserializer: D,
    expecting: &'static str,
    validate: F,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    E: fmt::Display,
    F: FnOnce(&str) -> Result<T, E>,
{
    struct Visit<F>(F, &'static str);
    impl<'de, T, E: fmt::Display, F: FnOnce(&str) -> Result<T, E>> serde::de::Visitor<'de>
        for Visit<F>
    {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.1)
        }
        fn visit_str<Er: serde::de::Error>(self, v: &str) -> Result<T, Er> {
            (self.0)(v).map_err(Er::custom)
        }
    }
    deserializer.deserialize_str(Visit(validate, expecting))
}

/// Matches one path segment against a segment pattern in which `*` stands for one or more
/// characters. Iterative with backtracking to the last star: linear in practice, no recursion.
fn segment_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    // Position of the last star in the pattern and the text position its match ends at.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            // A star must consume at least one character.
            star = Some((p, t + 1));
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
            if t > text.len() {
                return false;
            }
        } else {
            return false;
        }
    }
    // Leftover pattern (including a star with nothing left to consume) means no match.
    p == pattern.len()
}

/// Matches `text` against `pattern` segment by segment (split on `/`); both must have the same
/// number of segments, so `*` never spans a `/`.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    if !pattern.contains('*') {
        return pattern == text;
    }
    let mut ps = pattern.split('/');
    let mut ts = text.split('/');
    loop {
        match (ps.next(), ts.next()) {
            (None, None) => return true,
            (Some(p), Some(t)) => {
                if !segment_match(p.as_bytes(), t.as_bytes()) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// A validated absolute path pattern: canonical segments, `*` within a segment only.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PathPattern(String);

impl PathPattern {
    /// Parses and validates a pattern as written by a person (import) or stored on disk.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let pattern = || text.to_owned();
        if text.chars().any(char::is_control) {
            return Err(PatternError::ControlCharacter { pattern: pattern() });
        }
        if !text.starts_with('/') {
            return Err(PatternError::NotAbsolute { pattern: pattern() });
        }
        if text == "/" {
            return Ok(Self(pattern()));
        }
        for segment in text[1..].split('/') {
            if segment.is_empty() {
                return Err(PatternError::EmptySegment { pattern: pattern() });
            }
            if segment == "." || segment == ".." {
                return Err(PatternError::DotSegment { pattern: pattern() });
            }
            if segment.contains("**") {
                return Err(PatternError::RecursiveWildcard { pattern: pattern() });
            }
        }
        Ok(Self(pattern()))
    }

    /// Builds a pattern from a path as observed, normalising it lexically (duplicate and
    /// trailing slashes, `.` and `..`) instead of rejecting it. Returns `None` for an empty or
    /// relative path, which cannot be matched meaningfully.
    pub fn from_observed(path: &str) -> Option<Self> {
        if !path.starts_with('/') {
            return None;
        }
        let mut segments: Vec<String> = Vec::new();
        for segment in path.split('/') {
            match segment {
                "" | "." => {}
                ".." => {
                    segments.pop();
                }
                s => segments.push(s.chars().filter(|c| !c.is_control()).collect::<String>()),
            }
        }
        // A `**` can only come from a path that really contains it; break it so that the
        // stored pattern stays valid (two stars in a row mean the same as one anyway).
        let segments: Vec<String> = segments
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(|s| {
                let mut s = s;
                while s.contains("**") {
                    s = s.replace("**", "*");
                }
                s
            })
            .collect();
        Some(Self(format!("/{}", segments.join("/"))))
    }

    /// Builds a pattern from already-validated segments (used by the generaliser).
    pub(crate) fn from_segments<S: AsRef<str>>(segments: &[S]) -> Self {
        let mut out = String::new();
        for s in segments {
            out.push('/');
            out.push_str(s.as_ref());
        }
        if out.is_empty() {
            out.push('/');
        }
        Self(out)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when the pattern has no wildcard.
    pub fn is_literal(&self) -> bool {
        !self.0.contains('*')
    }

    /// True when `path` (an absolute, canonical path) matches this pattern.
    pub fn matches(&self, path: &str) -> bool {
        glob_match(&self.0, path)
    }

    /// The segments after the root.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0[1..].split('/').filter(|s| !s.is_empty())
    }

    /// The parent directory as a pattern string (`/a/b` → `/a`, `/a` → `/`), `None` for `/`.
    pub fn parent(&self) -> Option<&str> {
        if self.0 == "/" {
            return None;
        }
        let idx = self.0.rfind('/')?;
        Some(if idx == 0 { "/" } else { &self.0[..idx] })
    }

    /// The last segment (`/a/b` → `b`).
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or("")
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Lets a map keyed by patterns be probed with a plain path (exact, literal lookup). Sound
/// because `Eq`, `Ord` and `Hash` of a pattern are those of its string.
impl std::borrow::Borrow<str> for PathPattern {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl FromStr for PathPattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for PathPattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PathPattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_str_with(deserializer, "a pattern", Self::parse)
    }
}

/// An IP network: address with no host bits set and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// The network of `addr` with `prefix` bits (host bits cleared). The prefix is clamped to
    /// the address length.
    pub fn containing(addr: IpAddr, prefix: u8) -> Self {
        match addr {
            IpAddr::V4(a) => {
                let prefix = prefix.min(32);
                let mask = if prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(prefix))
                };
                Self {
                    addr: IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask)),
                    prefix,
                }
            }
            IpAddr::V6(a) => {
                let prefix = prefix.min(128);
                let mask = if prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(prefix))
                };
                Self {
                    addr: IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask)),
                    prefix,
                }
            }
        }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                Self::containing(*ip, self.prefix).addr == self.addr
            }
            _ => false,
        }
    }

    /// True when every address of `other` is in `self`.
    pub fn covers(&self, other: &IpNet) -> bool {
        other.prefix >= self.prefix && self.contains(&other.addr)
    }

    /// Parses `address/prefix`; host bits must be clear.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let invalid = || PatternError::InvalidNetwork {
            text: text.to_owned(),
        };
        let (addr, prefix) = text.split_once('/').ok_or_else(invalid)?;
        let addr: IpAddr = addr.parse().map_err(|_| invalid())?;
        let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(PatternError::PrefixTooLong {
                text: text.to_owned(),
                max,
            });
        }
        let net = Self::containing(addr, prefix);
        if net.addr != addr {
            return Err(PatternError::HostBitsSet {
                text: text.to_owned(),
                suggestion: net.to_string(),
            });
        }
        Ok(net)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl PartialOrd for IpNet {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for IpNet {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.addr, self.prefix).cmp(&(other.addr, other.prefix))
    }
}

/// The other side of an outbound connection as a profile stores it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// One exact address (public and loopback addresses are kept exact).
    Ip(IpAddr),
    /// A network (private pod/service ranges are grouped, see `generalize`).
    Net(IpNet),
    /// A unix socket path pattern (`/run/x.sock`) or abstract name (`@name`).
    Unix(String),
    /// Anything else, matched exactly (e.g. a host name, should enrichment ever give one).
    Host(String),
}

impl Peer {
    /// Parses the text form used in YAML and on disk.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        if let Some(rest) = text.strip_prefix('@') {
            if rest.chars().any(char::is_control) || rest.contains("**") {
                return Err(PatternError::InvalidPeer {
                    text: text.to_owned(),
                });
            }
            return Ok(Peer::Unix(text.to_owned()));
        }
        if text.starts_with('/') {
            return PathPattern::parse(text).map(|p| Peer::Unix(p.0));
        }
        if text.contains('/') {
            return IpNet::parse(text).map(Peer::Net);
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Peer::Ip(ip));
        }
        let host_like = !text.is_empty()
            && text.len() <= 253
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        if host_like {
            Ok(Peer::Host(text.to_ascii_lowercase()))
        } else {
            Err(PatternError::InvalidPeer {
                text: text.to_owned(),
            })
        }
    }

    /// True when the observed peer address (IP text, unix path or name) matches.
    pub fn matches(&self, address: &str) -> bool {
        match self {
            Peer::Ip(ip) => address
                .parse::<IpAddr>()
                .is_ok_and(|a| canonical_ip(a) == *ip),
            Peer::Net(net) => address
                .parse::<IpAddr>()
                .is_ok_and(|a| net.contains(&canonical_ip(a))),
            Peer::Unix(pattern) => glob_match(pattern, address),
            Peer::Host(name) => name.eq_ignore_ascii_case(address),
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, seen on dual-stack sockets) are the IPv4
/// address they carry.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Ip(ip) => write!(f, "{ip}"),
            Peer::Net(net) => write!(f, "{net}"),
            Peer::Unix(p) | Peer::Host(p) => f.write_str(p),
        }
    }
}

impl Serialize for Peer {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Peer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_str_with(deserializer, "a pattern", Self::parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_matches_within_one_segment_only() {
        assert!(glob_match("/tmp/*", "/tmp/a"));
        assert!(!glob_match("/tmp/*", "/tmp/a/b"));
        assert!(!glob_match("/tmp/*", "/tmp"));
        assert!(glob_match("/proc/*/stat", "/proc/123/stat"));
        assert!(!glob_match("/proc/*/stat", "/proc/123/task/5/stat"));
        assert!(glob_match("/tmp/tmp.*", "/tmp/tmp.Zq81p"));
        assert!(!glob_match("/tmp/tmp.*", "/tmp/tmp."));
        assert!(!glob_match("/tmp/tmp.*", "/etc/passwd"));
        assert!(glob_match("/a/*.*.log", "/a/x.y.log"));
        assert!(glob_match("/a/*x", "/a/xxx"));
        assert!(!glob_match("/a/*x", "/a/x"));
        assert!(!glob_match("/a/b*", "/a/c"));
        assert!(glob_match("/a/b", "/a/b"));
        assert!(!glob_match("/a/b", "/a/bb"));
    }

    #[test]
    fn parse_rejects_non_canonical_patterns() {
        assert!(PathPattern::parse("/etc/hosts").is_ok());
        assert!(PathPattern::parse("/").is_ok());
        assert!(matches!(
            PathPattern::parse("etc"),
            Err(PatternError::NotAbsolute { .. })
        ));
        assert!(matches!(
            PathPattern::parse("/a//b"),
            Err(PatternError::EmptySegment { .. })
        ));
        assert!(matches!(
            PathPattern::parse("/a/"),
            Err(PatternError::EmptySegment { .. })
        ));
        assert!(matches!(
            PathPattern::parse("/a/../b"),
            Err(PatternError::DotSegment { .. })
        ));
        assert!(matches!(
            PathPattern::parse("/var/log/**"),
            Err(PatternError::RecursiveWildcard { .. })
        ));
        assert!(matches!(
            PathPattern::parse("/a\nb"),
            Err(PatternError::ControlCharacter { .. })
        ));
    }

    #[test]
    fn from_observed_normalises() {
        let p = |s| PathPattern::from_observed(s).map(|p| p.0);
        assert_eq!(p("/a//b/./c/../d/"), Some("/a/b/d".into()));
        assert_eq!(p("/"), Some("/".into()));
        assert_eq!(p("relative"), None);
        assert_eq!(p(""), None);
        assert_eq!(p("/a/**"), Some("/a/*".into()));
    }

    #[test]
    fn parent_and_file_name() {
        let p = PathPattern::parse("/etc/nginx/nginx.conf").unwrap();
        assert_eq!(p.parent(), Some("/etc/nginx"));
        assert_eq!(p.file_name(), "nginx.conf");
        assert_eq!(PathPattern::parse("/etc").unwrap().parent(), Some("/"));
        assert_eq!(PathPattern::parse("/").unwrap().parent(), None);
    }

    #[test]
    fn networks() {
        let n = IpNet::parse("10.1.0.0/16").unwrap();
        assert!(n.contains(&"10.1.200.3".parse().unwrap()));
        assert!(!n.contains(&"10.2.0.1".parse().unwrap()));
        assert!(!n.contains(&"::1".parse().unwrap()));
        assert!(matches!(
            IpNet::parse("10.1.2.3/16"),
            Err(PatternError::HostBitsSet { .. })
        ));
        assert!(matches!(
            IpNet::parse("10.0.0.0/33"),
            Err(PatternError::PrefixTooLong { .. })
        ));
        assert!(IpNet::parse("10.0.0.0").is_err());
        let v6 = IpNet::parse("fd00:10:244::/48").unwrap();
        assert!(v6.contains(&"fd00:10:244:1::5".parse().unwrap()));
        assert!(IpNet::parse("0.0.0.0/0").unwrap().covers(&n));
    }

    #[test]
    fn peers_parse_and_match() {
        assert_eq!(
            Peer::parse("1.2.3.4").unwrap(),
            Peer::Ip("1.2.3.4".parse().unwrap())
        );
        assert!(matches!(Peer::parse("10.0.0.0/8").unwrap(), Peer::Net(_)));
        assert!(matches!(Peer::parse("/run/x.sock").unwrap(), Peer::Unix(_)));
        assert!(matches!(Peer::parse("@abstract").unwrap(), Peer::Unix(_)));
        assert!(matches!(
            Peer::parse("api.example.com").unwrap(),
            Peer::Host(_)
        ));
        assert!(Peer::parse("not a peer!").is_err());
        assert!(Peer::parse("").is_err());
        let mapped = Peer::parse("10.0.0.0/8").unwrap();
        assert!(mapped.matches("::ffff:10.1.2.3"));
        assert!(Peer::parse("/run/*.sock").unwrap().matches("/run/a.sock"));
        assert!(!Peer::parse("/run/*.sock").unwrap().matches("/run/a/b.sock"));
    }
}
