//! The gRPC server: the `Custos` service over the hub, with the standard health service
//! (`grpc.health.v1`) and server reflection (`grpc.reflection.v1` and `v1alpha`), served on a
//! unix socket (always) and a TCP address (optional, TLS only: see [`super::tls`]).
//!
//! The unix socket is the agent's front door, so it is created carefully:
//! - its directory is created with mode 0700 when missing (an existing one is left as it is);
//! - an existing path is handled without guessing: a socket something answers on means another
//!   agent runs ("another agent is already listening on PATH"); a socket nobody answers on is a
//!   leftover of a crash and is removed; anything else (a file, a directory, a link) is an error
//!   naming what it is, and is never deleted;
//! - the socket is bound inside a fresh 0700 directory next to its final path, set to 0600 and
//!   only then hard-linked into place (`link` fails rather than replace a path that appeared in
//!   the meantime), so there is no moment at which anyone else could connect;
//! - on shutdown the socket file is removed, but only if it still is the one this server made.
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::{Stream, StreamExt as _};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::codegen::http;
use tonic::service::Routes;
use tonic::transport::server::{TcpIncoming, UdsConnectInfo};
use tonic::{Request, Response, Status};
use tonic_health::server::HealthReporter;

use super::filter::EventFilter;
use super::hub::EventHub;
use super::proto;
use super::proto::custos_server::{Custos, CustosServer};
use super::tls::{ServerTls, TcpEndpoint};

/// Produces the agent's status for `GetStatus`. The server fills in `subscribers` and
/// `subscriber_lagged_events` from the hub itself.
pub type StatusProvider = Arc<dyn Fn() -> proto::AgentStatus + Send + Sync>;

/// Answers `GetSyscalls`: the syscall set of one container (the syscall sensor's).
#[tonic::async_trait]
pub trait SyscallSetLookup: Send + Sync + 'static {
    /// The set of the one container whose id is `id` or starts with it. `id` has been checked:
    /// 12 to 64 lowercase hex characters.
    async fn syscall_set(&self, id: &str) -> Result<proto::SyscallSet, SyscallLookupError>;
}

/// Why `GetSyscalls` has no set to give.
#[derive(Debug, thiserror::Error)]
pub enum SyscallLookupError {
    #[error("no container {id} has syscalls recorded")]
    NotFound { id: String },
    #[error("container id prefix {id} is not unique: it matches {matches} containers")]
    Ambiguous { id: String, matches: usize },
}

/// Answers the profile calls (`ListProfiles`, `ExportProfiles`, `ImportProfiles`,
/// `GetContainerProfile`): the learning component's view of its profiles.
#[tonic::async_trait]
pub trait ProfilesApi: Send + Sync + 'static {
    async fn list(&self) -> Vec<proto::ProfileSummary>;
    /// YAML of the named profiles (all when `names` is empty).
    async fn export(&self, names: &[String]) -> Result<String, ProfilesError>;
    /// Loads YAML documents, all or nothing; returns the names of the profiles loaded.
    async fn import(&self, yaml: &str, source: &str) -> Result<Vec<String>, ProfilesError>;
    /// The profile and mode of the one container whose id is `id` or starts with it (checked:
    /// 12 to 64 lowercase hex characters).
    async fn container_profile(&self, id: &str) -> Result<proto::ContainerProfile, ProfilesError>;
}

/// Why a profile call fails; each maps to one gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum ProfilesError {
    /// NOT_FOUND
    #[error("{0}")]
    NotFound(String),
    /// INVALID_ARGUMENT: the documents or the request are wrong (the message says where).
    #[error("{0}")]
    Invalid(String),
    /// INTERNAL: the agent could not do it (e.g. the state dir is not writable).
    #[error("{0}")]
    Internal(String),
}

impl From<ProfilesError> for Status {
    fn from(error: ProfilesError) -> Self {
        match error {
            ProfilesError::NotFound(message) => Status::not_found(message),
            ProfilesError::Invalid(message) => Status::invalid_argument(message),
            ProfilesError::Internal(message) => Status::internal(message),
        }
    }
}

/// Shortest container id prefix `GetSyscalls` accepts.
pub const MIN_CONTAINER_PREFIX: usize = 12;

/// Checks a container id (or prefix) given to `GetSyscalls`: 12 to 64 hex characters; upper
/// case is accepted and lowered.
pub fn parse_container_prefix(id: &str) -> Result<String, Status> {
    let ok = (MIN_CONTAINER_PREFIX..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(id.to_ascii_lowercase())
    } else {
        Err(Status::invalid_argument(format!(
            "container_id must be a container id or a prefix of it: {MIN_CONTAINER_PREFIX} to 64 \
             hex characters, got {id:?}"
        )))
    }
}

/// How long connections get to finish after the shutdown signal before they are cut.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Mode of the unix socket file.
pub const SOCKET_MODE: u32 = 0o600;
/// Mode of the socket's directory when the server creates it.
pub const SOCKET_DIR_MODE: u32 = 0o700;

/// The `Custos` gRPC service over an [`EventHub`].
#[derive(Clone)]
pub struct CustosService {
    hub: EventHub,
    status: StatusProvider,
    /// Becomes true when the server stops; ends every subscription stream.
    stopping: watch::Receiver<bool>,
    /// Answers `GetSyscalls`; `None` until the syscall sensor is running.
    syscalls: Option<Arc<dyn SyscallSetLookup>>,
    profiles: Option<Arc<dyn ProfilesApi>>,
}

impl CustosService {
    /// A service whose subscription streams end when `stopping` becomes true (or its sender
    /// is dropped).
    pub fn new(hub: EventHub, status: StatusProvider, stopping: watch::Receiver<bool>) -> Self {
        Self {
            hub,
            status,
            stopping,
            syscalls: None,
            profiles: None,
        }
    }

    /// Answers `GetSyscalls` with `lookup`.
    pub fn with_syscalls(mut self, lookup: Option<Arc<dyn SyscallSetLookup>>) -> Self {
        self.syscalls = lookup;
        self
    }

    pub fn with_profiles(mut self, profiles: Option<Arc<dyn ProfilesApi>>) -> Self {
        self.profiles = profiles;
        self
    }

    fn profiles(&self) -> Result<&Arc<dyn ProfilesApi>, Status> {
        self.profiles
            .as_ref()
            .ok_or_else(|| Status::unavailable("profiles are not available in this agent"))
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::Event, Status>> + Send>>;
/// The events of one subscription as the hub shares them (one `Arc` for every subscriber).
type SharedEventStream = Pin<Box<dyn Stream<Item = Result<Arc<proto::Event>, Status>> + Send>>;

impl CustosService {
    /// Registers a subscriber: the stream of the events matching its filter, shared with the
    /// hub, ending when the server stops.
    fn open_subscription(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<SharedEventStream, Status> {
        let peer = describe_peer(&request);
        let wire = request.into_inner().filter.unwrap_or_default();
        let filter = EventFilter::try_from_proto(&wire).map_err(|error| {
            tracing::debug!(%peer, %error, "rejected a subscription");
            Status::invalid_argument(format!("invalid filter: {error}"))
        })?;
        let subscription = self.hub.subscribe(filter);
        tracing::info!(subscriber = subscription.id(), %peer, filter = ?wire, "subscriber connected");
        let mut stopping = self.stopping.clone();
        let stopped = async move {
            // Err: the server is gone, which also ends the stream.
            let _ = stopping.wait_for(|stopping| *stopping).await;
        };
        Ok(Box::pin(subscription.map(Ok).take_until(stopped)))
    }
}

#[tonic::async_trait]
impl Custos for CustosService {
    type SubscribeStream = EventStream;

    /// The generated service's `Subscribe`, which needs owned events (a copy of each). The
    /// servers route `Subscribe` to [`CustosRoutes`] instead, which writes the shared events
    /// without copying them.
    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let stream = self
            .open_subscription(request)?
            .map(|event| event.map(|event| proto::Event::clone(&event)));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_status(
        &self,
        _request: Request<proto::GetStatusRequest>,
    ) -> Result<Response<proto::AgentStatus>, Status> {
        let mut status = (self.status)();
        let stats = self.hub.stats();
        status.subscribers = u32::try_from(stats.subscribers).unwrap_or(u32::MAX);
        status.subscriber_lagged_events = stats.lagged_events;
        Ok(Response::new(status))
    }

    async fn get_syscalls(
        &self,
        request: Request<proto::GetSyscallsRequest>,
    ) -> Result<Response<proto::SyscallSet>, Status> {
        let id = parse_container_prefix(&request.get_ref().container_id)?;
        let Some(lookup) = &self.syscalls else {
            return Err(Status::unavailable("the syscall sensor is not running"));
        };
        match lookup.syscall_set(&id).await {
            Ok(set) => Ok(Response::new(set)),
            Err(error @ SyscallLookupError::NotFound { .. }) => {
                Err(Status::not_found(error.to_string()))
            }
            Err(error @ SyscallLookupError::Ambiguous { .. }) => {
                Err(Status::invalid_argument(error.to_string()))
            }
        }
    }

    async fn list_profiles(
        &self,
        _request: Request<proto::ListProfilesRequest>,
    ) -> Result<Response<proto::ListProfilesResponse>, Status> {
        let profiles = self.profiles()?.list().await;
        Ok(Response::new(proto::ListProfilesResponse { profiles }))
    }

    async fn export_profiles(
        &self,
        request: Request<proto::ExportProfilesRequest>,
    ) -> Result<Response<proto::ProfileDocuments>, Status> {
        let yaml = self.profiles()?.export(&request.get_ref().names).await?;
        Ok(Response::new(proto::ProfileDocuments { yaml }))
    }

    async fn import_profiles(
        &self,
        request: Request<proto::ImportProfilesRequest>,
    ) -> Result<Response<proto::ImportProfilesResponse>, Status> {
        let request = request.get_ref();
        let source = if request.source.is_empty() {
            "the request"
        } else {
            &request.source
        };
        let names = self.profiles()?.import(&request.yaml, source).await?;
        Ok(Response::new(proto::ImportProfilesResponse { names }))
    }

    async fn get_container_profile(
        &self,
        request: Request<proto::GetContainerProfileRequest>,
    ) -> Result<Response<proto::ContainerProfile>, Status> {
        let id = parse_container_prefix(&request.get_ref().container_id)?;
        let profile = self.profiles()?.container_profile(&id).await?;
        Ok(Response::new(profile))
    }
}

/// Full path of the `Subscribe` method.
const SUBSCRIBE_PATH: &str = "/custos.v1.Custos/Subscribe";

/// The `Custos` service as served: `Subscribe` streams the hub's shared events, encoding each
/// straight from its `Arc` (no copy of the event per subscriber); every other method goes to
/// the generated [`CustosServer`]. On the wire nothing changes: one `Event` per message.
#[derive(Clone)]
pub struct CustosRoutes {
    service: Arc<CustosService>,
    generated: CustosServer<CustosService>,
}

impl CustosRoutes {
    pub fn new(service: CustosService) -> Self {
        let service = Arc::new(service);
        Self {
            generated: CustosServer::from_arc(Arc::clone(&service)),
            service,
        }
    }
}

impl tonic::server::NamedService for CustosRoutes {
    const NAME: &'static str = proto::custos_server::SERVICE_NAME;
}

impl<B> tonic::codegen::Service<http::Request<B>> for CustosRoutes
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != SUBSCRIBE_PATH {
            return tonic::codegen::Service::call(&mut self.generated, request);
        }
        let method = SharedSubscribe(Arc::clone(&self.service));
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(SharedEventCodec);
            Ok(grpc.server_streaming(method, request).await)
        })
    }
}

/// `Subscribe` answered with the hub's shared events.
struct SharedSubscribe(Arc<CustosService>);

impl tonic::server::ServerStreamingService<proto::SubscribeRequest> for SharedSubscribe {
    type Response = Arc<proto::Event>;
    type ResponseStream = SharedEventStream;
    type Future = tonic::codegen::BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<proto::SubscribeRequest>) -> Self::Future {
        let result = self.0.open_subscription(request).map(Response::new);
        Box::pin(std::future::ready(result))
    }
}

/// Protobuf codec of `Subscribe` that encodes an `Arc<Event>` in place.
#[derive(Debug, Clone, Copy, Default)]
struct SharedEventCodec;

impl tonic::codec::Codec for SharedEventCodec {
    type Encode = Arc<proto::Event>;
    type Decode = proto::SubscribeRequest;
    type Encoder = SharedEventEncoder;
    type Decoder = tonic_prost::ProstDecoder<proto::SubscribeRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        SharedEventEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic::codec::Codec::decoder(&mut tonic_prost::ProstCodec::<
            proto::Event,
            proto::SubscribeRequest,
        >::default())
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct SharedEventEncoder;

impl tonic::codec::Encoder for SharedEventEncoder {
    type Item = Arc<proto::Event>;
    type Error = Status;

    fn encode(
        &mut self,
        item: Self::Item,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Self::Error> {
        prost::Message::encode(&*item, buf)
            .map_err(|error| Status::internal(format!("encoding an event: {error}")))
    }
}

fn describe_peer<T>(request: &Request<T>) -> String {
    if let Some(addr) = request.remote_addr() {
        return addr.to_string();
    }
    match request
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
    {
        Some(cred) => match cred.pid() {
            Some(pid) => format!("unix(uid={}, pid={pid})", cred.uid()),
            None => format!("unix(uid={})", cred.uid()),
        },
        None => "unix".to_owned(),
    }
}

/// Why the unix socket could not be set up. Paths are named in every message.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("another agent is already listening on {}", path.display())]
    AlreadyListening { path: PathBuf },
    #[error(
        "{} exists and is {kind}, not a socket; leaving it alone (remove it or choose another \
         socket path)",
        path.display()
    )]
    NotASocket { path: PathBuf, kind: &'static str },
    #[error("cannot check the existing socket {}", path.display())]
    Probe {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove the stale socket {}", path.display())]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the socket directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("socket path {} has no file name", path.display())]
    NoFileName { path: PathBuf },
    #[error(
        "socket path {} is too long: {len} bytes while binding, unix sockets allow at most {max}",
        path.display()
    )]
    TooLong {
        path: PathBuf,
        len: usize,
        max: usize,
    },
    #[error("cannot bind the socket {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} appeared while the agent was creating its socket there", path.display())]
    Raced { path: PathBuf },
}

/// Longest path `bind` accepts (`sun_path` is 108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A bound, listening unix socket whose file is removed when this is dropped (if it still is
/// the same file).
#[derive(Debug)]
pub struct UnixSocket {
    listener: UnixListener,
    file: SocketFile,
}

impl UnixSocket {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// The listener and the guard that removes the socket file when dropped.
    pub fn into_parts(self) -> (UnixListener, SocketFile) {
        (self.listener, self.file)
    }
}

/// Removes the socket file when dropped, if the path still names the inode that was bound.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.dev() == self.dev && meta.ino() == self.ino => {
                match std::fs::remove_file(&self.path) {
                    Ok(()) => tracing::debug!(path = %self.path.display(), "removed the socket"),
                    Err(error) => tracing::warn!(
                        path = %self.path.display(),
                        %error,
                        "cannot remove the socket"
                    ),
                }
            }
            Ok(_) => tracing::warn!(
                path = %self.path.display(),
                "the socket path was replaced by something else; leaving it"
            ),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "cannot check the socket")
            }
        }
    }
}

/// Creates, binds and listens on the unix socket at `path` with mode 0600 (see the module
/// documentation for how an existing path is treated). Must run inside a tokio runtime.
pub async fn bind_unix_socket(path: &Path) -> Result<UnixSocket, SocketError> {
    let name = path.file_name().ok_or_else(|| SocketError::NoFileName {
        path: path.to_owned(),
    })?;
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(SocketError::TooLong {
            path: path.to_owned(),
            len: path.as_os_str().len(),
            max: MAX_SOCKET_PATH,
        });
    }
    if !parent.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(SOCKET_DIR_MODE)
            .create(parent)
            .map_err(|source| SocketError::CreateDir {
                path: parent.to_owned(),
                source,
            })?;
        tracing::debug!(path = %parent.display(), "created the socket directory");
    }
    clear_existing(path).await?;

    let private = PrivateDir::create(parent, name).map_err(|source| SocketError::CreateDir {
        path: parent.to_owned(),
        source,
    })?;
    let staging = private.path.join("s");
    if staging.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(SocketError::TooLong {
            path: path.to_owned(),
            len: staging.as_os_str().len(),
            max: MAX_SOCKET_PATH,
        });
    }
    let bind_error = |source| SocketError::Bind {
        path: path.to_owned(),
        source,
    };
    let listener = std::os::unix::net::UnixListener::bind(&staging).map_err(bind_error)?;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(bind_error)?;
    // `link` never replaces an existing path, unlike `rename`.
    match std::fs::hard_link(&staging, path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            return Err(SocketError::Raced {
                path: path.to_owned(),
            });
        }
        Err(error) => return Err(bind_error(error)),
    }
    let meta = std::fs::symlink_metadata(path).map_err(bind_error)?;
    let file = SocketFile {
        path: path.to_owned(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    drop(private);
    listener.set_nonblocking(true).map_err(bind_error)?;
    let listener = UnixListener::from_std(listener).map_err(bind_error)?;
    Ok(UnixSocket { listener, file })
}

/// Makes `path` free for a new socket, or says why it cannot be.
async fn clear_existing(path: &Path) -> Result<(), SocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SocketError::Probe {
                path: path.to_owned(),
                source,
            });
        }
    };
    let file_type = meta.file_type();
    if !file_type.is_socket() {
        return Err(SocketError::NotASocket {
            path: path.to_owned(),
            kind: describe_file_type(file_type),
        });
    }
    // A busy listener (full backlog) may not accept at once: that still is a live agent.
    let probe = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::UnixStream::connect(path),
    )
    .await;
    match probe {
        Ok(Ok(_)) | Err(_) => Err(SocketError::AlreadyListening {
            path: path.to_owned(),
        }),
        Ok(Err(error)) if error.kind() == io::ErrorKind::WouldBlock => {
            Err(SocketError::AlreadyListening {
                path: path.to_owned(),
            })
        }
        Ok(Err(error)) if error.kind() == io::ErrorKind::ConnectionRefused => {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(SocketError::RemoveStale {
                        path: path.to_owned(),
                        source,
                    });
                }
            }
            tracing::warn!(
                path = %path.display(),
                "removed a stale socket (nothing listening on it; left by an agent that did not \
                 stop cleanly?)"
            );
            Ok(())
        }
        // Removed between the look and the connect.
        Ok(Err(error)) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Ok(Err(source)) => Err(SocketError::Probe {
            path: path.to_owned(),
            source,
        }),
    }
}

fn describe_file_type(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_file() {
        "a regular file"
    } else if file_type.is_dir() {
        "a directory"
    } else if file_type.is_symlink() {
        "a symbolic link"
    } else if file_type.is_fifo() {
        "a named pipe"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else {
        "not a socket"
    }
}

/// A fresh mode-0700 directory beside the socket, removed with its contents when dropped.
struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    fn create(parent: &Path, name: &std::ffi::OsStr) -> io::Result<Self> {
        use std::hash::{BuildHasher as _, Hasher as _};
        let mut last_error = None;
        for attempt in 0u64..16 {
            // A random-enough short name: RandomState is seeded per process and per call.
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write(name.as_encoded_bytes());
            hasher.write_u64(attempt);
            hasher.write_u32(std::process::id());
            let path = parent.join(format!(".custos-{:08x}", hasher.finish() as u32));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(Self { path }),
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                    last_error = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("no free temporary name")))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "cannot remove a temporary directory");
        }
    }
}

/// The gRPC API, bound and ready to serve. Binding first lets the daemon fail early and lets
/// callers (tests) know when clients can connect.
pub struct ApiServer {
    hub: EventHub,
    status: StatusProvider,
    syscalls: Option<Arc<dyn SyscallSetLookup>>,
    profiles: Option<Arc<dyn ProfilesApi>>,
    unix: UnixSocket,
    tcp: Option<(TcpListener, ServerTls)>,
}

impl ApiServer {
    /// Binds the unix socket at `unix_path` and, if given, the TCP address (served with its
    /// TLS settings).
    pub async fn bind(
        hub: EventHub,
        status: StatusProvider,
        unix_path: &Path,
        tcp: Option<TcpEndpoint>,
    ) -> anyhow::Result<Self> {
        let unix = bind_unix_socket(unix_path).await?;
        let tcp = match tcp {
            Some(TcpEndpoint { addr, tls }) => Some((
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on TCP {addr}"))?,
                tls,
            )),
            None => None,
        };
        Ok(Self {
            hub,
            status,
            syscalls: None,
            profiles: None,
            unix,
            tcp,
        })
    }

    /// Answers `GetSyscalls` with `lookup` (without one it answers UNAVAILABLE).
    pub fn with_syscalls(mut self, lookup: Arc<dyn SyscallSetLookup>) -> Self {
        self.syscalls = Some(lookup);
        self
    }

    pub fn with_profiles(mut self, profiles: Arc<dyn ProfilesApi>) -> Self {
        self.profiles = Some(profiles);
        self
    }

    /// Path of the unix socket.
    pub fn unix_path(&self) -> &Path {
        self.unix.path()
    }

    /// Address the TCP listener is bound to (with the actual port when 0 was asked for).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then ends every subscription stream, lets
    /// connections finish (at most [`SHUTDOWN_GRACE`]) and removes the socket file.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let service = CustosService::new(self.hub, self.status, stop_rx.clone())
            .with_syscalls(self.syscalls)
            .with_profiles(self.profiles);
        let (listener, socket_file) = self.unix.into_parts();
        let unix_path = socket_file.path.clone();
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let (health, routes) = routes(service).await?;

        tracing::info!(path = %unix_path.display(), "gRPC API listening on the unix socket");
        let unix_server = tonic::transport::Server::builder()
            .add_routes(routes.clone())
            .serve_with_incoming_shutdown(
                UnixListenerStream::new(listener),
                stopped(stop_rx.clone()),
            );
        let unix_server = {
            let unix_path = unix_path.clone();
            async move {
                unix_server
                    .await
                    .with_context(|| format!("serving gRPC on {}", unix_path.display()))
            }
        };
        let tcp_server = match self.tcp {
            Some((listener, tls)) => {
                let addr = listener.local_addr().ok();
                match tls.client_ca_file() {
                    Some(ca) => tracing::info!(
                        ?addr,
                        client_ca = %ca.display(),
                        "gRPC API listening on TCP with mutual TLS: clients need a certificate \
                         signed by the client CA"
                    ),
                    None => tracing::warn!(
                        ?addr,
                        "gRPC API listening on TCP with TLS but without client certificates: \
                         anyone who can reach this address can read every event"
                    ),
                }
                let server = tonic::transport::Server::builder()
                    .tls_config(tls.server_config())
                    .context("setting up TLS on the TCP listener")?
                    .add_routes(routes)
                    .serve_with_incoming_shutdown(
                        TcpIncoming::from(listener).with_nodelay(Some(true)),
                        stopped(stop_rx.clone()),
                    );
                Some(async move {
                    server
                        .await
                        .with_context(|| format!("serving gRPC on TCP {addr:?}"))
                })
            }
            None => None,
        };
        let servers = async {
            match tcp_server {
                Some(tcp_server) => tokio::try_join!(unix_server, tcp_server).map(|_| ()),
                None => unix_server.await,
            }
        };
        let mut servers = std::pin::pin!(servers);
        let result = tokio::select! {
            result = &mut servers => {
                // A server ended by itself: an error; stop the other one too.
                stop_tx.send_replace(true);
                result
            }
            () = shutdown => {
                tracing::info!("gRPC API stopping");
                // Health watchers (load balancers, probes) learn first.
                health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
                health.set_not_serving::<CustosRoutes>().await;
                stop_tx.send_replace(true);
                match tokio::time::timeout(SHUTDOWN_GRACE, &mut servers).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::warn!(
                            grace = ?SHUTDOWN_GRACE,
                            "gRPC connections did not finish in time; closing them"
                        );
                        Ok(())
                    }
                }
            }
        };
        drop(socket_file);
        tracing::info!("gRPC API stopped");
        result
    }
}

/// Every service of the API, the same on each listener: `Custos`, health (SERVING for the
/// server as a whole, "", and for `custos.v1.Custos`) and reflection over the API's and the
/// health service's descriptors. The reporter turns health to NOT_SERVING on shutdown.
async fn routes(service: CustosService) -> anyhow::Result<(HealthReporter, Routes)> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<CustosRoutes>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let routes = Routes::new(CustosRoutes::new(service))
        .add_service(health_service)
        .add_service(
            reflection()
                .build_v1()
                .context("building the reflection service (v1)")?,
        )
        .add_service(
            reflection()
                .build_v1alpha()
                .context("building the reflection service (v1alpha)")?,
        );
    Ok((health, routes))
}

/// Binds and serves the gRPC API until `shutdown` completes: [`ApiServer::bind`] then
/// [`ApiServer::serve`].
pub async fn serve(
    hub: EventHub,
    status: StatusProvider,
    unix_path: &Path,
    tcp: Option<TcpEndpoint>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    ApiServer::bind(hub, status, unix_path, tcp)
        .await?
        .serve(shutdown)
        .await
}

#[cfg(test)]
mod tests;
