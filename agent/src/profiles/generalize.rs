//! Generalisation: turning what one replica did into what every replica may do.
//!
//! Two replicas of one workload never open the same `/proc/<pid>/stat`, never get the same
//! `mktemp` name and never talk to the same pod IP. Learned literally, that churn would show up
//! as a deviation on every restart. So volatile parts are replaced by wildcards *when an entry
//! is learned* — and only those: every rule here errs on the side of staying literal, because a
//! wildcard that is too wide hides exactly the behaviour a runtime monitor exists to catch.
//!
//! Rules, applied to each path segment (`/`-separated) of executables, files and unix sockets:
//!
//! 1. **Numeric segment** → `*`: `/proc/123/stat` → `/proc/*/stat`.
//! 2. **UUID** (`8-4-4-4-12` hex) anywhere in a segment → `*`.
//! 3. Within a segment, each **token** (a run of `[A-Za-z0-9_]` between other characters such
//!    as `.` or `-`) is replaced by `*` when it looks random:
//!    - a hex id: ≥ 8 hex digits with at least one digit and one letter (`3f9a2c1d`);
//!    - a number of ≥ 4 digits (timestamps, pids inside names: `app.1712345678.log`);
//!    - mixed letters and digits (≥ 5 characters, ≥ 2 digits) that break into ≥ 4 runs
//!      (letters / digits / a capital starting a new word) whose letter runs average under two
//!      characters: `a8Xk2`, `x2x1q`, `Xb3kLm9QzT`. Words with a version number stay literal
//!      (`python3`, `log4j2`, `libQt5Gui`, `v1alpha1`, `x86_64`), and short numbers too
//!      (`libc.so.6`, `python3.11`).
//!    - any alphanumeric token of ≥ 20 characters with a digit (base64/base32 ids).
//!
//!    Only the token is replaced, so `/tmp/tmp.a8Xk2` becomes `/tmp/tmp.*`, which allows
//!    `/tmp/tmp.Zq81p` but neither `/tmp/other` nor `/etc/passwd`.
//! 4. **Many children** of one directory: once `dir_children_threshold` distinct files (for
//!    one kind of access) are learned directly under the same directory, they are folded into
//!    `dir/*` for that access. Never in `protected_dirs` (and their subtrees), where reading
//!    eight files must not allow reading the ninth: `/etc` (`/etc/shadow`), `/proc`, `/root`,
//!    service-account secrets, binary directories. Executables are never folded.
//!
//! Addresses: IPs in private ranges (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, and ULA
//! fd00::/8) are pod and service addresses that change on every reschedule; they are grouped by
//! network — IPv4 by /16 (a cluster's pod or service range is typically a /16 or larger, while
//! a /24 is one node's share of it, so /24 would still churn when pods move between nodes),
//! IPv6 ULA by /48 (the site prefix, same reasoning). Public, loopback, link-local (this
//! includes the cloud metadata address 169.254.169.254) and everything else stays exact.
//!
//! Syscalls: a program that uses sockets waits for readiness only when the data or the peer is
//! not there yet (busybox wget calls `poll` after a read that would block, and not otherwise), so
//! whether a run uses `poll` is timing, not behaviour. Learning `socket` therefore also learns
//! the readiness waits ([`READINESS_WAIT_SYSCALLS`]); nothing else is implied.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::model::FileAccess;
use super::pattern::{IpNet, PathPattern, Peer, canonical_ip};

/// Syscalls that wait for file descriptors to become ready: implied by `socket` (see the
/// module docs). They only block; they read, write and open nothing.
pub const READINESS_WAIT_SYSCALLS: &[&str] = &[
    "poll",
    "ppoll",
    "select",
    "pselect6",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
];

/// Syscalls learned along with `name` because using `name` makes them a matter of timing.
pub fn implied_syscalls(name: &str) -> &'static [&'static str] {
    match name {
        "socket" => READINESS_WAIT_SYSCALLS,
        _ => &[],
    }
}

/// Knobs of the generaliser. The defaults are what the module documentation describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneralizeConfig {
    /// Distinct children of one directory (per access) that fold into `dir/*`; 0 disables.
    pub dir_children_threshold: usize,
    /// Directories (and their subtrees) whose children are never folded into `*`.
    pub protected_dirs: Vec<String>,
    /// Prefix length private IPv4 addresses are grouped by.
    pub ipv4_private_prefix: u8,
    /// Prefix length unique-local IPv6 addresses are grouped by.
    pub ipv6_ula_prefix: u8,
}

/// Directories whose children are never folded (see the module docs).
pub const DEFAULT_PROTECTED_DIRS: &[&str] = &[
    "/etc",
    "/proc",
    "/sys",
    "/dev",
    "/root",
    "/home",
    "/boot",
    "/bin",
    "/sbin",
    "/usr/bin",
    "/usr/sbin",
    "/usr/local/bin",
    "/usr/local/sbin",
    "/var/run/secrets",
    "/run/secrets",
];

impl Default for GeneralizeConfig {
    fn default() -> Self {
        Self {
            dir_children_threshold: 8,
            protected_dirs: DEFAULT_PROTECTED_DIRS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            ipv4_private_prefix: 16,
            ipv6_ula_prefix: 48,
        }
    }
}

impl GeneralizeConfig {
    /// True when children of `dir` may be folded into `dir/*`.
    pub fn may_fold(&self, dir: &str) -> bool {
        if self.dir_children_threshold == 0 || dir == "/" {
            return false;
        }
        !self.protected_dirs.iter().any(|p| {
            let p = p.trim_end_matches('/');
            p.is_empty()
                || dir == p
                || dir
                    .strip_prefix(p)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    }
}

/// Generalises an observed absolute path into the pattern a profile stores. `None` for a
/// path that is empty or relative.
pub fn generalize_path(path: &str) -> Option<PathPattern> {
    let observed = PathPattern::from_observed(path)?;
    let segments: Vec<String> = observed.segments().map(generalize_segment).collect();
    Some(PathPattern::from_segments(&segments))
}

/// Generalises one path segment (see the module docs for the rules).
pub fn generalize_segment(segment: &str) -> String {
    if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
        return "*".to_owned();
    }
    let without_uuids = replace_uuids(segment);
    let mut out = String::with_capacity(without_uuids.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        if !token.is_empty() {
            if token != "*" && looks_random(token) {
                out.push('*');
            } else {
                out.push_str(token);
            }
            token.clear();
        }
    };
    for c in without_uuids.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            token.push(c);
        } else {
            flush(&mut token, &mut out);
            out.push(c);
        }
    }
    flush(&mut token, &mut out);
    while out.contains("**") {
        out = out.replace("**", "*");
    }
    out
}

fn is_uuid(bytes: &[u8]) -> bool {
    const GROUPS: [usize; 5] = [8, 4, 4, 4, 12];
    if bytes.len() != 36 {
        return false;
    }
    let mut i = 0;
    for (g, len) in GROUPS.iter().enumerate() {
        if g > 0 {
            if bytes[i] != b'-' {
                return false;
            }
            i += 1;
        }
        if !bytes[i..i + len].iter().all(u8::is_ascii_hexdigit) {
            return false;
        }
        i += len;
    }
    true
}

/// Replaces every UUID delimited by non-alphanumeric characters (or the segment ends) by `*`.
fn replace_uuids(segment: &str) -> String {
    let bytes = segment.as_bytes();
    if bytes.len() < 36 {
        return segment.to_owned();
    }
    let mut out = String::with_capacity(segment.len());
    let mut i = 0;
    let mut copied = 0;
    while i + 36 <= bytes.len() {
        let before_ok = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        let after_ok = i + 36 == bytes.len() || !bytes[i + 36].is_ascii_alphanumeric();
        if before_ok && after_ok && is_uuid(&bytes[i..i + 36]) {
            // UUIDs are ASCII, so these are char boundaries.
            out.push_str(&segment[copied..i]);
            out.push('*');
            i += 36;
            copied = i;
        } else {
            i += 1;
        }
    }
    out.push_str(segment.get(copied..).unwrap_or(""));
    out
}

/// True when a token (`[A-Za-z0-9_]+`) looks machine-generated rather than named by a person.
pub fn looks_random(token: &str) -> bool {
    let alnum: Vec<u8> = token.bytes().filter(u8::is_ascii_alphanumeric).collect();
    let digits = alnum.iter().filter(|b| b.is_ascii_digit()).count();
    let letters = alnum.len() - digits;
    if digits >= 4 && letters == 0 {
        return true;
    }
    if digits == 0 || letters == 0 {
        return false;
    }
    if alnum.len() >= 8 && alnum.iter().all(u8::is_ascii_hexdigit) {
        return true;
    }
    if alnum.len() >= 20 {
        return true;
    }
    if alnum.len() < 5 || digits < 2 {
        return false;
    }
    // Split into runs: digits, lowercase letters (a capital starts a new run, `Xk` is one run),
    // and `_` as a separator.
    let mut runs: Vec<(bool, usize)> = Vec::new(); // (is_letters, length)
    let mut prev: Option<u8> = None;
    for b in token.bytes() {
        if b == b'_' {
            prev = None;
            continue;
        }
        let new_run = match prev {
            None => true,
            Some(p) => {
                p.is_ascii_digit() != b.is_ascii_digit()
                    || (b.is_ascii_uppercase() && p.is_ascii_lowercase())
            }
        };
        if new_run {
            runs.push((b.is_ascii_alphabetic(), 1));
        } else if let Some(last) = runs.last_mut() {
            last.1 += 1;
        }
        prev = Some(b);
    }
    let letter_runs: Vec<usize> = runs.iter().filter(|r| r.0).map(|r| r.1).collect();
    if runs.len() < 4 || letter_runs.is_empty() {
        return false;
    }
    let letter_chars: usize = letter_runs.iter().sum();
    // Average letter-run length under 2: `letter_chars / runs < 2`.
    letter_chars < 2 * letter_runs.len()
}

/// True for the ranges pod and service addresses come from.
pub fn is_private(ip: &IpAddr) -> bool {
    match canonical_ip(*ip) {
        IpAddr::V4(v4) => v4.is_private(),
        IpAddr::V6(v6) => v6.octets()[0] == 0xfd,
    }
}

/// The peer a profile stores for an observed address.
pub fn generalize_peer(address: &str, config: &GeneralizeConfig) -> Option<Peer> {
    if address.is_empty() {
        return None;
    }
    if let Ok(ip) = address.parse::<IpAddr>() {
        let ip = canonical_ip(ip);
        if is_private(&ip) {
            let prefix = if ip.is_ipv4() {
                config.ipv4_private_prefix
            } else {
                config.ipv6_ula_prefix
            };
            return Some(Peer::Net(IpNet::containing(ip, prefix)));
        }
        return Some(Peer::Ip(ip));
    }
    if let Some(name) = address.strip_prefix('@') {
        let segments: Vec<String> = name.split('/').map(generalize_segment).collect();
        return Some(Peer::Unix(format!("@{}", segments.join("/"))));
    }
    if address.starts_with('/') {
        return generalize_path(address).map(|p| Peer::Unix(p.as_str().to_owned()));
    }
    Peer::parse(address).ok()
}

/// Folds children of `dir` into `dir/*` where the threshold is reached (rule 4). Returns true
/// when something was folded.
pub fn fold_directory(
    files: &mut BTreeMap<PathPattern, BTreeSet<FileAccess>>,
    dir: &str,
    config: &GeneralizeConfig,
) -> bool {
    if !config.may_fold(dir) {
        return false;
    }
    let Ok(wildcard) = PathPattern::parse(&format!("{}/*", dir.trim_end_matches('/'))) else {
        return false;
    };
    let mut folded = false;
    for access in FileAccess::ALL {
        if files.get(&wildcard).is_some_and(|a| a.contains(&access)) {
            continue;
        }
        let children: Vec<PathPattern> = files
            .iter()
            .filter(|(p, a)| p.parent() == Some(dir) && **p != wildcard && a.contains(&access))
            .map(|(p, _)| p.clone())
            .collect();
        if children.len() < config.dir_children_threshold {
            continue;
        }
        for child in &children {
            if let Some(set) = files.get_mut(child) {
                set.remove(&access);
                if set.is_empty() {
                    files.remove(child);
                }
            }
        }
        files.entry(wildcard.clone()).or_default().insert(access);
        folded = true;
    }
    folded
}

/// Removes `access` from the literal entries that `pattern` covers; true when any was removed.
fn remove_covered(
    files: &mut BTreeMap<PathPattern, BTreeSet<FileAccess>>,
    pattern: &PathPattern,
    access: FileAccess,
) -> bool {
    let covered: Vec<PathPattern> = files
        .iter()
        .filter(|(path, accesses)| {
            path.is_literal() && accesses.contains(&access) && pattern.matches(path.as_str())
        })
        .map(|(path, _)| path.clone())
        .collect();
    for path in &covered {
        if let Some(accesses) = files.get_mut(path) {
            accesses.remove(&access);
            if accesses.is_empty() {
                files.remove(path);
            }
        }
    }
    !covered.is_empty()
}

/// Shortest random tail that sibling folding considers (mktemp uses 6 characters).
const MIN_RANDOM_TAIL: usize = 5;

/// Splits a file name into the part up to its last separator (`.`, `-`, `_`) and the tail after
/// it: `out.FfRIYX` → (`out.`, `FfRIYX`).
fn stem_and_tail(name: &str) -> Option<(&str, &str)> {
    let cut = name.rfind(['.', '-', '_'])? + 1;
    Some((&name[..cut], &name[cut..]))
}

/// Whether two tails look like two draws of the same random template: same length (at least
/// [`MIN_RANDOM_TAIL`]), alphanumeric, and different in at least half of their positions
/// (`FfRIYX` / `a8Xk2q` yes; `config1` / `config2` no).
fn random_siblings(a: &str, b: &str) -> bool {
    let alnum = |t: &str| t.bytes().all(|c| c.is_ascii_alphanumeric());
    if a.len() != b.len() || a.len() < MIN_RANDOM_TAIL || !alnum(a) || !alnum(b) {
        return false;
    }
    let differing = a.bytes().zip(b.bytes()).filter(|(x, y)| x != y).count();
    differing * 2 >= a.len()
}

/// Folds `new` with its literal siblings that differ only by a random tail (what `mktemp`
/// and friends make: `/tmp/out.FfRIYX`, `/tmp/out.a8Xk2q` → `/tmp/out.*`), for `access`.
/// Names that merely look alike (`app.config1`, `app.config2`) stay literal. Returns true when
/// something was folded.
pub fn fold_random_siblings(
    files: &mut BTreeMap<PathPattern, BTreeSet<FileAccess>>,
    new: &PathPattern,
    access: FileAccess,
    config: &GeneralizeConfig,
) -> bool {
    let Some(dir) = new.parent() else {
        return false;
    };
    if !new.is_literal() {
        // A pattern generalised on the way in (`/tmp/out.*` from `/tmp/out.O9V65P`) takes over
        // the literal entries it covers (`/tmp/out.zK2khE`, learned before).
        return remove_covered(files, new, access);
    }
    if !config.may_fold(dir) {
        return false;
    }
    let Some((stem, tail)) = stem_and_tail(new.file_name()) else {
        return false;
    };
    let siblings: Vec<PathPattern> = files
        .iter()
        .filter(|(pattern, accesses)| {
            *pattern != new
                && pattern.is_literal()
                && pattern.parent() == Some(dir)
                && accesses.contains(&access)
                && stem_and_tail(pattern.file_name())
                    .is_some_and(|(s, t)| s == stem && random_siblings(t, tail))
        })
        .map(|(pattern, _)| pattern.clone())
        .collect();
    if siblings.is_empty() {
        return false;
    }
    let Ok(wildcard) = PathPattern::parse(&format!("{}/{stem}*", dir.trim_end_matches('/'))) else {
        return false;
    };
    for path in siblings.iter().chain([new]) {
        if let Some(accesses) = files.get_mut(path) {
            accesses.remove(&access);
            if accesses.is_empty() {
                files.remove(path);
            }
        }
    }
    files.entry(wildcard).or_default().insert(access);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_temp_siblings_fold_and_look_alikes_do_not() {
        let config = GeneralizeConfig::default();
        let mut files = BTreeMap::new();
        // As the profile learns: a path an entry already covers is not added.
        let mut learn = |path: &str| {
            if files.keys().any(|known: &PathPattern| known.matches(path)) {
                return;
            }
            let pattern = PathPattern::parse(path).unwrap();
            files
                .entry(pattern.clone())
                .or_insert_with(BTreeSet::new)
                .insert(FileAccess::Write);
            fold_random_siblings(&mut files, &pattern, FileAccess::Write, &config);
        };
        learn("/tmp/out.FfRIYX");
        learn("/tmp/out.aqLmcZ");
        learn("/tmp/app.config1");
        learn("/tmp/app.config2");
        learn("/tmp/out.Zp0xQw");
        // A name generalised on the way in takes over the literal ones it covers.
        learn("/tmp/job.kQzXwv");
        let generalized = PathPattern::parse("/tmp/job.*").unwrap();
        files
            .entry(generalized.clone())
            .or_insert_with(BTreeSet::new)
            .insert(FileAccess::Write);
        fold_random_siblings(&mut files, &generalized, FileAccess::Write, &config);
        let learned: Vec<_> = files.keys().map(PathPattern::as_str).collect();
        assert_eq!(
            learned,
            [
                "/tmp/app.config1",
                "/tmp/app.config2",
                "/tmp/job.*",
                "/tmp/out.*"
            ]
        );
        let folded = PathPattern::parse("/tmp/out.*").unwrap();
        assert!(folded.matches("/tmp/out.k2Jd9a"));
        assert!(!folded.matches("/etc/shadow"));
        assert!(!folded.matches("/tmp/other.k2Jd9a"));
    }

    fn g(path: &str) -> String {
        generalize_path(path).unwrap().as_str().to_owned()
    }

    #[test]
    fn numeric_segments() {
        assert_eq!(g("/proc/123/stat"), "/proc/*/stat");
        assert_eq!(g("/proc/1/task/42/status"), "/proc/*/task/*/status");
        assert_eq!(g("/dev/pts/0"), "/dev/pts/*");
    }

    #[test]
    fn random_tokens_become_stars() {
        assert_eq!(g("/tmp/tmp.a8Xk2"), "/tmp/tmp.*");
        assert_eq!(g("/tmp/tmp.Xb3kLm9QzT"), "/tmp/tmp.*");
        assert_eq!(g("/tmp/tmpk3j_2x9a"), "/tmp/*");
        assert_eq!(g("/run/x2x1q.pid"), "/run/*.pid");
        assert_eq!(
            g("/var/lib/c/3f9a2c1d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f/x"),
            "/var/lib/c/*/x"
        );
        assert_eq!(
            g("/data/550e8400-e29b-41d4-a716-446655440000/db"),
            "/data/*/db"
        );
        assert_eq!(
            g("/data/job-550e8400-e29b-41d4-a716-446655440000.lock"),
            "/data/job-*.lock"
        );
        assert_eq!(g("/var/log/app.1712345678.log"), "/var/log/app.*.log");
        assert_eq!(
            g(
                "/var/run/secrets/kubernetes.io/serviceaccount/..2024_03_05_12_00_00.123456789/token"
            ),
            "/var/run/secrets/kubernetes.io/serviceaccount/..*.*/token"
        );
        assert_eq!(g("/cache/aGVsbG8gd29ybGQgMTIzNDU2Nzg5MA"), "/cache/*");
    }

    #[test]
    fn named_things_stay_literal() {
        for path in [
            "/etc/nginx/nginx.conf",
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/usr/bin/python3.11",
            "/usr/lib/python3.11/site-packages/log4j2.py",
            "/usr/lib/libQt5Gui.so.5.15.2",
            "/usr/share/java/log4j-core-2.17.1.jar",
            "/etc/ssl/certs/ca-certificates.crt",
            "/usr/lib/jvm/java-17-openjdk-amd64/bin/java",
            "/usr/local/bin/sha256sum",
            "/apis/v1alpha1/x",
            "/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30",
            "/usr/lib/arm64v8/ld.so",
            "/etc/rc2.d/S01ssh",
            "/usr/share/zoneinfo/Etc/GMT+10",
            "/var/lib/dpkg/info/libc6:amd64.list",
            "/opt/app/Log4jConfig.xml",
            "/deadbeef",
        ] {
            assert_eq!(g(path), path, "{path} must stay literal");
        }
    }

    #[test]
    fn looks_random_cases() {
        for t in [
            "a8Xk2",
            "x2x1q",
            "Xb3kLm9QzT",
            "3f9a2c1d",
            "20240305",
            "ab12cd34ef",
        ] {
            assert!(looks_random(t), "{t} should look random");
        }
        for t in [
            "nginx", "python3", "log4j2", "v1alpha1", "x86_64", "md5sum", "libc", "h264", "k8s",
            "123", "arm64v8", "mp3",
        ] {
            assert!(!looks_random(t), "{t} should not look random");
        }
    }

    #[test]
    fn private_addresses_are_grouped_public_stay_exact() {
        let c = GeneralizeConfig::default();
        let p = |a| generalize_peer(a, &c).unwrap().to_string();
        assert_eq!(p("10.244.3.17"), "10.244.0.0/16");
        assert_eq!(p("172.20.1.9"), "172.20.0.0/16");
        assert_eq!(p("192.168.1.20"), "192.168.0.0/16");
        assert_eq!(p("fd00:10:244:1::17"), "fd00:10:244::/48");
        assert_eq!(p("::ffff:10.1.2.3"), "10.1.0.0/16");
        assert_eq!(p("8.8.8.8"), "8.8.8.8");
        assert_eq!(p("127.0.0.1"), "127.0.0.1");
        assert_eq!(p("::1"), "::1");
        assert_eq!(p("169.254.169.254"), "169.254.169.254");
        assert_eq!(p("172.32.0.1"), "172.32.0.1");
        assert_eq!(p("2001:db8::1"), "2001:db8::1");
        assert_eq!(p("/run/app/x2x1q.sock"), "/run/app/*.sock");
        assert_eq!(
            p("@/containerd-shim/a8Xk2.sock"),
            "@/containerd-shim/*.sock"
        );
        assert!(generalize_peer("", &c).is_none());
    }

    #[test]
    fn protected_dirs_are_never_folded() {
        let c = GeneralizeConfig::default();
        assert!(!c.may_fold("/"));
        assert!(!c.may_fold("/etc"));
        assert!(!c.may_fold("/etc/nginx"));
        assert!(!c.may_fold("/proc/*"));
        assert!(c.may_fold("/var/cache/app"));
        assert!(c.may_fold("/etcetera"));
    }

    #[test]
    fn folding_by_access() {
        let c = GeneralizeConfig::default();
        let mut files = BTreeMap::new();
        for i in 0..8 {
            let p = PathPattern::parse(&format!("/var/cache/app/item{i}")).unwrap();
            files.insert(p, BTreeSet::from([FileAccess::Read]));
        }
        files.insert(
            PathPattern::parse("/var/cache/app/one").unwrap(),
            BTreeSet::from([FileAccess::Write]),
        );
        assert!(fold_directory(&mut files, "/var/cache/app", &c));
        let star = PathPattern::parse("/var/cache/app/*").unwrap();
        assert_eq!(files.get(&star), Some(&BTreeSet::from([FileAccess::Read])));
        // The written file is below the threshold for writes and stays.
        assert_eq!(files.len(), 2);
        assert!(!fold_directory(&mut files, "/var/cache/app", &c));
    }
}
