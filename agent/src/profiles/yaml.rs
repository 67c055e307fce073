//! Profiles as code: `BehaviorProfile` YAML documents.
//!
//! A learned profile is reviewed, committed and applied like any Kubernetes manifest, so the
//! format looks like one and is stable under re-export (every list sorted, keys in a fixed
//! order) to keep diffs in version control meaningful:
//!
//! ```yaml
//! apiVersion: custos.dev/v1alpha1
//! kind: BehaviorProfile
//! metadata:
//!   name: web-nginx
//!   labels: {team: payments}        # optional, kept
//!   annotations: {}                 # optional, kept
//! spec:
//!   selector: {workload: web, container: nginx, image: docker.io/library/nginx}
//!   executables:
//!   - path: /usr/sbin/nginx
//!     parent: /docker-entrypoint.sh # optional: the executable that ran it
//!   files:
//!   - path: /etc/nginx/nginx.conf
//!     access: [read]                # read | write | exec
//!   network:
//!     egress:
//!     - {protocol: tcp, address: 10.96.0.0/16, port: 53}   # IP, network, /unix/path, @abstract
//!     listen:
//!     - {protocol: tcp, port: 80}
//!   syscalls: [accept4, read, write]
//!   syscallPolicy: kill             # optional: flag (default) | kill, see below
//! status: {...}                     # written on export for people, ignored on import
//! ```
//!
//! Import is strict and all-or-nothing: unknown fields, wrong types, another `apiVersion` or
//! `kind`, and invalid patterns are errors that name the file, the line and column, and the
//! reason; a file with one bad document yields no profile at all. Validation happens inside
//! deserialisation (the pattern types validate themselves) precisely so that every error
//! carries the position of the offending value. Several documents in one file with the same
//! selector are merged. `metadata.name` is for people and tools; the selector is the identity.
//! `syscallPolicy: kill` opts the workload in to SIGKILL for a syscall outside `syscalls` in
//! enforce mode (by default syscall deviations are only flagged); it is written on export only
//! when set, so learned profiles export as before.
//! The `status` section is ignored on import because it describes one agent's observation
//! history, not intent: an imported profile starts out `stable`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, IgnoredAny};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::identity::{WorkloadIdentity, image_repository};
use super::merge::merge_into;
use super::model::{
    EgressRule, EntryCounts, ExecRule, FileAccess, ListenRule, Profile, ProfileStatus,
    SyscallPolicy,
};
use super::pattern::{PathPattern, deserialize_str_with};

pub const API_VERSION: &str = "custos.dev/v1alpha1";
pub const KIND: &str = "BehaviorProfile";

/// Why a file could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: line {line}, column {column} (document {document}): {reason}", file.display())]
    Invalid {
        file: PathBuf,
        /// 1-based index of the YAML document in the file.
        document: usize,
        /// 1-based.
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("{}: document {document}: {reason}", file.display())]
    InvalidUnlocated {
        file: PathBuf,
        document: usize,
        reason: String,
    },
}

impl ImportError {
    /// The 1-based line of the error, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            ImportError::Invalid { line, .. } => Some(*line),
            _ => None,
        }
    }
}

/// A fixed string field (`apiVersion`, `kind`) that rejects any other value where it stands.
macro_rules! fixed_string {
    ($name:ident, $value:expr, $what:literal) => {
        #[derive(Debug, Clone, Copy, Default)]
        struct $name;

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str($value)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                deserialize_str_with(d, $what, |text| {
                    if text == $value {
                        Ok($name)
                    } else {
                        Err(format!(
                            concat!("unsupported ", $what, " `{}`, expected `{}`"),
                            text, $value
                        ))
                    }
                })
            }
        }
    };
}

fixed_string!(ApiVersion, API_VERSION, "apiVersion");
fixed_string!(Kind, KIND, "kind");

/// A string that must not be blank.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
struct Required(String);

impl<'de> Deserialize<'de> for Required {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_str_with(d, "a non-empty string", |text| {
            if text.trim().is_empty() {
                Err("must not be empty")
            } else {
                Ok(Required(text.trim().to_owned()))
            }
        })
    }
}

/// A Kubernetes object name (DNS subdomain: lowercase alphanumerics, `-` and `.`).
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
struct ObjectName(String);

fn validate_object_name(text: &str) -> Result<ObjectName, String> {
    let valid_chars = text
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let alnum = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    let ends_ok = alnum(text.bytes().next()) && alnum(text.bytes().last());
    if text.len() > 253 || !valid_chars || !ends_ok {
        return Err(format!(
            "invalid metadata.name `{text}`: lowercase letters, digits, `-` and `.`, starting \
             and ending with a letter or digit, at most 253 characters"
        ));
    }
    Ok(ObjectName(text.to_owned()))
}

impl<'de> Deserialize<'de> for ObjectName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_str_with(d, "an object name", validate_object_name)
    }
}

/// A syscall name as learned: lowercase letters, digits and `_` (`syscall_<n>` included).
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
struct SyscallName(String);

fn validate_syscall_name(text: &str) -> Result<SyscallName, String> {
    let valid = !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid {
        return Err(format!(
            "invalid syscall name `{text}`: lowercase letters, digits and `_`"
        ));
    }
    Ok(SyscallName(text.to_owned()))
}

impl<'de> Deserialize<'de> for SyscallName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_str_with(d, "a syscall name", validate_syscall_name)
    }
}

/// A non-empty list of accesses.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
struct Accesses(Vec<FileAccess>);

impl<'de> Deserialize<'de> for Accesses {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Checked inside the visitor so the error points at the sequence itself.
        struct Visit;
        impl<'de> de::Visitor<'de> for Visit {
            type Value = Accesses;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence of read, write, exec")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Accesses, A::Error> {
                let mut list = Vec::new();
                while let Some(access) = seq.next_element::<FileAccess>()? {
                    list.push(access);
                }
                if list.is_empty() {
                    return Err(de::Error::custom(
                        "access must list at least one of read, write, exec",
                    ));
                }
                Ok(Accesses(list))
            }
        }
        d.deserialize_seq(Visit)
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Document {
    api_version: ApiVersion,
    kind: Kind,
    metadata: Metadata,
    spec: Spec,
    #[serde(default, skip_serializing_if = "StatusField::is_none")]
    status: StatusField,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: ObjectName,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Selector {
    workload: Required,
    container: Required,
    /// Image repository; empty for containers that run from a plain root filesystem rather
    /// than an image (what `ctr run --rootfs` starts), so such profiles round-trip.
    #[serde(default)]
    image: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    selector: Selector,
    #[serde(default)]
    executables: Vec<ExecRule>,
    #[serde(default)]
    files: Vec<FileRule>,
    #[serde(default)]
    network: Network,
    #[serde(default)]
    syscalls: Vec<SyscallName>,
    #[serde(default, skip_serializing_if = "SyscallPolicy::is_flag")]
    syscall_policy: SyscallPolicy,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    path: PathPattern,
    access: Accesses,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Network {
    #[serde(default)]
    egress: Vec<EgressRule>,
    #[serde(default)]
    listen: Vec<ListenRule>,
}

/// Learning statistics for people; written on export, accepted and ignored on import.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    phase: ProfileStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_seen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_new_entry: Option<String>,
    observed_seconds: u64,
    containers: u64,
    observations: u64,
    entries: EntryCounts,
}

#[derive(Debug, Default)]
struct StatusField(Option<Status>);

impl StatusField {
    fn is_none(&self) -> bool {
        self.0.is_none()
    }
}

impl Serialize for StatusField {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for StatusField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(d)?;
        Ok(StatusField(None))
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for milliseconds since the epoch; `None` for 0 (never).
fn rfc3339(ms: u64) -> Option<String> {
    if ms == 0 {
        return None;
    }
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (non-negative here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

fn to_document(profile: &Profile) -> Document {
    let stats = &profile.stats;
    Document {
        api_version: ApiVersion,
        kind: Kind,
        metadata: Metadata {
            name: ObjectName(profile.identity.default_name()),
            labels: profile.labels.clone(),
            annotations: profile.annotations.clone(),
        },
        spec: Spec {
            selector: Selector {
                workload: Required(profile.identity.workload.clone()),
                container: Required(profile.identity.container.clone()),
                image: profile.identity.image.clone(),
            },
            executables: profile.executables.iter().cloned().collect(),
            files: profile
                .files
                .iter()
                .map(|(path, access)| FileRule {
                    path: path.clone(),
                    access: Accesses(access.iter().copied().collect()),
                })
                .collect(),
            network: Network {
                egress: profile.egress.iter().cloned().collect(),
                listen: profile.listen.iter().copied().collect(),
            },
            syscalls: profile.syscalls.iter().cloned().map(SyscallName).collect(),
            syscall_policy: profile.syscall_policy,
        },
        status: StatusField(Some(Status {
            phase: stats.status,
            first_seen: rfc3339(stats.first_seen_ms),
            last_seen: rfc3339(stats.last_seen_ms),
            last_new_entry: rfc3339(stats.last_new_entry_ms),
            observed_seconds: stats.observed_for().as_secs(),
            containers: stats.containers,
            observations: stats.observations,
            entries: profile.counts(),
        })),
    }
}

fn from_document(doc: Document) -> Profile {
    let selector = doc.spec.selector;
    let identity = WorkloadIdentity::new(
        selector.workload.0,
        selector.container.0,
        image_repository(&selector.image),
    );
    let mut profile = Profile::new(identity);
    profile.labels = doc.metadata.labels;
    profile.annotations = doc.metadata.annotations;
    profile.executables = doc.spec.executables.into_iter().collect();
    for rule in doc.spec.files {
        profile
            .files
            .entry(rule.path)
            .or_default()
            .extend(rule.access.0);
    }
    profile.egress = doc.spec.network.egress.into_iter().collect();
    profile.listen = doc.spec.network.listen.into_iter().collect();
    profile.syscalls = doc.spec.syscalls.into_iter().map(|s| s.0).collect();
    profile.syscall_policy = doc.spec.syscall_policy;
    profile.stats.status = ProfileStatus::Stable;
    profile
}

/// One profile as a YAML document (no `---` separator).
pub fn export_profile(profile: &Profile) -> String {
    // Serialising strings, maps and sequences to YAML does not fail; an empty string would
    // only come from a serializer bug.
    serde_norway::to_string(&to_document(profile)).unwrap_or_default()
}

/// Profiles as a multi-document YAML file, sorted by identity so that the output is stable.
pub fn export(profiles: &[Profile]) -> String {
    let mut sorted: Vec<&Profile> = profiles.iter().collect();
    sorted.sort_by(|a, b| a.identity.cmp(&b.identity));
    let mut out = String::new();
    for profile in sorted {
        out.push_str("---\n");
        out.push_str(&export_profile(profile));
    }
    out
}

/// Cuts serde_norway's trailing " at line L column C" (reported in our own fields instead).
fn reason_of(err: &serde_norway::Error) -> String {
    let text = err.to_string();
    if let Some(idx) = text.rfind(" at line ") {
        let tail = &text[idx + " at line ".len()..];
        let is_position = tail.split_once(" column ").is_some_and(|(l, c)| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_digit())
                && !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_digit())
        });
        if is_position {
            return text[..idx].to_owned();
        }
    }
    text
}

/// Parses every document of `text` (the contents of `file`, which is only used in errors).
/// All or nothing: the first invalid document fails the whole file. Documents with the same
/// selector are merged; the result is sorted by identity.
pub fn import_str(text: &str, file: &Path) -> Result<Vec<Profile>, ImportError> {
    let mut by_identity: BTreeMap<WorkloadIdentity, Profile> = BTreeMap::new();
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let number = index + 1;
        let parsed = Option::<Document>::deserialize(document).map_err(|err| {
            let reason = reason_of(&err);
            match err.location() {
                Some(loc) => ImportError::Invalid {
                    file: file.to_owned(),
                    document: number,
                    line: loc.line(),
                    column: loc.column(),
                    reason,
                },
                None => ImportError::InvalidUnlocated {
                    file: file.to_owned(),
                    document: number,
                    reason,
                },
            }
        })?;
        let Some(doc) = parsed else {
            continue; // an empty document (e.g. a trailing `---`)
        };
        let profile = from_document(doc);
        match by_identity.get_mut(&profile.identity) {
            Some(existing) => {
                // Same identity by construction, so this cannot fail.
                let _ = merge_into(existing, &profile);
            }
            None => {
                by_identity.insert(profile.identity.clone(), profile);
            }
        }
    }
    Ok(by_identity.into_values().collect())
}

/// Reads and imports one file (see [`import_str`]).
pub fn import_file(path: &Path) -> Result<Vec<Profile>, ImportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ImportError::Read {
        file: path.to_owned(),
        source,
    })?;
    import_str(&text, path)
}

impl fmt::Display for Profile {
    /// The profile as a YAML document.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&export_profile(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiles::model::{LearnConfig, Observation, Protocol};
    use std::time::{Duration, UNIX_EPOCH};

    const GOOD: &str = "\
apiVersion: custos.dev/v1alpha1
kind: BehaviorProfile
metadata:
  name: web-nginx
  labels:
    team: payments
spec:
  selector:
    workload: web
    container: nginx
    image: nginx:1.27
  executables:
  - path: /usr/sbin/nginx
    parent: /docker-entrypoint.sh
  - path: /docker-entrypoint.sh
  files:
  - path: /etc/nginx/nginx.conf
    access: [read]
  - path: /proc/*/stat
    access: [read, write]
  network:
    egress:
    - {protocol: tcp, address: 10.96.0.0/16, port: 53}
    - {protocol: unix-stream, address: /run/app.sock, port: 0}
    listen:
    - {protocol: tcp, port: 80}
  syscalls: [read, write, openat]
";

    fn file() -> &'static Path {
        Path::new("profiles/web.yaml")
    }

    fn err(text: &str) -> ImportError {
        import_str(text, file()).expect_err("import must fail")
    }

    /// GOOD with one line replaced (1-based), for errors at a known line.
    fn good_with(line: usize, replacement: &str) -> String {
        GOOD.lines()
            .enumerate()
            .map(|(i, l)| if i + 1 == line { replacement } else { l })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn assert_error_at(e: &ImportError, line: usize, needle: &str) {
        let text = e.to_string();
        assert_eq!(e.line(), Some(line), "{text}");
        assert!(text.contains(&format!("line {line}")), "{text}");
        assert!(text.contains("profiles/web.yaml"), "{text}");
        assert!(text.contains(needle), "`{needle}` not in: {text}");
    }

    #[test]
    fn imports_a_valid_document() {
        let profiles = import_str(GOOD, file()).unwrap();
        assert_eq!(profiles.len(), 1);
        let p = &profiles[0];
        assert_eq!(
            p.identity,
            WorkloadIdentity::new("web", "nginx", "docker.io/library/nginx")
        );
        assert_eq!(p.counts().executables, 2);
        assert_eq!(p.counts().files, 3);
        assert_eq!(p.counts().egress, 2);
        assert_eq!(p.counts().listen, 1);
        assert_eq!(p.counts().syscalls, 3);
        assert_eq!(p.stats.status, ProfileStatus::Stable);
        assert_eq!(p.labels.get("team").map(String::as_str), Some("payments"));
        assert!(p.allows(&Observation::File {
            path: "/proc/77/stat".into(),
            access: FileAccess::Write
        }));
        assert!(p.allows(&Observation::Connect {
            protocol: Protocol::Tcp,
            address: "10.96.0.10".into(),
            port: 53
        }));
    }

    #[test]
    fn export_is_stable_and_round_trips() {
        let mut p = Profile::new(WorkloadIdentity::new(
            "web",
            "nginx",
            "docker.io/library/nginx",
        ));
        let c = LearnConfig::default();
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for obs in [
            Observation::Syscall {
                name: "write".into(),
            },
            Observation::Syscall {
                name: "read".into(),
            },
            Observation::File {
                path: "/tmp/tmp.a8Xk2".into(),
                access: FileAccess::Write,
            },
            Observation::File {
                path: "/etc/hosts".into(),
                access: FileAccess::Read,
            },
            Observation::Exec {
                path: "/bin/sh".into(),
                parent_exe: None,
            },
            Observation::Connect {
                protocol: Protocol::Tcp,
                address: "1.1.1.1".into(),
                port: 443,
            },
        ] {
            p.learn_with(&obs, &c, t);
        }
        let yaml = export(std::slice::from_ref(&p));
        assert!(yaml.starts_with("---\napiVersion: custos.dev/v1alpha1\nkind: BehaviorProfile\n"));
        assert!(yaml.contains("firstSeen: 2023-11-14T22:13:20Z"), "{yaml}");
        let hosts = yaml.find("/etc/hosts").unwrap();
        let tmp = yaml.find("/tmp/tmp.*").unwrap();
        assert!(hosts < tmp, "files sorted");
        assert!(
            yaml.find("- read").unwrap() < yaml.find("- write").unwrap(),
            "syscalls sorted"
        );

        let back = import_str(&yaml, file()).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].entries(), p.entries());
        // Export of the import equals the export, apart from the status section.
        let spec_only = |s: &str| s.split("status:").next().unwrap_or("").to_owned();
        assert_eq!(spec_only(&export(&back)), spec_only(&yaml));
    }

    #[test]
    fn multi_document_files_merge_equal_selectors() {
        let other = GOOD
            .replace("workload: web", "workload: api")
            .replace("web-nginx", "api-nginx");
        let extra = "\
apiVersion: custos.dev/v1alpha1
kind: BehaviorProfile
metadata: {name: web-nginx-extra}
spec:
  selector: {workload: web, container: nginx, image: docker.io/library/nginx}
  syscalls: [futex]
";
        let text = format!("{GOOD}---\n{other}---\n{extra}---\n");
        let profiles = import_str(&text, file()).unwrap();
        assert_eq!(profiles.len(), 2);
        assert_eq!(profiles[0].identity.workload, "api");
        assert_eq!(profiles[1].identity.workload, "web");
        assert!(profiles[1].syscalls.contains("futex"));
        assert_eq!(profiles[1].syscalls.len(), 4);
    }

    #[test]
    fn malformed_yaml() {
        assert_error_at(
            &err(&good_with(6, "    team: payments: x")),
            6,
            "mapping values",
        );
        let e = err(&good_with(11, "    image: 'nginx"));
        assert!(e.line().is_some(), "{e}");
    }

    #[test]
    fn unknown_field() {
        assert_error_at(
            &err(&good_with(13, "  - pth: /usr/sbin/nginx")),
            13,
            "unknown field `pth`",
        );
        assert_error_at(
            &err(&good_with(2, "kind: BehaviorProfile\nextra: 1")),
            3,
            "unknown field `extra`",
        );
    }

    #[test]
    fn wrong_types() {
        assert_error_at(
            &err(&good_with(
                24,
                "    - {protocol: tcp, address: 10.96.0.0/16, port: http}",
            )),
            24,
            "port",
        );
        assert_error_at(
            &err(&good_with(
                24,
                "    - {protocol: tcp, address: 10.96.0.0/16, port: 70000}",
            )),
            24,
            "70000",
        );
        assert_error_at(&err(&good_with(20, "    access: read")), 20, "sequence");
        assert_error_at(
            &err(&good_with(20, "    access: [append]")),
            20,
            "unknown variant `append`",
        );
        assert_error_at(&err(&good_with(20, "    access: []")), 20, "at least one");
    }

    #[test]
    fn wrong_api_version_or_kind() {
        assert_error_at(
            &err(&good_with(1, "apiVersion: custos.dev/v2")),
            1,
            "unsupported apiVersion",
        );
        assert_error_at(
            &err(&good_with(2, "kind: Profile")),
            2,
            "unsupported kind `Profile`",
        );
    }

    #[test]
    fn invalid_patterns() {
        assert_error_at(&err(&good_with(19, "  - path: /var/log/**")), 19, "`**`");
        assert_error_at(&err(&good_with(19, "  - path: etc/hosts")), 19, "absolute");
        assert_error_at(
            &err(&good_with(
                24,
                "    - {protocol: tcp, address: 10.96.1.0/16, port: 53}",
            )),
            24,
            "host bits",
        );
        assert_error_at(
            &err(&good_with(27, "  syscalls: [read, Write]")),
            27,
            "invalid syscall name",
        );
        assert_error_at(&err(&good_with(4, "  name: Web_Nginx")), 4, "metadata.name");
        assert_error_at(
            &err(&good_with(9, "    workload: ''")),
            9,
            "must not be empty",
        );
    }

    #[test]
    fn syscall_policy_is_opt_in_and_round_trips() {
        let learned = import_str(GOOD, file()).unwrap();
        assert_eq!(learned[0].syscall_policy, SyscallPolicy::Flag);
        assert!(!export(&learned).contains("syscallPolicy"));

        let text = format!("{GOOD}  syscallPolicy: kill\n");
        let opted_in = import_str(&text, file()).unwrap();
        assert_eq!(opted_in[0].syscall_policy, SyscallPolicy::Kill);
        let exported = export(&opted_in);
        assert!(exported.contains("syscallPolicy: kill"), "{exported}");
        assert_eq!(import_str(&exported, file()).unwrap(), opted_in);

        let bad = format!("{GOOD}  syscallPolicy: block\n");
        assert_error_at(&err(&bad), 28, "unknown variant `block`");
        let misspelt = format!("{GOOD}  syscall_policy: kill\n");
        assert_error_at(&err(&misspelt), 28, "unknown field `syscall_policy`");
    }

    #[test]
    fn errors_in_later_documents_point_at_their_line_and_nothing_is_applied() {
        let bad = good_with(2, "kind: Nope");
        let text = format!("{GOOD}---\n{bad}\n");
        let good_lines = GOOD.lines().count();
        let e = err(&text);
        // Line 2 of the second document: after GOOD and the `---` line.
        assert_error_at(&e, good_lines + 1 + 2, "unsupported kind");
        assert!(e.to_string().contains("document 2"), "{e}");
    }

    #[test]
    fn missing_field_and_read_errors() {
        let e =
            err("apiVersion: custos.dev/v1alpha1\nkind: BehaviorProfile\nmetadata: {name: x}\n");
        assert!(e.to_string().contains("missing field `spec`"), "{e}");
        let e = import_file(Path::new("/nonexistent/dir/p.yaml")).unwrap_err();
        assert!(matches!(e, ImportError::Read { .. }));
        assert!(e.to_string().contains("/nonexistent/dir/p.yaml"));
        assert!(import_str("", file()).unwrap().is_empty());
        assert!(
            import_str("---\n# only a comment\n", file())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), None);
        assert_eq!(rfc3339(1).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(
            rfc3339(951_782_400_000).as_deref(),
            Some("2000-02-29T00:00:00Z")
        );
        assert_eq!(
            rfc3339(1_709_251_199_000).as_deref(),
            Some("2024-02-29T23:59:59Z")
        );
    }
}
