//! The segment log as the cache's metadata mutex guards it: which segment
//! is open, which id each slot holds, and how far the log has got (closed,
//! written, durable, written back). Write paths open and close segments,
//! the flusher moves `last_flushed_id` and `durable_id`, write-back moves
//! `last_migrated_id`; everyone reads it under the mutex.

use std::sync::Arc;
use std::time::Instant;

use crate::format::LINES_PER_SEGMENT;
use crate::geometry::slot_of_line;
use crate::segment_buffer::SegmentBuffer;

/// The segment currently being filled in RAM.
pub(crate) struct OpenSegment {
    pub id: u64,
    pub slot: u64,
    /// Its data lines.
    pub buf: Arc<SegmentBuffer>,
    /// Lines taken so far.
    pub length: usize,
    /// When it was opened (the ticker seals an old partial segment).
    pub opened_at: Instant,
}

impl OpenSegment {
    /// Whether every line of it is taken.
    pub(crate) fn is_full(&self) -> bool {
        self.length == LINES_PER_SEGMENT
    }
}

/// The log of segments: ids, the open segment, the id in each slot, and the
/// ids up to which segments are closed, written, durable and written back
/// (`last_closed_id >= last_flushed_id >= durable_id`; `last_migrated_id <=
/// durable_id`).
pub(crate) struct SegmentLog {
    pub current: Option<OpenSegment>,
    /// Id the next opened segment gets.
    pub next_id: u64,
    /// Id of the segment each slot holds (0: none known).
    pub slot_ids: Vec<u64>,
    /// Closed (sealed and handed to the flusher).
    pub last_closed_id: u64,
    /// Written to the cache device (maybe not yet flushed).
    pub last_flushed_id: u64,
    /// Written and flushed.
    pub durable_id: u64,
    /// Written back to the backing devices.
    pub last_migrated_id: u64,
}

impl SegmentLog {
    /// The log of a cache of `nr_segments` slots whose record says
    /// `last_migrated_id` and which holds nothing after it (resume then
    /// replays the log into it).
    pub(crate) fn new(nr_segments: u64, last_migrated_id: u64) -> SegmentLog {
        SegmentLog {
            current: None,
            next_id: last_migrated_id + 1,
            slot_ids: vec![0; nr_segments as usize],
            last_closed_id: last_migrated_id,
            last_flushed_id: last_migrated_id,
            durable_id: last_migrated_id,
            last_migrated_id,
        }
    }

    /// Id of the segment that cache line `idx` belongs to now. A cache
    /// line index alone does not name one copy of a line: once its slot is
    /// written back, a newer segment reuses it (and may put the same
    /// backing line at the same place); with the segment id it does, as
    /// segment ids are never reused.
    pub(crate) fn segment_of(&self, idx: u32) -> u64 {
        self.slot_ids[slot_of_line(idx) as usize]
    }

    /// Whether cache line `idx` is in the open segment.
    pub(crate) fn in_current(&self, idx: u32) -> bool {
        self.current
            .as_ref()
            .is_some_and(|c| c.slot == slot_of_line(idx))
    }

    /// Whether there is no open segment with a free line.
    pub(crate) fn needs_segment(&self) -> bool {
        self.current.as_ref().is_none_or(OpenSegment::is_full)
    }

    /// Whether segment `id` may take its slot: the slot's previous segment
    /// (`nr_segments` ids earlier) is written back, or there is none.
    pub(crate) fn slot_free_for(&self, id: u64, nr_segments: u64) -> bool {
        id <= nr_segments || self.last_migrated_id >= id - nr_segments
    }
}
