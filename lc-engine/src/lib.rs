//! # lc-engine: the log-structured write-back cache engine of lc
//!
//! A slow *backing* device sits behind a fast *cache* device. Every write is
//! copied into a 1 MiB RAM segment and acknowledged at once (the cache
//! behaves as a disk with a volatile write cache); a full segment reaches the
//! cache device as one sequential write. Write-back (*migration*) later
//! copies dirty data to the backing devices in log order. After a crash,
//! [`Cache::resume`] rebuilds the index from the segment headers; every write
//! acknowledged by a completed FLUSH or FUA is still there.
//!
//! ## Rules of this crate
//! - No D-Bus, no ublk, no async runtime: plain threads and blocking I/O
//!   through [`BlockDevice`]. The daemon adapts it to its frontends.
//! - One metadata mutex per cache, never held across device I/O and taken
//!   once per write request (not per line): a write reserves its lines in
//!   the open segment under it and copies the data and computes each line's
//!   checksum outside it; nobody reads or seals a line while it is being
//!   filled. Cached lines read from the device are protected by pinning
//!   their segment slot.
//! - Once a cache runs, the flusher (a coordinator and its segment writers)
//!   is the only writer of the cache device; the migrator the only writer of
//!   backing devices (besides pass-through discards).
//! - Nothing acknowledged is dropped: I/O errors in the background are
//!   counted and retried with backoff; a FLUSH that cannot be honoured fails.
//! - A failed flush proves the writes before it may be lost (Linux reports a
//!   write-back error once): segments stay in RAM until a flush of the cache
//!   device succeeds after their (re)write, and write-back rewrites what it
//!   wrote since the last good flush before it flushes the backing devices
//!   again. Resume flushes
//!   the cache device before the replayed log counts as durable.
//! - Memory is bounded whatever a device holds or a knob says: write-back
//!   holds at most [`MAX_WRITE_BACK_SEGMENTS`] segments, resume at most a
//!   few dozen unverified headers, and caches are at most
//!   [`MAX_CACHE_BYTES`] ([`Error::TooLarge`]).
//!   While a kind of device I/O keeps failing, [`Cache::status`] reports it
//!   ([`stats::Health`]); a writer that would wait for room only a failing
//!   device can free, and a detach whose write-back keeps failing, get an
//!   I/O error instead of waiting without a sign. Dirty data beyond the end
//!   of its backing device stops write-back with [`Error::DirtyBeyondEnd`]
//!   instead of retrying a write that cannot succeed.
//!
//! ## Modules, one per job
//! [`format`](mod@format) (on-disk layout), `geometry` (where slots, lines
//! and sectors are), [`device`] (I/O abstraction), [`index`]
//! (compact line index), [`cache`] (foreground paths), `segment_buffer`
//! (a segment's RAM lines, filled outside the lock), [`read_plan`] (reads
//! planned for a frontend's own I/O), `flusher`,
//! `migrator`, `ticker` (background jobs), `pin` (segment-slot pins, an
//! RAII guard each), `retry` (background I/O retried
//! with backoff), [`recover`] (format and resume),
//! `segment_log` (segment ids, the open segment, slot contents), [`knobs`]
//! (the engine's view of lc-knobs' table), [`stats`], [`status`] (the status records), [`figures`]
//! (what read-only status calls are served from), [`error`], [`rescue`]
//! (offline inspection), [`sim`] (crash and fault simulation for tests).
//!
//! ## On-disk format, version 1
//! All integers little-endian. Sector = 512 B, line = 4 KiB, segment = 1 MiB.
//!
//! | offset | size | content |
//! |---|---|---|
//! | 0 | 4 KiB | superblock header: magic `lcCACHE\0`, version 1, segment size, lines per segment (255), number of segments (2..=[`MAX_CACHE_SEGMENTS`]), creation time, uuid, crc32c ([`format::SuperBlockHeader`]) |
//! | 4 KiB, 8 KiB | 4 KiB each | two record blocks, written alternately: sequence, `last_migrated_segment_id`, uuid, crc32c ([`format::SuperBlockRecord`]); the valid one with the highest sequence counts (of two with one sequence, the one in block `sequence % 2`), and if its sequence is above 2^64 − 2^32 ([`format::MAX_RESUMABLE_SEQUENCE`]: a resumed cache always has numbers left for its commits) or its `last_migrated_segment_id` is at least nr_segments × (2^32 − 1) ([`format::segment_id_limit`]) the device is corrupt |
//! | (1 + k) MiB | 1 MiB | segment slot k: a 4 KiB header then 255 data lines |
//!
//! Segment header ([`format::SegmentHeader`]): magic `lcSG`, version,
//! `global_id` (1, 2, … never reused), `durable_id`, `lap` =
//! (global_id − 1) / nr_segments + 1, `length` (valid lines), the cache uuid,
//! a crc32c over the header block and the data of the `length` valid lines,
//! then 255 metablocks of 14 bytes `{sector u64, device_id u8, dirty_bits u8,
//! lap u32}`; a metablock's sector is a multiple of 8 whose line (sector / 8)
//! fits the index's 48 bits ([`index::MAX_LINE`]), or the header is not valid. Segment `global_id` lives in slot (global_id − 1) % nr_segments.
//! Segment ids stay below [`format::segment_id_limit`], so every lap fits
//! 32 bits: a cache that reaches it refuses writes until it is reformatted.
//! A slot is reused only after its old segment is written back *and* the
//! record says so, and migrated slots are discarded only after the record
//! is durable, so recovery can always start at `last_migrated_segment_id + 1`.
//!
//! ## Index RAM
//! 8 bytes per cache line (backing line, device id, dirty bits) plus a hash
//! table of 1.5 × 4 bytes: about 14 bytes per 4 KiB cache line (dm-lc used
//! about 40).

pub mod cache;
pub mod device;
pub mod error;
pub mod figures;
mod flusher;
pub mod format;
mod geometry;
pub mod index;
pub mod knobs;
mod migrator;
mod pin;
pub mod read_plan;
pub mod recover;
pub mod rescue;
mod retry;
mod segment_buffer;
mod segment_log;
pub mod sim;
pub mod stats;
pub mod status;
mod ticker;

pub use cache::{Cache, CacheOptions, FlushCallback};
pub use device::{AlignedBuf, BlockDevice, FileDevice, FileIdentity};
pub use error::{DeviceRole, Error, Result};
pub use flusher::IO_DEPTH as SEGMENT_WRITES_IN_FLIGHT;
pub use format::MAX_CACHE_SEGMENTS;
pub use knobs::{DeviceKnob, DeviceKnobs, Knob, KnobSpec};
pub use migrator::MAX_WRITE_BACK_SEGMENTS;
pub use read_plan::{DeviceRead, ReadPlan, ReadSource, ReadTarget};
pub use recover::{
    format_cache_device, read_superblock, RecoveryReport, MAX_CACHE_BYTES, MIN_CACHE_BYTES,
    RESUME_HEADER_READERS,
};
pub use stats::{Fault, Health, StatsSnapshot};
pub use status::{CacheStatus, DeviceStatus, DrainProgress};
