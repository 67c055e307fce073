//! Command-line interface: one binary, `custos`, that runs the daemon (`custos agent`) or
//! talks to it over gRPC (`custos events`, ...).
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Default unix socket of the gRPC API.
pub const DEFAULT_SOCKET: &str = "/run/custos/custos.sock";

#[derive(Debug, Parser)]
#[command(
    name = "custos",
    version,
    about = "Runtime behaviour monitor for Kubernetes nodes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent on this node (needs root: it loads eBPF programs).
    Agent(AgentArgs),
    /// Stream events from a running agent, one per line, until interrupted.
    Events(EventsArgs),
    /// Behaviour profiles: learning status, export, import, merge, diff, seccomp.
    Profiles(crate::profile_commands::ProfilesArgs),
    /// Attach empty programs to the agent's hooks until interrupted: the floor condition of
    /// `cargo xtask bench` (needs root).
    #[command(hide = true)]
    BenchFloor,
}

/// Flags of `custos agent`. Each one, when given, overrides the configuration file (or the
/// built-in configuration, `deploy/config/custos.yaml`).
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Configuration file (YAML); without it the built-in default is used.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Unix socket to serve the gRPC API on (created with mode 0600) [default: /run/custos/custos.sock].
    #[arg(long, value_name = "PATH")]
    pub listen_unix: Option<PathBuf>,
    /// Also serve the gRPC API on this TCP address (e.g. 127.0.0.1:7447), over TLS: needs
    /// --tls-cert and --tls-key (or api.tls in the configuration).
    #[arg(long, value_name = "ADDR")]
    pub listen_tcp: Option<std::net::SocketAddr>,
    /// Certificate chain (PEM) of the TCP listener, which serves only TLS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA certificate(s) (PEM) that TCP clients' certificates must chain to (mutual TLS).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Directory for persistent state (created if missing; must be writable) [default: /var/lib/custos].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// containerd's gRPC socket, the source of container and pod metadata [default: /run/containerd/containerd.sock].
    #[arg(long, value_name = "PATH")]
    pub containerd_socket: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Unix socket of the agent's gRPC API.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Compact)]
    pub output: OutputFormat,
    /// Only events of pods in these namespaces (repeatable).
    #[arg(long = "namespace", short = 'n', value_name = "NS")]
    pub namespaces: Vec<String>,
    /// Only events of these pods (repeatable).
    #[arg(long = "pod", value_name = "POD")]
    pub pods: Vec<String>,
    /// Only events of these containers, by id or id prefix (repeatable).
    #[arg(long = "container", value_name = "ID")]
    pub container_ids: Vec<String>,
    /// Only events of these kinds: exec, exit (repeatable).
    #[arg(long = "kind", value_name = "KIND")]
    pub kinds: Vec<String>,
    /// Only host (non-container) events.
    #[arg(long)]
    pub host_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// One JSON object per line.
    Json,
    /// One short human-readable line per event.
    Compact,
}
