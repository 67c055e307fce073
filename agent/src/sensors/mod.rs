//! Kernel sensors: loads the eBPF programs embedded in this binary, attaches them, and turns the
//! records they send into [`KernelRecord`]s.
//!
//! The programs themselves live in `agent-ebpf/`; the types both sides share are in its library
//! (`custos_ebpf`). Kernel struct offsets come from the running kernel's BTF ([`btf`]) and are
//! written into the programs before load, so one object serves many kernels.

pub mod btf;
mod clock;
pub mod files;
mod loader;
pub mod network;
pub mod records;
mod syscall_names;
pub mod syscalls;

pub use loader::{
    KernelCounters, PolicyMaps, RecordReader, RecordReaders, SensorError, SensorOptions, Sensors,
    TracedCgroups, attach_floor,
};
pub use records::{DecodeError, ExecRecord, ExitRecord, ForkRecord, KernelRecord, RecordHeader};
