//! Container metadata from containerd's gRPC API.
//!
//! A cgroup path yields a container id and nothing else; the pod and container names a user
//! recognises live in the labels the kubelet puts on each container
//! (`io.kubernetes.pod.namespace`, `io.kubernetes.pod.name`, `io.kubernetes.container.name`),
//! stored by containerd. This module keeps a cache of them, filled by one listing of every
//! containerd namespace at connection time and kept current by containerd's event stream
//! (`/containers/*`, `/tasks/start`, `/namespaces/*`). A container the cache does not know yet
//! (the event may trail the first syscalls of its processes) is fetched on demand with a short
//! timeout.
//!
//! containerd being absent or restarting must never stop attribution: lookups then answer
//! "unknown" at once, and a background task reconnects with exponential backoff and reloads.

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use containerd_client::{
    services::v1::{
        Container, GetContainerRequest, ListContainersRequest, ListNamespacesRequest,
        SubscribeRequest, containers_client::ContainersClient, events_client::EventsClient,
        namespaces_client::NamespacesClient,
    },
    tonic::{self, Code, Request, Status, metadata::MetadataValue, transport::Channel},
    types::Envelope,
};
use dashmap::DashMap;
use futures::{Stream, StreamExt as _};
use prost::Message as _;
use tracing::{debug, info, warn};

/// gRPC metadata header that selects the containerd namespace of a request.
const NAMESPACE_HEADER: &str = "containerd-namespace";
/// Kubelet (CRI) labels.
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// Kubelet (CRI) label with the pod name.
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
/// Kubelet (CRI) label with the container name within its pod.
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// How long connecting to the socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long listing everything at connection time may take.
const LOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an on-demand lookup (one `Get` per namespace) may take in total.
const LOOKUP_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a container containerd did not know is answered "unknown" without asking again.
const MISS_TTL: Duration = Duration::from_secs(10);
/// Reconnection backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often the whole cache is reconciled with a fresh listing, in case an event was missed.
const RESYNC_INTERVAL: Duration = Duration::from_secs(300);
/// containerd returns each container with its whole OCI spec: allow large listings.
const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// Event topics the cache follows (containerd filter syntax; the filters are OR-ed).
const EVENT_FILTERS: [&str; 3] = [
    r#"topic~="^/containers/""#,
    r#"topic=="/tasks/start""#,
    r#"topic~="^/namespaces/""#,
];

/// Errors talking to containerd.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// The socket file does not exist: containerd is not running (or runs elsewhere).
    #[error("containerd socket {socket} does not exist")]
    SocketMissing {
        /// The socket path.
        socket: PathBuf,
    },
    /// Connecting to the socket failed.
    #[error("cannot connect to containerd at {socket}")]
    Connect {
        /// The socket path.
        socket: PathBuf,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// A call did not finish in time.
    #[error("containerd {call} timed out after {timeout:?}")]
    Timeout {
        /// The call.
        call: &'static str,
        /// The time allowed.
        timeout: Duration,
    },
    /// A call failed.
    #[error("containerd {call} failed (namespace {namespace:?})")]
    Call {
        /// The call.
        call: &'static str,
        /// The containerd namespace it was made in, empty for namespace-less calls.
        namespace: String,
        /// The gRPC status.
        #[source]
        source: Status,
    },
    /// A namespace name that cannot travel as a gRPC header value.
    #[error("containerd namespace {namespace:?} is not a valid gRPC header value")]
    BadNamespace {
        /// The namespace.
        namespace: String,
    },
}

/// The kubelet's pod uid label, shared by a pod's sandbox and its containers.
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
/// containerd's CRI plugin marks a pod's sandbox container with `sandbox` here.
pub const LABEL_CRI_KIND: &str = "io.cri-containerd.kind";
/// Pod labels Custos reads (identity overrides such as `custos.dev/workload`): the CRI plugin
/// puts a pod's labels on its sandbox container only.
pub const CUSTOS_LABEL_PREFIX: &str = "custos.dev/";

/// What containerd knows about one container.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerMeta {
    /// The containerd namespace it lives in (`k8s.io` for the kubelet's containers).
    pub containerd_namespace: String,
    /// Pod namespace, from the kubelet's label; empty if not started by a kubelet.
    pub pod_namespace: String,
    /// Pod name, from the kubelet's label.
    pub pod: String,
    /// Container name within the pod, from the kubelet's label.
    pub container: String,
    /// Image reference.
    pub image: String,
    /// The kubelet's pod uid; empty if not started by a kubelet.
    pub pod_uid: String,
    /// True for a pod's sandbox (pause) container.
    pub sandbox: bool,
    /// This container's own `custos.dev/*` labels.
    pub custos_labels: BTreeMap<String, String>,
}

impl ContainerMeta {
    fn from_container(namespace: &str, container: &Container) -> Self {
        let label = |key: &str| container.labels.get(key).cloned().unwrap_or_default();
        Self {
            containerd_namespace: namespace.to_owned(),
            pod_namespace: label(LABEL_POD_NAMESPACE),
            pod: label(LABEL_POD_NAME),
            container: label(LABEL_CONTAINER_NAME),
            image: container.image.clone(),
            pod_uid: label(LABEL_POD_UID),
            sandbox: label(LABEL_CRI_KIND) == "sandbox",
            custos_labels: container
                .labels
                .iter()
                .filter(|(key, _)| key.starts_with(CUSTOS_LABEL_PREFIX))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
        }
    }
}

/// A change to the cache, reported to the owner so it can drop what it derived from it.
#[derive(Debug)]
pub enum MetaChange<'a> {
    /// The container's metadata was added or replaced.
    Updated(&'a str),
    /// The container was deleted and its grace period is over.
    Removed(&'a str),
}

type Listener = Box<dyn Fn(MetaChange<'_>) + Send + Sync>;

/// A pending subscription to containerd's events.
///
/// containerd sends the response headers of `Events.Subscribe` only with the first event, so
/// the call cannot be awaited before listing containers: it runs in its own task, started
/// before the listing so that changes made during the listing still arrive. Dropping the
/// subscription cancels it.
pub struct Subscription(tokio::task::JoinHandle<Result<tonic::codec::Streaming<Envelope>, Status>>);

impl Drop for Subscription {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Subscription {
    /// The events, once containerd starts sending them; an error ends the stream.
    fn into_stream(mut self) -> impl Stream<Item = Result<Envelope, Status>> + Send {
        futures::stream::once(async move {
            match (&mut self.0).await {
                Ok(Ok(events)) => events.boxed(),
                Ok(Err(status)) => futures::stream::iter([Err(status)]).boxed(),
                Err(error) => futures::stream::iter([Err(Status::cancelled(format!(
                    "event subscription task ended: {error}"
                )))])
                .boxed(),
            }
        })
        .flatten()
    }
}

/// The metadata cache and the connection to containerd.
pub struct ContainerdMetadata {
    socket: PathBuf,
    channel: Mutex<Option<Channel>>,
    namespaces: Mutex<Vec<String>>,
    cache: DashMap<String, Arc<ContainerMeta>>,
    misses: DashMap<String, Instant>,
    /// Containers containerd deleted, kept until the grace period ends so late events of their
    /// processes are still attributed.
    deleted: DashMap<String, Instant>,
    listener: Listener,
}

impl ContainerdMetadata {
    /// A cache for the containerd at `socket`; nothing is connected yet. `listener` hears about
    /// every change to the cache (it runs inline: keep it short and non-blocking).
    pub fn new(
        socket: impl Into<PathBuf>,
        listener: impl Fn(MetaChange<'_>) + Send + Sync + 'static,
    ) -> Self {
        Self {
            socket: socket.into(),
            channel: Mutex::new(None),
            namespaces: Mutex::new(Vec::new()),
            cache: DashMap::new(),
            misses: DashMap::new(),
            deleted: DashMap::new(),
            listener: Box::new(listener),
        }
    }

    /// The socket this cache talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether a connection is currently established.
    pub fn is_connected(&self) -> bool {
        self.channel().is_some()
    }

    /// The cached metadata of a container, without asking containerd.
    pub fn cached(&self, id: &str) -> Option<Arc<ContainerMeta>> {
        self.cache.get(id).map(|m| Arc::clone(&m))
    }

    /// The `custos.dev/*` labels of the pod `meta` belongs to: its sandbox's (where the CRI
    /// plugin puts the pod's labels), then the container's own on top.
    pub fn pod_labels(&self, meta: &ContainerMeta) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        if !meta.pod_uid.is_empty()
            && let Some(sandbox) = self
                .cache
                .iter()
                .find(|entry| entry.sandbox && entry.pod_uid == meta.pod_uid)
        {
            labels.extend(sandbox.custos_labels.clone());
        }
        labels.extend(meta.custos_labels.clone());
        labels
    }

    /// The cached containers whose id starts with `prefix` (at most `limit` of them).
    pub fn find_by_prefix(&self, prefix: &str, limit: usize) -> Vec<(String, Arc<ContainerMeta>)> {
        self.cache
            .iter()
            .filter(|entry| entry.key().starts_with(prefix))
            .take(limit)
            .map(|entry| (entry.key().clone(), Arc::clone(entry.value())))
            .collect()
    }

    /// Whether containerd reported the container deleted (and the grace period still runs).
    pub fn is_deleted(&self, id: &str) -> bool {
        self.deleted.contains_key(id)
    }

    fn channel(&self) -> Option<Channel> {
        self.channel
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_channel(&self, channel: Option<Channel>) {
        *self.channel.lock().unwrap_or_else(PoisonError::into_inner) = channel;
    }

    fn namespaces(&self) -> Vec<String> {
        self.namespaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn insert(&self, id: &str, meta: ContainerMeta) {
        let meta = Arc::new(meta);
        let changed = self.cache.get(id).is_none_or(|old| **old != *meta);
        self.misses.remove(id);
        self.deleted.remove(id);
        if changed {
            debug!(
                container_id = id,
                namespace = %meta.containerd_namespace,
                pod_namespace = %meta.pod_namespace,
                pod = %meta.pod,
                container = %meta.container,
                "container metadata cached"
            );
            self.cache.insert(id.to_owned(), meta);
            (self.listener)(MetaChange::Updated(id));
        }
    }

    /// The metadata of container `id`: from the cache, else from containerd (one `Get` in each
    /// namespace, [`LOOKUP_TIMEOUT`] in all). `None` if containerd is not connected, does not
    /// know the container, or did not answer in time; such a miss is remembered for
    /// [`MISS_TTL`] so a busy unknown container costs one round of calls, not one per event.
    pub async fn lookup(&self, id: &str) -> Option<Arc<ContainerMeta>> {
        if let Some(meta) = self.cached(id) {
            return Some(meta);
        }
        if self
            .misses
            .get(id)
            .is_some_and(|at| at.elapsed() < MISS_TTL)
        {
            return None;
        }
        let channel = self.channel()?;
        let found = tokio::time::timeout(LOOKUP_TIMEOUT, self.fetch(&channel, id)).await;
        match found {
            Ok(Ok(Some((namespace, container)))) => {
                self.insert(id, ContainerMeta::from_container(&namespace, &container));
                return self.cached(id);
            }
            Ok(Ok(None)) => debug!(container_id = id, "containerd does not know this container"),
            Ok(Err(error)) => warn!(container_id = id, %error, "containerd lookup failed"),
            Err(_) => warn!(
                container_id = id,
                timeout = ?LOOKUP_TIMEOUT,
                "containerd lookup timed out"
            ),
        }
        self.misses.insert(id.to_owned(), Instant::now());
        None
    }

    /// Finds container `id` in whichever namespace holds it.
    async fn fetch(
        &self,
        channel: &Channel,
        id: &str,
    ) -> Result<Option<(String, Container)>, ContainerdError> {
        let mut namespaces = self.namespaces();
        if namespaces.is_empty() {
            namespaces = self.refresh_namespaces(channel).await?;
        }
        for namespace in namespaces {
            if let Some(container) = get_container(channel, &namespace, id).await? {
                return Ok(Some((namespace, container)));
            }
        }
        Ok(None)
    }

    async fn refresh_namespaces(&self, channel: &Channel) -> Result<Vec<String>, ContainerdError> {
        let response = NamespacesClient::new(channel.clone())
            .list(ListNamespacesRequest::default())
            .await
            .map_err(|source| ContainerdError::Call {
                call: "Namespaces.List",
                namespace: String::new(),
                source,
            })?;
        let mut names: Vec<String> = response
            .into_inner()
            .namespaces
            .into_iter()
            .map(|n| n.name)
            .collect();
        // The kubelet's namespace first: that is where lookups usually succeed.
        names.sort_by_key(|n| (n != "k8s.io", n.clone()));
        *self
            .namespaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = names.clone();
        Ok(names)
    }

    /// Connects, subscribes to events and loads every container. The subscription is made
    /// first so nothing that happens during the listing is missed.
    pub async fn connect_and_load(&self) -> Result<Subscription, ContainerdError> {
        if !self.socket.exists() {
            return Err(ContainerdError::SocketMissing {
                socket: self.socket.clone(),
            });
        }
        let channel =
            tokio::time::timeout(CONNECT_TIMEOUT, containerd_client::connect(&self.socket))
                .await
                .map_err(|_| ContainerdError::Timeout {
                    call: "connect",
                    timeout: CONNECT_TIMEOUT,
                })?
                .map_err(|source| ContainerdError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        let request = SubscribeRequest {
            filters: EVENT_FILTERS.iter().map(|f| (*f).to_owned()).collect(),
        };
        let mut events_client = EventsClient::new(channel.clone());
        let subscription = Subscription(tokio::spawn(async move {
            events_client
                .subscribe(request)
                .await
                .map(tonic::Response::into_inner)
        }));
        // Let the subscription go out before listing.
        tokio::task::yield_now().await;
        let loaded = tokio::time::timeout(LOAD_TIMEOUT, self.load_all(&channel))
            .await
            .map_err(|_| ContainerdError::Timeout {
                call: "container listing",
                timeout: LOAD_TIMEOUT,
            })??;
        self.set_channel(Some(channel));
        info!(
            socket = %self.socket.display(),
            containers = loaded,
            namespaces = ?self.namespaces(),
            "connected to containerd"
        );
        Ok(subscription)
    }

    /// Lists every container of every namespace into the cache; containers cached earlier that
    /// are gone now (deleted while disconnected) start their grace period.
    async fn load_all(&self, channel: &Channel) -> Result<usize, ContainerdError> {
        let namespaces = self.refresh_namespaces(channel).await?;
        let mut seen = HashSet::new();
        for namespace in &namespaces {
            let request = namespaced(ListContainersRequest::default(), namespace)?;
            let call_error = |source| ContainerdError::Call {
                call: "Containers.ListStream",
                namespace: namespace.clone(),
                source,
            };
            let mut stream = containers_client(channel)
                .list_stream(request)
                .await
                .map_err(call_error)?
                .into_inner();
            while let Some(message) = stream.message().await.map_err(call_error)? {
                if let Some(container) = message.container {
                    self.insert(
                        &container.id,
                        ContainerMeta::from_container(namespace, &container),
                    );
                    seen.insert(container.id);
                }
            }
        }
        let now = Instant::now();
        for entry in &self.cache {
            if !seen.contains(entry.key()) {
                self.deleted.entry(entry.key().clone()).or_insert(now);
            }
        }
        Ok(seen.len())
    }

    /// Runs for ever: consumes `events` (if a connection was already made) and reconnects with
    /// exponential backoff whenever the connection is lost or could not be made.
    pub async fn run(self: Arc<Self>, mut events: Option<Subscription>) {
        let mut backoff = BACKOFF_MIN;
        let mut failures = 0u32;
        loop {
            let stream = match events.take() {
                Some(stream) => stream,
                None => match self.connect_and_load().await {
                    Ok(stream) => stream,
                    Err(error) => {
                        failures += 1;
                        // Loud on the first failure and now and then, quiet in between.
                        if failures == 1 || failures.is_multiple_of(20) {
                            warn!(
                                %error,
                                failures,
                                retry_in = ?backoff,
                                "containerd unavailable; containers get ids and runtime only"
                            );
                        } else {
                            debug!(%error, failures, "containerd still unavailable");
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                },
            };
            failures = 0;
            backoff = BACKOFF_MIN;
            self.consume(stream).await;
            self.set_channel(None);
            warn!(
                socket = %self.socket.display(),
                "lost containerd event stream; reconnecting"
            );
            tokio::time::sleep(backoff).await;
        }
    }

    /// Applies events until the stream ends, reconciling with a full listing now and then.
    async fn consume(&self, subscription: Subscription) {
        let events = subscription.into_stream();
        tokio::pin!(events);
        let mut resync = tokio::time::interval_at(
            tokio::time::Instant::now() + RESYNC_INTERVAL,
            RESYNC_INTERVAL,
        );
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(envelope)) => self.handle_event(&envelope).await,
                    Some(Err(status)) => {
                        warn!(%status, "containerd event stream failed");
                        return;
                    }
                    None => {
                        info!("containerd closed the event stream");
                        return;
                    }
                },
                _ = resync.tick() => {
                    let Some(channel) = self.channel() else { return };
                    match tokio::time::timeout(LOAD_TIMEOUT, self.load_all(&channel)).await {
                        Ok(Ok(count)) => debug!(containers = count, "resynced with containerd"),
                        Ok(Err(error)) => warn!(%error, "containerd resync failed"),
                        Err(_) => warn!("containerd resync timed out"),
                    }
                }
            }
        }
    }

    async fn handle_event(&self, envelope: &Envelope) {
        use containerd_client::events::{
            ContainerCreate, ContainerDelete, ContainerUpdate, TaskStart,
        };
        let namespace = envelope.namespace.as_str();
        let topic = envelope.topic.as_str();
        debug!(namespace, topic, "containerd event");
        let payload = envelope
            .event
            .as_ref()
            .map(|any| any.value.as_slice())
            .unwrap_or_default();
        let refresh_id = match topic {
            "/containers/create" => ContainerCreate::decode(payload).map(|e| e.id),
            "/containers/update" => ContainerUpdate::decode(payload).map(|e| e.id),
            "/tasks/start" => TaskStart::decode(payload).map(|e| e.container_id),
            "/containers/delete" => {
                match ContainerDelete::decode(payload) {
                    Ok(event) => {
                        debug!(container_id = %event.id, "container deleted");
                        self.deleted.insert(event.id, Instant::now());
                    }
                    Err(error) => warn!(topic, %error, "undecodable containerd event"),
                }
                return;
            }
            t if t.starts_with("/namespaces/") => {
                if let Some(channel) = self.channel()
                    && let Err(error) = self.refresh_namespaces(&channel).await
                {
                    warn!(%error, "cannot refresh containerd namespaces");
                }
                return;
            }
            _ => return,
        };
        let id = match refresh_id {
            Ok(id) if !id.is_empty() => id,
            Ok(_) => return,
            Err(error) => {
                warn!(topic, %error, "undecodable containerd event");
                return;
            }
        };
        // A task start of a container already known changes nothing.
        if topic == "/tasks/start" && self.cache.contains_key(&id) {
            return;
        }
        let Some(channel) = self.channel() else {
            return;
        };
        match tokio::time::timeout(LOOKUP_TIMEOUT, get_container(&channel, namespace, &id)).await {
            Ok(Ok(Some(container))) => {
                self.insert(&id, ContainerMeta::from_container(namespace, &container));
            }
            Ok(Ok(None)) => debug!(container_id = %id, topic, "container gone before lookup"),
            Ok(Err(error)) => warn!(container_id = %id, %error, "containerd lookup failed"),
            Err(_) => warn!(container_id = %id, "containerd lookup timed out"),
        }
    }

    /// Drops containers deleted more than `grace` ago and old misses.
    pub fn sweep(&self, grace: Duration) {
        let now = Instant::now();
        let expired: Vec<String> = self
            .deleted
            .iter()
            .filter(|e| now.duration_since(*e.value()) >= grace)
            .map(|e| e.key().clone())
            .collect();
        for id in expired {
            self.deleted.remove(&id);
            if self.cache.remove(&id).is_some() {
                debug!(container_id = %id, "container metadata evicted");
                (self.listener)(MetaChange::Removed(&id));
            }
        }
        self.misses
            .retain(|_, at| now.duration_since(*at) < MISS_TTL);
    }
}

fn containers_client(channel: &Channel) -> ContainersClient<Channel> {
    ContainersClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE_SIZE)
}

/// A request carrying the containerd namespace header.
fn namespaced<T>(message: T, namespace: &str) -> Result<Request<T>, ContainerdError> {
    let value = MetadataValue::try_from(namespace).map_err(|_| ContainerdError::BadNamespace {
        namespace: namespace.to_owned(),
    })?;
    let mut request = Request::new(message);
    request.metadata_mut().insert(NAMESPACE_HEADER, value);
    Ok(request)
}

/// `Containers.Get` in one namespace; `None` when the container is not there.
async fn get_container(
    channel: &Channel,
    namespace: &str,
    id: &str,
) -> Result<Option<Container>, ContainerdError> {
    let request = namespaced(GetContainerRequest { id: id.to_owned() }, namespace)?;
    match containers_client(channel).get(request).await {
        Ok(response) => Ok(response.into_inner().container),
        Err(status) if status.code() == Code::NotFound => Ok(None),
        Err(source) => Err(ContainerdError::Call {
            call: "Containers.Get",
            namespace: namespace.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn metadata_from_kubelet_labels() {
        let container = Container {
            id: "abc".into(),
            image: "registry.k8s.io/pause:3.9".into(),
            labels: HashMap::from([
                (LABEL_POD_NAMESPACE.to_owned(), "qa".to_owned()),
                (LABEL_POD_NAME.to_owned(), "web-1".to_owned()),
                (LABEL_CONTAINER_NAME.to_owned(), "web".to_owned()),
                (LABEL_POD_UID.to_owned(), "uid-1".to_owned()),
                (LABEL_CRI_KIND.to_owned(), "sandbox".to_owned()),
                ("custos.dev/workload".to_owned(), "shop".to_owned()),
                ("other".to_owned(), "x".to_owned()),
            ]),
            ..Default::default()
        };
        assert_eq!(
            ContainerMeta::from_container("k8s.io", &container),
            ContainerMeta {
                containerd_namespace: "k8s.io".into(),
                pod_namespace: "qa".into(),
                pod: "web-1".into(),
                container: "web".into(),
                image: "registry.k8s.io/pause:3.9".into(),
                pod_uid: "uid-1".into(),
                sandbox: true,
                custos_labels: BTreeMap::from([("custos.dev/workload".into(), "shop".into())]),
            }
        );
        let bare = Container::default();
        assert_eq!(
            ContainerMeta::from_container("default", &bare),
            ContainerMeta {
                containerd_namespace: "default".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn namespace_header() {
        let request = namespaced((), "k8s.io").expect("valid namespace");
        assert_eq!(
            request
                .metadata()
                .get(NAMESPACE_HEADER)
                .map(|v| v.to_str().ok()),
            Some(Some("k8s.io"))
        );
        assert!(matches!(
            namespaced((), "bad\nnamespace"),
            Err(ContainerdError::BadNamespace { .. })
        ));
    }

    #[tokio::test]
    async fn missing_socket_is_an_error_and_lookups_stay_quiet() {
        let meta = ContainerdMetadata::new("/nonexistent/containerd.sock", |_| {});
        assert!(matches!(
            meta.connect_and_load().await,
            Err(ContainerdError::SocketMissing { .. })
        ));
        assert!(!meta.is_connected());
        assert_eq!(meta.lookup("0123").await, None);
    }

    #[test]
    fn sweep_evicts_after_grace_and_notifies() {
        let removed = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = Arc::clone(&removed);
        let meta = ContainerdMetadata::new("/nonexistent", move |change| {
            if let MetaChange::Removed(id) = change {
                sink.lock().expect("test lock").push(id.to_owned());
            }
        });
        meta.insert("a", ContainerMeta::default());
        meta.insert("b", ContainerMeta::default());
        meta.deleted.insert("a".into(), Instant::now());
        meta.sweep(Duration::from_secs(60));
        assert!(meta.cached("a").is_some(), "still in its grace period");
        meta.sweep(Duration::ZERO);
        assert!(meta.cached("a").is_none());
        assert!(meta.cached("b").is_some());
        assert_eq!(*removed.lock().expect("test lock"), vec!["a".to_owned()]);
    }
}
