//! Container attribution: which container and pod a kernel event belongs to.
//!
//! The kernel sensors tag every event with `bpf_get_current_cgroup_id()`, the inode number of
//! the task's cgroup v2 directory. [`ContainerRegistry::workload_for_cgroup`] turns that number
//! into a [`Workload`] in three steps, each cached:
//!
//! 1. id → cgroup path, by walking the cgroup2 hierarchy ([`cgroup::CgroupResolver`]);
//! 2. path → container id and runtime, from the runtimes' cgroup naming
//!    ([`cgroup::parse_cgroup_path`]) — this needs no runtime API, so it keeps working when
//!    containerd is down;
//! 3. container id → pod namespace, pod, container name and image, from containerd's API
//!    ([`containerd::ContainerdMetadata`]).
//!
//! The finished attribution is cached per cgroup id, so the hot path is one map lookup and a
//! clone. Host processes are attributed too (`host: true`): nothing is dropped here.

pub mod cgroup;
pub mod containerd;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use dashmap::DashMap;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

pub use self::{
    cgroup::{CgroupResolver, ContainerId, Runtime, parse_cgroup_path},
    containerd::{ContainerMeta, ContainerdMetadata},
};
use crate::api::proto::Workload;

/// How long a container attribution without containerd metadata is served before containerd
/// is asked again.
const META_RETRY: Duration = Duration::from_secs(10);
/// How often caches are swept of containers and cgroups that are gone.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// How long a deleted container or removed cgroup stays attributable, for late events.
const GRACE: Duration = Duration::from_secs(60);

struct CachedWorkload {
    workload: Workload,
    /// Set when the attribution lacks containerd metadata that may still arrive.
    retry_at: Option<Instant>,
    /// First sweep that found the cgroup directory gone.
    gone_since: Option<Instant>,
}

/// Attribution of cgroup ids to host, container and pod. Create with
/// [`ContainerRegistry::start`]; background tasks stop when the registry is dropped.
pub struct ContainerRegistry {
    resolver: Arc<CgroupResolver>,
    containerd: Arc<ContainerdMetadata>,
    workloads: Arc<DashMap<u64, CachedWorkload>>,
    tasks: Vec<JoinHandle<()>>,
}

impl ContainerRegistry {
    /// Connects (or starts retrying) and loads the current containers; spawns the refresh task.
    ///
    /// Fails only when no cgroup2 hierarchy is mounted (cgroup ids then mean nothing). A
    /// missing or failing containerd is logged loudly and retried in the background;
    /// attribution meanwhile carries the container id and runtime from the cgroup path.
    pub async fn start(containerd_socket: PathBuf) -> anyhow::Result<Arc<Self>> {
        let mount = cgroup::discover_cgroup2_mount()
            .context("cgroup v2 is required to attribute events to containers")?;
        cgroup::log_mount(&mount);
        let resolver = Arc::new(CgroupResolver::new(mount.mount_point));
        if !resolver.uses_file_handles()
            && let Err(error) = resolver.rescan().await
        {
            warn!(%error, "initial cgroup walk failed; will retry on demand");
        }

        let mut registry = Self::new(resolver, containerd_socket);
        let events = match registry.containerd.connect_and_load().await {
            Ok(events) => Some(events),
            Err(error) => {
                warn!(
                    %error,
                    socket = %registry.containerd.socket().display(),
                    "CONTAINERD UNAVAILABLE: pods and images will be missing from events until \
                     it is reachable; retrying in the background"
                );
                None
            }
        };
        registry.tasks = vec![
            tokio::spawn(Arc::clone(&registry.containerd).run(events)),
            tokio::spawn(sweep_loop(
                Arc::clone(&registry.resolver),
                Arc::clone(&registry.containerd),
                Arc::clone(&registry.workloads),
            )),
        ];
        Ok(Arc::new(registry))
    }

    /// A registry with nothing connected and no background tasks.
    fn new(resolver: Arc<CgroupResolver>, containerd_socket: PathBuf) -> Self {
        let workloads: Arc<DashMap<u64, CachedWorkload>> = Arc::new(DashMap::new());
        let derived = Arc::clone(&workloads);
        // Attributions built from old (or no) metadata are dropped and rebuilt on next use,
        // which costs no I/O: the path and the metadata are both cached by then.
        let containerd = Arc::new(ContainerdMetadata::new(containerd_socket, move |change| {
            if let containerd::MetaChange::Updated(id) = change {
                derived.retain(|_, w| w.workload.container_id != id);
            }
        }));
        Self {
            resolver,
            containerd,
            workloads,
            tasks: Vec::new(),
        }
    }

    /// Attribution of a task by its cgroup v2 id. Host processes get `host: true` (never dropped).
    ///
    /// A cgroup id that does not exist in the hierarchy (already removed, or from a cgroup
    /// namespace this agent cannot see) gets `host: false` with an empty `container_id` and
    /// `cgroup_path`: unknown, not claimed to be the host.
    pub async fn workload_for_cgroup(&self, cgroup_id: u64) -> Workload {
        // The map guard must be gone before `attribute`, which writes to the map.
        let hit = self.workloads.get(&cgroup_id).and_then(|cached| {
            cached
                .retry_at
                .is_none_or(|at| Instant::now() < at)
                .then(|| cached.workload.clone())
        });
        match hit {
            Some(workload) => workload,
            None => self.attribute(cgroup_id).await,
        }
    }

    async fn attribute(&self, cgroup_id: u64) -> Workload {
        let Some(path) = self.resolver.resolve(cgroup_id).await else {
            return Workload {
                cgroup_id,
                ..Workload::default()
            };
        };
        let mut workload = Workload {
            cgroup_id,
            cgroup_path: path.to_string(),
            ..Workload::default()
        };
        let mut retry_at = None;
        match parse_cgroup_path(&path) {
            None => workload.host = true,
            Some((id, runtime)) => {
                workload.container_id = id.to_string();
                workload.runtime = runtime.as_str().to_owned();
                // Only containerd has an API here; CRI-O and Docker containers keep the id.
                if runtime == Runtime::Containerd {
                    match self.containerd.lookup(id.as_str()).await {
                        Some(meta) => {
                            workload.pod_labels =
                                self.containerd.pod_labels(&meta).into_iter().collect();
                            workload.namespace = meta.pod_namespace.clone();
                            workload.pod = meta.pod.clone();
                            workload.container = meta.container.clone();
                            workload.image = meta.image.clone();
                        }
                        None => retry_at = Some(Instant::now() + META_RETRY),
                    }
                }
            }
        }
        debug!(
            cgroup_id,
            path = %workload.cgroup_path,
            container_id = %workload.container_id,
            pod = %workload.pod,
            "attributed cgroup"
        );
        self.workloads.insert(
            cgroup_id,
            CachedWorkload {
                workload: workload.clone(),
                retry_at,
                gone_since: None,
            },
        );
        workload
    }

    /// The cgroup id → path resolver (for callers that need the mount point or raw paths).
    pub fn cgroups(&self) -> &CgroupResolver {
        &self.resolver
    }

    /// The containerd metadata cache.
    pub fn containerd(&self) -> &ContainerdMetadata {
        &self.containerd
    }
}

impl Drop for ContainerRegistry {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Periodically forgets containers deleted and cgroups removed more than [`GRACE`] ago, so
/// caches follow the node's churn instead of growing for ever.
async fn sweep_loop(
    resolver: Arc<CgroupResolver>,
    containerd: Arc<ContainerdMetadata>,
    workloads: Arc<DashMap<u64, CachedWorkload>>,
) {
    let mut ticker = tokio::time::interval(SWEEP_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        containerd.sweep(GRACE);
        resolver.sweep_misses();
        let paths: Vec<(u64, String)> = workloads
            .iter()
            .map(|w| (*w.key(), w.workload.cgroup_path.clone()))
            .collect();
        let mount = resolver.mount_point().to_owned();
        // Stat outside the map's locks and off the async threads.
        let gone = tokio::task::spawn_blocking(move || {
            paths
                .into_iter()
                .filter(|(_, path)| !mount.join(path.trim_start_matches('/')).is_dir())
                .map(|(id, _)| id)
                .collect::<Vec<u64>>()
        })
        .await;
        let gone = match gone {
            Ok(gone) => gone,
            Err(error) => {
                warn!(%error, "cgroup sweep failed");
                continue;
            }
        };
        let now = Instant::now();
        let mut evicted = 0usize;
        for id in gone {
            let expired = workloads.get_mut(&id).is_some_and(|mut w| {
                let since = *w.gone_since.get_or_insert(now);
                now.duration_since(since) >= GRACE
            });
            if expired {
                workloads.remove(&id);
                resolver.forget(id);
                evicted += 1;
            }
        }
        if evicted > 0 {
            debug!(evicted, "evicted attributions of removed cgroups");
        }
    }
}

#[cfg(test)]
mod tests;
