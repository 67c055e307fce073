//! Agent configuration: a YAML file (`custos.yaml`) whose default is embedded in the binary,
//! overridden by command-line flags.
use std::{net::SocketAddr, path::PathBuf};

use serde::Deserialize;

use crate::{cli::AgentArgs, modes::ModesConfig};

/// The default configuration, embedded from `deploy/config/custos.yaml`.
pub const DEFAULT_CONFIG: &str = include_str!("../../deploy/config/custos.yaml");

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    pub api: ApiConfig,
    pub state_dir: PathBuf,
    pub containerd: ContainerdConfig,
    pub sensors: SensorsConfig,
    pub modes: ModesConfig,
    pub profiles: ProfilesConfig,
    pub events: EventsConfig,
    /// Event outputs besides gRPC (OCSF JSON lines); none when the section is absent.
    #[serde(default)]
    pub outputs: crate::outputs::OutputsConfig,
    /// The Prometheus endpoint; off when the section is absent.
    #[serde(default)]
    pub metrics: crate::metrics::MetricsConfig,
    /// Global rules and other enforcement settings; defaults when the section is absent.
    #[serde(default)]
    pub enforcement: EnforcementConfig,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnforcementConfig {
    /// Rules that apply whatever a profile says, in every mode but `off`.
    #[serde(default)]
    pub global_rules: crate::enforcement::global_rules::GlobalRulesConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProfilesConfig {
    /// Directory of `BehaviorProfile` YAML files, imported and watched; none when absent.
    #[serde(default)]
    pub directory: Option<PathBuf>,
    /// A profile is `stable` after this long without a new entry.
    pub stable_after_seconds: u64,
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
    /// TLS of the TCP listener, which serves nothing else: required when `tcp` is set.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// Certificate files of the TCP listener (PEM). With `client_ca_file`, clients must present a
/// certificate signed by that CA (mutual TLS); without it, any client that reaches the port
/// can read every event, so leave it out only behind another gate.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsConfig {
    /// The server's certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// The private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

impl ApiConfig {
    /// Checks what the parser cannot: a TCP listener has TLS.
    pub fn validate(&self) -> Result<(), String> {
        match (self.tcp, &self.tls) {
            (Some(addr), None) => Err(format!(
                "api.tcp is {addr} but api.tls is not set: the TCP listener serves only TLS; set \
                 api.tls.certFile and api.tls.keyFile (or --tls-cert and --tls-key), or remove \
                 api.tcp"
            )),
            _ => Ok(()),
        }
    }
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
        config
            .outputs
            .validate()
            .map_err(|reason| ConfigError::Invalid {
                origin: origin.to_string(),
                reason,
            })?;
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
        config.apply_flags(args);
        let origin = match &args.config {
            Some(path) => format!("{} with the command-line flags", path.display()),
            None => "the built-in configuration with the command-line flags".to_owned(),
        };
        config
            .api
            .validate()
            .map_err(|reason| ConfigError::Invalid { origin, reason })?;
        Ok(config)
    }

    /// Command-line flags win over the file, on start and on every reload.
    pub fn apply_flags(&mut self, args: &AgentArgs) {
        let config = self;
        if let Some(socket) = &args.listen_unix {
            config.api.unix_socket = socket.clone();
        }
        if let Some(tcp) = args.listen_tcp {
            config.api.tcp = Some(tcp);
        }
        // clap makes --tls-cert and --tls-key come together. A client CA of the file is kept
        // unless a flag names another: new server files must not turn mutual TLS off.
        if let (Some(cert_file), Some(key_file)) = (&args.tls_cert, &args.tls_key) {
            let client_ca_file = config.api.tls.take().and_then(|tls| tls.client_ca_file);
            config.api.tls = Some(TlsConfig {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
                client_ca_file,
            });
        }
        if let (Some(ca), Some(tls)) = (&args.tls_client_ca, &mut config.api.tls) {
            tls.client_ca_file = Some(ca.clone());
        }
        if let Some(dir) = &args.state_dir {
            config.state_dir = dir.clone();
        }
        if let Some(socket) = &args.containerd_socket {
            config.containerd.socket = socket.clone();
        }
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
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            state_dir: Some("/tmp/state".into()),
            containerd_socket: None,
        };
        let config = Config::for_agent(&args).unwrap();
        assert_eq!(config.api.unix_socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(config.state_dir, PathBuf::from("/tmp/state"));
    }

    fn tls_args(config: Option<PathBuf>, tcp: &str, tls: &[&str]) -> AgentArgs {
        use clap::Parser as _;
        let mut argv = vec!["custos", "agent", "--listen-tcp", tcp];
        argv.extend_from_slice(tls);
        let config = config.map(|p| p.display().to_string());
        if let Some(config) = &config {
            argv.extend(["--config", config]);
        }
        match crate::cli::Cli::try_parse_from(argv).unwrap().command {
            crate::cli::Command::Agent(args) => args,
            other => panic!("not agent: {other:?}"),
        }
    }

    #[test]
    fn a_tcp_listener_without_tls_is_refused_with_what_to_set() {
        let error = Config::for_agent(&tls_args(None, "127.0.0.1:7447", &[]))
            .unwrap_err()
            .to_string();
        for needed in [
            "127.0.0.1:7447",
            "only TLS",
            "api.tls",
            "--tls-cert",
            "built-in",
        ] {
            assert!(error.contains(needed), "{needed}: {error}");
        }
        let text = DEFAULT_CONFIG.replace("tcp: null", "tcp: 0.0.0.0:7447");
        let error = Config::parse(&text, "t")
            .unwrap()
            .api
            .validate()
            .unwrap_err();
        assert!(error.contains("0.0.0.0:7447"), "{error}");
    }

    #[test]
    fn tls_flags_set_the_files_and_keep_a_client_ca_of_the_file() {
        let args = tls_args(
            None,
            "127.0.0.1:7447",
            &["--tls-cert", "/c.pem", "--tls-key", "/k.pem"],
        );
        let tls = Config::for_agent(&args).unwrap().api.tls.unwrap();
        assert_eq!(tls.cert_file, PathBuf::from("/c.pem"));
        assert_eq!(tls.key_file, PathBuf::from("/k.pem"));
        assert_eq!(tls.client_ca_file, None);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("custos.yaml");
        let text = DEFAULT_CONFIG.replace(
            "tls: null",
            "tls: {certFile: /old.pem, keyFile: /old.key, clientCaFile: /ca.pem}",
        );
        std::fs::write(&path, text).unwrap();
        let args = tls_args(
            Some(path.clone()),
            "127.0.0.1:7447",
            &["--tls-cert", "/c.pem", "--tls-key", "/k.pem"],
        );
        let tls = Config::for_agent(&args).unwrap().api.tls.unwrap();
        assert_eq!(tls.cert_file, PathBuf::from("/c.pem"));
        assert_eq!(tls.client_ca_file, Some(PathBuf::from("/ca.pem")));
        let args = tls_args(
            Some(path),
            "127.0.0.1:7447",
            &[
                "--tls-cert",
                "/c.pem",
                "--tls-key",
                "/k.pem",
                "--tls-client-ca",
                "/new-ca.pem",
            ],
        );
        let tls = Config::for_agent(&args).unwrap().api.tls.unwrap();
        assert_eq!(tls.client_ca_file, Some(PathBuf::from("/new-ca.pem")));
    }

    #[test]
    fn tls_flags_come_in_pairs() {
        use clap::Parser as _;
        for argv in [
            &["custos", "agent", "--tls-cert", "/c.pem"][..],
            &["custos", "agent", "--tls-key", "/k.pem"],
            &["custos", "agent", "--tls-client-ca", "/ca.pem"],
        ] {
            let error = crate::cli::Cli::try_parse_from(argv)
                .unwrap_err()
                .to_string();
            assert!(error.contains("required"), "{argv:?}: {error}");
        }
    }
}

/// How often a configuration file is checked for changes.
pub const RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Watches the configuration file (if any) and publishes each valid new version. An invalid
/// edit is logged with its reason and ignored: the last good configuration stays in force.
pub fn watch(
    path: Option<PathBuf>,
    initial: Config,
    overrides: impl Fn(&mut Config) + Send + 'static,
) -> tokio::sync::watch::Receiver<Config> {
    let (sender, receiver) = tokio::sync::watch::channel(initial);
    let Some(path) = path else {
        return receiver;
    };
    let modified = |path: &PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    // The version the caller loaded; taken now, so an edit made right after is not missed.
    let mut last_seen = modified(&path);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(RELOAD_INTERVAL);
        loop {
            ticker.tick().await;
            let now = modified(&path);
            if now == last_seen {
                continue;
            }
            last_seen = now;
            let parsed = std::fs::read_to_string(&path)
                .map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })
                .and_then(|text| Config::parse(&text, &path.display().to_string()));
            match parsed {
                Ok(mut config) => {
                    overrides(&mut config);
                    if *sender.borrow() != config {
                        tracing::info!(path = %path.display(), "configuration reloaded");
                        sender.send_replace(config);
                    }
                }
                Err(error) => tracing::error!("{error}; keeping the last good configuration"),
            }
            if sender.is_closed() {
                return;
            }
        }
    });
    receiver
}

#[cfg(test)]
mod reload_tests {
    use super::*;

    fn args(config: &std::path::Path) -> AgentArgs {
        AgentArgs {
            config: Some(config.to_path_buf()),
            listen_unix: Some("/tmp/flag.sock".into()),
            listen_tcp: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            state_dir: None,
            containerd_socket: None,
        }
    }

    #[tokio::test]
    async fn edits_take_effect_and_bad_edits_keep_the_last_good_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("custos.yaml");
        std::fs::write(&path, DEFAULT_CONFIG).unwrap();
        let args = args(&path);
        let initial = Config::for_agent(&args).unwrap();
        let flags = args.clone();
        let mut updates = watch(Some(path.clone()), initial, move |c| c.apply_flags(&flags));

        // A valid change (modes of a namespace) arrives within a second.
        let edited =
            DEFAULT_CONFIG.replace("kube-system: off", "kube-system: off\n    prod: enforce");
        std::fs::write(&path, &edited).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), updates.changed())
            .await
            .expect("reload within 1 s")
            .unwrap();
        let current = updates.borrow_and_update().clone();
        assert_eq!(
            current.modes.mode_for("prod", "web"),
            crate::modes::Mode::Enforce
        );
        // Flags still win after a reload.
        assert_eq!(current.api.unix_socket, PathBuf::from("/tmp/flag.sock"));

        // An invalid change is ignored: nothing is published, the last good one stays.
        std::fs::write(&path, edited.replace("prod: enforce", "prod: enforcing")).unwrap();
        let changed =
            tokio::time::timeout(std::time::Duration::from_millis(800), updates.changed()).await;
        assert!(changed.is_err(), "an invalid configuration was published");
        assert_eq!(
            updates.borrow().modes.mode_for("prod", "web"),
            crate::modes::Mode::Enforce
        );
    }
}
