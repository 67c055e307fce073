//! Tests of the registry: attribution over a fake hierarchy (no privileges needed), and an
//! integration test against a real containerd running a real container (root needed).

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
};

use super::*;

const UID: &str = "3f6a1c2e-9b7d-4e5f-8a1b-2c3d4e5f6a7b";

/// A fresh 64-hex container id, unique across processes and calls.
fn unique_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "c057005{:09x}{:016x}{:016x}{:016x}",
        std::process::id(),
        nanos as u64,
        COUNTER.fetch_add(1, Ordering::Relaxed),
        0x5eed_u64
    )
}

fn ino(path: &Path) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .ino()
}

#[test]
fn unique_ids_are_container_ids() {
    let (a, b) = (unique_id(), unique_id());
    assert_ne!(a, b);
    assert!(ContainerId::parse(&a).is_some(), "{a}");
}

/// Attribution over an ordinary directory tree shaped like a node's cgroup hierarchy, with no
/// containerd: host, containerd (ids only, then metadata once it arrives), CRI-O, unknown.
#[tokio::test]
async fn attribution_over_a_fake_hierarchy() {
    let tree = TempTree(std::env::temp_dir().join(format!("custos-test-registry-{}", unique_id())));
    let base = tree.0.clone();
    let containerd_id = unique_id();
    let crio_id = unique_id();
    let dirs = [
        "system.slice/sshd.service".to_owned(),
        format!("k8s.io/{containerd_id}"),
        format!("kubepods/burstable/pod{UID}/crio-{crio_id}"),
    ];
    for dir in &dirs {
        std::fs::create_dir_all(base.join(dir)).expect("create fake cgroup");
    }
    let registry = ContainerRegistry::new(
        Arc::new(CgroupResolver::new(&base)),
        PathBuf::from("/nonexistent/containerd.sock"),
    );

    let sshd = registry
        .workload_for_cgroup(ino(&base.join(&dirs[0])))
        .await;
    assert!(sshd.host);
    assert_eq!(sshd.cgroup_path, "/system.slice/sshd.service");
    assert_eq!(sshd.container_id, "");

    let root = registry.workload_for_cgroup(ino(&base)).await;
    assert!(root.host);
    assert_eq!(root.cgroup_path, "/");

    let id = ino(&base.join(&dirs[1]));
    let bare = registry.workload_for_cgroup(id).await;
    assert!(!bare.host);
    assert_eq!(bare.container_id, containerd_id);
    assert_eq!(bare.runtime, "containerd");
    assert_eq!(bare.pod, "", "no containerd, no metadata");
    assert_eq!(bare.cgroup_id, id);
    // Past its retry time the attribution is rebuilt (containerd is still absent).
    if let Some(mut cached) = registry.workloads.get_mut(&id) {
        cached.retry_at = Some(Instant::now());
    }
    assert_eq!(registry.workload_for_cgroup(id).await, bare);

    // Metadata arriving later (as from an event) replaces the cached attribution.
    registry.containerd.insert(
        &containerd_id,
        ContainerMeta {
            containerd_namespace: "k8s.io".into(),
            pod_namespace: "qa".into(),
            pod: "web-1".into(),
            container: "web".into(),
            image: "docker.io/library/nginx:1.27".into(),
            ..Default::default()
        },
    );
    let full = registry.workload_for_cgroup(id).await;
    assert_eq!(
        (
            full.namespace.as_str(),
            full.pod.as_str(),
            full.container.as_str(),
            full.image.as_str()
        ),
        ("qa", "web-1", "web", "docker.io/library/nginx:1.27")
    );
    assert_eq!(full.cgroup_path, format!("/k8s.io/{containerd_id}"));

    let crio = registry
        .workload_for_cgroup(ino(&base.join(&dirs[2])))
        .await;
    assert_eq!(
        (crio.container_id.as_str(), crio.runtime.as_str(), crio.host),
        (crio_id.as_str(), "cri-o", false)
    );

    let unknown = registry.workload_for_cgroup(u64::MAX - 7).await;
    assert_eq!(
        unknown,
        Workload {
            cgroup_id: u64::MAX - 7,
            ..Workload::default()
        },
        "an id that exists nowhere is unknown, not host"
    );
}

/// A temporary directory, removed on drop (pass or fail).
struct TempTree(PathBuf);

impl Drop for TempTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Integration: real containerd, real container.
// ---------------------------------------------------------------------------------------------

const SOCKET: &str = "/run/containerd/containerd.sock";
const CTR_NAMESPACE: &str = "default";

fn ctr(args: &[&str]) -> std::io::Result<std::process::Output> {
    Command::new("ctr")
        .args(["--address", SOCKET, "--namespace", CTR_NAMESPACE])
        .args(args)
        .stdin(Stdio::null())
        .output()
}

fn ctr_ok(args: &[&str]) -> Result<String, String> {
    let out = ctr(args).map_err(|e| format!("ctr {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ctr {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Makes sure containerd answers on [`SOCKET`], starting it if needed. `Err` = skip reason.
fn ensure_containerd() -> Result<(), String> {
    if Path::new(SOCKET).exists() && ctr_ok(&["version"]).is_ok() {
        return Ok(());
    }
    // Serialise the start among concurrent test processes.
    let lock = std::fs::File::create("/tmp/custos-test-containerd.lock")
        .map_err(|e| format!("cannot create lock file: {e}"))?;
    // SAFETY: flock on a file descriptor we own; the lock is released when `lock` is closed.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
        return Err("cannot lock /tmp/custos-test-containerd.lock".into());
    }
    if !(Path::new(SOCKET).exists() && ctr_ok(&["version"]).is_ok()) {
        let log = std::fs::File::create("/tmp/containerd.log")
            .map_err(|e| format!("cannot create /tmp/containerd.log: {e}"))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("cannot dup log fd: {e}"))?;
        // Deliberately left running after the test: a shared daemon, like on a node.
        let child = Command::new("containerd")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("cannot start containerd: {e}"))?;
        eprintln!(
            "started containerd (pid {}), log in /tmp/containerd.log",
            child.id()
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(Path::new(SOCKET).exists() && ctr_ok(&["version"]).is_ok()) {
            if Instant::now() > deadline {
                return Err("containerd did not come up in 20 s (see /tmp/containerd.log)".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// A busybox root file system in a fresh directory.
fn busybox_rootfs(dir: &Path) -> std::io::Result<()> {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| std::io::Error::other("busybox-static is not installed"))?;
    std::fs::copy(busybox, bin.join("busybox"))?;
    for applet in ["sh", "sleep", "cat"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet))?;
    }
    for d in ["proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    Ok(())
}

/// A running `ctr` container; killed and removed on drop, pass or fail.
struct TestContainer {
    id: String,
    rootfs: PathBuf,
}

impl TestContainer {
    fn run(labels: &[(&str, &str)]) -> Result<Self, String> {
        let id = unique_id();
        let rootfs = std::env::temp_dir().join(format!("custos-test-rootfs-{id}"));
        busybox_rootfs(&rootfs).map_err(|e| format!("rootfs: {e}"))?;
        let container = Self { id, rootfs };
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args: Vec<&str> = vec!["run", "-d"];
        for label in &labels {
            args.extend(["--label", label]);
        }
        let rootfs = container.rootfs.to_string_lossy().into_owned();
        args.extend(["--rootfs", &rootfs, &container.id, "/bin/sleep", "300"]);
        ctr_ok(&args)?;
        Ok(container)
    }

    fn pid(&self) -> Result<u32, String> {
        let out = ctr_ok(&["task", "ls"])?;
        out.lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                (f.next()? == self.id).then(|| f.next()?.parse().ok())?
            })
            .next()
            .ok_or_else(|| format!("task {} not in `ctr task ls`:\n{out}", self.id))
    }

    fn remove(&self) {
        let _ = ctr(&["task", "kill", "-s", "SIGKILL", &self.id]);
        let _ = ctr(&["task", "rm", "-f", &self.id]);
        let _ = ctr(&["container", "rm", &self.id]);
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        self.remove();
        let _ = std::fs::remove_dir_all(&self.rootfs);
    }
}

/// The cgroup v2 path of a process, from the `0::` line of `/proc/<pid>/cgroup`.
fn cgroup_of(pid: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read cgroup");
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no cgroup v2 line in /proc/{pid}/cgroup:\n{text}"))
        .to_owned()
}

fn cgroup_id_of(mount: &Path, path: &str) -> u64 {
    ino(&mount.join(path.trim_start_matches('/')))
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// INTEGRATION: real containerd and runc. One container exists before the registry starts
/// (found by the initial listing), one is started after (found through events); both must be
/// attributed with their kubelet labels, the test process must be host, and a deletion event
/// must reach the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integration_real_containerd() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "custos=debug".into()),
        )
        .with_test_writer()
        .try_init();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "\n*** skipping integration_real_containerd: containerd not running / needs root ***\n"
        );
        return;
    }
    if let Err(reason) = ensure_containerd() {
        eprintln!("\n*** skipping integration_real_containerd: {reason} ***\n");
        return;
    }
    let mount = cgroup::discover_cgroup2_mount().expect("cgroup2 mount");

    let before = TestContainer::run(&[
        (containerd::LABEL_POD_NAMESPACE, "qa"),
        (containerd::LABEL_POD_NAME, "web-1"),
        (containerd::LABEL_CONTAINER_NAME, "web"),
    ])
    .expect("run first container");

    let registry = ContainerRegistry::start(PathBuf::from(SOCKET))
        .await
        .expect("registry start");
    assert!(registry.containerd().is_connected());
    assert!(
        registry.containerd().cached(&before.id).is_some(),
        "initial listing should have loaded {}",
        before.id
    );

    let after = TestContainer::run(&[
        (containerd::LABEL_POD_NAMESPACE, "qa"),
        (containerd::LABEL_POD_NAME, "api-7"),
        (containerd::LABEL_CONTAINER_NAME, "api"),
    ])
    .expect("run second container");
    // The event stream, not an on-demand lookup, brings the second container in.
    wait_for("create event of the second container", || {
        registry.containerd().cached(&after.id).is_some()
    })
    .await;

    for (container, pod, name) in [(&before, "web-1", "web"), (&after, "api-7", "api")] {
        let pid = container.pid().expect("task pid").to_string();
        let path = cgroup_of(&pid);
        assert_eq!(
            parse_cgroup_path(&path).map(|(id, rt)| (id.to_string(), rt)),
            Some((container.id.clone(), Runtime::Containerd)),
            "cgroup path {path}"
        );
        let cgroup_id = cgroup_id_of(&mount.mount_point, &path);
        let workload = registry.workload_for_cgroup(cgroup_id).await;
        assert_eq!(
            workload,
            Workload {
                host: false,
                container_id: container.id.clone(),
                runtime: "containerd".into(),
                namespace: "qa".into(),
                pod: pod.into(),
                container: name.into(),
                image: String::new(), // --rootfs: no image
                cgroup_id,
                cgroup_path: path.clone(),
                pod_labels: Default::default(),
            }
        );
        // Cached: the same answer again.
        assert_eq!(registry.workload_for_cgroup(cgroup_id).await, workload);
    }

    let own_path = cgroup_of("self");
    let own = registry
        .workload_for_cgroup(cgroup_id_of(&mount.mount_point, &own_path))
        .await;
    assert!(own.host, "test process should be host: {own:?}");
    assert_eq!(own.cgroup_path, own_path);
    assert_eq!(own.container_id, "");

    after.remove();
    wait_for("delete event of the second container", || {
        registry.containerd().is_deleted(&after.id)
    })
    .await;
}

/// With no containerd at all the registry still starts and attributes (host here).
#[tokio::test]
async fn start_without_containerd() {
    let mount = match cgroup::discover_cgroup2_mount() {
        Ok(mount) => mount,
        Err(error) => {
            eprintln!("\n*** skipping start_without_containerd: {error} ***\n");
            return;
        }
    };
    let registry = ContainerRegistry::start(PathBuf::from("/nonexistent/containerd.sock"))
        .await
        .expect("start without containerd");
    assert!(!registry.containerd().is_connected());
    let own_path = cgroup_of("self");
    let own = registry
        .workload_for_cgroup(cgroup_id_of(&mount.mount_point, &own_path))
        .await;
    assert!(own.host, "{own:?}");
    assert_eq!(own.cgroup_path, own_path);
}
