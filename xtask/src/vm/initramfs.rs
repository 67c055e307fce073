//! The guest's whole file system, as one initramfs: busybox, containerd and runc with their
//! shared libraries, the agent and the test binaries at the absolute paths the tests were
//! compiled with (`CARGO_BIN_EXE_custos`, `CARGO_MANIFEST_DIR`), the workspace's files, the
//! prebuilt workloads, and an `/init` that runs the tests and powers off.
//!
//! It is written uncompressed: under TCG the kernel unpacks plain cpio faster than it
//! decompresses gzip or zstd, and the host saves the compression.

use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use super::console::MARKER;
use super::cpio::Archive;

/// Host programs the guest needs, found on PATH: a shell and its applets, and the container
/// runtime the tests drive through `ctr`.
const TOOLS: &[&str] = &[
    "busybox",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "runc",
];

/// Where the prebuilt workloads go in the guest (`CUSTOS_TEST_WORKLOADS`, read by
/// tests/support's `install_workload`: the guest has no C compiler).
pub const GUEST_WORKLOADS: &str = "/custos-vm/workloads";

/// A test binary as the guest runs it.
pub struct GuestTest {
    pub name: String,
    /// Its path in the guest.
    pub binary: PathBuf,
    /// The directory it runs in (its package's, as under `cargo test`).
    pub dir: PathBuf,
}

pub struct Spec<'a> {
    /// The workspace root; its files (not `target/`, nothing hidden) go at the same path.
    pub workspace: &'a Path,
    /// The target directory, left out of the workspace copy.
    pub target: &'a Path,
    /// `(guest path, host file)` of the binaries built for the run.
    pub binaries: &'a [(PathBuf, PathBuf)],
    /// Static workload binaries, placed in [`GUEST_WORKLOADS`].
    pub workloads: &'a [PathBuf],
    pub tests: &'a [GuestTest],
    /// Extra arguments for every test binary (after `--test-threads=1`).
    pub test_args: &'a [String],
    /// Environment of the test binaries.
    pub env: &'a [(String, String)],
}

/// Writes the initramfs to `out`; returns its size in bytes.
pub fn build(spec: &Spec, out: &Path) -> Result<u64> {
    let mut archive = Archive::default();
    for dir in [
        "/proc", "/sys", "/dev", "/run", "/root", "/var/lib", "/var/log", "/newroot",
    ] {
        archive.dir(dir, 0o755);
    }
    archive.dir("/tmp", 0o1777);
    archive.data("/etc/hosts", "127.0.0.1 localhost\n::1 localhost\n", 0o644);
    // `ctr run --net-host` bind-mounts the host's resolv.conf into the container.
    archive.data("/etc/resolv.conf", "nameserver 127.0.0.1\n", 0o644);
    archive.data("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644);
    archive.data("/etc/group", "root:x:0:\n", 0o644);

    // The top-level links of a merged-/usr host (/bin -> usr/bin, ...): scripts and the tests
    // name /bin/busybox, /bin/echo, /lib64/ld-linux-x86-64.so.2.
    for top in ["/bin", "/sbin", "/lib", "/lib64"] {
        if Path::new(top).exists() {
            archive.host_path(Path::new(top))?;
        }
    }
    for tool in TOOLS {
        let path = on_path(tool)?;
        add_program(&mut archive, &path, &path)?;
    }
    for (guest, host) in spec.binaries {
        add_program(&mut archive, guest, host)?;
    }
    for workload in spec.workloads {
        let name = workload
            .file_name()
            .with_context(|| format!("{} has no file name", workload.display()))?;
        archive.host_file(Path::new(GUEST_WORKLOADS).join(name), workload, 0o755);
    }
    add_tree(&mut archive, spec.workspace, spec.target)?;
    archive.data("/init", init_script(spec), 0o755);

    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut writer = BufWriter::with_capacity(1 << 20, file);
    archive
        .write(&mut writer)
        .with_context(|| format!("writing {}", out.display()))?;
    writer
        .into_inner()
        .map_err(|err| err.into_error())
        .and_then(|file| file.sync_all().map(|()| file))
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(fs::metadata(out)?.len())
}

/// An executable at `guest` (its contents from `host`) and the shared libraries `ldd` lists
/// for it, at their host paths.
fn add_program(archive: &mut Archive, guest: &Path, host: &Path) -> Result<()> {
    if let Some(parent) = guest.parent().filter(|p| p.exists()) {
        // Reproduce links on the way (e.g. /bin -> usr/bin) where the host has the directory.
        archive.host_path(parent)?;
    }
    if guest == host {
        archive.host_path(host)?;
    } else {
        archive.host_file(guest, host, 0o755);
    }
    for library in shared_libraries(host)? {
        archive.host_path(&library)?;
    }
    Ok(())
}

/// The libraries (and the dynamic loader) `ldd` resolves for `binary`; none for a static one.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd (part of libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // A static binary: "not a dynamic executable", exit status 1.
        return Ok(Vec::new());
    }
    let libraries = parse_ldd(&text);
    if let Some(missing) = text.lines().find(|l| l.contains("=> not found")) {
        bail!(
            "{}: a shared library is missing: {}",
            binary.display(),
            missing.trim()
        );
    }
    Ok(libraries)
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and `/lib64/ld-linux-x86-64.so.2
/// (0x...)` give a path each; the vDSO gives none.
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, resolved)) => resolved.trim(),
                None => line,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The first `name` on PATH.
fn on_path(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .with_context(|| {
            format!("{name} is not on PATH: the VM tests need it (`cargo xtask setup` installs it)")
        })
}

/// The files of `root` at their own paths, without `target` and hidden entries (.git).
fn add_tree(archive: &mut Archive, root: &Path, target: &Path) -> Result<()> {
    archive.host_path(root)?;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry?;
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if hidden || path == target || path == root.join("target") {
                continue;
            }
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(path.clone());
                archive.host_path(&path)?;
            } else if kind.is_file() || kind.is_symlink() {
                // A dangling link in the tree is not worth failing the run for.
                if path.exists() || kind.is_file() {
                    archive.host_path(&path)?;
                }
            }
        }
    }
    Ok(())
}

/// A word for `sh`, single-quoted.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The guest's `/init`. Every line meant for the host starts with [`MARKER`].
fn init_script(spec: &Spec) -> String {
    let mut script = format!(
        r#"#!/bin/busybox sh
# /init of the `cargo xtask vm-test` guest, generated by xtask/src/vm/initramfs.rs.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
say() {{ echo "{MARKER} $*"; }}
fail() {{ say "error $*"; /bin/busybox poweroff -f; }}

# runc pivot_root()s into every container, which the initramfs root (rootfs) does not allow:
# continue in a bind mount of it, moved onto /.
if [ -z "$CUSTOS_VM_REROOTED" ]; then
    /bin/busybox --install -s
    mount -o bind / /newroot || fail "bind-mounting the root"
    cd /newroot && mount -o move . / || fail "moving the root"
    export CUSTOS_VM_REROOTED=1
    exec chroot . /init
fi

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
# Pure cgroup v2 here (the development hosts are hybrid, v2 under /sys/fs/cgroup/unified).
mount -t cgroup2 cgroup2 /sys/fs/cgroup || fail "mounting cgroup2"
mount -t tracefs tracefs /sys/kernel/tracing || fail "mounting tracefs"
mount -t bpf bpf /sys/fs/bpf || fail "mounting bpffs"
mount -t securityfs securityfs /sys/kernel/security || fail "mounting securityfs"
hostname custos-vm
ip link set lo up
ulimit -n 65536

say "kernel $(uname -r)"
say "lsm $(cat /sys/kernel/security/lsm)"

containerd >/var/log/containerd.log 2>&1 &
tries=0
until ctr version >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ $tries -gt 300 ]; then
        tail -n 30 /var/log/containerd.log
        fail "containerd did not answer within 60 s"
    fi
    sleep 0.2
done

"#
    );
    for (key, value) in spec.env {
        script.push_str(&format!("export {key}={}\n", quote(value)));
    }
    let args: Vec<String> = std::iter::once("--test-threads=1".to_owned())
        .chain(spec.test_args.iter().cloned())
        .map(|arg| quote(&arg))
        .collect();
    let args = args.join(" ");
    script.push_str("failed=0\n");
    for test in spec.tests {
        let dir = quote(&test.dir.to_string_lossy());
        script.push_str(&format!(
            "say {name}\n(cd {dir} && CARGO_MANIFEST_DIR={dir} exec {binary} {args}) 2>&1\n\
             rc=$?\nsay {end} \"$rc\"\n[ $rc -eq 0 ] || failed=1\n",
            name = quote(&format!("begin {}", test.name)),
            end = quote(&format!("end {}", test.name)),
            binary = quote(&test.binary.to_string_lossy()),
        ));
    }
    script.push_str(
        r#"if [ $failed -ne 0 ]; then
    echo "--- containerd log (last 20 lines)"
    tail -n 20 /var/log/containerd.log
fi
say done
poweroff -f
"#,
    );
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibseccomp.so.2 => /lib/x86_64-linux-gnu/libseccomp.so.2 (0x00007f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text),
            [
                "/lib/x86_64-linux-gnu/libseccomp.so.2",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tstatically linked\n").is_empty());
    }

    #[test]
    fn init_runs_each_test_between_markers() {
        let tests = [GuestTest {
            name: "e2e_exec".into(),
            binary: "/w/target/debug/deps/e2e_exec-1".into(),
            dir: "/w/agent".into(),
        }];
        let env = [("RUST_LOG".to_owned(), "it's".to_owned())];
        let spec = Spec {
            workspace: Path::new("/w"),
            target: Path::new("/w/target"),
            binaries: &[],
            workloads: &[],
            tests: &tests,
            test_args: &["--nocapture".into()],
            env: &env,
        };
        let script = init_script(&spec);
        assert!(script.contains("export RUST_LOG='it'\\''s'\n"), "{script}");
        assert!(script.contains(
            "say 'begin e2e_exec'\n(cd '/w/agent' && CARGO_MANIFEST_DIR='/w/agent' exec \
             '/w/target/debug/deps/e2e_exec-1' '--test-threads=1' '--nocapture') 2>&1\n\
             rc=$?\nsay 'end e2e_exec' \"$rc\"\n"
        ));
        assert!(script.ends_with("say done\npoweroff -f\n"));
    }
}
