//! `cargo xtask setup`: make this host able to build, run and test Custos. Idempotent: every
//! step checks first and says "already present" when there is nothing to do.
//!
//! Steps, in order:
//! 1. Debian packages (containerd, runc, qemu, ...), through apt-get; needs root.
//! 2. The `rust-src` component of the stable toolchain (`-Z build-std=core` for the eBPF crate).
//! 3. `bpf-linker`, built against the libLLVM inside the stable toolchain's sysroot.
//! 4. tracefs mounted at /sys/kernel/tracing (tracepoint attach reads it); needs root.
//! 5. containerd answering on its socket (the tests run real containers); needs root.
//! 6. The deployment-manifest tools (tests/deploy_manifests.rs): `kubectl` must exist (it is
//!    not packaged for Debian 12, so it is only checked), `kubernetes-validate` and the Python
//!    gRPC packages of tests/python/ are installed with pip if missing.

use std::env;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{self, note, step};

/// Debian packages the build, the tests and the QEMU-based kernel tests use.
const APT_PACKAGES: &[&str] = &[
    "containerd",
    "runc",
    "busybox-static",
    "cpio",
    "qemu-system-x86",
    "bpftool",
    "iproute2",
    "strace",
    // containerd-client's build script runs protoc on containerd's API protos.
    "protobuf-compiler",
];

/// The toolchain the eBPF crate is built with (see agent/build.rs).
const TOOLCHAIN: &str = "stable";

/// bpf-linker release known to build against the Rust 1.95 sysroot's LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Where the libLLVM symlinks bpf-linker links against live; its rpath points here, so it must
/// stay. Overridable with CUSTOS_LLVM_PREFIX.
const LLVM_PREFIX_ROOT: &str = "/opt/custos-llvm";

const TRACEFS: &str = "/sys/kernel/tracing";
const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
const CONTAINERD_LOG: &str = "/var/log/custos-containerd.log";
const CONTAINERD_START_TIMEOUT: Duration = Duration::from_secs(20);

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Everything: packages, toolchain, tracefs, containerd.
pub fn all() -> Result<()> {
    apt_packages()?;
    toolchain()?;
    tracefs()?;
    containerd()?;
    step("setup: done");
    Ok(())
}

/// Only what compiling the workspace needs (no root required once installed).
pub fn toolchain() -> Result<()> {
    rust_src()?;
    bpf_linker()
}

/// The rustfmt and clippy components, for `cargo xtask lint`.
pub fn lint_tools() -> Result<()> {
    step("rustfmt and clippy");
    let present = |sub: &str| cmd::output(Command::new(cargo()).args([sub, "--version"])).is_ok();
    if present("fmt") && present("clippy") {
        note("already present");
        return Ok(());
    }
    cmd::run(Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]))
}

fn apt_packages() -> Result<()> {
    step("Debian packages");
    if cmd::output(Command::new("dpkg-query").arg("--version")).is_err() {
        note(format!(
            "dpkg-query not found: not a Debian system; make sure these (or equivalents) are \
             installed yourself: {}",
            APT_PACKAGES.join(" ")
        ));
        return Ok(());
    }
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| !package_installed(pkg))
        .collect();
    if missing.is_empty() {
        note(format!("already present: {}", APT_PACKAGES.join(" ")));
        return Ok(());
    }
    note(format!("missing: {}", missing.join(" ")));
    if !is_root() {
        bail!(
            "not running as root, so cannot install the missing Debian packages: {}. Re-run as \
             root, or install them with `apt-get install {}`",
            missing.join(", "),
            missing.join(" ")
        );
    }
    cmd::run(
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null()),
    )
    .context("apt-get update")?;
    cmd::run(
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "-o",
                "Dpkg::Options::=--force-confdef",
                "-o",
                "Dpkg::Options::=--force-confold",
            ])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null()),
    )
    .context("installing Debian packages")?;
    let still_missing: Vec<&str> = missing
        .into_iter()
        .filter(|pkg| !package_installed(pkg))
        .collect();
    if !still_missing.is_empty() {
        bail!(
            "apt-get finished but these are still not installed: {}",
            still_missing.join(" ")
        );
    }
    Ok(())
}

fn package_installed(pkg: &str) -> bool {
    cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_ok_and(|status| status == "install ok installed")
}

fn rust_src() -> Result<()> {
    step(format!("rust-src component of the {TOOLCHAIN} toolchain"));
    let sysroot = sysroot()?;
    let src = sysroot.join("lib/rustlib/src/rust/library");
    if src.is_dir() {
        note(format!("already present ({})", src.display()));
        return Ok(());
    }
    if !have_rustup() {
        bail!(
            "the rust-src component is missing ({} does not exist) and rustup is not available \
             to install it; install the Rust standard library sources for {}",
            src.display(),
            sysroot.display()
        );
    }
    cmd::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        TOOLCHAIN,
    ]))
    .context("installing rust-src")?;
    if !src.is_dir() {
        bail!(
            "rustup added rust-src but {} still does not exist",
            src.display()
        );
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    step("bpf-linker");
    if let Ok(version) = cmd::output(Command::new("bpf-linker").arg("--version")) {
        note(format!("already present ({version})"));
        return Ok(());
    }

    // A plain `cargo install bpf-linker` wants a system LLVM of the same major version as rustc's,
    // which Debian 12 does not have; the Rust toolchain ships one as a shared library.
    let sysroot = sysroot()?;
    let libllvm = find_libllvm(&sysroot.join("lib"))?;
    let file_name = libllvm
        .file_name()
        .and_then(|n| n.to_str())
        .context("libLLVM file name is not UTF-8")?
        .to_owned();
    let major = llvm_major(&file_name)
        .with_context(|| format!("cannot read the LLVM major version from {file_name}"))?;
    note(format!(
        "linking against {} (LLVM {major})",
        libllvm.display()
    ));

    let prefix = llvm_prefix()?;
    let lib64 = prefix.join("lib64");
    fs::create_dir_all(&lib64).with_context(|| {
        format!(
            "creating {} (set CUSTOS_LLVM_PREFIX to use another directory)",
            lib64.display()
        )
    })?;
    for name in ["libLLVM.so", file_name.as_str()] {
        let link = lib64.join(name);
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
        }
        symlink(&libllvm, &link)
            .with_context(|| format!("symlinking {} -> {}", link.display(), libllvm.display()))?;
        note(format!("{} -> {}", link.display(), libllvm.display()));
    }

    cmd::run(
        Command::new(cargo())
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix)
            .stdin(Stdio::null()),
    )
    .context("building bpf-linker")?;

    let version = cmd::output(Command::new("bpf-linker").arg("--version"))
        .context("bpf-linker was installed but does not run (is cargo's bin directory on PATH?)")?;
    note(format!("installed {version}"));
    Ok(())
}

fn tracefs() -> Result<()> {
    step(format!("tracefs at {TRACEFS}"));
    let events = Path::new(TRACEFS).join("events");
    if events.is_dir() {
        note("already present");
        return Ok(());
    }
    if !is_root() {
        bail!(
            "tracefs is not mounted ({} is missing) and mounting it needs root: re-run as root, \
             or run `mount -t tracefs none {TRACEFS}`",
            events.display()
        );
    }
    cmd::run(Command::new("mount").args(["-t", "tracefs", "none", TRACEFS]))
        .context("mounting tracefs")?;
    if !events.is_dir() {
        bail!("mounted tracefs but {} is still missing", events.display());
    }
    Ok(())
}

fn containerd() -> Result<()> {
    step(format!("containerd on {CONTAINERD_SOCKET}"));
    if containerd_answers() {
        note("already running");
        return Ok(());
    }
    if !is_root() {
        bail!(
            "containerd is not answering on {CONTAINERD_SOCKET} and starting it needs root: \
             re-run as root, or start `containerd` yourself"
        );
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(CONTAINERD_LOG)
        .with_context(|| format!("opening {CONTAINERD_LOG}"))?;
    let mut start = Command::new("containerd");
    start
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the log file handle")?)
        .stderr(log);
    // Detach it: its own session, so neither Ctrl-C in this terminal nor the end of this process
    // stops it.
    // SAFETY: setsid is async-signal-safe, as required between fork and exec.
    unsafe {
        start.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    note(format!(
        "$ containerd (in the background, log: {CONTAINERD_LOG})"
    ));
    let mut child = start.spawn().context("starting containerd")?;

    let deadline = Instant::now() + CONTAINERD_START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().context("checking on containerd")? {
            bail!(
                "containerd exited right away ({status}); its log ({CONTAINERD_LOG}) ends \
                 with:\n{}",
                log_tail(Path::new(CONTAINERD_LOG), 20)
            );
        }
        if containerd_answers() {
            note(format!("started (pid {})", child.id()));
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "containerd (pid {}) did not answer on {CONTAINERD_SOCKET} within {} s; its log \
                 ({CONTAINERD_LOG}) ends with:\n{}",
                child.id(),
                CONTAINERD_START_TIMEOUT.as_secs(),
                log_tail(Path::new(CONTAINERD_LOG), 20)
            );
        }
        thread::sleep(Duration::from_millis(500));
    }
}

fn containerd_answers() -> bool {
    cmd::succeeds_within(
        Command::new("ctr").args([
            "--address",
            CONTAINERD_SOCKET,
            "--connect-timeout",
            "2s",
            "--timeout",
            "5s",
            "version",
        ]),
        Duration::from_secs(8),
    )
}

/// `kubectl` (renders deploy/ with `kubectl kustomize`) and `kubernetes-validate` (validates
/// the rendered manifests offline against the Kubernetes schemas).
/// What the test suite needs beyond running the agent: kubectl (to render the manifests) and
/// kubernetes-validate (to validate them offline).
pub fn deploy_tools() -> Result<()> {
    step("kubectl");
    match cmd::output(Command::new("kubectl").args(["version", "--client"])) {
        Ok(version) => note(format!(
            "already present ({})",
            version.lines().next().unwrap_or_default()
        )),
        Err(err) => bail!(
            "kubectl is missing or does not run ({err:#}). The deployment tests render deploy/ \
             with `kubectl kustomize`; install kubectl (https://kubernetes.io/docs/tasks/tools/, \
             it is not in Debian 12's archive) and put it on PATH"
        ),
    }

    for package in PIP_PACKAGES {
        pip_install(package)?;
    }
    match cmd::output(Command::new("kubernetes-validate").arg("--version")) {
        Ok(version) => note(format!("present ({version})")),
        Err(err) => bail!(
            "kubernetes-validate is installed (`python3 -m pip show kubernetes-validate`) but \
             the `kubernetes-validate` command does not run ({err:#}); put pip's scripts \
             directory on PATH"
        ),
    }
    Ok(())
}

/// Python packages of the tests: kubernetes-validate (tests/deploy_manifests.rs) and the gRPC
/// client of tests/python/test_grpc_mtls.py (tests/e2e_python_grpc.rs).
const PIP_PACKAGES: &[&str] = &[
    "kubernetes-validate",
    "grpcio",
    "grpcio-tools",
    "grpcio-health-checking",
    "grpcio-reflection",
    "protobuf",
    // The OCSF schema (schema.ocsf.io's export) as JSON Schema, for tests/e2e_ocsf.rs.
    "ocsf-json-schema",
];

/// Installs `package` with pip unless it is there.
fn pip_install(package: &str) -> Result<()> {
    step(format!("{package} (pip)"));
    if cmd::output(Command::new("python3").args(["-m", "pip", "show", package])).is_ok() {
        note("already present");
        return Ok(());
    }
    cmd::output(Command::new("python3").args(["-m", "pip", "--version"])).with_context(|| {
        format!(
            "{package} is missing and `python3 -m pip` does not run: install python3-pip \
             (Debian) or another Python with pip"
        )
    })?;
    let install = || {
        let mut pip = Command::new("python3");
        pip.args(["-m", "pip", "install", "--quiet", package])
            .stdin(Stdio::null());
        pip
    };
    if let Err(err) = cmd::run(&mut install()) {
        // Debian's own python3 refuses pip installs (PEP 668); pip then installs into
        // /usr/local, beside (not over) the Debian-packaged modules.
        note(format!(
            "{err:#}; retrying with --break-system-packages (an externally managed Python)"
        ));
        cmd::run(install().arg("--break-system-packages"))
            .with_context(|| format!("installing {package} with pip"))?;
    }
    Ok(())
}

fn log_tail(path: &Path, lines: usize) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

/// The cargo that runs us (or the one on PATH).
pub fn cargo() -> PathBuf {
    env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from)
}

fn have_rustup() -> bool {
    cmd::output(Command::new("rustup").arg("--version")).is_ok()
}

/// The sysroot of the toolchain the eBPF crate is built with.
fn sysroot() -> Result<PathBuf> {
    let mut rustc = if have_rustup() {
        let mut c = Command::new("rustup");
        c.args(["run", TOOLCHAIN, "rustc"]);
        c
    } else {
        Command::new("rustc")
    };
    let out = cmd::output(rustc.args(["--print", "sysroot"]))
        .with_context(|| format!("finding the {TOOLCHAIN} toolchain's sysroot"))?;
    Ok(PathBuf::from(out))
}

/// `<sysroot>/lib/libLLVM.so.<version>-rust-<rust version>`.
fn find_libllvm(lib: &Path) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(lib)
        .with_context(|| format!("listing {}", lib.display()))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some(path) => Ok(path),
        None => bail!(
            "no libLLVM.so.*-rust-* in {}: this Rust toolchain does not ship LLVM as a shared \
             library, so bpf-linker cannot be built against it",
            lib.display()
        ),
    }
}

/// `libLLVM.so.22.1-rust-1.95.0-stable` -> 22.
fn llvm_major(file_name: &str) -> Option<u32> {
    let version = file_name.strip_prefix("libLLVM.so.")?;
    let major: String = version.chars().take_while(char::is_ascii_digit).collect();
    major.parse().ok()
}

fn llvm_prefix() -> Result<PathBuf> {
    if let Some(prefix) = env::var_os("CUSTOS_LLVM_PREFIX") {
        return Ok(PathBuf::from(prefix));
    }
    if is_root() {
        return Ok(PathBuf::from(LLVM_PREFIX_ROOT));
    }
    let home = env::var_os("HOME").context("HOME is not set (or set CUSTOS_LLVM_PREFIX)")?;
    Ok(PathBuf::from(home).join(".local/share/custos-llvm"))
}

/// The directory `cargo install` puts binaries in.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    if let Some(root) = env::var_os("CARGO_INSTALL_ROOT") {
        return Some(PathBuf::from(root).join("bin"));
    }
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Some(PathBuf::from(home).join("bin"));
    }
    env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo/bin"))
}

#[cfg(test)]
mod tests {
    use super::llvm_major;

    #[test]
    fn parses_llvm_major() {
        assert_eq!(llvm_major("libLLVM.so.22.1-rust-1.95.0-stable"), Some(22));
        assert_eq!(llvm_major("libLLVM.so.23-rust-1.98.0-nightly"), Some(23));
        assert_eq!(llvm_major("libLLVM.so"), None);
    }
}
