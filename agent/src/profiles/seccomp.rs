//! The syscall set of a profile as a seccomp profile.
//!
//! The kubelet loads `localhost/<file>` seccomp profiles from its seccomp directory in the
//! OCI/Docker JSON format: a default action, the architectures, and allow rules. Exporting the
//! learned set this way turns a learned profile into kernel-enforced least privilege without
//! the agent: everything the workload was never seen calling fails with `EPERM`.
//!
//! Two details matter for a profile that actually starts:
//! - The runtime installs the filter just before it `execve`s the entrypoint, so the few
//!   syscalls of that hand-over must be allowed even if the agent only began tracing the
//!   container later: [`BASELINE_SYSCALLS`] are added unless the caller opts out.
//! - Names the agent could not resolve (`syscall_<n>`) are not valid in a seccomp profile;
//!   they are left out and returned, so the caller can say so.

use serde::{Deserialize, Serialize};

use super::model::Profile;

/// Syscalls every container needs between the filter being installed and its entrypoint
/// running, or to exit at all.
pub const BASELINE_SYSCALLS: &[&str] = &[
    "execve",
    "exit",
    "exit_group",
    "rt_sigreturn",
    "restart_syscall",
];

pub const ACTION_ALLOW: &str = "SCMP_ACT_ALLOW";
pub const ACTION_ERRNO: &str = "SCMP_ACT_ERRNO";
/// x86-64 with its 32-bit and x32 ABIs, which the kubelet and runc expect together.
pub const ARCHITECTURES: &[&str] = &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"];

/// A seccomp profile in the format the kubelet accepts for `localhost/` profiles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeccompProfile {
    pub default_action: String,
    pub architectures: Vec<String>,
    pub syscalls: Vec<SeccompRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeccompRule {
    pub names: Vec<String>,
    pub action: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeccompError {
    #[error(
        "profile of {workload} has no syscalls; a seccomp profile from it would stop the \
         container from starting"
    )]
    NoSyscalls { workload: String },
}

/// The seccomp profile and the names that could not be put in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeccompExport {
    pub profile: SeccompProfile,
    /// Names left out because they are not valid syscall names (`syscall_<n>`, junk).
    pub skipped: Vec<String>,
}

impl SeccompExport {
    /// The JSON text to write to the kubelet's seccomp directory.
    pub fn to_json(&self) -> String {
        // Serialising plain strings and vectors cannot fail.
        serde_json::to_string_pretty(&self.profile).unwrap_or_default()
    }
}

/// True for strings that can be a syscall name: lowercase letters, digits and `_`, starting
/// with a letter or `_`, and not an unresolved `syscall_<n>`.
pub fn is_valid_syscall_name(name: &str) -> bool {
    let Some(first) = name.bytes().next() else {
        return false;
    };
    let unresolved = name
        .strip_prefix("syscall_")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    (first.is_ascii_lowercase() || first == b'_')
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !unresolved
}

/// Exports the profile's syscall set; `with_baseline` adds [`BASELINE_SYSCALLS`].
pub fn to_seccomp(profile: &Profile, with_baseline: bool) -> Result<SeccompExport, SeccompError> {
    let mut names = std::collections::BTreeSet::new();
    let mut skipped = Vec::new();
    for name in &profile.syscalls {
        if is_valid_syscall_name(name) {
            names.insert(name.clone());
        } else {
            skipped.push(name.clone());
        }
    }
    if names.is_empty() {
        return Err(SeccompError::NoSyscalls {
            workload: profile.identity.to_string(),
        });
    }
    if with_baseline {
        names.extend(BASELINE_SYSCALLS.iter().map(|s| (*s).to_owned()));
    }
    Ok(SeccompExport {
        profile: SeccompProfile {
            default_action: ACTION_ERRNO.to_owned(),
            architectures: ARCHITECTURES.iter().map(|s| (*s).to_owned()).collect(),
            syscalls: vec![SeccompRule {
                names: names.into_iter().collect(),
                action: ACTION_ALLOW.to_owned(),
            }],
        },
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiles::identity::WorkloadIdentity;

    fn profile(names: &[&str]) -> Profile {
        let mut p = Profile::new(WorkloadIdentity::new(
            "web",
            "nginx",
            "docker.io/library/nginx",
        ));
        p.syscalls = names.iter().map(|s| (*s).to_owned()).collect();
        p
    }

    #[test]
    fn exports_the_kubelet_format_and_parses_back() {
        let p = profile(&[
            "write",
            "openat",
            "read",
            "syscall_999",
            "epoll_wait",
            "Bad-Name",
        ]);
        let export = to_seccomp(&p, false).unwrap();
        assert_eq!(
            export.skipped,
            vec!["Bad-Name".to_owned(), "syscall_999".to_owned()]
        );
        let json = export.to_json();

        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(
            value["architectures"],
            serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        let rules = value["syscalls"].as_array().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0]["action"], "SCMP_ACT_ALLOW");
        let names: Vec<&str> = rules[0]["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(names, ["epoll_wait", "openat", "read", "write"]);
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        assert!(names.iter().all(|n| is_valid_syscall_name(n)));
        assert_eq!(
            value.as_object().unwrap().len(),
            3,
            "no extra top-level keys"
        );

        let typed: SeccompProfile = serde_json::from_str(&json).unwrap();
        assert_eq!(typed, export.profile);
    }

    #[test]
    fn baseline_is_added_on_request() {
        let export = to_seccomp(&profile(&["read"]), true).unwrap();
        let names = &export.profile.syscalls[0].names;
        for b in BASELINE_SYSCALLS {
            assert!(names.iter().any(|n| n == b), "{b} missing");
        }
        assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
    }

    #[test]
    fn empty_set_is_refused() {
        assert!(matches!(
            to_seccomp(&profile(&["syscall_400"]), true),
            Err(SeccompError::NoSyscalls { .. })
        ));
    }

    #[test]
    fn syscall_names() {
        for n in ["read", "openat2", "_llseek", "rt_sigreturn", "epoll_pwait2"] {
            assert!(is_valid_syscall_name(n), "{n}");
        }
        for n in ["", "Read", "open at", "syscall_12", "1abc", "a-b"] {
            assert!(!is_valid_syscall_name(n), "{n}");
        }
    }
}
