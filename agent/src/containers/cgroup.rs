//! cgroup v2 plumbing: which container a cgroup path belongs to, where the cgroup2 hierarchy is
//! mounted, and which path a kernel-reported cgroup id stands for.
//!
//! The kernel side of Custos only knows `bpf_get_current_cgroup_id()`, the inode number of the
//! task's cgroup v2 directory. Everything a human wants to see (container, pod) hangs off the
//! directory's *path*, because every container runtime encodes the container id in the name of
//! the cgroup it creates. This module turns the id into the path (by walking the hierarchy once
//! and caching) and the path into a container id (by recognising the runtimes' naming schemes).
//! It needs no runtime API, so attribution to a container id keeps working when containerd is
//! down.

use std::{
    collections::HashMap,
    ffi::CStr,
    fmt,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use dashmap::DashMap;
use tracing::{debug, info, warn};

/// Errors of cgroup discovery and resolution.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// `/proc/self/mountinfo` (or the file given) could not be read.
    #[error("cannot read mount table {path}")]
    ReadMountinfo {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// No cgroup2 file system is mounted in this mount namespace.
    #[error("no cgroup2 mount found in {path}; cgroup v2 is required for attribution")]
    NoCgroup2Mount {
        /// The mount table that was searched.
        path: PathBuf,
    },
    /// The cgroup2 mount point could not be read.
    #[error("cannot read cgroup2 mount point {path}")]
    ReadMount {
        /// The mount point.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The hierarchy walk could not be run (its blocking task failed).
    #[error("cgroup hierarchy walk under {path} did not complete")]
    Walk {
        /// The mount point being walked.
        path: PathBuf,
        /// Why the blocking task failed.
        #[source]
        source: tokio::task::JoinError,
    },
}

// ---------------------------------------------------------------------------------------------
// Container ids and runtimes
// ---------------------------------------------------------------------------------------------

/// A container id as containerd, CRI-O and Docker generate them: 64 lowercase hex characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId(String);

impl ContainerId {
    /// Length of a container id in characters.
    pub const LEN: usize = 64;

    /// Accepts exactly 64 lowercase hex characters, nothing else.
    pub fn parse(s: &str) -> Option<Self> {
        is_container_id(s).then(|| Self(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContainerId({})", self.0)
    }
}

fn is_container_id(s: &str) -> bool {
    s.len() == ContainerId::LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The container runtime that created a cgroup, as far as its name tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    /// containerd (CRI plugin or `ctr`).
    Containerd,
    /// CRI-O.
    CriO,
    /// Docker (dockerd, or cri-dockerd on Kubernetes).
    Docker,
}

impl Runtime {
    /// The name used in the API's `Workload.runtime`.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// Path parsing
// ---------------------------------------------------------------------------------------------

/// What one path component says about containers.
enum Component {
    /// The component names a container of this runtime.
    Container(ContainerId, Runtime),
    /// The component names something container-shaped that is *not* a container: CRI-O's
    /// `crio-conmon-<id>.scope`, which holds the conmon monitor process of container `<id>`.
    NotAContainer,
    /// Nothing recognisable.
    Other,
}

/// Which container a cgroup path (relative to the cgroup2 mount) belongs to.
///
/// The path is read from its innermost component outwards and the first component that names a
/// container wins, so nested setups (kind nodes, Docker-in-Docker: `/docker/<node>/kubepods/...
/// /<id>`) attribute to the innermost container, and sub-cgroups a container makes for itself
/// (`.../cri-containerd-<id>.scope/init.scope`) still attribute to the container.
///
/// Recognised shapes (`<id>` is 64 lowercase hex characters):
/// - systemd driver: `cri-containerd-<id>.scope` (containerd), `crio-<id>.scope` (CRI-O),
///   `docker-<id>.scope` (Docker; also `/system.slice/docker-<id>.scope` outside Kubernetes);
/// - cgroupfs driver: `crio-<id>` (CRI-O); a bare `<id>` under `docker` (Docker) or anywhere else
///   (containerd: `/kubepods/<qos>/pod<uid>/<id>`, and `/<containerd-namespace>/<id>` such as
///   `/k8s.io/<id>` or `/default/<id>` for `ctr run`). A bare id under a pod directory is taken
///   to be containerd's: dockershim is gone from Kubernetes and CRI-O prefixes its names.
/// - a systemd-style cgroups path used literally as a directory name by a runtime configured for
///   cgroupfs: `kubepods-...-pod<uid>.slice:cri-containerd:<id>` (also `:crio:` and `:docker:`).
///
/// `crio-conmon-<id>.scope` holds CRI-O's conmon, a node-side monitor process, not the
/// container: it is skipped, and the search continues outwards (so on a plain node it is a host
/// process, and inside a kind node it belongs to the node container).
///
/// Everything else (`/`, `/system.slice/sshd.service`, `/user.slice/...`, `/kubepods/burstable`)
/// is the host: `None`.
pub fn parse_cgroup_path(path: &str) -> Option<(ContainerId, Runtime)> {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    for (i, component) in components.iter().enumerate().rev() {
        let parent = i.checked_sub(1).map(|p| components[p]);
        match classify(component, parent) {
            Component::Container(id, runtime) => return Some((id, runtime)),
            Component::NotAContainer | Component::Other => {}
        }
    }
    None
}

fn classify(component: &str, parent: Option<&str>) -> Component {
    // systemd-driver scopes.
    if let Some(stem) = component.strip_suffix(".scope") {
        if let Some(rest) = stem.strip_prefix("crio-conmon-") {
            return if is_container_id(rest) {
                Component::NotAContainer
            } else {
                Component::Other
            };
        }
        for (prefix, runtime) in [
            ("cri-containerd-", Runtime::Containerd),
            ("crio-", Runtime::CriO),
            ("docker-", Runtime::Docker),
        ] {
            if let Some(id) = stem.strip_prefix(prefix).and_then(ContainerId::parse) {
                return Component::Container(id, runtime);
            }
        }
        return Component::Other;
    }
    // "slice:prefix:name" cgroups paths taken literally as a directory name.
    if let Some((_, rest)) = component.split_once(':')
        && let Some((prefix, name)) = rest.split_once(':')
    {
        let runtime = match prefix {
            "cri-containerd" => Some(Runtime::Containerd),
            "crio" => Some(Runtime::CriO),
            "docker" => Some(Runtime::Docker),
            _ => None,
        };
        if let (Some(runtime), Some(id)) = (runtime, ContainerId::parse(name)) {
            return Component::Container(id, runtime);
        }
        return Component::Other;
    }
    // cgroupfs driver.
    if let Some(rest) = component.strip_prefix("crio-conmon-")
        && is_container_id(rest)
    {
        return Component::NotAContainer;
    }
    if let Some(id) = component.strip_prefix("crio-").and_then(ContainerId::parse) {
        return Component::Container(id, Runtime::CriO);
    }
    if let Some(id) = ContainerId::parse(component) {
        let runtime = if parent == Some("docker") {
            Runtime::Docker
        } else {
            Runtime::Containerd
        };
        return Component::Container(id, runtime);
    }
    Component::Other
}

// ---------------------------------------------------------------------------------------------
// cgroup2 mount discovery
// ---------------------------------------------------------------------------------------------

/// Where the cgroup v2 hierarchy is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup2Mount {
    /// Mount point, e.g. `/sys/fs/cgroup` (unified) or `/sys/fs/cgroup/unified` (hybrid).
    pub mount_point: PathBuf,
    /// The cgroup the mount's root directory is, `/` unless the mount was made inside a cgroup
    /// namespace (an agent in a container that did not get the host's cgroup namespace).
    pub root: String,
}

/// Finds the cgroup2 mount in the text of a `/proc/<pid>/mountinfo` file.
///
/// When several cgroup2 mounts exist (bind mounts, container runtimes' private mounts), the one
/// whose root is `/` and whose mount point is shortest wins: that is the whole hierarchy, where
/// every cgroup id can be found.
pub fn parse_mountinfo(text: &str) -> Option<Cgroup2Mount> {
    text.lines()
        .filter_map(parse_mountinfo_line)
        .min_by_key(|m| (m.root != "/", m.mount_point.as_os_str().len()))
}

/// One mountinfo line, if it is a cgroup2 mount. The format (proc(5)):
/// `36 35 98:0 /root /mount/point rw,noatime master:1 - cgroup2 cgroup2 rw,nsdelegate`,
/// with a variable number of optional fields before the `-` separator.
fn parse_mountinfo_line(line: &str) -> Option<Cgroup2Mount> {
    let (before, after) = line.split_once(" - ")?;
    let fstype = after.split_whitespace().next()?;
    if fstype != "cgroup2" {
        return None;
    }
    let mut fields = before.split_whitespace();
    let root = fields.nth(3)?;
    let mount_point = fields.next()?;
    Some(Cgroup2Mount {
        mount_point: PathBuf::from(unescape_mountinfo(mount_point)),
        root: unescape_mountinfo(root),
    })
}

/// Undoes the octal escapes (`\040` for a space, `\011`, `\012`, `\134`) of mountinfo fields.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(octal) = bytes.get(i + 1..i + 4)
            && octal.iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let value = octal
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads `/proc/self/mountinfo` and finds the cgroup2 mount.
pub fn discover_cgroup2_mount() -> Result<Cgroup2Mount, CgroupError> {
    discover_cgroup2_mount_in(Path::new("/proc/self/mountinfo"))
}

/// Like [`discover_cgroup2_mount`], from the given mount table.
pub fn discover_cgroup2_mount_in(mountinfo: &Path) -> Result<Cgroup2Mount, CgroupError> {
    let text = std::fs::read_to_string(mountinfo).map_err(|source| CgroupError::ReadMountinfo {
        path: mountinfo.to_owned(),
        source,
    })?;
    parse_mountinfo(&text).ok_or_else(|| CgroupError::NoCgroup2Mount {
        path: mountinfo.to_owned(),
    })
}

// ---------------------------------------------------------------------------------------------
// cgroup id → path
// ---------------------------------------------------------------------------------------------

/// Shortest time between two walks of the hierarchy. Lookups that miss while a walk is not
/// allowed wait for the next one and share it.
const MIN_RESCAN_INTERVAL: Duration = Duration::from_millis(250);
/// How long an id that a walk did not find is answered "unknown" without walking again.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Walks stop descending below this depth (real hierarchies are < 10 deep).
const MAX_DEPTH: usize = 32;
/// Walks stop after this many directories, so a pathological tree cannot stall the agent.
const MAX_DIRS: usize = 200_000;

/// Resolves cgroup ids (inode numbers of cgroup v2 directories) to paths under the mount.
///
/// Two methods, the first that works:
/// - **File handles.** On cgroup2 (kernfs) a directory's file handle *is* its cgroup id, so
///   `open_by_handle_at` opens any cgroup by id in one system call and `/proc/self/fd` names
///   it; an id that no longer exists fails with `ESTALE`. Needs `CAP_DAC_READ_SEARCH` (the
///   agent runs as root). Each lookup costs microseconds, so misses need no rate limit.
/// - **Walking** the hierarchy and recording every directory's inode, as a fallback (no
///   capability, or a kernel whose handles do not carry the id). A miss triggers a new walk
///   (new cgroups appear whenever a container starts), but walks are serialised, at most one
///   per [`MIN_RESCAN_INTERVAL`], shared by every lookup that was waiting.
///
/// Either way results are cached, and an id that was not found is answered "unknown" for
/// [`NEGATIVE_TTL`]: a flood of unknown ids cannot make the resolver spin.
pub struct CgroupResolver {
    mount: PathBuf,
    handles: Option<HandleOpener>,
    by_id: DashMap<u64, Arc<str>>,
    misses: DashMap<u64, Instant>,
    /// Start time of the last completed walk; the lock serialises walks.
    last_walk: tokio::sync::Mutex<Option<Instant>>,
    walks: AtomicU64,
}

impl CgroupResolver {
    /// A resolver for the hierarchy mounted at `mount`, using file handles when the mount and
    /// the agent's privileges allow, else walking (nothing is walked until needed).
    pub fn new(mount: impl Into<PathBuf>) -> Self {
        let mount = mount.into();
        let handles = match HandleOpener::probe(&mount) {
            Ok(opener) => {
                debug!(mount = %mount.display(), "resolving cgroup ids by file handle");
                Some(opener)
            }
            Err(reason) => {
                info!(
                    mount = %mount.display(),
                    %reason,
                    "cannot resolve cgroup ids by file handle; walking the hierarchy instead"
                );
                None
            }
        };
        Self::with_method(mount, handles)
    }

    /// A resolver that only walks (the fallback method), for tests and comparison.
    pub fn walking(mount: impl Into<PathBuf>) -> Self {
        Self::with_method(mount.into(), None)
    }

    fn with_method(mount: PathBuf, handles: Option<HandleOpener>) -> Self {
        Self {
            mount,
            handles,
            by_id: DashMap::new(),
            misses: DashMap::new(),
            last_walk: tokio::sync::Mutex::new(None),
            walks: AtomicU64::new(0),
        }
    }

    /// Whether ids are resolved by file handle (else by walking).
    pub fn uses_file_handles(&self) -> bool {
        self.handles.is_some()
    }

    /// The mount point this resolver walks.
    pub fn mount_point(&self) -> &Path {
        &self.mount
    }

    /// Number of hierarchy walks done so far.
    pub fn walks(&self) -> u64 {
        self.walks.load(Ordering::Relaxed)
    }

    /// The cached path of `id`, without walking.
    pub fn cached(&self, id: u64) -> Option<Arc<str>> {
        self.by_id.get(&id).map(|p| Arc::clone(&p))
    }

    /// The path of cgroup `id` relative to the mount (`/` for the root), walking the hierarchy
    /// if it is not cached. `None` if the cgroup does not exist (any more).
    pub async fn resolve(&self, id: u64) -> Option<Arc<str>> {
        if let Some(path) = self.cached(id) {
            return Some(path);
        }
        if let Some(at) = self.misses.get(&id)
            && at.elapsed() < NEGATIVE_TTL
        {
            return None;
        }
        if let Some(handles) = &self.handles {
            match handles.open(id, &self.mount) {
                Ok(Some(path)) => {
                    let path: Arc<str> = Arc::from(path);
                    self.by_id.insert(id, Arc::clone(&path));
                    return Some(path);
                }
                Ok(None) => {
                    debug!(cgroup_id = id, "no such cgroup");
                    self.misses.insert(id, Instant::now());
                    return None;
                }
                Err(error) => {
                    debug!(cgroup_id = id, %error, "open by handle failed; walking instead");
                }
            }
        }
        let requested = Instant::now();
        let mut last_walk = self.last_walk.lock().await;
        // A walk that started after this request was made has seen everything this request can
        // be about: use it instead of walking again.
        let fresh = last_walk.is_some_and(|started| started >= requested);
        if !fresh {
            if let Some(started) = *last_walk {
                let wait = MIN_RESCAN_INTERVAL.saturating_sub(started.elapsed());
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
            let started = Instant::now();
            match self.walk().await {
                Ok(()) => {}
                Err(error) => warn!(%error, "cgroup hierarchy walk failed"),
            }
            *last_walk = Some(started);
        }
        drop(last_walk);
        if let Some(path) = self.cached(id) {
            return Some(path);
        }
        debug!(cgroup_id = id, "cgroup id not found in the hierarchy");
        self.misses.insert(id, Instant::now());
        None
    }

    /// Walks the hierarchy now (subject to the same serialisation as lookups, not the rate
    /// limit) and replaces the cache with what exists.
    pub async fn rescan(&self) -> Result<(), CgroupError> {
        let mut last_walk = self.last_walk.lock().await;
        let started = Instant::now();
        let result = self.walk().await;
        *last_walk = Some(started);
        result
    }

    /// Ids of the known cgroups (from the last walk and lookups since) that are containers'.
    pub fn container_cgroup_ids(&self) -> Vec<u64> {
        self.by_id
            .iter()
            .filter(|entry| parse_cgroup_path(entry.value()).is_some())
            .map(|entry| *entry.key())
            .collect()
    }

    /// Drops a cached id (its cgroup is gone and its late events are over).
    pub fn forget(&self, id: u64) {
        self.by_id.remove(&id);
    }

    /// Drops expired "unknown" answers.
    pub fn sweep_misses(&self) {
        let now = Instant::now();
        self.misses
            .retain(|_, at| now.duration_since(*at) < NEGATIVE_TTL);
    }

    /// Whether the cgroup at `path` (relative to the mount) still exists.
    pub fn exists(&self, path: &str) -> bool {
        self.mount.join(path.trim_start_matches('/')).is_dir()
    }

    async fn walk(&self) -> Result<(), CgroupError> {
        let mount = self.mount.clone();
        let found = tokio::task::spawn_blocking(move || walk_hierarchy(&mount))
            .await
            .map_err(|source| CgroupError::Walk {
                path: self.mount.clone(),
                source,
            })??;
        self.walks.fetch_add(1, Ordering::Relaxed);
        let count = found.len();
        // Cgroups that are gone are dropped; callers keep their own attribution of late events.
        self.by_id.retain(|id, _| found.contains_key(id));
        for (id, path) in found {
            self.misses.remove(&id);
            self.by_id.entry(id).or_insert_with(|| Arc::from(path));
        }
        let now = Instant::now();
        self.misses
            .retain(|_, at| now.duration_since(*at) < NEGATIVE_TTL);
        debug!(cgroups = count, mount = %self.mount.display(), "walked cgroup hierarchy");
        Ok(())
    }
}

/// `statfs` magic number of cgroup2.
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// A file handle as `open_by_handle_at(2)` takes it, sized for kernfs: a `struct file_handle`
/// header followed by the 8-byte node id (which on 64-bit kernels equals the inode number and
/// the cgroup id).
#[repr(C)]
struct KernfsHandle {
    handle_bytes: libc::c_uint,
    handle_type: libc::c_int,
    id: [u8; 8],
}

/// Opens cgroups by id through file handles (see [`CgroupResolver`]).
struct HandleOpener {
    mount_fd: OwnedFd,
    handle_type: libc::c_int,
}

impl HandleOpener {
    /// Checks that `mount` is cgroup2, that its handles are 8 bytes carrying the inode number,
    /// and that this process may open by handle. `Err` says why not.
    fn probe(mount: &Path) -> Result<Self, std::io::Error> {
        let dir = std::fs::File::open(mount)?;
        let root_ino = dir.metadata()?.ino();
        let mount_fd = OwnedFd::from(dir);

        // SAFETY: an all-zero statfs is a valid value for the kernel to overwrite.
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: `mount_fd` is an open descriptor and `fs` a writable statfs.
        if unsafe { libc::fstatfs(mount_fd.as_raw_fd(), &mut fs) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        #[allow(
            clippy::unnecessary_cast,
            reason = "f_type's type differs between targets"
        )]
        if fs.f_type as u64 != CGROUP2_SUPER_MAGIC {
            return Err(std::io::Error::other("not a cgroup2 file system"));
        }

        let mut handle = KernfsHandle {
            handle_bytes: 8,
            handle_type: 0,
            id: [0; 8],
        };
        let mut mount_id: libc::c_int = 0;
        let empty: &CStr = c"";
        // SAFETY: `handle` is a file_handle header followed by `handle_bytes` (8) bytes of
        // room, `empty` is NUL-terminated, `mount_id` is writable; AT_EMPTY_PATH makes the call
        // describe `mount_fd` itself.
        let rc = unsafe {
            libc::name_to_handle_at(
                mount_fd.as_raw_fd(),
                empty.as_ptr(),
                (&raw mut handle).cast::<libc::file_handle>(),
                &mut mount_id,
                libc::AT_EMPTY_PATH,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if handle.handle_bytes != 8 || u64::from_ne_bytes(handle.id) != root_ino {
            return Err(std::io::Error::other(
                "cgroup2 file handles do not carry the cgroup id on this kernel",
            ));
        }
        let opener = Self {
            mount_fd,
            handle_type: handle.handle_type,
        };
        // Opening needs CAP_DAC_READ_SEARCH: try the root.
        let fd = opener.open_fd(root_ino)?;
        drop(fd.ok_or_else(|| std::io::Error::other("the cgroup2 root cannot be opened"))?);
        Ok(opener)
    }

    /// Opens cgroup `id`; `None` if it does not exist.
    fn open_fd(&self, id: u64) -> Result<Option<OwnedFd>, std::io::Error> {
        let mut handle = KernfsHandle {
            handle_bytes: 8,
            handle_type: self.handle_type,
            id: id.to_ne_bytes(),
        };
        // SAFETY: `handle` is a complete file_handle of `handle_bytes` bytes; the kernel only
        // reads it. The returned descriptor, if any, is ours to own.
        let fd = unsafe {
            libc::open_by_handle_at(
                self.mount_fd.as_raw_fd(),
                (&raw mut handle).cast::<libc::file_handle>(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let error = std::io::Error::last_os_error();
            return match error.raw_os_error() {
                Some(libc::ESTALE | libc::ENOENT | libc::ENOTDIR) => Ok(None),
                _ => Err(error),
            };
        }
        // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
        Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The path of cgroup `id` relative to `mount`; `None` if it does not exist.
    fn open(&self, id: u64, mount: &Path) -> Result<Option<String>, std::io::Error> {
        let Some(fd) = self.open_fd(id)? else {
            return Ok(None);
        };
        let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        let Some(target) = target.to_str() else {
            return Err(std::io::Error::other("cgroup path is not UTF-8"));
        };
        if target.ends_with(" (deleted)") {
            return Ok(None);
        }
        let rel = Path::new(target).strip_prefix(mount).map_err(|_| {
            std::io::Error::other(format!(
                "cgroup path {target} is outside the mount {}",
                mount.display()
            ))
        })?;
        Ok(Some(format!("/{}", rel.display())))
    }
}

/// Every directory under `mount` by inode number, with its path relative to `mount`.
fn walk_hierarchy(mount: &Path) -> Result<HashMap<u64, String>, CgroupError> {
    let root = std::fs::symlink_metadata(mount).map_err(|source| CgroupError::ReadMount {
        path: mount.to_owned(),
        source,
    })?;
    let mut found = HashMap::new();
    found.insert(root.ino(), "/".to_owned());
    let mut stack: Vec<(PathBuf, String, usize)> = vec![(mount.to_owned(), String::new(), 0)];
    let mut truncated = false;
    while let Some((dir, rel, depth)) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // Removed while walking, or unreadable: either way nothing to find there.
            Err(error) => {
                debug!(dir = %dir.display(), %error, "skipping unreadable cgroup");
                continue;
            }
        };
        for entry in entries.flatten() {
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            if !file_type.is_dir() {
                continue;
            }
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let name = entry.file_name();
            let child_rel = format!("{rel}/{}", name.to_string_lossy());
            found.insert(meta.ino(), child_rel.clone());
            if found.len() >= MAX_DIRS {
                truncated = true;
                break;
            }
            if depth + 1 < MAX_DEPTH {
                stack.push((entry.path(), child_rel, depth + 1));
            }
        }
        if truncated {
            break;
        }
    }
    if truncated {
        warn!(
            mount = %mount.display(),
            limit = MAX_DIRS,
            "cgroup hierarchy larger than the walk limit; some cgroups will be unknown"
        );
    }
    Ok(found)
}

/// Logs the mount that will be used; a mount with a non-`/` root only shows part of the tree.
pub(crate) fn log_mount(mount: &Cgroup2Mount) {
    if mount.root == "/" {
        info!(mount = %mount.mount_point.display(), "using cgroup2 hierarchy");
    } else {
        warn!(
            mount = %mount.mount_point.display(),
            root = %mount.root,
            "cgroup2 is mounted from inside a cgroup namespace; cgroups outside it cannot be \
             resolved (run the agent with the host's cgroup namespace)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4a7c2f0e9d8b6a5c3e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d";
    const ID2: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "3f6a1c2e-9b7d-4e5f-8a1b-2c3d4e5f6a7b";
    const UID_: &str = "3f6a1c2e_9b7d_4e5f_8a1b_2c3d4e5f6a7b";

    fn parsed(path: &str) -> Option<(String, &'static str)> {
        parse_cgroup_path(path).map(|(id, rt)| (id.as_str().to_owned(), rt.as_str()))
    }

    fn expect(path: &str, id: &str, runtime: &str) {
        assert_eq!(
            parsed(path),
            Some((id.to_owned(), runtime_static(runtime))),
            "path {path}"
        );
    }

    fn runtime_static(r: &str) -> &'static str {
        match r {
            "containerd" => "containerd",
            "cri-o" => "cri-o",
            "docker" => "docker",
            other => panic!("test bug: runtime {other}"),
        }
    }

    fn host(path: &str) {
        assert_eq!(parsed(path), None, "path {path} should be the host");
    }

    #[test]
    fn container_id_validation() {
        assert!(ContainerId::parse(ID).is_some());
        assert!(ContainerId::parse(&ID[..63]).is_none());
        assert!(ContainerId::parse(&format!("{ID}0")).is_none());
        assert!(ContainerId::parse(&ID.to_uppercase()).is_none());
        assert!(ContainerId::parse(&ID.replace('a', "g")).is_none());
        assert!(ContainerId::parse("").is_none());
        // Multi-byte characters must not confuse the length check.
        assert!(ContainerId::parse(&format!("{}é", &ID[..62])).is_none());
    }

    #[test]
    fn containerd_plain_namespaces() {
        expect(&format!("/k8s.io/{ID}"), ID, "containerd");
        expect(&format!("/default/{ID}"), ID, "containerd");
        expect(&format!("/custom-ns/{ID}"), ID, "containerd");
        expect(&format!("/k8s.io/{ID}/"), ID, "containerd");
    }

    #[test]
    fn cgroupfs_driver() {
        for qos in ["burstable", "besteffort"] {
            expect(&format!("/kubepods/{qos}/pod{UID}/{ID}"), ID, "containerd");
        }
        expect(&format!("/kubepods/pod{UID}/{ID}"), ID, "containerd");
        expect(
            &format!("/kubepods/burstable/pod{UID}/crio-{ID}"),
            ID,
            "cri-o",
        );
        host(&format!("/kubepods/burstable/pod{UID}"));
        host("/kubepods/burstable");
        host("/kubepods");
    }

    #[test]
    fn systemd_driver() {
        expect(
            &format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/\
                 cri-containerd-{ID}.scope"
            ),
            ID,
            "containerd",
        );
        expect(
            &format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"),
            ID,
            "containerd",
        );
        expect(
            &format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/\
                 crio-{ID}.scope"
            ),
            ID,
            "cri-o",
        );
        expect(
            &format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/\
                 docker-{ID}.scope"
            ),
            ID,
            "docker",
        );
        host(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"
        ));
    }

    #[test]
    fn crio_conmon_is_not_the_container() {
        host(&format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/\
             crio-conmon-{ID}.scope"
        ));
        host(&format!("/kubepods/besteffort/pod{UID}/crio-conmon-{ID}"));
        // Inside a kind node the conmon belongs to the node container.
        expect(
            &format!(
                "/system.slice/docker-{ID2}.scope/kubelet.slice/kubelet-kubepods.slice/\
                 kubelet-kubepods-pod{UID_}.slice/crio-conmon-{ID}.scope"
            ),
            ID2,
            "docker",
        );
    }

    #[test]
    fn crio_container_subcgroup() {
        // crun puts the container's processes into a "container" child of the scope.
        expect(
            &format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/\
                 crio-{ID}.scope/container"
            ),
            ID,
            "cri-o",
        );
    }

    #[test]
    fn docker() {
        expect(&format!("/docker/{ID}"), ID, "docker");
        expect(&format!("/system.slice/docker-{ID}.scope"), ID, "docker");
        host("/system.slice/docker.service");
        host("/docker");
    }

    #[test]
    fn nested_picks_innermost() {
        // kind on a cgroup v1/hybrid host (cgroupfs inside the node).
        expect(
            &format!("/docker/{ID2}/kubepods/besteffort/pod{UID}/{ID}"),
            ID,
            "containerd",
        );
        // Docker-in-Docker.
        expect(&format!("/docker/{ID2}/docker/{ID}"), ID, "docker");
        // kind on a cgroup v2 host with systemd inside the node.
        expect(
            &format!(
                "/system.slice/docker-{ID2}.scope/kubelet.slice/kubelet-kubepods.slice/\
                 kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/\
                 cri-containerd-{ID}.scope"
            ),
            ID,
            "containerd",
        );
        // A process of the node container itself (its systemd, kubelet).
        expect(
            &format!("/system.slice/docker-{ID2}.scope/init.scope"),
            ID2,
            "docker",
        );
        expect(
            &format!("/system.slice/docker-{ID2}.scope/system.slice/containerd.service"),
            ID2,
            "docker",
        );
    }

    #[test]
    fn container_subcgroups_belong_to_the_container() {
        expect(
            &format!(
                "/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope/init.scope"
            ),
            ID,
            "containerd",
        );
        expect(&format!("/k8s.io/{ID}/sub/deeper"), ID, "containerd");
    }

    #[test]
    fn literal_systemd_cgroups_path() {
        expect(
            &format!(
                "/system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:\
                 cri-containerd:{ID}"
            ),
            ID,
            "containerd",
        );
        expect(
            &format!("/kubepods-besteffort-pod{UID_}.slice:crio:{ID}"),
            ID,
            "cri-o",
        );
        host(&format!("/x.slice:unknown:{ID}"));
    }

    #[test]
    fn host_paths() {
        for path in [
            "",
            "/",
            "//",
            "/init.scope",
            "/system.slice",
            "/system.slice/sshd.service",
            "/system.slice/containerd.service",
            "/system.slice/kubelet.service",
            "/user.slice",
            "/user.slice/user-1000.slice/session-3.scope",
            "/user.slice/user-0.slice/user@0.service/app.slice/app-tmux.scope",
            "/kubepods.slice",
            "/kubepods.slice/kubepods-burstable.slice",
            "/process_api/426f43d1fd71d12aafc7fb92144b39db",
        ] {
            host(path);
        }
    }

    #[test]
    fn near_misses_are_not_containers() {
        host(&format!("/k8s.io/{}", &ID[..63]));
        host(&format!("/k8s.io/{ID}0"));
        host(&format!("/k8s.io/{}", ID.to_uppercase()));
        host(&format!("/system.slice/docker-{}.scope", &ID[..12]));
        host(&format!("/system.slice/cri-containerd-{ID}.service"));
        host(&format!("/system.slice/podman-{ID}.scope"));
        host(&format!("/kubepods/besteffort/pod{UID}/crio-{ID}x"));
        host(&format!("/kubepods.slice/crio-conmon-{}.scope", &ID[..10]));
        host("/system.slice/crio-.scope");
        host("/\\/\0/ünïcödé/::/:::");
    }

    #[test]
    fn mountinfo_hybrid() {
        let text = "\
22 28 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            parse_mountinfo(text),
            Some(Cgroup2Mount {
                mount_point: PathBuf::from("/sys/fs/cgroup/unified"),
                root: "/".into(),
            })
        );
    }

    #[test]
    fn mountinfo_unified_with_optional_fields() {
        let text = "\
24 30 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc rw
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 master:2 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
        assert_eq!(
            parse_mountinfo(text),
            Some(Cgroup2Mount {
                mount_point: PathBuf::from("/sys/fs/cgroup"),
                root: "/".into(),
            })
        );
    }

    #[test]
    fn mountinfo_prefers_whole_hierarchy_and_unescapes() {
        let text = "\
900 35 0:30 /kubepods.slice /var/lib/x\\040y rw - cgroup2 cgroup2 rw
901 35 0:30 / /run/some\\040where/cg rw - cgroup2 cgroup2 rw
35 24 0:30 / /sys/fs/cgroup rw shared:9 - cgroup2 cgroup2 rw
";
        assert_eq!(
            parse_mountinfo(text).map(|m| m.mount_point),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let only_escaped = "901 35 0:30 / /run/some\\040where/cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_mountinfo(only_escaped).map(|m| m.mount_point),
            Some(PathBuf::from("/run/some where/cg"))
        );
        let namespaced = "900 35 0:30 /kubepods.slice /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_mountinfo(namespaced).map(|m| m.root),
            Some("/kubepods.slice".to_owned())
        );
    }

    #[test]
    fn mountinfo_without_cgroup2_or_garbage() {
        assert_eq!(parse_mountinfo(""), None);
        assert_eq!(
            parse_mountinfo("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"),
            None
        );
        assert_eq!(
            parse_mountinfo("garbage - cgroup2\n - \n\\\\\\ - cgroup2 x"),
            None
        );
        assert_eq!(unescape_mountinfo("a\\0"), "a\\0");
        assert_eq!(unescape_mountinfo("a\\777b"), "a\\777b");
        assert_eq!(unescape_mountinfo("\\134x"), "\\x");
    }

    #[test]
    fn discovers_this_machines_cgroup2_mount() {
        match discover_cgroup2_mount() {
            Ok(mount) => assert!(mount.mount_point.is_dir(), "{mount:?}"),
            Err(error) => eprintln!("skipping: no cgroup2 mount here: {error}"),
        }
        assert!(matches!(
            discover_cgroup2_mount_in(Path::new("/nonexistent/mountinfo")),
            Err(CgroupError::ReadMountinfo { .. })
        ));
    }

    fn unique_name(tag: &str) -> String {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        format!(
            "custos-test-{tag}-{}-{nanos}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn ino(path: &Path) -> u64 {
        std::fs::metadata(path).expect("stat test dir").ino()
    }

    /// A temporary directory, removed on drop (pass or fail).
    struct TempTree(PathBuf);

    impl TempTree {
        fn new(tag: &str) -> Self {
            let path = std::env::temp_dir().join(unique_name(tag));
            std::fs::create_dir_all(&path).expect("create temporary tree");
            Self(path)
        }
    }

    impl Drop for TempTree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The resolver only needs a directory tree with inode numbers, so an ordinary temporary
    /// tree exercises it without root.
    #[tokio::test]
    async fn resolves_new_directories_and_forgets_removed_ones() {
        let tree = TempTree::new("tree");
        let base = tree.0.clone();
        std::fs::create_dir_all(base.join("a/b")).expect("create tree");
        std::fs::write(base.join("a/file"), b"not a dir").expect("create file");
        let resolver = CgroupResolver::new(&base);

        assert_eq!(resolver.resolve(ino(&base)).await.as_deref(), Some("/"));
        assert_eq!(
            resolver.resolve(ino(&base.join("a/b"))).await.as_deref(),
            Some("/a/b")
        );
        assert_eq!(resolver.resolve(ino(&base.join("a/file"))).await, None);

        // A directory created after the first walk is found by a rescan.
        std::fs::create_dir(base.join("a/new")).expect("mkdir");
        let new_ino = ino(&base.join("a/new"));
        assert_eq!(resolver.resolve(new_ino).await.as_deref(), Some("/a/new"));
        assert!(resolver.exists("/a/new"));

        std::fs::remove_dir(base.join("a/new")).expect("rmdir");
        assert!(!resolver.exists("/a/new"));
        resolver.rescan().await.expect("rescan");
        assert_eq!(resolver.cached(new_ino), None);
    }

    #[tokio::test]
    async fn flood_of_unknown_ids_is_coalesced() {
        let tree = TempTree::new("flood");
        let resolver = Arc::new(CgroupResolver::walking(&tree.0));
        let lookups: Vec<_> = (0..500u64)
            .map(|i| {
                let resolver = Arc::clone(&resolver);
                tokio::spawn(async move { resolver.resolve(u64::MAX - i).await })
            })
            .collect();
        let started = Instant::now();
        for lookup in lookups {
            assert_eq!(lookup.await.expect("lookup task"), None);
        }
        // One walk for the first miss, at most one more for everything that queued behind it.
        assert!(resolver.walks() <= 2, "walked {} times", resolver.walks());
        // Asking again within the negative TTL does not walk at all.
        let before = resolver.walks();
        for i in 0..500u64 {
            assert_eq!(resolver.resolve(u64::MAX - i).await, None);
        }
        assert_eq!(resolver.walks(), before);
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    fn real_mount(test: &str) -> Option<Cgroup2Mount> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("\n*** skipping {test}: needs root ***\n");
            return None;
        }
        match discover_cgroup2_mount() {
            Ok(mount) => Some(mount),
            Err(error) => {
                eprintln!("\n*** skipping {test}: {error} ***\n");
                None
            }
        }
    }

    /// On real cgroup2 as root, unknown ids are answered by the kernel: no walks at all.
    #[tokio::test]
    async fn unknown_ids_by_file_handle_never_walk() {
        let Some(mount) = real_mount("unknown_ids_by_file_handle_never_walk") else {
            return;
        };
        let resolver = CgroupResolver::new(&mount.mount_point);
        assert!(
            resolver.uses_file_handles(),
            "root on cgroup2 should use handles"
        );
        for i in 0..2000u64 {
            assert_eq!(resolver.resolve(u64::MAX - i).await, None);
        }
        assert_eq!(resolver.walks(), 0);
    }

    /// A real cgroup: its inode is what `bpf_get_current_cgroup_id()` would report. Both
    /// methods must find it, and forget it once it is removed.
    #[tokio::test]
    async fn resolves_a_real_cgroup() {
        let Some(mount) = real_mount("resolves_a_real_cgroup") else {
            return;
        };
        let name = unique_name("cg");
        let dir = mount.mount_point.join(&name);
        std::fs::create_dir(&dir).expect("mkdir a cgroup");
        std::fs::create_dir(dir.join("child")).expect("mkdir a child cgroup");
        let (id, child) = (ino(&dir), ino(&dir.join("child")));

        let by_handle = CgroupResolver::new(&mount.mount_point);
        let walking = CgroupResolver::walking(&mount.mount_point);
        let found = (
            by_handle.resolve(id).await,
            by_handle.resolve(child).await,
            walking.resolve(id).await,
            walking.resolve(child).await,
        );
        let _ = std::fs::remove_dir(dir.join("child"));
        let _ = std::fs::remove_dir(&dir);
        let (want, want_child) = (format!("/{name}"), format!("/{name}/child"));
        assert_eq!(found.0.as_deref(), Some(want.as_str()), "by handle");
        assert_eq!(found.1.as_deref(), Some(want_child.as_str()), "by handle");
        assert_eq!(found.2.as_deref(), Some(want.as_str()), "walking");
        assert_eq!(found.3.as_deref(), Some(want_child.as_str()), "walking");
        assert!(by_handle.uses_file_handles());
        assert_eq!(by_handle.walks(), 0);
        assert_eq!(
            by_handle.resolve(ino(&mount.mount_point)).await.as_deref(),
            Some("/"),
            "root"
        );

        // Gone: the kernel says so (by handle); a fresh resolver cannot find it.
        let fresh = CgroupResolver::new(&mount.mount_point);
        assert_eq!(fresh.resolve(id).await, None);
    }
}
