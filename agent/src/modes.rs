//! What Custos does with a workload's behaviour: learn it, flag deviations from its profile
//! (monitor), block them (enforce), or nothing (off). Set per namespace with per-workload
//! overrides in the configuration, and changed without a restart when the file changes.
use std::{collections::BTreeMap, fmt, str::FromStr};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Record behaviour into the workload's profile.
    Learn,
    /// Report what the workload does outside its profile.
    Monitor,
    /// Block what the workload does outside its profile.
    Enforce,
    /// Neither learn nor judge (events are still streamed).
    Off,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Learn, Mode::Monitor, Mode::Enforce, Mode::Off];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Learn => "learn",
            Mode::Monitor => "monitor",
            Mode::Enforce => "enforce",
            Mode::Off => "off",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown mode {given:?}; valid modes: learn, monitor, enforce, off")]
pub struct UnknownMode {
    pub given: String,
}

impl FromStr for Mode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mode::ALL
            .into_iter()
            .find(|mode| mode.name() == s)
            .ok_or_else(|| UnknownMode { given: s.into() })
    }
}

/// The `modes` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ModesConfig {
    /// Mode of namespaces not listed.
    pub default: Mode,
    /// Mode per Kubernetes namespace.
    #[serde(default)]
    pub namespaces: BTreeMap<String, Mode>,
    /// Per-workload exceptions; the most specific match wins (namespace + workload over
    /// workload alone), then the namespace, then the default.
    #[serde(default)]
    pub workloads: Vec<WorkloadMode>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadMode {
    /// Workload name (e.g. the Deployment's name); see the profile's workload identity.
    pub workload: String,
    /// Only in this namespace; any namespace when absent.
    #[serde(default)]
    pub namespace: Option<String>,
    pub mode: Mode,
}

impl ModesConfig {
    /// The mode of `workload` in `namespace`. Host processes (no namespace) use the default.
    pub fn mode_for(&self, namespace: &str, workload: &str) -> Mode {
        let exact = self
            .workloads
            .iter()
            .find(|w| w.workload == workload && w.namespace.as_deref() == Some(namespace));
        let any_namespace = || {
            self.workloads
                .iter()
                .find(|w| w.workload == workload && w.namespace.is_none())
        };
        if let Some(rule) = exact.or_else(any_namespace) {
            return rule.mode;
        }
        self.namespaces
            .get(namespace)
            .copied()
            .unwrap_or(self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ModesConfig {
        serde_norway::from_str(
            "default: off\nnamespaces: {qa: learn, prod: enforce}\nworkloads:\n  \
             - {workload: web, namespace: prod, mode: monitor}\n  \
             - {workload: batch, mode: off}\n",
        )
        .unwrap()
    }

    #[test]
    fn the_most_specific_rule_wins() {
        let modes = config();
        assert_eq!(modes.mode_for("prod", "web"), Mode::Monitor);
        assert_eq!(modes.mode_for("prod", "api"), Mode::Enforce);
        assert_eq!(modes.mode_for("qa", "web"), Mode::Learn);
        assert_eq!(modes.mode_for("qa", "batch"), Mode::Off);
        assert_eq!(modes.mode_for("dev", "api"), Mode::Off);
    }

    #[test]
    fn unknown_modes_and_fields_are_rejected_by_name() {
        let error = serde_norway::from_str::<ModesConfig>("default: learning\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("learning"), "{error}");
        let error = serde_norway::from_str::<ModesConfig>("default: off\nnamespace: {}\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("namespace"), "{error}");
        assert_eq!(
            "enforcing".parse::<Mode>(),
            Err(UnknownMode {
                given: "enforcing".into()
            })
        );
    }
}
