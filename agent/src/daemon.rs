//! The daemon.
pub async fn run(_args: crate::cli::AgentArgs) -> anyhow::Result<()> { anyhow::bail!("not yet") }
