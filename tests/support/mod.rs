//! Shared helpers of the end-to-end tests: a real agent process, real containerd containers, and
//! a real gRPC client. Nothing here is mocked.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use custos::api::proto::{self, custos_client::CustosClient};
use tonic::transport::Channel;

/// True when the test may run; prints why not otherwise. Under `cargo xtask test` (which sets
/// `CUSTOS_REQUIRE_PRIVILEGED=1`, as CI does) a missing privilege is a failure, not a skip.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let why = format!("{test}: needs root (loads eBPF programs, runs containers)");
    if std::env::var_os("CUSTOS_REQUIRE_PRIVILEGED").is_some() {
        panic!("{why}, and CUSTOS_REQUIRE_PRIVILEGED is set");
    }
    eprintln!("\n!!! skipping: {why} !!!\n");
    false
}

/// A unique name for this test run, usable as a container id.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(&format!("custos-test-{name}")));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `custos` binary built for these tests.
pub fn custos_bin() -> &'static str {
    env!("CARGO_BIN_EXE_custos")
}

/// A running `custos agent`, killed on drop.
pub struct Agent {
    child: Child,
    pub socket: PathBuf,
    pub dir: TempDir,
}

impl Agent {
    /// Starts the agent with its API on a socket of its own and waits until the API answers.
    pub async fn start() -> Self {
        let dir = TempDir::new("agent");
        let socket = dir.path().join("run/custos.sock");
        let child = Command::new(custos_bin())
            .arg("agent")
            .arg("--listen-unix")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("agent.log")).expect("log file"))
            .spawn()
            .expect("spawn custos agent");
        let mut agent = Self { child, socket, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = agent.child.try_wait().expect("wait for agent") {
                panic!("agent exited early ({status}):\n{}", agent.log());
            }
            if let Ok(mut client) = custos::client::connect_unix(&agent.socket).await
                && client.get_status(proto::GetStatusRequest {}).await.is_ok()
            {
                return agent;
            }
            assert!(
                Instant::now() < deadline,
                "agent API did not answer within 30 s:\n{}",
                agent.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn client(&self) -> CustosClient<Channel> {
        custos::client::connect_unix(&self.socket)
            .await
            .expect("connect to agent")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Panics (with the agent's log) if the agent is no longer running.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("wait for agent") {
            panic!("agent died ({status}):\n{}", self.log());
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Subscribes with `filter` and returns the stream once the agent has accepted it.
pub async fn subscribe(
    client: &mut CustosClient<Channel>,
    filter: proto::EventFilter,
) -> tonic::Streaming<proto::Event> {
    client
        .subscribe(proto::SubscribeRequest {
            filter: Some(filter),
        })
        .await
        .expect("subscribe")
        .into_inner()
}

/// Collects events from `stream` until `done` says all expected ones are there or `timeout`
/// passes; returns everything received.
pub async fn collect_until(
    stream: &mut tonic::Streaming<proto::Event>,
    timeout: Duration,
    mut done: impl FnMut(&[proto::Event]) -> bool,
) -> Vec<proto::Event> {
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while !done(&events) {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(event))) => events.push(event),
            Ok(Ok(None)) => break,
            Ok(Err(status)) => panic!("stream failed: {status}"),
            Err(_) => break,
        }
    }
    events
}

pub fn exec_of(event: &proto::Event) -> Option<&proto::ExecEvent> {
    match &event.body {
        Some(proto::event::Body::Exec(exec)) => Some(exec),
        _ => None,
    }
}

pub fn workload(event: &proto::Event) -> &proto::Workload {
    event.workload.as_ref().expect("event without workload")
}

/// Fails clearly unless containerd answers; `cargo xtask test` (and so CI) starts it.
pub fn ensure_containerd() {
    let answers = Command::new("ctr")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        answers,
        "containerd does not answer on /run/containerd/containerd.sock: run `cargo xtask setup`"
    );
}

/// A container root filesystem made of busybox-static and applet links.
pub struct Rootfs(TempDir);

impl Rootfs {
    pub fn busybox() -> Self {
        let dir = TempDir::new("rootfs");
        let root = dir.path();
        for sub in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
            std::fs::create_dir_all(root.join(sub)).expect("rootfs dir");
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox"))
            .expect("copy /bin/busybox (apt-get install busybox-static)");
        for applet in ["sh", "cat", "sleep", "echo", "true", "ls", "env"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("link");
        }
        std::fs::write(root.join("etc/hostname"), "custos-test\n").expect("hostname");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// Pod identity a kubelet would put on a container as labels.
pub struct PodLabels<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    pub container: &'a str,
}

/// Runs a container to completion with `ctr run --rm`, labelled as a kubelet would label it.
pub fn run_container(id: &str, rootfs: &Rootfs, labels: &PodLabels, command: &[&str]) {
    let output = Command::new("ctr")
        .args(["run", "--rm"])
        .args([
            "--label",
            &format!("io.kubernetes.pod.namespace={}", labels.namespace),
        ])
        .args(["--label", &format!("io.kubernetes.pod.name={}", labels.pod)])
        .args([
            "--label",
            &format!("io.kubernetes.container.name={}", labels.container),
        ])
        .arg("--rootfs")
        .arg(rootfs.path())
        .arg(id)
        .args(command)
        .stdin(Stdio::null())
        .output()
        .expect("run ctr");
    assert!(
        output.status.success(),
        "ctr run {id} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Like [`run_container`], with extra `ctr run` options (e.g. `--cap-add CAP_NET_ADMIN`) placed
/// before the rootfs; returns the container's stdout.
pub fn run_container_with(
    id: &str,
    rootfs: &Rootfs,
    labels: &PodLabels,
    command: &[&str],
    extra_args: &[&str],
) -> String {
    let output = Command::new("ctr")
        .args(["run", "--rm"])
        .args(extra_args)
        .args([
            "--label",
            &format!("io.kubernetes.pod.namespace={}", labels.namespace),
        ])
        .args(["--label", &format!("io.kubernetes.pod.name={}", labels.pod)])
        .args([
            "--label",
            &format!("io.kubernetes.container.name={}", labels.container),
        ])
        .arg("--rootfs")
        .arg(rootfs.path())
        .arg(id)
        .args(command)
        .stdin(Stdio::null())
        .output()
        .expect("run ctr");
    assert!(
        output.status.success(),
        "ctr run {id} failed: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A fresh 64-hex container id, the shape kubelet-created containers have (and that the cgroup
/// path parser expects).
pub fn container_id() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    let seed = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ u64::from(NEXT.fetch_add(1, Ordering::Relaxed));
    // splitmix64: four well-mixed words from one seed.
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    format!(
        "{:016x}{:016x}{:016x}{:016x}",
        next(),
        next(),
        next(),
        next()
    )
}

/// Compiles `tests/workloads/<name>.c` into a static binary at `<rootfs>/bin/<name>`, so a
/// busybox container can run a precise workload (exact syscalls, tight loops).
pub fn install_workload(rootfs: &Rootfs, name: &str) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/workloads")
        .join(format!("{name}.c"));
    let binary = rootfs.path().join("bin").join(name);
    let output = Command::new("cc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(&binary)
        .arg(&source)
        .output()
        .expect("run cc (a C compiler with static libc is needed: gcc, libc6-dev)");
    assert!(
        output.status.success(),
        "compiling {}: {}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    binary
}
