//! `cargo xtask vm-test`: end-to-end tests under a second kernel. The host kernel has no
//! active BPF LSM (it covers the fallback path); Debian 12's 6.1 cloud kernel, booted under
//! QEMU with `lsm=...,bpf`, has it. The test binaries, the real agent and a real containerd run
//! inside the guest from an initramfs; results come back over the serial console.
//!
//! Steps: fetch the kernel (cached), build the test binaries, the agent and the workloads on
//! the host, pack them into an initramfs, boot, stream the console, write
//! `target/vm/results.txt`.

mod console;
mod cpio;
mod initramfs;
mod kernel;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::cmd::{self, note, step};
use crate::setup;

/// Test binaries `vm-test` runs when no `--test` is given: the ones whose behaviour depends on
/// the kernel's enforcement mechanisms.
pub const DEFAULT_TESTS: &[&str] = &[
    "e2e_exec",
    "e2e_monitor",
    "e2e_enforce",
    "e2e_kernel_filter",
];

/// Kernel command line: BPF LSM on (Debian's default list does not include it), output on the
/// serial console, and a panic ends QEMU (`-no-reboot`) instead of hanging until the timeout. A
/// soft lockup panics too, and `loglevel=5` keeps boot quiet but prints its backtrace.
const KERNEL_ARGS: &str =
    "console=ttyS0 lsm=lockdown,capability,bpf panic=-1 loglevel=5 softlockup_panic=1";

pub struct Options {
    /// Test targets (`[[test]]` names) to run in the guest.
    pub tests: Vec<String>,
    /// A `linux-image-*` package instead of the newest 6.1 cloud kernel.
    pub kernel: Option<String>,
    /// Boot, tests and power-off together may take this long.
    pub timeout: Duration,
    /// Guest memory.
    pub memory_mib: u32,
    /// Arguments for every test binary (libtest's: filters, `--nocapture`, ...).
    pub test_args: Vec<String>,
}

/// Runs the tests of `options` in the guest; fails if any failed, BPF LSM was not active, or
/// the guest did not finish.
pub fn run(root: &Path, target: &Path, options: &Options) -> Result<()> {
    let started = Instant::now();
    let vm = target.join("vm");
    fs::create_dir_all(&vm).with_context(|| format!("creating {}", vm.display()))?;

    let kernel = kernel::fetch(&vm.join("kernel"), options.kernel.as_deref())?;
    let built = build_tests(root, &options.tests)?;
    let workloads = build_workloads(root, &vm.join("workloads"))?;

    step("packing the initramfs");
    let stripped = vm.join("bin");
    fs::create_dir_all(&stripped)?;
    let mut binaries = vec![(built.agent.clone(), strip(&built.agent, &stripped)?)];
    let mut guest_tests = Vec::new();
    for test in &built.tests {
        binaries.push((test.executable.clone(), strip(&test.executable, &stripped)?));
        guest_tests.push(initramfs::GuestTest {
            name: test.name.clone(),
            binary: test.executable.clone(),
            dir: test.dir.clone(),
        });
    }
    let initrd = vm.join("initramfs.cpio");
    let size = initramfs::build(
        &initramfs::Spec {
            workspace: root,
            target,
            binaries: &binaries,
            workloads: &workloads,
            tests: &guest_tests,
            test_args: &options.test_args,
            env: &guest_env(),
        },
        &initrd,
    )?;
    note(format!("{} ({} MiB)", initrd.display(), size >> 20));

    step(format!(
        "booting {} under QEMU (TCG; timeout {} s)",
        kernel.package,
        options.timeout.as_secs()
    ));
    let console_log = vm.join("console.log");
    let run = console::boot(
        &console::Machine {
            kernel: &kernel.image,
            initrd: &initrd,
            append: KERNEL_ARGS,
            memory_mib: options.memory_mib,
            cpus: 2,
        },
        options.timeout,
        &console_log,
    )?;

    let verdict = verdict(&run, &options.tests, options.timeout);
    let report = report(
        &kernel.package,
        &run,
        &verdict,
        started.elapsed(),
        &console_log,
    );
    let results = vm.join("results.txt");
    fs::write(&results, &report).with_context(|| format!("writing {}", results.display()))?;
    step(format!("VM test results ({})", results.display()));
    for line in report.lines() {
        note(line);
    }
    if !verdict.is_empty() {
        bail!("VM tests failed: {}", verdict.join("; "));
    }
    Ok(())
}

/// The test environment inside the guest. `CUSTOS_VM=1` lets a test tell where it runs (e.g.
/// to require the LSM mechanism there rather than accept the fallback).
fn guest_env() -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("CUSTOS_REQUIRE_PRIVILEGED", "1"),
        ("CUSTOS_VM", "1"),
        ("CUSTOS_TEST_WORKLOADS", initramfs::GUEST_WORKLOADS),
        ("RUST_BACKTRACE", "1"),
        ("HOME", "/root"),
        ("TMPDIR", "/tmp"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for key in [
        "RUST_LOG",
        "RUST_TEST_TIME_UNIT",
        "RUST_TEST_TIME_INTEGRATION",
    ] {
        if let Ok(value) = std::env::var(key) {
            env.push((key.to_owned(), value));
        }
    }
    env
}

/// Why the run failed; empty if it passed.
fn verdict(run: &console::Run, wanted: &[String], timeout: Duration) -> Vec<String> {
    let t = &run.transcript;
    let mut problems = Vec::new();
    if run.timed_out {
        problems.push(match t.unfinished() {
            Some(test) => format!("timed out after {} s in {test}", timeout.as_secs()),
            None => format!("timed out after {} s", timeout.as_secs()),
        });
    }
    if let Some(panic) = &t.panic {
        problems.push(format!("the guest kernel panicked: {panic}"));
    }
    if let Some(error) = &t.setup_error {
        problems.push(format!("guest setup failed: {error}"));
    }
    match &t.lsm {
        None => problems.push("the guest never reported its LSM list".into()),
        Some(lsm) if !t.bpf_lsm() => problems.push(format!(
            "BPF LSM is not active in the guest (/sys/kernel/security/lsm: {lsm})"
        )),
        Some(_) => {}
    }
    for run in t.tests.iter().filter(|run| !run.passed()) {
        problems.push(match (run.code, run.failed.is_empty()) {
            (None, _) => format!("{} did not finish", run.name),
            (Some(code), true) => format!("{} exited with {code}", run.name),
            (Some(code), false) => format!(
                "{} exited with {code} (failed: {})",
                run.name,
                run.failed.join(", ")
            ),
        });
    }
    for name in wanted {
        if !t.tests.iter().any(|run| &run.name == name) && !run.timed_out && t.panic.is_none() {
            problems.push(format!("{name} never started"));
        }
    }
    if !t.done && problems.is_empty() {
        problems.push("the guest stopped before its /init finished".into());
    }
    problems
}

/// `target/vm/results.txt`: one line per test binary, then the verdict.
fn report(
    package: &str,
    run: &console::Run,
    verdict: &[String],
    total: Duration,
    console_log: &Path,
) -> String {
    let t = &run.transcript;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "kernel: {package} ({})",
        t.kernel.as_deref().unwrap_or("did not report")
    );
    let _ = writeln!(out, "lsm: {}", t.lsm.as_deref().unwrap_or("did not report"));
    for test in &t.tests {
        let status = match test.code {
            Some(0) => "ok".to_owned(),
            Some(code) => format!("FAILED (exit {code})"),
            None => "DID NOT FINISH".to_owned(),
        };
        let summary = test.summary.join(" | ");
        let _ = writeln!(out, "{}: {status} {summary}", test.name);
        for failed in &test.failed {
            let _ = writeln!(out, "  failed: {failed}");
        }
    }
    let _ = writeln!(
        out,
        "time: {:.0} s in the guest, {:.0} s in all (console: {})",
        run.elapsed.as_secs_f64(),
        total.as_secs_f64(),
        console_log.display()
    );
    if verdict.is_empty() {
        let _ = writeln!(out, "result: ok");
    } else {
        let _ = writeln!(out, "result: FAILED: {}", verdict.join("; "));
    }
    out
}

/// A test binary of the workspace, as cargo built it.
struct TestBinary {
    name: String,
    executable: PathBuf,
    /// Its package's directory (the working directory `cargo test` gives it).
    dir: PathBuf,
}

struct Built {
    /// The `custos` binary (`CARGO_BIN_EXE_custos` of the tests).
    agent: PathBuf,
    tests: Vec<TestBinary>,
}

/// `cargo test --workspace --no-run --test NAME...` (the host suite's own feature set and
/// profile, so `cargo xtask test` rebuilds nothing) and the executables it reports.
fn build_tests(root: &Path, tests: &[String]) -> Result<Built> {
    step(format!("building the test binaries: {}", tests.join(" ")));
    let mut cargo = Command::new(setup::cargo());
    cargo
        .args([
            "test",
            "--workspace",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(root)
        .stderr(Stdio::inherit());
    for test in tests {
        cargo.args(["--test", test]);
    }
    let out = cmd::output(&mut cargo).context("building the test binaries")?;
    parse_artifacts(&out, tests)
}

/// Picks the test executables named `tests` and the `custos` binary out of cargo's JSON
/// messages.
fn parse_artifacts(messages: &str, tests: &[String]) -> Result<Built> {
    let mut agent = None;
    let mut found = Vec::new();
    for line in messages.lines() {
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(executable) = message["executable"].as_str() else {
            continue;
        };
        let name = message["target"]["name"].as_str().unwrap_or_default();
        let kinds = message["target"]["kind"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let is = |kind: &str| kinds.iter().any(|k| k == kind);
        if is("bin") && name == "custos" {
            agent = Some(PathBuf::from(executable));
        } else if is("test") && tests.iter().any(|t| t == name) {
            let manifest = message["manifest_path"].as_str().unwrap_or_default();
            found.push(TestBinary {
                name: name.to_owned(),
                executable: PathBuf::from(executable),
                dir: Path::new(manifest)
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default(),
            });
        }
    }
    let agent = agent.context("cargo built no `custos` binary (the agent the tests start)")?;
    // In the order asked for.
    let mut ordered = Vec::new();
    for name in tests {
        let index = found
            .iter()
            .position(|t| &t.name == name)
            .with_context(|| format!("cargo built no test binary named {name}"))?;
        ordered.push(found.swap_remove(index));
    }
    Ok(Built {
        agent,
        tests: ordered,
    })
}

/// The workloads of tests/workloads, compiled statically on the host (the guest has no C
/// compiler) with the flags tests/support's `install_workload` uses (and `-pthread`, which
/// bench.c needs); up-to-date ones are kept.
fn build_workloads(root: &Path, out: &Path) -> Result<Vec<PathBuf>> {
    step("building the workloads (static)");
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let sources = root.join("tests/workloads");
    let mut built = Vec::new();
    let mut entries: Vec<PathBuf> = fs::read_dir(&sources)
        .with_context(|| format!("listing {}", sources.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "c"))
        .collect();
    entries.sort();
    for source in entries {
        let name = source.file_stem().context("workload without a name")?;
        let binary = out.join(name);
        if !newer(&binary, &source) {
            cmd::run(
                Command::new(std::env::var_os("CC").unwrap_or_else(|| "cc".into()))
                    .args(["-static", "-O2", "-pthread", "-Wall", "-o"])
                    .arg(&binary)
                    .arg(&source),
            )
            .with_context(|| format!("compiling {}", source.display()))?;
        }
        built.push(binary);
    }
    note(format!("{} workloads in {}", built.len(), out.display()));
    Ok(built)
}

/// Whether `output` exists and is newer than `input`.
fn newer(output: &Path, input: &Path) -> bool {
    let modified = |path: &Path| fs::metadata(path).and_then(|m| m.modified()).ok();
    matches!((modified(output), modified(input)), (Some(o), Some(i)) if o > i)
}

/// A copy of `binary` without debug sections, in `dir`: test binaries shrink about tenfold,
/// which is what keeps the initramfs (and the guest's memory) small.
fn strip(binary: &Path, dir: &Path) -> Result<PathBuf> {
    let name = binary
        .file_name()
        .with_context(|| format!("{} has no file name", binary.display()))?;
    let out = dir.join(name);
    if !newer(&out, binary) {
        cmd::output(
            Command::new("objcopy")
                .arg("--strip-debug")
                .arg(binary)
                .arg(&out),
        )
        .with_context(|| format!("stripping {} (objcopy is in binutils)", binary.display()))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_agent_and_the_asked_tests_in_cargo_messages() {
        let messages = r#"{"reason":"compiler-artifact","target":{"name":"custos","kind":["lib"]},"executable":null,"manifest_path":"/w/agent/Cargo.toml"}
{"reason":"compiler-artifact","target":{"name":"custos","kind":["bin"]},"executable":"/w/target/debug/custos","manifest_path":"/w/agent/Cargo.toml"}
{"reason":"compiler-artifact","target":{"name":"e2e_monitor","kind":["test"]},"executable":"/w/target/debug/deps/e2e_monitor-2","manifest_path":"/w/agent/Cargo.toml"}
{"reason":"compiler-artifact","target":{"name":"e2e_exec","kind":["test"]},"executable":"/w/target/debug/deps/e2e_exec-1","manifest_path":"/w/agent/Cargo.toml"}
{"reason":"build-finished","success":true}"#;
        let wanted = ["e2e_exec".to_owned(), "e2e_monitor".to_owned()];
        let built = parse_artifacts(messages, &wanted).expect("parse");
        assert_eq!(built.agent, Path::new("/w/target/debug/custos"));
        let names: Vec<_> = built.tests.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["e2e_exec", "e2e_monitor"]);
        assert_eq!(built.tests[0].dir, Path::new("/w/agent"));

        let err = parse_artifacts(messages, &["e2e_enforce".to_owned()])
            .err()
            .expect("missing test");
        assert!(err.to_string().contains("e2e_enforce"), "{err}");
    }

    fn run_of(console: &str, timed_out: bool) -> console::Run {
        let mut transcript = console::Transcript::default();
        for line in console.lines() {
            transcript.line(line);
        }
        console::Run {
            transcript,
            timed_out,
            elapsed: Duration::from_secs(1),
        }
    }

    #[test]
    fn verdict_needs_bpf_lsm_every_test_and_the_end() {
        let wanted = ["a".to_owned(), "b".to_owned()];
        let timeout = Duration::from_secs(9);
        let good = "custos-vm: lsm capability,bpf\ncustos-vm: begin a\ncustos-vm: end a 0\n\
                    custos-vm: begin b\ncustos-vm: end b 0\ncustos-vm: done\n";
        assert!(verdict(&run_of(good, false), &wanted, timeout).is_empty());

        let no_lsm = good.replace("capability,bpf", "capability");
        assert_eq!(
            verdict(&run_of(&no_lsm, false), &wanted, timeout),
            ["BPF LSM is not active in the guest (/sys/kernel/security/lsm: capability)"]
        );
        let failed = good.replace("end b 0", "end b 101");
        assert_eq!(
            verdict(&run_of(&failed, false), &wanted, timeout),
            ["b exited with 101"]
        );
        let hung = "custos-vm: lsm bpf\ncustos-vm: begin a\n";
        assert_eq!(
            verdict(&run_of(hung, true), &wanted, timeout),
            ["timed out after 9 s in a", "a did not finish"]
        );
        let cut = "custos-vm: lsm bpf\ncustos-vm: begin a\ncustos-vm: end a 0\n";
        assert_eq!(
            verdict(&run_of(cut, false), &wanted, timeout),
            ["b never started"]
        );
    }
}
