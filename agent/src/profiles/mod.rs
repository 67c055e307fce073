//! Behaviour profiles: what each workload normally does, learned from events or written as
//! code.
//!
//! Learning mode turns the event stream into one profile per workload identity; monitor and
//! enforce modes (later) judge events against it. There is one canonical in-memory model
//! ([`model::Profile`]); everything else is a view of it or a way to keep it:
//!
//! - [`identity`]: which profile an event belongs to (workload, container, image repository —
//!   no namespace, no pod-name randomness), with label overrides.
//! - [`model`]: the profile, the [`model::Observation`]s it learns from, `learn` / `allows`,
//!   lifecycle stats (`learning` → `stable`).
//! - [`pattern`] and [`generalize`]: the wildcards an entry may hold and the rules that
//!   generalise volatile parts (pids, temp names, pod IPs) while staying tight.
//! - [`registry`]: the live set of profiles with dirty tracking — the pipeline's entry point.
//! - [`store`]: one JSON file per profile in the state directory, written atomically.
//! - [`yaml`]: `BehaviorProfile` documents (`custos.dev/v1alpha1`) for profiles as code.
//! - [`merge`]: union of partial profiles and readable diffs.
//! - [`seccomp`]: the syscall set as a kubelet `localhost/` seccomp profile.

pub mod generalize;
pub mod identity;
pub mod merge;
pub mod model;
pub mod pattern;
pub mod registry;
pub mod seccomp;
pub mod store;
pub mod yaml;

pub use identity::WorkloadIdentity;
pub use model::{FileAccess, LearnConfig, Observation, Profile, ProfileStatus, Protocol};
pub use registry::ProfileSet;
pub use store::ProfileStore;
