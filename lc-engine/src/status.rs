//! What a cache reports about itself: the status records
//! [`crate::Cache::status`], [`crate::Cache::devices`] and a detach's
//! progress return. Plain data; the counters and health they carry are
//! [`crate::stats`]'s.

use crate::knobs::DeviceKnobs;
use crate::stats::{Health, StatsSnapshot};

/// Status of a cache at one moment (what dm-lc's lc-mgr printed and more).
#[derive(Debug, Clone, Default)]
pub struct CacheStatus {
    /// Cache id.
    pub cache_id: u8,
    /// Cache device identity.
    pub device: String,
    /// Segments on the cache device.
    pub nr_segments: u64,
    /// Cache lines on the cache device.
    pub nr_caches: u64,
    /// RAM held by the index and segment buffers, in bytes.
    pub static_ram_bytes: u64,
    /// Bytes of that held by the index alone.
    pub index_ram_bytes: u64,
    /// Id of the segment being filled (0 before the first write).
    pub current_segment_id: u64,
    /// Lines used in the current segment (dm-lc's cursor).
    pub cursor: u64,
    /// Highest segment id written to the cache device.
    pub last_flushed_segment_id: u64,
    /// Highest segment id written and flushed.
    pub last_durable_segment_id: u64,
    /// Highest segment id written back to the backing devices.
    pub last_migrated_segment_id: u64,
    /// `last_migrated_segment_id` as recorded on the device.
    pub persisted_migrated_segment_id: u64,
    /// Dirty lines over all devices.
    pub nr_dirty_caches: u64,
    /// Counters.
    pub stats: StatsSnapshot,
    /// Knob values by dm-lc name.
    pub knobs: Vec<(&'static str, u64)>,
    /// Which kinds of device I/O are failing now.
    pub health: Health,
}

/// Status of one attached device.
#[derive(Debug, Clone)]
pub struct DeviceStatus {
    /// Device id.
    pub device_id: u8,
    /// Backing device identity (path, major:minor).
    pub dev: String,
    /// Size in 512 B sectors.
    pub size_sectors: u64,
    /// Dirty lines of this device in the cache.
    pub nr_dirty_caches: u64,
    /// Its knobs (`migrate_threshold`: the policy threshold in percent).
    pub knobs: DeviceKnobs,
}

/// Progress of a detach (write-back of one device's data).
#[derive(Debug, Clone, Copy)]
pub struct DrainProgress {
    /// Segments written back since the detach began.
    pub done: u64,
    /// Segments that must be written back in all.
    pub total: u64,
}
