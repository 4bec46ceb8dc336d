//! The migrate daemon: writes dirty data back to the backing devices in log
//! order, a batch of segments at a time.
//!
//! A batch is the next `nr_max_batched_migration` durable segments after
//! `last_migrated_segment_id`, at most [`MAX_WRITE_BACK_SEGMENTS`] (their
//! data is held in RAM while the batch is written). The segments are read
//! from the cache device; their lines that are still the newest copy (or
//! whose newer copy is not yet durable) have their dirty sectors written to
//! each backing device sorted by address (contiguous runs merged); the
//! backing devices are flushed (after a failed flush the batch is written
//! again first), and only then do the lines leave the index and
//! `last_migrated_segment_id` advance. Errors are counted and retried with backoff; nothing is dropped.
//! A failure starts (or extends) a fault in the cache's health and wakes
//! waiting writers and detaches, which give up after
//! [`DRAIN_GIVES_UP_AFTER`](crate::cache::DRAIN_GIVES_UP_AFTER) failures in
//! a row; the next success ends the fault.
//!
//! Dirty data beyond the end of its backing device (a crafted cache, or the
//! wrong disk attached under the id) stops write-back in log order: it is
//! reported as a backing-write fault naming [`Error::DirtyBeyondEnd`],
//! drains fail with that error, writers that need room get an I/O error,
//! and nothing is written or dropped until the right disk is attached.
//!
//! Write-back runs while `allow_migrate` or `force_migrate` is set, while a
//! writer waits for a slot that is not yet written back, and while a detach
//! drains a device.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::{backoff, line_index, lock, read_lock, retry_io, Backing, Inner};
use crate::device::AlignedBuf;
use crate::error::Error;
use crate::format::*;
use crate::index::LineKey;
use crate::knobs::Knob;
use crate::stats::ErrorCounter;

/// One line of a batch to write back.
struct Item {
    key: LineKey,
    /// Its cache line (removed from the index after write-back if still there).
    idx: u32,
    bits: u8,
    /// Position of its segment in the batch.
    seg: usize,
    /// Line number inside the segment.
    line: usize,
}

/// A segment of a batch as read from the cache device.
struct SegmentCopy {
    slot: u64,
    header: SegmentHeader,
    /// Header block followed by the `length` data lines.
    buf: AlignedBuf,
}

/// Most segments one write-back batch holds in RAM (1 MiB each at most),
/// whatever `nr_max_batched_migration` says: a larger knob value writes back
/// in batches of this many.
pub const MAX_WRITE_BACK_SEGMENTS: u64 = 64;

pub(crate) fn run(inner: Arc<Inner>) {
    while let Some((from, end_id)) = next_range(&inner) {
        let slots: Vec<u64> = (from + 1..=end_id)
            .map(|id| slot_of(id, inner.nr_segments))
            .collect();
        let done = migrate_range(&inner, from, end_id);
        let mut st = lock(&inner.state);
        for &s in &slots {
            inner.unpin(s);
        }
        match done {
            Outcome::Done(items) => {
                for it in &items {
                    if st.index.lookup(it.key) == Some(it.idx) {
                        st.index.remove(it.idx);
                    }
                }
                st.write_back_blocked = None;
                st.last_migrated_id = end_id;
                st.migrate_urgent = false;
                drop(st);
                inner.progress_cv.notify_all();
            }
            Outcome::MissingDevice(dev) => {
                tracing::warn!(
                    cache = inner.cache_id,
                    "write-back waits for device {dev}: the cache holds its dirty data but it is not attached"
                );
                let _ = inner.migrate_cv.wait_timeout(st, Duration::from_secs(1));
            }
            Outcome::BeyondEnd(blocked) => {
                // Writing would fail with ENOSPC (or land on the wrong
                // disk's neighbour) for ever: report it as a named fault,
                // keep the data, and look again now and then (the right
                // disk may be attached).
                let e = blocked.error();
                if st.write_back_blocked != Some(blocked) {
                    tracing::error!(cache = inner.cache_id, "write-back stops: {e}");
                }
                st.write_back_blocked = Some(blocked);
                inner.stats.failure(
                    ErrorCounter::BackingWrite,
                    "writing dirty data back",
                    &std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
                );
                inner.progress_cv.notify_all();
                let _ = inner.migrate_cv.wait_timeout(st, Duration::from_secs(1));
            }
            Outcome::Stopped => return,
        }
    }
}

/// Waits until write-back is due; returns the id range (from, end] to
/// write back, with its slots pinned. `None` when the cache stops.
fn next_range(inner: &Inner) -> Option<(u64, u64)> {
    let mut st = lock(&inner.state);
    loop {
        if st.stopping {
            return None;
        }
        let from = st.last_migrated_id;
        let wanted = inner.knobs.flag(Knob::AllowMigrate)
            || inner.knobs.flag(Knob::ForceMigrate)
            || st.migrate_urgent
            || st.drain_target > from;
        if wanted && st.durable_id > from {
            let batched = inner
                .knobs
                .get(Knob::NrMaxBatchedMigration)
                .clamp(1, MAX_WRITE_BACK_SEGMENTS);
            let end_id = (from + batched).min(st.durable_id);
            for id in from + 1..=end_id {
                inner.pin(slot_of(id, inner.nr_segments));
            }
            return Some((from, end_id));
        }
        st = inner
            .migrate_cv
            .wait_timeout(st, Duration::from_secs(1))
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

enum Outcome {
    Done(Vec<Item>),
    MissingDevice(u8),
    BeyondEnd(BlockedWriteBack),
    Stopped,
}

/// Dirty data write-back cannot write: it lies beyond the end of the
/// backing device attached under its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockedWriteBack {
    pub device_id: u8,
    /// First dirty sector beyond the end.
    pub sector: u64,
    /// The backing device's size in sectors.
    pub size: u64,
}

impl BlockedWriteBack {
    pub(crate) fn error(self) -> Error {
        Error::DirtyBeyondEnd {
            device_id: self.device_id,
            sector: self.sector,
            size: self.size,
        }
    }
}

/// Reads the segments (from, end], chooses the lines to write back, writes
/// them and flushes the backing devices.
///
/// A line is written back when its copy in this segment is still the
/// newest, and also when a newer copy exists only in a segment that is not
/// yet durable: a crash could lose that newer copy, and once
/// `last_migrated_segment_id` has passed this segment, recovery would not
/// replay the older one either.
fn migrate_range(inner: &Inner, from: u64, end_id: u64) -> Outcome {
    let mut segs = Vec::new();
    for id in from + 1..=end_id {
        let slot = slot_of(id, inner.nr_segments);
        let mut head = AlignedBuf::zeroed(LINE_SIZE);
        let off = segment_offset(slot);
        let mut header = None;
        // A durable segment's header must be there; if it is not, the device
        // returned bad data: treat it as a read error and retry, never skip.
        let read_header = || {
            inner.dev.read_at(&mut head, off)?;
            header = SegmentHeader::parse(&head, slot, inner.nr_segments, &inner.sb.uuid)
                .filter(|h| h.global_id == id);
            match header {
                Some(_) => Ok(()),
                None => Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("segment {id} has no valid header on the cache device"),
                )),
            }
        };
        if !retry(
            inner,
            ErrorCounter::CacheRead,
            "reading a segment header",
            read_header,
        ) {
            return Outcome::Stopped;
        }
        let header = header.expect("parsed above");
        let mut buf = AlignedBuf::zeroed((1 + header.length as usize) * LINE_SIZE);
        if header.length > 0
            && !retry(inner, ErrorCounter::CacheRead, "reading a segment", || {
                inner.dev.read_at(&mut buf, off)
            })
        {
            return Outcome::Stopped;
        }
        segs.push(SegmentCopy { slot, header, buf });
    }
    let mut items = Vec::new();
    let mut devices: BTreeMap<u8, Arc<Backing>> = BTreeMap::new();
    {
        let st = lock(&inner.state);
        let attached = read_lock(&inner.devices);
        for (seg, copy) in segs.iter().enumerate() {
            for (line, m) in copy.header.metablocks.iter().enumerate() {
                if m.device_id == 0 {
                    continue;
                }
                let key = LineKey {
                    device_id: m.device_id,
                    line: m.sector / SECTORS_PER_LINE as u64,
                };
                let idx = line_index(copy.slot, line);
                let bits = match st.index.lookup(key) {
                    Some(i) if i == idx => m.dirty_bits,
                    Some(newer)
                        if st.slot_ids[newer as usize / LINES_PER_SEGMENT] > st.durable_id =>
                    {
                        // only sectors the newer copy still holds dirty (a
                        // discard may have dropped some)
                        m.dirty_bits & st.index.info(newer).map_or(0, |i| i.dirty_bits)
                    }
                    _ => 0, // the newer copy is durable, or the line was discarded
                };
                if bits == 0 {
                    continue;
                }
                match attached.get(&m.device_id) {
                    Some(b) => {
                        let first = key.line * SECTORS_PER_LINE as u64;
                        if let Some(s) = (0..SECTORS_PER_LINE as u64)
                            .find(|&s| bits & (1 << s) != 0 && first + s >= b.size_sectors)
                        {
                            return Outcome::BeyondEnd(BlockedWriteBack {
                                device_id: m.device_id,
                                sector: first + s,
                                size: b.size_sectors,
                            });
                        }
                        devices.entry(m.device_id).or_insert_with(|| b.clone());
                    }
                    None => return Outcome::MissingDevice(m.device_id),
                }
                items.push(Item {
                    key,
                    idx,
                    bits,
                    seg,
                    line,
                });
            }
        }
    }
    // Several copies of one line in a batch: only the newest is written. It
    // holds every sector of the older ones that still matters (writes merge
    // older dirty sectors in; a discard drops them on purpose), and the
    // address sort below must never reorder two copies of the same sectors.
    let mut newest: HashMap<LineKey, usize> = HashMap::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        newest.insert(it.key, i); // items are in log order: the last one wins
    }
    // (an older copy is never the indexed one, so nothing else needs it)
    let items: Vec<Item> = items
        .into_iter()
        .enumerate()
        .filter(|(i, it)| newest[&it.key] == *i)
        .map(|(_, it)| it)
        .collect();
    if write_back(inner, &segs, &items, &devices) {
        Outcome::Done(items)
    } else {
        Outcome::Stopped
    }
}

/// Retries a write-back read, write or flush (see [`retry_io`]), counting
/// each failure; false when the cache stops first.
fn retry(
    inner: &Inner,
    counter: ErrorCounter,
    what: &str,
    op: impl FnMut() -> std::io::Result<()>,
) -> bool {
    let on_error = |e: &std::io::Error| {
        inner.stats.failure(counter, what, e);
        inner.stats.error(ErrorCounter::MigrationRetry);
        tracing::warn!(
            cache = inner.cache_id,
            "write-back: {what} failed: {e}; retrying"
        );
        // a waiting detach or writer decides again (see Cache::drain_to)
        inner.progress_cv.notify_all();
    };
    let ok = retry_io(inner, 0, on_error, op);
    if ok {
        inner.stats.success(counter);
    }
    ok
}

/// Largest merged backing write.
const MAX_RUN_BYTES: usize = 1 << 20;

/// Writes the items' dirty sectors to the backing devices, sorted and
/// merged into runs, then flushes the devices written. When a flush fails,
/// the whole batch is written again before the next flush: the failed flush
/// may have lost any of the writes before it, and a later successful flush
/// says nothing about them.
fn write_back(
    inner: &Inner,
    segs: &[SegmentCopy],
    items: &[Item],
    devices: &BTreeMap<u8, Arc<Backing>>,
) -> bool {
    // dirty sector runs: (device, first sector, bytes)
    let mut runs: Vec<(u8, u64, &[u8])> = Vec::new();
    for it in items {
        let data = &segs[it.seg].buf;
        let line = &data[(1 + it.line) * LINE_SIZE..(2 + it.line) * LINE_SIZE];
        let mut s = 0;
        while s < SECTORS_PER_LINE {
            if it.bits & (1 << s) == 0 {
                s += 1;
                continue;
            }
            let start = s;
            while s < SECTORS_PER_LINE && it.bits & (1 << s) != 0 {
                s += 1;
            }
            let sector = it.key.line * SECTORS_PER_LINE as u64 + start as u64;
            runs.push((
                it.key.device_id,
                sector,
                &line[start * SECTOR_SIZE..s * SECTOR_SIZE],
            ));
        }
    }
    runs.sort_by_key(|&(d, s, _)| (d, s));
    let _io = lock(&inner.migration_io);
    let mut attempt = 0;
    loop {
        if !write_runs(inner, &runs, devices) {
            return false;
        }
        let failed = devices.values().find_map(|b| match b.dev.flush() {
            Ok(()) => None,
            Err(e) => Some((b.id, e)),
        });
        let Some((id, e)) = failed else {
            inner.stats.success(ErrorCounter::BackingWrite);
            return true;
        };
        let what = format!("flushing the backing device of device {id}");
        on_backing_error(inner, &what)(&e);
        if lock(&inner.state).stopping {
            return false;
        }
        std::thread::sleep(backoff(attempt));
        attempt += 1;
    }
}

/// Counts a failed backing write and wakes those who decide on it.
fn on_backing_error<'a>(inner: &'a Inner, what: &'a str) -> impl FnMut(&std::io::Error) + 'a {
    move |e| {
        inner.stats.failure(ErrorCounter::BackingWrite, what, e);
        inner.stats.error(ErrorCounter::MigrationRetry);
        tracing::warn!(
            cache = inner.cache_id,
            "write-back: {what} failed: {e}; retrying"
        );
        inner.progress_cv.notify_all();
    }
}

/// Writes the runs, merging contiguous ones up to [`MAX_RUN_BYTES`].
fn write_runs(
    inner: &Inner,
    runs: &[(u8, u64, &[u8])],
    devices: &BTreeMap<u8, Arc<Backing>>,
) -> bool {
    let mut i = 0;
    while i < runs.len() {
        let (dev, start, _) = runs[i];
        let mut j = i;
        let mut bytes = 0;
        while j < runs.len()
            && runs[j].0 == dev
            && runs[j].1 == start + (bytes / SECTOR_SIZE) as u64
            && bytes + runs[j].2.len() <= MAX_RUN_BYTES
        {
            bytes += runs[j].2.len();
            j += 1;
        }
        let mut buf = AlignedBuf::zeroed(bytes);
        let mut pos = 0;
        for r in &runs[i..j] {
            buf[pos..pos + r.2.len()].copy_from_slice(r.2);
            pos += r.2.len();
        }
        let b = &devices[&dev];
        let off = start * SECTOR_SIZE as u64;
        let what = format!("writing to the backing device of device {dev} at sector {start}");
        // no success is counted before the batch's flush succeeds: a fault
        // of failing flushes goes on while the rewrites succeed
        if !retry_io(inner, 0, on_backing_error(inner, &what), || {
            b.dev.write_at(&buf, off)
        }) {
            return false;
        }
        b.migrated_sectors
            .fetch_add((bytes / SECTOR_SIZE) as u64, Ordering::Relaxed);
        i = j;
    }
    true
}
