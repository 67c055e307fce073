//! Client side of the CLI.
pub async fn events(_args: crate::cli::EventsArgs) -> anyhow::Result<()> { anyhow::bail!("not yet") }
