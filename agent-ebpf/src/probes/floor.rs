//! Empty programs for `custos bench-floor` (`cargo xtask bench`'s floor condition): attached to
//! the same hooks as the sensors, they measure what hooking costs before any work is done, so
//! the bench can show how much of the agent's overhead is the kernel's dispatch and how much
//! is the probes'. Never attached by the agent itself.
use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint, tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};

#[tracepoint]
pub fn floor_tracepoint(_ctx: TracePointContext) -> u32 {
    0
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn floor_raw_tracepoint(_ctx: RawTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "sched_process_fork")]
pub fn floor_btf_tracepoint(_ctx: BtfTracePointContext) -> u32 {
    0
}
