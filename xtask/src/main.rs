//! Developer tasks for Custos: `cargo xtask <setup|run|test|vm-test|lint|bench>` (see
//! `cargo xtask --help`).

mod bench;
mod cmd;
mod setup;
mod vm;

use std::env;
use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

use crate::cmd::{note, step};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Custos developer tasks",
    long_about = "Custos developer tasks. `run`, `test` and `setup` prepare this host first \
                  (packages, toolchain, tracefs, containerd); they need root the first time."
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install and start what building, running and testing Custos needs on this host:
    /// Debian packages, rust-src, bpf-linker, tracefs, containerd. Idempotent.
    Setup,
    /// Set up, build the agent (release) and run `custos agent [ARGS]...` in the foreground.
    Run {
        /// Arguments for `custos agent` (default: none, i.e. its embedded default configuration).
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<OsString>,
    },
    /// Set up and run `cargo test --workspace [ARGS]...` (debug profile), then `vm-test`.
    ///
    /// ARGS go to `cargo test` as they are, e.g. `cargo xtask test -- -p custos -- --nocapture`.
    Test {
        /// Skip the tests under the second kernel (`vm-test`).
        #[arg(long)]
        no_vm: bool,
        /// Extra arguments for `cargo test`.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<OsString>,
    },
    /// Run end-to-end tests inside QEMU under Debian 12's 6.1 kernel with BPF LSM active:
    /// the real agent and containerd in the guest, results in target/vm/results.txt.
    ///
    /// ARGS go to every test binary, e.g. `cargo xtask vm-test -- --nocapture`.
    VmTest {
        /// A test target to run (repeatable; default: the enforcement tests).
        #[arg(long = "test", value_name = "NAME")]
        tests: Vec<String>,
        /// A Debian kernel package to boot instead of the newest linux-image-6.1.0-*-cloud-amd64.
        #[arg(long, value_name = "PACKAGE")]
        kernel: Option<String>,
        /// Seconds the whole guest run (boot, tests, power-off) may take.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 2048)]
        memory: u32,
        /// Arguments for the test binaries.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<String>,
    },
    /// `cargo fmt --all -- --check` and `cargo clippy --workspace --all-targets -- -D warnings`.
    Lint,
    /// Set up, build the agent (release) and benchmark it: workload overhead with the agent
    /// attached vs not, events/s to one subscriber, agent memory. Writes docs/bench/latest.{md,json}
    /// and the README's table. Needs root; takes a few minutes.
    Bench {
        /// Rounds; each runs every workload once with and once without the agent.
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        /// Seconds each offered-load step of the throughput test lasts.
        #[arg(long, default_value_t = 2.0)]
        storm_seconds: f64,
        /// Benchmark this `custos` binary instead of building target/release/custos.
        #[arg(long, value_name = "PATH")]
        agent: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    put_cargo_bin_on_path();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Setup => setup::all(),
        Task::Run { args } => run_agent(&args),
        Task::Test { no_vm, args } => test(no_vm, &args),
        Task::VmTest {
            tests,
            kernel,
            timeout,
            memory,
            args,
        } => {
            setup::all()?;
            vm_test(vm::Options {
                tests: if tests.is_empty() {
                    vm::DEFAULT_TESTS.iter().map(|t| (*t).to_owned()).collect()
                } else {
                    tests
                },
                kernel,
                timeout: Duration::from_secs(timeout),
                memory_mib: memory,
                test_args: args,
            })
        }
        Task::Lint => lint(),
        Task::Bench {
            rounds,
            storm_seconds,
            agent,
        } => bench(
            agent,
            &bench::Options {
                rounds,
                storm_seconds,
            },
        ),
    }
}

fn run_agent(args: &[OsString]) -> Result<()> {
    setup::all()?;
    let root = workspace_root();
    step("building the agent (release)");
    cmd::run(
        Command::new(setup::cargo())
            .args(["build", "--release", "-p", "custos"])
            .current_dir(&root),
    )?;
    let binary = target_dir(&root).join("release/custos");
    let mut agent = Command::new(&binary);
    agent.arg("agent").args(args).current_dir(&root);
    step(format!("running: {}", cmd::display(&agent)));
    // Replace this process, so Ctrl-C and other signals reach the agent directly and its exit
    // status becomes ours.
    let err = agent.exec();
    Err(err).with_context(|| format!("could not execute {}", binary.display()))
}

fn bench(agent: Option<PathBuf>, options: &bench::Options) -> Result<()> {
    setup::all()?;
    let root = workspace_root();
    let target = target_dir(&root);
    let binary = match agent {
        Some(binary) => env::current_dir()?.join(binary),
        None => {
            step("building the agent (release)");
            cmd::run(
                Command::new(setup::cargo())
                    .args(["build", "--release", "-p", "custos"])
                    .current_dir(&root),
            )?;
            target.join("release/custos")
        }
    };
    bench::run(&root, &target, &binary, options)
}

fn test(no_vm: bool, args: &[OsString]) -> Result<()> {
    setup::all()?;
    setup::deploy_tools()?;
    let root = workspace_root();
    step("running the test suite");
    let mut test = Command::new(setup::cargo());
    test.args(["test", "--workspace"]);
    if env::var_os("CI").is_some() {
        // In CI, report every failing test binary rather than stopping at the first.
        test.arg("--no-fail-fast");
    }
    // Tests that need root or kernel features skip (loudly) when run by hand without them;
    // here, as in CI, a missing privilege must fail them instead.
    test.env("CUSTOS_REQUIRE_PRIVILEGED", "1");
    // RUST_LOG is passed on if the caller set it, and never set here.
    let host = cmd::run(test.args(args).current_dir(&root)).context("the test suite failed");
    if no_vm {
        return host;
    }
    // The second kernel runs even when the host suite failed: CI reports both.
    let guest = vm_test(vm::Options {
        tests: vm::DEFAULT_TESTS.iter().map(|t| (*t).to_owned()).collect(),
        kernel: None,
        timeout: Duration::from_secs(600),
        memory_mib: 2048,
        test_args: Vec::new(),
    });
    match (host, guest) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(err), Ok(())) | (Ok(()), Err(err)) => Err(err),
        (Err(host), Err(guest)) => bail!("{host:#}; and {guest:#}"),
    }
}

fn vm_test(options: vm::Options) -> Result<()> {
    let root = workspace_root();
    vm::run(&root, &target_dir(&root), &options)
}

fn lint() -> Result<()> {
    // clippy compiles the agent, whose build script builds the eBPF programs.
    setup::toolchain()?;
    setup::lint_tools()?;
    let root = workspace_root();
    let cargo = setup::cargo();

    step("checking formatting");
    let fmt = cmd::run(
        Command::new(&cargo)
            .args(["fmt", "--all", "--", "--check"])
            .current_dir(&root),
    );
    step("running clippy");
    let clippy = cmd::run(
        Command::new(&cargo)
            .args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])
            .current_dir(&root),
    );
    let mut failed = Vec::new();
    if let Err(err) = fmt {
        note(format!("{err:#}"));
        failed.push("formatting (fix it with `cargo fmt --all`)");
    }
    if let Err(err) = clippy {
        note(format!("{err:#}"));
        failed.push("clippy");
    }
    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Tools that `cargo install` puts in cargo's bin directory (bpf-linker) must be found by the
/// commands we run, even when that directory is not on the caller's PATH.
fn put_cargo_bin_on_path() {
    let Some(bin) = setup::cargo_bin_dir() else {
        return;
    };
    let path = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|p| p == bin) {
        return;
    }
    let joined = env::join_paths(std::iter::once(bin).chain(env::split_paths(&path)));
    if let Ok(joined) = joined {
        // SAFETY: called at the start of main, before any other thread exists.
        unsafe { env::set_var("PATH", joined) };
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in a subdirectory of the workspace")
        .to_path_buf()
}

fn target_dir(root: &Path) -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .or_else(|| env::var_os("CARGO_BUILD_TARGET_DIR"))
        .map(|dir| root.join(dir))
        .unwrap_or_else(|| root.join("target"))
}
