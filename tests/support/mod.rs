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
    /// Extra arguments of `custos agent`, kept for [`Agent::restart`].
    extra_args: Vec<std::ffi::OsString>,
}

impl Agent {
    /// Starts the agent with its API on a socket of its own and waits until the API answers.
    pub async fn start() -> Self {
        Self::start_with(Vec::<std::ffi::OsString>::new()).await
    }

    /// Like [`Agent::start`], with extra `custos agent` arguments (e.g. `--config FILE`). The
    /// state directory is always [`Agent::state_dir`], so a restart finds what was kept.
    pub async fn start_with<S: Into<std::ffi::OsString>>(
        extra_args: impl IntoIterator<Item = S>,
    ) -> Self {
        let dir = TempDir::new("agent");
        let socket = dir.path().join("run/custos.sock");
        let extra_args: Vec<std::ffi::OsString> = extra_args.into_iter().map(Into::into).collect();
        let child = Self::spawn(&dir, &socket, &extra_args);
        let mut agent = Self {
            child,
            socket,
            dir,
            extra_args,
        };
        agent.wait_until_answering().await;
        agent
    }

    fn spawn(dir: &TempDir, socket: &Path, extra_args: &[std::ffi::OsString]) -> Child {
        // Appended, so that the log of a restarted agent still holds the first run's.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("agent.log"))
            .expect("log file");
        Command::new(custos_bin())
            .arg("agent")
            .arg("--listen-unix")
            .arg(socket)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(extra_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn custos agent")
    }

    /// The agent's state directory (kept across [`Agent::restart`]).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Kills the agent with SIGKILL (no chance to save anything) and reaps it.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL the agent");
        let status = self.child.wait().expect("reap the agent");
        assert!(status.code().is_none(), "agent exited by itself: {status}");
    }

    /// Starts the agent again with the same arguments, socket and state directory, and waits
    /// until its API answers. The previous process must be gone (see [`Agent::kill9`]).
    pub async fn restart(&mut self) {
        assert!(
            self.child.try_wait().expect("wait for agent").is_some(),
            "restart: the agent is still running"
        );
        self.child = Self::spawn(&self.dir, &self.socket, &self.extra_args);
        self.wait_until_answering().await;
    }

    async fn wait_until_answering(&mut self) {
        let agent = self;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = agent.child.try_wait().expect("wait for agent") {
                panic!("agent exited early ({status}):\n{}", agent.log());
            }
            if let Ok(mut client) = custos::client::connect_unix(&agent.socket).await
                && client.get_status(proto::GetStatusRequest {}).await.is_ok()
            {
                return;
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
    /// [`Rootfs::busybox`] with links for more applets (e.g. `httpd`, `wget`, `mktemp`).
    pub fn busybox_with(applets: &[&str]) -> Self {
        let rootfs = Self::busybox();
        let bin = rootfs.path().join("bin");
        for applet in applets {
            if !bin.join(applet).exists() {
                std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("link");
            }
        }
        rootfs
    }

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

/// `ctr run --rm [extra_args] --label … --rootfs ROOTFS ID COMMAND…`: a container labelled as
/// a kubelet would label it (the labels containerd hands to the agent).
fn ctr_run(
    id: &str,
    rootfs: &Rootfs,
    labels: &PodLabels,
    command: &[&str],
    extra_args: &[&str],
) -> Command {
    let mut ctr = Command::new("ctr");
    ctr.args(["run", "--rm"]).args(extra_args);
    for (key, value) in [
        ("io.kubernetes.pod.namespace", labels.namespace),
        ("io.kubernetes.pod.name", labels.pod),
        ("io.kubernetes.container.name", labels.container),
    ] {
        ctr.args(["--label", &format!("{key}={value}")]);
    }
    ctr.arg("--rootfs")
        .arg(rootfs.path())
        .arg(id)
        .args(command)
        .stdin(Stdio::null());
    ctr
}

/// Runs a container to completion with `ctr run --rm`, labelled as a kubelet would label it.
pub fn run_container(id: &str, rootfs: &Rootfs, labels: &PodLabels, command: &[&str]) {
    run_container_with(id, rootfs, labels, command, &[]);
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
    let output = ctr_run(id, rootfs, labels, command, extra_args)
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
/// busybox container can run a precise workload (exact syscalls, tight loops). With
/// `CUSTOS_TEST_WORKLOADS=DIR` (set by `cargo xtask vm-test`: the VM has no C compiler) the
/// prebuilt `DIR/<name>` is copied instead.
pub fn install_workload(rootfs: &Rootfs, name: &str) -> PathBuf {
    let binary = rootfs.path().join("bin").join(name);
    if let Some(prebuilt) = std::env::var_os("CUSTOS_TEST_WORKLOADS") {
        let prebuilt = Path::new(&prebuilt).join(name);
        std::fs::copy(&prebuilt, &binary)
            .unwrap_or_else(|e| panic!("copy prebuilt workload {}: {e}", prebuilt.display()));
        return binary;
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/workloads")
        .join(format!("{name}.c"));
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

/// A container running in the background (`ctr run --rm`), killed and removed on drop.
pub struct BackgroundContainer {
    pub id: String,
    child: Child,
}

impl BackgroundContainer {
    /// Starts `command` like [`run_container_with`] does, without waiting for it to end.
    pub fn start(
        id: &str,
        rootfs: &Rootfs,
        labels: &PodLabels,
        command: &[&str],
        extra_args: &[&str],
    ) -> Self {
        let child = ctr_run(id, rootfs, labels, command, extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ctr");
        Self {
            id: id.to_owned(),
            child,
        }
    }

    /// Panics with ctr's output if the container has already ended.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("wait for ctr") {
            let mut stderr = String::new();
            if let Some(mut pipe) = self.child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            panic!("container {} ended early ({status}):\n{stderr}", self.id);
        }
    }

    /// Kills the container's processes and waits until `ctr run --rm` has removed it.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("ctr")
                .args(["task", "kill", "--all", "--signal", "SIGKILL", &self.id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = self.child.wait();
        }
        // In case `--rm` could not clean up (ctr killed, task never started).
        let _ = Command::new("ctr")
            .args(["container", "rm", &self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for BackgroundContainer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes `<dir>/custos.yaml`: the built-in configuration with `modes` replaced (YAML text), the
/// given quiet period, and a profiles directory of the test's own (`<dir>/profiles.d`, not the
/// host's /etc/custos/profiles). Rewriting it later changes the running agent's modes.
pub fn agent_config(dir: &Path, modes: &str, stable_after_seconds: u64) -> PathBuf {
    use serde_norway::Value;
    let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/custos.yaml");
    let text = std::fs::read_to_string(&default).expect("read the built-in configuration");
    let mut config: Value = serde_norway::from_str(&text).expect("parse the configuration");
    config["modes"] = serde_norway::from_str(modes).expect("modes");
    config["profiles"]["stableAfterSeconds"] = Value::from(stable_after_seconds);
    let profiles_dir = dir.join("profiles.d");
    std::fs::create_dir_all(&profiles_dir).expect("profiles dir");
    config["profiles"]["directory"] = Value::from(profiles_dir.display().to_string());
    let path = dir.join("custos.yaml");
    std::fs::write(
        &path,
        serde_norway::to_string(&config).expect("write config"),
    )
    .expect("write config");
    path
}

/// The deviation an event carries, if it is one.
pub fn deviation_of(event: &proto::Event) -> Option<&proto::DeviationEvent> {
    match &event.body {
        Some(proto::event::Body::Deviation(deviation)) => Some(deviation),
        _ => None,
    }
}

/// Subscribes to the deviation events of pods in `namespace`.
pub async fn subscribe_deviations(
    client: &mut CustosClient<Channel>,
    namespace: &str,
) -> tonic::Streaming<proto::Event> {
    subscribe(
        client,
        proto::EventFilter {
            namespaces: vec![namespace.into()],
            kinds: vec!["deviation".into()],
            ..Default::default()
        },
    )
    .await
}

/// Waits (20 s at most) until the profile of `workload` satisfies `ready`; fails with the
/// profiles and the agent's log otherwise.
pub async fn wait_for_profile(
    agent: &Agent,
    client: &mut CustosClient<Channel>,
    workload: &str,
    ready: impl Fn(&proto::ProfileSummary) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let profiles = list_profiles(client).await;
        if profiles.iter().any(|p| p.workload == workload && ready(p)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "profile of {workload} not learned: {profiles:#?}\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The agent's profiles (`ListProfiles`).
pub async fn list_profiles(client: &mut CustosClient<Channel>) -> Vec<proto::ProfileSummary> {
    client
        .list_profiles(proto::ListProfilesRequest {})
        .await
        .expect("list profiles")
        .into_inner()
        .profiles
}

/// Asserts that the container `container_id` gets no deviation on `stream` for `quiet`.
pub async fn assert_no_deviations(
    stream: &mut tonic::Streaming<proto::Event>,
    container_id: &str,
    quiet: Duration,
) {
    let events = collect_until(stream, quiet, |_| false).await;
    let flagged: Vec<_> = events
        .iter()
        .filter(|e| workload(e).container_id == container_id)
        .collect();
    assert!(
        flagged.is_empty(),
        "the learned workload was flagged: {flagged:#?}"
    );
}

/// Waits (10 s at most, then 1 s more for late duplicates) for one deviation of the container
/// `container_id` per `(kind, observed)` in `expected`, asserts that each arrived exactly once,
/// and returns their events in the order of `expected`. `context` (e.g. the agent's log) is
/// printed on failure.
pub async fn expect_each_deviation_once(
    stream: &mut tonic::Streaming<proto::Event>,
    container_id: &str,
    expected: &[(&str, &str)],
    context: impl Fn() -> String,
) -> Vec<proto::Event> {
    let ours = |e: &proto::Event| workload(e).container_id == container_id;
    let matches = |e: &proto::Event, kind: &str, observed: &str| {
        ours(e) && deviation_of(e).is_some_and(|d| d.kind == kind && d.observed == observed)
    };
    let events = collect_until(stream, Duration::from_secs(10), |events| {
        expected
            .iter()
            .all(|(kind, observed)| events.iter().any(|e| matches(e, kind, observed)))
    })
    .await;
    let late = collect_until(stream, Duration::from_secs(1), |_| false).await;
    let all: Vec<proto::Event> = events.into_iter().chain(late).filter(ours).collect();
    expected
        .iter()
        .map(|(kind, observed)| {
            let matching: Vec<&proto::Event> =
                all.iter().filter(|e| matches(e, kind, observed)).collect();
            assert_eq!(
                matching.len(),
                1,
                "expected exactly one {kind} deviation {observed:?}; all deviations: {all:#?}\n{}",
                context()
            );
            matching[0].clone()
        })
        .collect()
}
