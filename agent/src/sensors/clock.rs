//! The coarse clock of the kernel programs (`custos_ebpf::COARSE_CLOCK_MAP`): boot time in
//! nanoseconds, written into a one-slot array before the programs are attached and then every
//! [`COARSE_CLOCK_TICK_MS`] by a thread of its own. `CLOCK_BOOTTIME` is the clock of
//! `bpf_ktime_get_boot_ns`, so that times the programs take from either compare.
//!
//! The programs read it where they only need to know whether a repeat window (seconds) has
//! passed: an array read instead of a clock read on every suppressed open, connect or accept.
//! Nothing waits for it: if the thread stalled, repeats would stay suppressed a little longer,
//! and a failed write is logged.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{Array, MapData},
};
use custos_ebpf::{COARSE_CLOCK_MAP, COARSE_CLOCK_TICK_MS};
use tracing::warn;

use super::SensorError;

/// Keeps the coarse clock ticking while it lives.
pub struct CoarseClock {
    stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

impl CoarseClock {
    /// Takes the clock's map out of `ebpf`, sets it to now, and starts the ticking thread.
    /// Call before any program that reads it is attached.
    pub fn start(ebpf: &mut Ebpf) -> Result<Self, SensorError> {
        let map_error = |source| SensorError::Map {
            name: COARSE_CLOCK_MAP,
            source: Box::new(source),
        };
        let map = ebpf
            .take_map(COARSE_CLOCK_MAP)
            .ok_or(SensorError::Missing(COARSE_CLOCK_MAP))?;
        let mut clock: Array<MapData, u64> = Array::try_from(map).map_err(map_error)?;
        clock
            .set(0, crate::pipeline::clock_ns(libc::CLOCK_BOOTTIME), 0)
            .map_err(map_error)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let ticker = std::thread::Builder::new()
            .name("custos-clock".into())
            .spawn(move || {
                let mut failing = false;
                while !stopping.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(COARSE_CLOCK_TICK_MS));
                    match clock.set(0, crate::pipeline::clock_ns(libc::CLOCK_BOOTTIME), 0) {
                        Ok(()) => failing = false,
                        Err(error) if !failing => {
                            failing = true;
                            warn!(%error, "cannot advance the kernel programs' coarse clock; repeats stay suppressed until it moves again");
                        }
                        Err(_) => {}
                    }
                }
            })
            .map_err(SensorError::ClockThread)?;
        Ok(Self {
            stop,
            ticker: Some(ticker),
        })
    }
}

impl Drop for CoarseClock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
    }
}
