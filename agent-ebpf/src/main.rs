//! Custos kernel programs. Built for `bpfel-unknown-none` by `agent/build.rs` and embedded in
//! the `custos` binary; on any other target this file compiles to an empty program so that
//! workspace-wide `cargo check`/`clippy` keep working.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod probes;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
