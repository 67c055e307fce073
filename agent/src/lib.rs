//! Custos: a runtime behaviour monitor for Kubernetes nodes.
//!
//! Data flows one way: kernel sensors (`sensors`) → attribution to containers and pods
//! (`containers`) → the event pipeline (`pipeline`) → consumers over gRPC (`api`). The CLI
//! (`cli`, `client`) is a gRPC client like any other. See `docs/architecture.md`.

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod containers;
pub mod daemon;
pub mod enforcement;
pub mod judge;
pub mod learning;
pub mod metrics;
pub mod modes;
pub mod output;
pub mod outputs;
pub mod pipeline;
pub mod processes;
pub mod profile_commands;
pub mod profiles;
pub mod sensors;
