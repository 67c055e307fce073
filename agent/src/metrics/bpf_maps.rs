//! Fill levels of the kernel programs' hash maps: how many entries each holds against its
//! capacity. A full LRU map evicts (repeat suppression or traced cgroups forget entries); a
//! full plain hash map refuses new entries. Neither shows anywhere else.
//!
//! The kernel keeps no entry count for hash maps, so the keys are walked from user space
//! (`BPF_MAP_GET_NEXT_KEY`, one syscall per entry, a few milliseconds for the largest map) at
//! each scrape.
use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    sync::{Mutex, PoisonError},
};

use aya::maps::{Map, MapData};
use tracing::debug;

use crate::sensors::{Sensors, TracedCgroups};

/// One map's fill level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapFill {
    /// The map's name in the eBPF object (e.g. `RECENT`).
    pub name: String,
    pub entries: u32,
    /// `max_entries`.
    pub capacity: u32,
}

/// Fill levels of every hash map of the loaded programs, by name; empty before they load.
pub fn fill_levels(sensors: &Mutex<Option<Sensors>>, traced: &TracedCgroups) -> Vec<MapFill> {
    let mut levels = Vec::new();
    // Maps the loader handed to their users are no longer in the object.
    traced.read_map(|map| push_fill(&mut levels, "TRACED_CGROUPS", map));
    let sensors = sensors.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(sensors) = sensors.as_ref() {
        for (name, map) in sensors.ebpf().maps() {
            if let Some(data) = hash_map_data(map) {
                push_fill(&mut levels, name, data);
            }
        }
    }
    levels.sort_by(|a, b| a.name.cmp(&b.name));
    levels
}

fn push_fill(levels: &mut Vec<MapFill>, name: &str, map: &MapData) {
    match fill_of(name, map) {
        Ok(fill) => levels.push(fill),
        Err(error) => debug!(map = name, %error, "cannot read a map's fill level"),
    }
}

/// The maps whose entries come and go (hash maps and tries, not arrays or ring buffers).
fn hash_map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::HashMap(data)
        | Map::LruHashMap(data)
        | Map::PerCpuHashMap(data)
        | Map::PerCpuLruHashMap(data)
        | Map::LpmTrie(data) => Some(data),
        _ => None,
    }
}

/// Counts the entries of `map`.
pub fn fill_of(name: &str, map: &MapData) -> io::Result<MapFill> {
    let info = map.info().map_err(io::Error::other)?;
    let capacity = info.max_entries();
    Ok(MapFill {
        name: name.to_owned(),
        entries: count_keys(map.fd().as_fd(), info.key_size(), capacity)?,
        capacity,
    })
}

/// Walks the keys of the map behind `fd` with `BPF_MAP_GET_NEXT_KEY`, up to `limit`: when a
/// key is deleted during the walk the kernel starts over from the first key, so the count
/// is capped at the capacity rather than walked forever.
fn count_keys(fd: BorrowedFd<'_>, key_size: u32, limit: u32) -> io::Result<u32> {
    /// The `BPF_MAP_*_ELEM` member of `union bpf_attr`.
    #[repr(C)]
    struct MapElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        next_key: u64,
        flags: u64,
    }
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

    let key_size = usize::try_from(key_size).map_err(io::Error::other)?;
    let mut current = vec![0u8; key_size];
    let mut next = vec![0u8; key_size];
    let mut count = 0;
    while count < limit {
        let attr = MapElemAttr {
            map_fd: u32::try_from(fd.as_raw_fd()).map_err(io::Error::other)?,
            _pad: 0,
            // No key: the first one.
            key: if count == 0 {
                0
            } else {
                current.as_ptr() as u64
            },
            next_key: next.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: `attr` is a valid BPF_MAP_GET_NEXT_KEY request: `key` is null or points at
        // `key_size` readable bytes, `next_key` at `key_size` writable bytes, both alive for
        // the call; the kernel reads no more than the size given.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                &attr as *const MapElemAttr,
                std::mem::size_of::<MapElemAttr>(),
            )
        };
        if result != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::ENOENT) {
                break;
            }
            return Err(error);
        }
        count += 1;
        std::mem::swap(&mut current, &mut next);
    }
    Ok(count)
}
