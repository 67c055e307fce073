//! A minimal client of the agent's gRPC API (`proto/custos/v1/custos.proto`) for the benchmark:
//! `GetStatus`, `ListProfiles` and a counting `Subscribe`.
//!
//! The messages are written out by hand with only the fields the benchmark reads (protobuf
//! decoding skips the others), so xtask needs neither code generation nor the agent crate, whose
//! build needs bpf-linker, which `cargo xtask setup` installs.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Clone, PartialEq, prost::Message)]
pub struct SubscribeRequest {
    #[prost(message, optional, tag = "1")]
    pub filter: Option<EventFilter>,
}

/// An empty filter: every event.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EventFilter {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetStatusRequest {}

/// Only the fields the benchmark needs; the body is told apart by which field is present.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(message, optional, tag = "3")]
    pub workload: Option<Workload>,
    #[prost(uint64, tag = "5")]
    pub repeats_suppressed: u64,
    #[prost(message, optional, tag = "10")]
    pub exec: Option<Empty>,
    #[prost(message, optional, tag = "11")]
    pub exit: Option<Empty>,
    #[prost(message, optional, tag = "12")]
    pub fork: Option<Empty>,
    #[prost(message, optional, tag = "13")]
    pub open: Option<Empty>,
    #[prost(message, optional, tag = "14")]
    pub network: Option<Empty>,
    #[prost(message, optional, tag = "15")]
    pub syscall: Option<Empty>,
    #[prost(message, optional, tag = "16")]
    pub drop: Option<DropEvent>,
}

impl Event {
    pub fn kind(&self) -> &'static str {
        if self.exec.is_some() {
            "exec"
        } else if self.exit.is_some() {
            "exit"
        } else if self.fork.is_some() {
            "fork"
        } else if self.open.is_some() {
            "open"
        } else if self.network.is_some() {
            "network"
        } else if self.syscall.is_some() {
            "syscall"
        } else if self.drop.is_some() {
            "drop"
        } else {
            "other"
        }
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Workload {
    #[prost(string, tag = "2")]
    pub container_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DropEvent {
    #[prost(string, tag = "1")]
    pub ring_buffer: String,
    #[prost(uint64, tag = "2")]
    pub dropped: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AgentStatus {
    #[prost(message, repeated, tag = "3")]
    pub ring_buffers: Vec<RingBufferStats>,
    #[prost(uint32, tag = "4")]
    pub subscribers: u32,
    #[prost(uint64, tag = "5")]
    pub subscriber_lagged_events: u64,
    #[prost(uint64, tag = "6")]
    pub repeats_suppressed: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RingBufferStats {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint64, tag = "2")]
    pub events: u64,
    #[prost(uint64, tag = "3")]
    pub drops: u64,
}

impl AgentStatus {
    /// Records lost in the kernel (ring buffers full), all ring buffers together.
    pub fn kernel_drops(&self) -> u64 {
        self.ring_buffers.iter().map(|r| r.drops).sum()
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListProfilesRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListProfilesResponse {
    #[prost(message, repeated, tag = "1")]
    pub profiles: Vec<ProfileSummary>,
}

/// Learning progress of one profile (the counts the benchmark checks).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProfileSummary {
    #[prost(string, tag = "2")]
    pub workload: String,
    #[prost(uint32, tag = "6")]
    pub executables: u32,
    #[prost(uint32, tag = "7")]
    pub files: u32,
    #[prost(uint32, tag = "8")]
    pub egress: u32,
    #[prost(uint32, tag = "9")]
    pub listen: u32,
}

async fn channel(path: &Path) -> Result<Channel> {
    let path: PathBuf = path.to_owned();
    let connector = tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(path).await?;
            Ok::<_, io::Error>(TokioIo::new(stream))
        }
    });
    Endpoint::from_static("http://localhost")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(connector)
        .await
        .context("cannot connect to the agent")
}

pub async fn get_status(socket: &Path) -> Result<AgentStatus> {
    let mut grpc = tonic::client::Grpc::new(channel(socket).await?);
    grpc.ready().await.context("agent not ready")?;
    let codec = tonic_prost::ProstCodec::<GetStatusRequest, AgentStatus>::default();
    let path = http::uri::PathAndQuery::from_static("/custos.v1.Custos/GetStatus");
    let response = grpc
        .unary(tonic::Request::new(GetStatusRequest {}), path, codec)
        .await
        .context("GetStatus failed")?;
    Ok(response.into_inner())
}

pub async fn list_profiles(socket: &Path) -> Result<Vec<ProfileSummary>> {
    let mut grpc = tonic::client::Grpc::new(channel(socket).await?);
    grpc.ready().await.context("agent not ready")?;
    let codec = tonic_prost::ProstCodec::<ListProfilesRequest, ListProfilesResponse>::default();
    let path = http::uri::PathAndQuery::from_static("/custos.v1.Custos/ListProfiles");
    let response = grpc
        .unary(tonic::Request::new(ListProfilesRequest {}), path, codec)
        .await
        .context("ListProfiles failed")?;
    Ok(response.into_inner().profiles)
}

/// Events received by a [`Subscriber`], per container id ("" for host events).
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub total: u64,
    pub per_container: HashMap<String, ContainerCounts>,
    /// Drop events received (records the kernel lost, as the agent reports them).
    pub dropped_reported: u64,
    pub last_event: Option<Instant>,
}

#[derive(Debug, Default, Clone)]
pub struct ContainerCounts {
    pub total: u64,
    pub by_kind: HashMap<&'static str, u64>,
}

/// One subscriber with an empty filter, counting what it receives, on its own task.
pub struct Subscriber {
    pub counts: Arc<Mutex<Counts>>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Subscriber {
    /// Subscribes; returns once the agent has accepted the subscription.
    pub async fn start(socket: &Path) -> Result<Self> {
        let mut grpc = tonic::client::Grpc::new(channel(socket).await?);
        grpc.ready().await.context("agent not ready")?;
        let codec = tonic_prost::ProstCodec::<SubscribeRequest, Event>::default();
        let path = http::uri::PathAndQuery::from_static("/custos.v1.Custos/Subscribe");
        let request = SubscribeRequest {
            filter: Some(EventFilter {}),
        };
        let mut stream = grpc
            .server_streaming(tonic::Request::new(request), path, codec)
            .await
            .context("Subscribe failed")?
            .into_inner();
        let counts = Arc::new(Mutex::new(Counts::default()));
        let shared = Arc::clone(&counts);
        let task = tokio::spawn(async move {
            // The stream ends (or fails) when the agent stops.
            while let Ok(Some(event)) = stream.message().await {
                let mut c = shared.lock().unwrap_or_else(PoisonError::into_inner);
                c.total += 1;
                c.last_event = Some(Instant::now());
                if let Some(drop) = &event.drop {
                    c.dropped_reported += drop.dropped;
                }
                let id = event
                    .workload
                    .as_ref()
                    .map(|w| w.container_id.as_str())
                    .unwrap_or_default();
                let per = match c.per_container.get_mut(id) {
                    Some(per) => per,
                    None => c.per_container.entry(id.to_owned()).or_default(),
                };
                per.total += 1;
                *per.by_kind.entry(event.kind()).or_default() += 1;
            }
            Ok(())
        });
        Ok(Self { counts, task })
    }

    /// Events received from one container so far.
    pub fn container(&self, id: &str) -> ContainerCounts {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .per_container
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    pub fn last_event(&self) -> Option<Instant> {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last_event
    }

    pub fn abort(self) {
        self.task.abort();
    }
}
