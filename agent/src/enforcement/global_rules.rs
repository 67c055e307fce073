//! Global rules: what no container may do, whatever its profile says — a shell tool for remote
//! logins, a package manager, writes to the system directories, reads of the password hashes.
//! They apply in every mode but `off` (alerted in learn and monitor, stopped in enforce), and each
//! can be switched off in the configuration (`enforcement.globalRules`).
use serde::Deserialize;

use crate::profiles::{FileAccess, Observation};

/// `enforcement.globalRules` in the configuration: every rule on by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct GlobalRulesConfig {
    /// ssh, sshd, scp, sftp, dropbear run in a container.
    pub ssh: bool,
    /// A package manager runs in a container (apt, dpkg, yum, dnf, rpm, apk, ...).
    pub package_managers: bool,
    /// A file under /etc, /bin, /sbin, /usr, /lib or /lib64 is opened for writing.
    pub system_writes: bool,
    /// /etc/shadow or /etc/gshadow is read.
    pub shadow_reads: bool,
}

impl Default for GlobalRulesConfig {
    fn default() -> Self {
        Self {
            ssh: true,
            package_managers: true,
            system_writes: true,
            shadow_reads: true,
        }
    }
}

const SSH_PROGRAMS: &[&str] = &["ssh", "sshd", "scp", "sftp", "sftp-server", "dropbear"];
const PACKAGE_MANAGERS: &[&str] = &[
    "apt", "apt-get", "aptitude", "dpkg", "yum", "dnf", "microdnf", "rpm", "apk", "zypper",
    "pacman",
];
const SYSTEM_DIRS: &[&str] = &["/etc", "/bin", "/sbin", "/usr", "/lib", "/lib64"];
const SHADOW_FILES: &[&str] = &["/etc/shadow", "/etc/gshadow"];

/// A global rule an observation broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalRule {
    /// The rule's name in the configuration (`ssh`, `packageManagers`, ...).
    pub name: &'static str,
    pub severity: &'static str,
}

const SSH: GlobalRule = GlobalRule {
    name: "ssh",
    severity: "critical",
};
const PACKAGE_MANAGER: GlobalRule = GlobalRule {
    name: "packageManagers",
    severity: "high",
};
const SYSTEM_WRITE: GlobalRule = GlobalRule {
    name: "systemWrites",
    severity: "high",
};
const SHADOW_READ: GlobalRule = GlobalRule {
    name: "shadowReads",
    severity: "critical",
};

impl GlobalRulesConfig {
    /// The rule `observation` breaks, if any.
    pub fn check(&self, observation: &Observation) -> Option<GlobalRule> {
        match observation {
            Observation::Exec { path, .. } => {
                let name = path.rsplit('/').next().unwrap_or(path);
                if self.ssh && SSH_PROGRAMS.contains(&name) {
                    Some(SSH)
                } else if self.package_managers && PACKAGE_MANAGERS.contains(&name) {
                    Some(PACKAGE_MANAGER)
                } else {
                    None
                }
            }
            Observation::File { path, access } => match access {
                FileAccess::Write
                    if self.system_writes && SYSTEM_DIRS.iter().any(|dir| is_below(path, dir)) =>
                {
                    Some(SYSTEM_WRITE)
                }
                FileAccess::Read if self.shadow_reads && SHADOW_FILES.contains(&path.as_str()) => {
                    Some(SHADOW_READ)
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// Program names whose exec is denied.
    pub fn denied_programs(&self) -> impl Iterator<Item = &'static str> {
        let ssh: &[&str] = if self.ssh { SSH_PROGRAMS } else { &[] };
        let packages: &[&str] = if self.package_managers {
            PACKAGE_MANAGERS
        } else {
            &[]
        };
        ssh.iter().chain(packages).copied()
    }

    /// Directories below which writes are denied.
    pub fn write_protected_dirs(&self) -> &'static [&'static str] {
        if self.system_writes { SYSTEM_DIRS } else { &[] }
    }

    /// Files whose reads are denied.
    pub fn read_protected_files(&self) -> &'static [&'static str] {
        if self.shadow_reads { SHADOW_FILES } else { &[] }
    }
}

/// True when `path` is strictly below `dir` (`/etc/x` is below `/etc`; `/etcetera` is not).
fn is_below(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(path: &str) -> Observation {
        Observation::Exec {
            path: path.into(),
            parent_exe: None,
        }
    }

    fn file(path: &str, access: FileAccess) -> Observation {
        Observation::File {
            path: path.into(),
            access,
        }
    }

    #[test]
    fn defaults_catch_each_rule_and_nothing_nearby() {
        let rules = GlobalRulesConfig::default();
        assert_eq!(rules.check(&exec("/usr/sbin/sshd")), Some(SSH));
        assert_eq!(
            rules.check(&exec("/usr/bin/apt-get")),
            Some(PACKAGE_MANAGER)
        );
        assert_eq!(rules.check(&exec("/usr/bin/sshfs")), None);
        assert_eq!(
            rules.check(&file("/etc/passwd", FileAccess::Write)),
            Some(SYSTEM_WRITE)
        );
        assert_eq!(rules.check(&file("/etc/passwd", FileAccess::Read)), None);
        assert_eq!(rules.check(&file("/etcetera/x", FileAccess::Write)), None);
        assert_eq!(rules.check(&file("/etc", FileAccess::Write)), None);
        assert_eq!(
            rules.check(&file("/etc/shadow", FileAccess::Read)),
            Some(SHADOW_READ)
        );
        assert_eq!(rules.check(&file("/tmp/x", FileAccess::Write)), None);
    }

    #[test]
    fn each_rule_can_be_switched_off() {
        let rules = GlobalRulesConfig {
            ssh: false,
            package_managers: false,
            system_writes: false,
            shadow_reads: false,
        };
        assert_eq!(rules.check(&exec("/usr/sbin/sshd")), None);
        assert_eq!(rules.check(&exec("/sbin/apk")), None);
        assert_eq!(rules.check(&file("/etc/passwd", FileAccess::Write)), None);
        assert_eq!(rules.check(&file("/etc/shadow", FileAccess::Read)), None);
        assert_eq!(rules.denied_programs().count(), 0);
    }
}
