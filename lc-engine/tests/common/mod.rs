//! Shared set-up for the engine's integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use lc_engine::sim::{PowerDomain, SimDisk};
use lc_engine::{format_cache_device, BlockDevice, Cache, CacheOptions};

pub const MIB: u64 = 1 << 20;

/// A formatted in-memory cache device of `segments` segments.
pub fn sim_cache_disk(dom: &Arc<PowerDomain>, segments: u64) -> Arc<SimDisk> {
    let d = SimDisk::new(dom.clone(), MIB * (1 + segments));
    format_cache_device(&*d, false).unwrap();
    d
}

/// Resumes cache 1 on `dev` with a small RAM pool.
pub fn resume(dev: Arc<dyn BlockDevice>, pool: usize) -> Cache {
    Cache::resume(
        1,
        dev,
        CacheOptions {
            pool_segments: pool,
        },
    )
    .unwrap()
}

/// A recognisable 512 B sector: (tag, sector) repeated.
pub fn sector_pattern(tag: u64, sector: u64) -> [u8; 512] {
    let mut b = [0u8; 512];
    for (i, c) in b.chunks_mut(16).enumerate() {
        c[..8].copy_from_slice(&tag.to_le_bytes());
        c[8..].copy_from_slice(&(sector ^ (i as u64) << 56).to_le_bytes());
    }
    b
}

/// `n` sectors starting at `sector`, each tagged with `tag`.
pub fn pattern(tag: u64, sector: u64, n: u64) -> Vec<u8> {
    (sector..sector + n)
        .flat_map(|s| sector_pattern(tag, s))
        .collect()
}
