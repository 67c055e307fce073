//! Probes and the maps they share. Each probe is a thin entry point that calls a `try_*`
//! function and ignores its error: a probe never fails the traced action.

mod common;
mod files;
mod floor;
mod lsm;
mod network;
mod policy;
mod process;
mod regs;
mod syscalls;

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach here, so this is never executed.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
