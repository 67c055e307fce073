//! The gRPC API (`proto/custos/v1/custos.proto`): generated types, the server, and event
//! filters.

/// Types and service stubs generated from `proto/custos/v1/custos.proto`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("custos.v1");

    /// Encoded file descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/custos_descriptor.bin"));
}

pub mod filter;
pub mod hub;
pub mod server;
pub mod tls;

pub use filter::{EventFilter, EventKind, FilterError, event_kind_name};
pub use hub::{EventHub, HubStats, Subscription};
pub use server::{ApiServer, StatusProvider};
