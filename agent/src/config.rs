//! Agent configuration: a YAML file (`custos.yaml`) whose default is embedded in the binary,
//! overridden by command-line flags.
use std::{net::SocketAddr, path::PathBuf};

use serde::Deserialize;

use crate::cli::AgentArgs;

/// The default configuration, embedded from `deploy/config/custos.yaml`.
pub const DEFAULT_CONFIG: &str = include_str!("../../deploy/config/custos.yaml");

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    pub api: ApiConfig,
    pub state_dir: PathBuf,
    pub containerd: ContainerdConfig,
    pub sensors: SensorsConfig,
    pub events: EventsConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SensorsConfig {
    pub trace_host: bool,
    pub repeat_window_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApiConfig {
    pub unix_socket: PathBuf,
    pub tcp: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerdConfig {
    pub socket: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EventsConfig {
    pub subscriber_queue: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration in {origin}: {source}")]
    Parse {
        origin: String,
        #[source]
        source: serde_norway::Error,
    },
    #[error("invalid configuration in {origin}: {reason}")]
    Invalid { origin: String, reason: String },
}

impl Config {
    /// Parses a configuration document; `origin` names it in errors (a path or "built-in").
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Self = serde_norway::from_str(text).map_err(|source| ConfigError::Parse {
            origin: origin.to_string(),
            source,
        })?;
        if config.events.subscriber_queue == 0 {
            return Err(ConfigError::Invalid {
                origin: origin.to_string(),
                reason: "events.subscriberQueue must be at least 1".into(),
            });
        }
        Ok(config)
    }

    /// The file given with `--config`, or the embedded default, then the flags on top.
    pub fn for_agent(args: &AgentArgs) -> Result<Self, ConfigError> {
        let mut config = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                Self::parse(&text, &path.display().to_string())?
            }
            None => Self::parse(DEFAULT_CONFIG, "the built-in configuration")?,
        };
        if let Some(socket) = &args.listen_unix {
            config.api.unix_socket = socket.clone();
        }
        if let Some(tcp) = args.listen_tcp {
            config.api.tcp = Some(tcp);
        }
        if let Some(dir) = &args.state_dir {
            config.state_dir = dir.clone();
        }
        if let Some(socket) = &args.containerd_socket {
            config.containerd.socket = socket.clone();
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_configuration_parses_with_documented_defaults() {
        let config = Config::parse(DEFAULT_CONFIG, "built-in").unwrap();
        assert_eq!(
            config.api.unix_socket,
            PathBuf::from(crate::cli::DEFAULT_SOCKET)
        );
        assert_eq!(config.state_dir, PathBuf::from("/var/lib/custos"));
        assert_eq!(config.api.tcp, None);
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_name_and_line() {
        let text = DEFAULT_CONFIG.replace("stateDir:", "stateDirectory:");
        let error = Config::parse(&text, "test.yaml").unwrap_err().to_string();
        assert!(error.contains("stateDirectory"), "{error}");
        assert!(error.contains("test.yaml"), "{error}");
        assert!(error.contains("line"), "{error}");
    }

    #[test]
    fn wrong_types_and_zero_queues_are_rejected() {
        let text = DEFAULT_CONFIG.replace("subscriberQueue: 8192", "subscriberQueue: lots");
        assert!(Config::parse(&text, "t").is_err());
        let text = DEFAULT_CONFIG.replace("subscriberQueue: 8192", "subscriberQueue: 0");
        let error = Config::parse(&text, "t").unwrap_err().to_string();
        assert!(error.contains("subscriberQueue"), "{error}");
    }

    #[test]
    fn flags_override_the_file() {
        let args = AgentArgs {
            config: None,
            listen_unix: Some("/tmp/x.sock".into()),
            listen_tcp: None,
            state_dir: Some("/tmp/state".into()),
            containerd_socket: None,
        };
        let config = Config::for_agent(&args).unwrap();
        assert_eq!(config.api.unix_socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(config.state_dir, PathBuf::from("/tmp/state"));
    }
}
