use clap::Parser as _;
use custos::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("custos: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Agent(args) => custos::daemon::run(args).await,
            Command::Events(args) => custos::client::events(args).await,
            Command::Profiles(args) => custos::profile_commands::run(args).await,
            Command::BenchFloor => custos::daemon::bench_floor().await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("custos: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
