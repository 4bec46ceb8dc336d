//! Reads resolved into plans that a frontend executes with its own I/O.
//!
//! [`Cache::read`](crate::Cache::read) does its device reads itself, with
//! blocking `pread`s. A frontend that has its own asynchronous I/O (lcd's
//! ublk queues submit through their io_uring) asks
//! [`Cache::plan_read`](crate::Cache::plan_read) instead: under the cache's
//! lock the read is resolved once, line by line, into a [`ReadPlan`]:
//!
//! - lines in a RAM segment are copied into the caller's buffer at once;
//! - lines on the cache device become [`DeviceRead`]s of
//!   [`ReadSource::Cache`], with their segment slot *pinned* so that the
//!   flusher can neither overwrite nor discard it before the read lands;
//! - uncached sectors, and the clean sectors of a partially dirty line,
//!   become [`DeviceRead`]s of [`ReadSource::Backing`];
//! - the dirty sectors of a partially dirty line are kept (RAM) or read
//!   (cache device) in the plan's scratch buffer and laid over the backing
//!   data when the plan is finished: the *overlay*.
//!
//! The plan is plain data. The frontend performs every [`DeviceRead`] (in
//! any order, concurrently), then calls [`ReadPlan::finish`], which applies
//! the overlay, counts the I/O and releases the pins. A plan that is
//! dropped unfinished (an error, a torn-down queue) releases its pins too.
//! [`ReadPlan::execute_blocking`] executes a plan with the devices' own
//! [`BlockDevice::read_at`], for devices without a file descriptor.
//!
//! The result is the same as [`Cache::read`](crate::Cache::read) at the
//! moment of planning: a write that completes after `plan_read` returned is
//! not seen, one that completed before it is (no stale read).

use std::io;
use std::ops::Range;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::cache::{lock, Backing, Inner, RamLine};
use crate::device::{AlignedBuf, BlockDevice};
use crate::error::{DeviceRole, Error, Result};
use crate::format::{LINE_SIZE, SECTORS_PER_LINE, SECTOR_SIZE, SEGMENT_SIZE};
use crate::geometry::{line_offset, mask_of, slot_of_line};
use crate::index::LineKey;
use crate::pin::SlotPin;
use crate::segment_buffer::SegmentBuffer;
use crate::stats::ErrorCounter;

/// Which device a [`DeviceRead`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadSource {
    /// The cache device (a line of a segment written to it).
    Cache,
    /// The backing device the read is for.
    Backing,
}

/// Where a [`DeviceRead`] puts its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadTarget {
    /// The caller's buffer, at this byte offset.
    Out(usize),
    /// The plan's scratch buffer ([`ReadPlan::scratch_mut`]), at this byte
    /// offset: a line whose dirty sectors are laid over backing data.
    Scratch(usize),
}

/// One device read of a plan: `len` bytes at byte `offset` of `source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRead {
    /// The device to read.
    pub source: ReadSource,
    /// Byte offset on that device (a multiple of 512).
    pub offset: u64,
    /// Bytes to read (a multiple of 512).
    pub len: usize,
    /// Where the bytes go.
    pub target: ReadTarget,
}

/// Dirty sectors laid over backing data when the plan is finished.
#[derive(Debug, Clone, Copy)]
struct Overlay {
    /// Offset of the line image in the scratch buffer.
    scratch: usize,
    /// Offset in the caller's buffer of the piece's first sector.
    out: usize,
    /// First sector of the piece in its line.
    s0: usize,
    /// Sectors of the piece.
    n: usize,
    /// Dirty bits of the line (sector `s` of the line is dirty if bit `s`).
    dirty: u8,
}

/// A read resolved under the cache's lock; see the [module](self) docs.
pub struct ReadPlan {
    inner: Arc<Inner>,
    backing: Arc<Backing>,
    len: usize,
    reads: Vec<DeviceRead>,
    scratch: Option<AlignedBuf>,
    overlay: Vec<Overlay>,
    /// Pins on the segment slots of this plan's cache reads, released when
    /// the plan finishes or is dropped.
    pinned: Vec<SlotPin>,
}

impl std::fmt::Debug for ReadPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadPlan")
            .field("device_id", &self.backing.id)
            .field("len", &self.len)
            .field("reads", &self.reads)
            .field("overlay", &self.overlay.len())
            .field("pinned", &self.pinned)
            .finish()
    }
}

/// Builds the plan of a read of `out.len()` bytes at `sector` of `backing`
/// (range already checked), copying RAM lines into `out` now.
pub(crate) fn plan(
    inner: &Arc<Inner>,
    backing: Arc<Backing>,
    sector: u64,
    out: &mut [u8],
) -> ReadPlan {
    loop {
        match try_plan(inner, backing.clone(), sector, out) {
            Ok(plan) => return plan,
            // a writer fills that line outside the lock: once it is done,
            // plan again from the start (the partial plan released its pins
            // when it dropped, and counted nothing)
            Err((buf, i)) => buf.wait_line(i),
        }
    }
}

/// One attempt of [`plan`]: fails with the line a writer is filling.
fn try_plan(
    inner: &Arc<Inner>,
    backing: Arc<Backing>,
    sector: u64,
    out: &mut [u8],
) -> Result<ReadPlan, (Arc<SegmentBuffer>, usize)> {
    // the counters move only once the plan is made: pieces counted by
    // (hit, on_buffer, full), as bits 2, 1, 0 of the index
    let mut counts = [0u64; 8];
    let count_index = |hit: bool, on_buffer: bool, full: bool| {
        usize::from(hit) << 2 | usize::from(on_buffer) << 1 | usize::from(full)
    };
    let mut plan = ReadPlan {
        inner: inner.clone(),
        backing,
        len: out.len(),
        reads: Vec::new(),
        scratch: None,
        overlay: Vec::new(),
        pinned: Vec::new(),
    };
    // scratch lines needed, counted while planning, allocated at the end
    let mut scratch_lines = 0usize;
    let mut ram_overlay: Vec<(usize, [u8; LINE_SIZE])> = Vec::new();
    let mut backing_sectors = 0u64;
    let st = lock(&inner.metadata);
    let mut pos = 0usize;
    for (ln, s0, n) in crate::geometry::line_pieces(sector, (out.len() / SECTOR_SIZE) as u64) {
        let bytes = n * SECTOR_SIZE;
        let full = n == SECTORS_PER_LINE;
        let piece_sector = ln * SECTORS_PER_LINE as u64 + s0 as u64;
        let key = LineKey {
            device_id: plan.backing.id,
            line: ln,
        };
        let hit = st
            .index
            .lookup(key)
            .map(|idx| (idx, st.index.info(idx).expect("indexed").dirty_bits));
        let Some((idx, bits)) = hit else {
            counts[count_index(false, false, full)] += 1;
            plan.push_backing(piece_sector, pos, bytes);
            backing_sectors += n as u64;
            pos += bytes;
            continue;
        };
        let mask = mask_of(s0, n);
        let needs_backing = mask & !bits != 0;
        let on_buffer = match st.ram_line(idx) {
            RamLine::Busy(buf, i) => return Err((buf, i)),
            RamLine::Ready(line) if !needs_backing => {
                out[pos..pos + bytes]
                    .copy_from_slice(&line[s0 * SECTOR_SIZE..s0 * SECTOR_SIZE + bytes]);
                true
            }
            RamLine::Ready(line) => {
                let mut image = [0u8; LINE_SIZE];
                image.copy_from_slice(line);
                ram_overlay.push((scratch_lines, image));
                plan.overlay.push(Overlay {
                    scratch: scratch_lines * LINE_SIZE,
                    out: pos,
                    s0,
                    n,
                    dirty: bits,
                });
                scratch_lines += 1;
                true
            }
            RamLine::Absent => {
                let slot = slot_of_line(idx);
                plan.pinned.push(inner.pins.pin(&st, slot));
                if full && !needs_backing {
                    plan.push_cache(idx, pos);
                } else {
                    plan.reads.push(DeviceRead {
                        source: ReadSource::Cache,
                        offset: line_offset(idx),
                        len: LINE_SIZE,
                        target: ReadTarget::Scratch(scratch_lines * LINE_SIZE),
                    });
                    plan.overlay.push(Overlay {
                        scratch: scratch_lines * LINE_SIZE,
                        out: pos,
                        s0,
                        n,
                        dirty: bits,
                    });
                    scratch_lines += 1;
                }
                false
            }
        };
        counts[count_index(true, on_buffer, full)] += 1;
        if needs_backing {
            plan.push_backing(piece_sector, pos, bytes);
            backing_sectors += n as u64;
        }
        pos += bytes;
    }
    drop(st);
    for (i, &n) in counts.iter().enumerate().filter(|(_, &n)| n > 0) {
        inner
            .stats
            .count_many(false, i & 4 != 0, i & 2 != 0, i & 1 != 0, n);
    }
    if scratch_lines > 0 {
        let mut scratch = AlignedBuf::zeroed(scratch_lines * LINE_SIZE);
        for (i, image) in &ram_overlay {
            scratch[i * LINE_SIZE..(i + 1) * LINE_SIZE].copy_from_slice(image);
        }
        plan.scratch = Some(scratch);
    }
    plan.backing
        .read_sectors
        .fetch_add(backing_sectors, Ordering::Relaxed);
    Ok(plan)
}

impl ReadPlan {
    /// Adds a backing read of `bytes` at `sector` into the caller's buffer
    /// at `pos`, merged with the previous read where they are contiguous.
    fn push_backing(&mut self, sector: u64, pos: usize, bytes: usize) {
        self.push_out(ReadSource::Backing, sector * SECTOR_SIZE as u64, bytes, pos);
    }

    /// Adds a read of whole cache line `idx` into the caller's buffer at
    /// `pos`, merged with the previous read where the lines are neighbours
    /// in one segment.
    fn push_cache(&mut self, idx: u32, pos: usize) {
        self.push_out(ReadSource::Cache, line_offset(idx), LINE_SIZE, pos);
    }

    /// Adds a read of `len` bytes at device `offset` into the caller's
    /// buffer at `pos`, merged with the previous read when both are of one
    /// device, contiguous on it and in the buffer (and, on the cache
    /// device, in one segment).
    fn push_out(&mut self, source: ReadSource, offset: u64, len: usize, pos: usize) {
        let slot_of = |o: u64| o / SEGMENT_SIZE as u64;
        if let Some(last) = self.reads.last_mut() {
            let adjacent = matches!(last.target, ReadTarget::Out(o) if o + last.len == pos);
            let one_segment =
                source == ReadSource::Backing || slot_of(last.offset) == slot_of(offset);
            if last.source == source
                && adjacent
                && last.offset + last.len as u64 == offset
                && one_segment
            {
                last.len += len;
                return;
            }
        }
        self.reads.push(DeviceRead {
            source,
            offset,
            len,
            target: ReadTarget::Out(pos),
        });
    }

    /// The device reads still to do; empty when RAM served everything.
    pub fn reads(&self) -> &[DeviceRead] {
        &self.reads
    }

    /// Bytes of the read (the caller's buffer length).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a plan of zero bytes (never made: reads are at least 512 B).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device behind `source`.
    pub fn device(&self, source: ReadSource) -> &Arc<dyn BlockDevice> {
        match source {
            ReadSource::Cache => &self.inner.dev,
            ReadSource::Backing => &self.backing.dev,
        }
    }

    /// The file descriptor to read `source` through, when the device has one
    /// ([`BlockDevice::raw_fd`]); it stays open while the plan lives.
    pub fn raw_fd(&self, source: ReadSource) -> Option<RawFd> {
        self.device(source).raw_fd()
    }

    /// The plan's scratch buffer (4 KiB aligned), for reads with a
    /// [`ReadTarget::Scratch`] target; empty when none has one. Its address
    /// is stable for the plan's life.
    pub fn scratch_mut(&mut self) -> &mut [u8] {
        match &mut self.scratch {
            Some(s) => s,
            None => &mut [],
        }
    }

    /// The bytes `read` fills: a part of `out` or of the scratch buffer.
    pub fn target_mut<'a>(&'a mut self, read: &DeviceRead, out: &'a mut [u8]) -> &'a mut [u8] {
        match read.target {
            ReadTarget::Out(o) => &mut out[o..o + read.len],
            ReadTarget::Scratch(o) => &mut self.scratch_mut()[o..o + read.len],
        }
    }

    /// The byte ranges of the caller's buffer whose bytes do not come from
    /// a [`ReadTarget::Out`] read: lines copied from RAM, lines put
    /// together in the scratch buffer, and the dirty sectors
    /// [`ReadPlan::finish`] lays over backing data an `Out` read put there.
    /// A frontend that sends every `Out` read straight to the bytes' final
    /// place (the request's pages, zero copy) carries these ranges of the
    /// caller's buffer over itself after `finish`. In order, disjoint.
    pub fn from_memory(&self) -> Vec<Range<usize>> {
        let mut ranges: Vec<Range<usize>> = Vec::new();
        // the common hit or miss: one device read of the whole buffer
        if let ([only], []) = (&self.reads[..], &self.overlay[..]) {
            if only.target == ReadTarget::Out(0) && only.len == self.len {
                return ranges;
            }
        }
        let mut add = |r: Range<usize>| match ranges.last_mut() {
            Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
            _ => ranges.push(r),
        };
        let mut outs: Vec<Range<usize>> = (self.reads.iter())
            .filter_map(|r| match r.target {
                ReadTarget::Out(o) => Some(o..o + r.len),
                ReadTarget::Scratch(_) => None,
            })
            .collect();
        outs.sort_by_key(|r| r.start);
        let mut laid_over: Vec<Range<usize>> = Vec::new();
        for o in &self.overlay {
            for s in (o.s0..o.s0 + o.n).filter(|s| o.dirty & (1 << s) != 0) {
                let at = o.out + (s - o.s0) * SECTOR_SIZE;
                laid_over.push(at..at + SECTOR_SIZE);
            }
        }
        let mut pieces: Vec<Range<usize>> = uncovered(self.len, &outs);
        pieces.extend(laid_over);
        pieces.sort_by_key(|r| r.start);
        for p in pieces {
            add(p);
        }
        ranges
    }

    /// Completes the read into `out` (the buffer given to `plan_read`)
    /// after every [`DeviceRead`] was done: `failed` names the first read
    /// that failed and its error, if one did. Applies the overlay, counts
    /// the device I/O and releases the pins.
    pub fn finish(mut self, out: &mut [u8], failed: Option<(ReadSource, io::Error)>) -> Result<()> {
        // the device reads are done: the flusher may reuse the slots
        self.pinned.clear();
        let stats = &self.inner.stats;
        if let Some((source, e)) = failed {
            let (counter, role, what) = match source {
                ReadSource::Cache => (
                    ErrorCounter::CacheRead,
                    DeviceRole::Cache,
                    "reading a cached line".to_string(),
                ),
                ReadSource::Backing => (
                    ErrorCounter::BackingRead,
                    DeviceRole::Backing,
                    format!("reading device {}", self.backing.id),
                ),
            };
            stats.failure(counter, &what, &e);
            return Err(Error::io(role, what, e));
        }
        if self.reads.iter().any(|r| r.source == ReadSource::Cache) {
            stats.success(ErrorCounter::CacheRead);
        }
        if self.reads.iter().any(|r| r.source == ReadSource::Backing) {
            stats.success(ErrorCounter::BackingRead);
        }
        let scratch = self.scratch.as_deref().unwrap_or(&[]);
        for o in &self.overlay {
            for s in o.s0..o.s0 + o.n {
                if o.dirty & (1 << s) != 0 {
                    let dst = o.out + (s - o.s0) * SECTOR_SIZE;
                    let src = o.scratch + s * SECTOR_SIZE;
                    out[dst..dst + SECTOR_SIZE].copy_from_slice(&scratch[src..src + SECTOR_SIZE]);
                }
            }
        }
        Ok(())
    }

    /// Executes the plan with blocking reads through
    /// [`BlockDevice::read_at`] and finishes it.
    pub fn execute_blocking(mut self, out: &mut [u8]) -> Result<()> {
        let mut failed = None;
        for read in self.reads.clone() {
            let dev = self.device(read.source).clone();
            if let Err(e) = dev.read_at(self.target_mut(&read, out), read.offset) {
                failed = Some((read.source, e));
                break;
            }
        }
        self.finish(out, failed)
    }

    /// Segment slots this plan holds pinned (one entry a pin), for tests.
    pub fn pinned_slots(&self) -> Vec<u64> {
        self.pinned.iter().map(SlotPin::slot).collect()
    }
}

/// The parts of `0..len` outside every range of `sorted` (sorted by start).
fn uncovered(len: usize, sorted: &[Range<usize>]) -> Vec<Range<usize>> {
    let mut gaps = Vec::new();
    let mut at = 0;
    for r in sorted {
        if r.start > at {
            gaps.push(at..r.start);
        }
        at = at.max(r.end);
    }
    if at < len {
        gaps.push(at..len);
    }
    gaps
}

/// Cache lines pinned by readers and write-back at this moment, over all
/// segment slots of `cache` (0 when no read plan is alive and write-back
/// is idle); for tests and diagnostics.
pub fn pinned_lines(cache: &crate::Cache) -> u64 {
    cache.inner.pins.total()
}
