//! The RAM buffer of one segment's data lines, filled by writers outside
//! the cache mutex.
//!
//! A writer *reserves* a line under the cache mutex (marks it busy and
//! counts it as pending), releases the mutex, copies its data into the line
//! and computes the line's crc32c, then marks the line ready. The rules that
//! make this sound:
//!
//! - a line's bytes and crc are written only by the one writer that holds
//!   its busy mark, and the mark is only ever set under the cache mutex;
//! - every other access to a line's bytes (readers, writers merging an
//!   older copy, discards) happens under the cache mutex and only while the
//!   line is not busy — so nobody can be writing it meanwhile;
//! - the flusher reads the whole buffer (and the line crcs, which seal the
//!   segment without reading its data again) only after the segment is
//!   closed (no more reservations) and no line is pending.
//!
//! The per-line crcs let the flusher seal a segment in O(header):
//! [`crate::format::SegmentHeader::seal_lines`] folds them into the crc of
//! the header and the data, which the format defines.
//!
//! [`BufferPool`] holds a cache's buffers: the free ones and those of
//! closed segments not yet durable.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::device::AlignedBuf;
use crate::format::{LINES_PER_SEGMENT, LINE_SIZE};

/// The data lines of one segment in RAM, with per-line state.
pub(crate) struct SegmentBuffer {
    /// `LINES_PER_SEGMENT` lines of 4 KiB. Read and written through raw
    /// pointers, one line at a time, under the rules of the module
    /// documentation.
    data: AlignedBuf,
    /// crc32c of each line's current contents.
    crcs: [AtomicU32; LINES_PER_SEGMENT],
    /// 1 while a writer fills the line outside the mutex.
    busy: [AtomicU8; LINES_PER_SEGMENT],
    /// Lines being filled outside the mutex.
    pending: AtomicU32,
}

// SAFETY: the bytes are only written by the holder of a line's busy mark
// and read only while no writer can hold it (module documentation); the
// rest is atomics.
unsafe impl Sync for SegmentBuffer {}
// SAFETY: owns its allocation like a Box<[u8]>.
unsafe impl Send for SegmentBuffer {}

impl SegmentBuffer {
    /// A zeroed buffer.
    pub(crate) fn new() -> Self {
        SegmentBuffer {
            data: AlignedBuf::zeroed(LINES_PER_SEGMENT * LINE_SIZE),
            crcs: std::array::from_fn(|_| AtomicU32::new(0)),
            busy: std::array::from_fn(|_| AtomicU8::new(0)),
            pending: AtomicU32::new(0),
        }
    }

    /// Whether line `i` is being filled outside the mutex.
    pub(crate) fn is_busy(&self, i: usize) -> bool {
        self.busy[i].load(Ordering::Acquire) != 0
    }

    /// Whether any line is being filled.
    pub(crate) fn any_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire) != 0
    }

    /// Line `i`, which must not be busy, with the cache mutex held (or the
    /// segment closed and nothing pending).
    pub(crate) fn line(&self, i: usize) -> &[u8] {
        debug_assert!(!self.is_busy(i));
        assert!(i < LINES_PER_SEGMENT);
        // SAFETY: in bounds (asserted); no writer holds line i's busy mark,
        // and one can only be set under the mutex the caller holds (or never
        // again once the segment is closed), so nobody writes these bytes
        // while the returned borrow of self lives under that mutex.
        unsafe { std::slice::from_raw_parts(self.data.raw_ptr().add(i * LINE_SIZE), LINE_SIZE) }
    }

    /// The first `lines` lines, once the segment is closed and nothing is
    /// pending (see [`SegmentBuffer::wait_idle`]).
    pub(crate) fn lines(&self, lines: usize) -> &[u8] {
        debug_assert!(!self.any_pending());
        assert!(lines <= LINES_PER_SEGMENT);
        // SAFETY: in bounds (asserted); closed and idle: no line can be
        // written any more until the buffer is reused, which takes it back
        // by value.
        unsafe { std::slice::from_raw_parts(self.data.raw_ptr(), lines * LINE_SIZE) }
    }

    /// crc32c of line `i`'s contents (closed and idle, as for `lines`).
    pub(crate) fn line_crc(&self, i: usize) -> u32 {
        self.crcs[i].load(Ordering::Acquire)
    }

    /// Marks line `i` busy for the caller, who holds the cache mutex and
    /// must call [`SegmentBuffer::fill`] for it.
    pub(crate) fn reserve(&self, i: usize) {
        let was = self.busy[i].swap(1, Ordering::AcqRel);
        debug_assert_eq!(was, 0, "line {i} reserved twice");
        self.pending.fetch_add(1, Ordering::AcqRel);
    }

    /// Fills line `i`, reserved by the caller, with `f` (given the line's
    /// bytes), computes its crc and marks it ready. Runs without the mutex.
    pub(crate) fn fill(&self, i: usize, f: impl FnOnce(&mut [u8])) {
        debug_assert!(self.is_busy(i));
        assert!(i < LINES_PER_SEGMENT);
        // SAFETY: in bounds (asserted); the caller holds line i's busy
        // mark: nobody else reads or writes these bytes until it is cleared
        // below, and the pointer comes from the allocation, not from a
        // reference to the whole buffer.
        let line = unsafe {
            std::slice::from_raw_parts_mut(self.data.raw_ptr().add(i * LINE_SIZE), LINE_SIZE)
        };
        f(line);
        self.crcs[i].store(crc32c::crc32c(line), Ordering::Release);
        self.busy[i].store(0, Ordering::Release);
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }

    /// Changes line `i` (not busy) under the cache mutex and updates its crc.
    pub(crate) fn write_locked(&self, i: usize, f: impl FnOnce(&mut [u8])) {
        self.reserve(i);
        self.fill(i, f);
    }

    /// Waits until no line is being filled (lines are filled by running
    /// writers, so this is short).
    pub(crate) fn wait_idle(&self) {
        wait_until(|| !self.any_pending());
    }

    /// Waits until line `i` is not busy.
    pub(crate) fn wait_line(&self, i: usize) {
        wait_until(|| !self.is_busy(i));
    }
}

/// Spins briefly, then yields, then sleeps until `ready`.
fn wait_until(ready: impl Fn() -> bool) {
    let mut n = 0u32;
    while !ready() {
        if n < 64 {
            std::hint::spin_loop();
        } else if n < 256 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(20));
        }
        n += 1;
    }
}

/// The RAM segment buffers of a cache: at most `capacity` exist; a closed
/// segment keeps its buffer (in `ram`, by slot) until it is durable on the
/// cache device, then the flusher gives it back for the next open segment.
pub(crate) struct BufferPool {
    /// Most buffers that may exist (the `pool_segments` option).
    pub capacity: usize,
    /// Closed segments not yet durable, by slot.
    pub ram: Vec<Option<Arc<SegmentBuffer>>>,
    /// Buffers ready for the next open segment.
    pub free: Vec<SegmentBuffer>,
    /// Buffers that exist (free, closed or open).
    pub allocated: usize,
}

impl BufferPool {
    /// A pool of at most `capacity` buffers for `nr_segments` slots, none
    /// allocated yet.
    pub(crate) fn new(capacity: usize, nr_segments: u64) -> BufferPool {
        BufferPool {
            capacity,
            ram: vec![None; nr_segments as usize],
            free: Vec::new(),
            allocated: 0,
        }
    }

    /// Buffers that can be had now without waiting.
    pub(crate) fn available(&self) -> usize {
        self.free.len() + self.capacity.saturating_sub(self.allocated)
    }

    /// A buffer for a new open segment (the caller checked
    /// [`BufferPool::available`]).
    pub(crate) fn take(&mut self) -> Arc<SegmentBuffer> {
        Arc::new(match self.free.pop() {
            Some(b) => b,
            None => {
                self.allocated += 1;
                SegmentBuffer::new()
            }
        })
    }

    /// Segment `slot` is durable: its buffer leaves `ram` and `buf` (the
    /// flusher's handle on it) comes back to the pool. Readers copy under
    /// the lock and never keep the Arc; a writer that just filled a line
    /// may still drop its clone: then the buffer is freed with it and the
    /// pool allocates another.
    pub(crate) fn give_back(&mut self, slot: u64, buf: Arc<SegmentBuffer>) {
        self.ram[slot as usize] = None;
        match Arc::try_unwrap(buf) {
            Ok(b) => self.free.push(b),
            Err(_) => self.allocated -= 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_sets_the_line_and_its_crc() {
        let b = SegmentBuffer::new();
        b.reserve(3);
        assert!(b.is_busy(3) && b.any_pending());
        b.fill(3, |l| l.fill(7));
        assert!(!b.is_busy(3) && !b.any_pending());
        assert!(b.line(3).iter().all(|&x| x == 7));
        assert_eq!(b.line_crc(3), crc32c::crc32c(&[7u8; LINE_SIZE]));
        assert_eq!(b.lines(4).len(), 4 * LINE_SIZE);
    }
}
