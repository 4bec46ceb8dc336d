//! I/O statistics of a cache: dm-lc's 16 counters and the error counters.

use std::sync::atomic::{AtomicU64, Ordering};

/// The 16 counters, indexed by (write?, hit?, on_buffer?, fullsize?), plus
/// error and retry counts.
#[derive(Default)]
pub struct Stats {
    counters: [AtomicU64; 16],
    errors: [AtomicU64; 5],
}

/// One of the error counters.
#[derive(Debug, Clone, Copy)]
pub enum ErrorCounter {
    /// Failed reads of the cache device.
    CacheRead = 0,
    /// Failed writes or flushes of the cache device.
    CacheWrite = 1,
    /// Failed reads of a backing device.
    BackingRead = 2,
    /// Failed writes or flushes of a backing device (during write-back).
    BackingWrite = 3,
    /// Migration batches retried after an error.
    MigrationRetry = 4,
}

/// Index of a counter: bit 3 write, bit 2 hit, bit 1 on_buffer, bit 0 fullsize.
pub fn stat_index(write: bool, hit: bool, on_buffer: bool, fullsize: bool) -> usize {
    (write as usize) << 3 | (hit as usize) << 2 | (on_buffer as usize) << 1 | fullsize as usize
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// The 16 counters, see [`stat_index`].
    pub counters: [u64; 16],
    /// Cache-device read errors.
    pub cache_read_errors: u64,
    /// Cache-device write/flush errors.
    pub cache_write_errors: u64,
    /// Backing-device read errors.
    pub backing_read_errors: u64,
    /// Backing-device write/flush errors.
    pub backing_write_errors: u64,
    /// Migration batches retried.
    pub migration_retries: u64,
}

impl StatsSnapshot {
    /// Counter for one combination.
    pub fn get(&self, write: bool, hit: bool, on_buffer: bool, fullsize: bool) -> u64 {
        self.counters[stat_index(write, hit, on_buffer, fullsize)]
    }
}

impl Stats {
    /// Counts one I/O (one cache line's worth of a request).
    pub fn count(&self, write: bool, hit: bool, on_buffer: bool, fullsize: bool) {
        self.counters[stat_index(write, hit, on_buffer, fullsize)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one error.
    pub fn error(&self, which: ErrorCounter) {
        self.errors[which as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Zeroes the 16 I/O counters (error counters are kept: they are health).
    pub fn clear(&self) {
        for c in &self.counters {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let e = |i: usize| self.errors[i].load(Ordering::Relaxed);
        StatsSnapshot {
            counters: std::array::from_fn(|i| self.counters[i].load(Ordering::Relaxed)),
            cache_read_errors: e(0),
            cache_write_errors: e(1),
            backing_read_errors: e(2),
            backing_write_errors: e(3),
            migration_retries: e(4),
        }
    }
}
