//! The flush daemon: everything that writes the cache device.
//!
//! One coordinator thread takes closed segments in id order and hands them
//! to [`IO_DEPTH`] segment writers, which seal them from the line checksums
//! the cache's writers computed (O(header)) and write them, so the device
//! always has the next segments queued while one completes. It advances
//! `last_flushed_segment_id` over the contiguous prefix of written segments
//! (a later segment may land first; recovery never replays past a gap),
//! flushes the device when a FLUSH waits, when it runs out of work or every
//! [`FLUSH_EVERY_SEGMENTS`], completes waiting FLUSHes, commits the
//! superblock record and discards written-back segments. Records and
//! discards are written by the coordinator itself, between submissions, so a
//! discard of an old segment can never overtake the write of the new one in
//! the same slot.
//!
//! A segment's RAM buffer is kept until a flush of the cache device has
//! succeeded after its write: when a flush fails (Linux reports a write-back
//! error once, and a later successful flush proves nothing about the writes
//! before it), every segment written since the last successful flush is
//! written again before the device is flushed again. Until then the
//! FLUSHes waiting on them fail and readers are served from RAM. Before a
//! segment reuses a slot, the record must say that the slot's old segment
//! is written back; that commit is retried like every cache write, and the
//! segment is not written until it succeeds.

use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::cache::{lock, FlushCallback, Inner};
use crate::device::AlignedBuf;
use crate::error::{DeviceRole, Error, Result};
use crate::format::*;
use crate::retry::retry_io;
use crate::segment_buffer::SegmentBuffer;
use crate::stats::ErrorCounter;

/// A FLUSH waiting for segment `target` to be durable.
pub(crate) struct Waiter {
    pub target: u64,
    pub done: FlushCallback,
}

/// The FLUSHes waiting for segments to become durable; the flusher
/// completes them, the ticker closes a segment a FLUSH waits on too long.
#[derive(Default)]
pub(crate) struct FlushWaiters {
    pub waiting: Vec<Waiter>,
    /// When the first FLUSH began waiting on the current segment.
    pub barrier_since: Option<Instant>,
}

impl FlushWaiters {
    /// Takes out the FLUSHes `pick` says, leaving the others waiting.
    fn take(&mut self, pick: impl Fn(&Waiter) -> bool) -> Vec<Waiter> {
        let (taken, keep) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|w| pick(w));
        self.waiting = keep;
        taken
    }

    /// Whether a FLUSH waits for a segment up to `id`.
    fn any_up_to(&self, id: u64) -> bool {
        self.waiting.iter().any(|w| w.target <= id)
    }
}

/// The superblock record as last written: the flusher writes it, the
/// ticker decides when it is due, slot reuse waits for what it says.
pub(crate) struct CommittedRecord {
    /// Sequence of the record last written.
    pub sequence: u64,
    /// `last_migrated_segment_id` as the record block on the device says.
    pub persisted_migrated_id: u64,
    /// When it was last written (or the cache resumed).
    pub last_commit: Instant,
}

/// A sealed segment on its way to the device.
pub(crate) struct SegmentWrite {
    /// Its id.
    id: u64,
    /// Its slot on the device.
    slot: u64,
    /// Header block (metablocks filled in; checksum added by the coordinator).
    header: AlignedBuf,
    /// Data lines (shared with readers until written; writers may still
    /// be filling lines when it is queued).
    data: Arc<SegmentBuffer>,
    /// Valid lines.
    length: usize,
    /// Failed flushes of the cache device counted when it was last handed
    /// to a writer: if more have failed since, the write may be lost.
    flush_era: u64,
}

impl SegmentWrite {
    /// A closed segment, ready for the flusher.
    pub(crate) fn new(
        id: u64,
        slot: u64,
        header: AlignedBuf,
        data: Arc<SegmentBuffer>,
        length: usize,
    ) -> Self {
        SegmentWrite {
            id,
            slot,
            header,
            data,
            length,
            flush_era: 0,
        }
    }
}

/// Work for the flush daemon.
pub(crate) enum FlushJob {
    /// Write this closed segment.
    Segment(SegmentWrite),
    /// A segment writer finished (`ok` false: it gave up because the cache stops).
    Written { seg: SegmentWrite, ok: bool },
    /// A FLUSH waits on already-sealed segments: make them durable.
    Barrier,
    /// Write the record block; answer if a reply channel is given.
    Commit(Option<Sender<Result<()>>>),
    /// Finish the queued segments, then exit.
    Stop,
}

/// The device is flushed at least this often (in segments) under a steady
/// stream of writes, which bounds how many segments recovery must verify
/// in full after a crash.
const FLUSH_EVERY_SEGMENTS: u64 = 16;

/// Segment writes in flight at once (the device never idles while a
/// sealed segment waits behind one that completes late).
pub const IO_DEPTH: usize = 4;

/// Starts the coordinator and its segment writers; `me` is the sending
/// side of `rx`, which the writers use to report back.
pub(crate) fn spawn(
    inner: &Arc<Inner>,
    me: Sender<FlushJob>,
    rx: Receiver<FlushJob>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    let (io_tx, io_rx) = std::sync::mpsc::channel::<SegmentWrite>();
    let io_rx = Arc::new(Mutex::new(io_rx));
    let mut threads = Vec::new();
    for n in 0..IO_DEPTH {
        let (inner, io_rx, me) = (inner.clone(), io_rx.clone(), me.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("lc{}-writer{n}", inner.cache_id))
                .spawn(move || segment_writer(&inner, &io_rx, &me))?,
        );
    }
    let inner = inner.clone();
    threads.push(
        std::thread::Builder::new()
            .name(format!("lc{}-flusher", inner.cache_id))
            .spawn(move || run(&inner, &rx, io_tx))?,
    );
    Ok(threads)
}

/// Segments written to the cache device but not yet covered by a
/// successful flush; the coordinator owns them.
#[derive(Default)]
struct UnflushedSegments {
    /// In id order; their RAM buffers are still held.
    segments: Vec<SegmentWrite>,
    /// Failed flushes of the cache device so far. A segment written (or
    /// handed to a writer) before the latest failure must be written again
    /// before a flush can make it durable.
    failed_flushes: u64,
}

fn run(inner: &Inner, rx: &Receiver<FlushJob>, io_tx: Sender<SegmentWrite>) {
    let mut queued: VecDeque<SegmentWrite> = VecDeque::new();
    let mut in_flight = 0;
    let mut landed: BTreeMap<u64, SegmentWrite> = BTreeMap::new();
    let mut unflushed = UnflushedSegments::default();
    let mut stop = false;
    while let Ok(job) = rx.recv() {
        match job {
            FlushJob::Segment(seg) => queued.push_back(seg),
            FlushJob::Written { seg, ok } => {
                in_flight -= 1;
                if ok {
                    landed.insert(seg.id, seg);
                }
                let more = !queued.is_empty() || in_flight > 0;
                segments_landed(inner, &mut landed, &mut unflushed, more);
            }
            FlushJob::Barrier => make_durable(inner, &mut unflushed),
            FlushJob::Commit(reply) => {
                let res = commit(inner, &mut unflushed);
                if let Some(tx) = reply {
                    let _ = tx.send(res);
                } else if let Err(e) = res {
                    tracing::error!(
                        cache = inner.cache_id,
                        "periodic superblock commit failed: {}",
                        crate::error::describe(&e)
                    );
                }
            }
            FlushJob::Stop => stop = true,
        }
        while in_flight < IO_DEPTH {
            let Some(mut seg) = queued.pop_front() else {
                break;
            };
            if !prepare(inner, &mut seg, &mut unflushed) {
                // the cache stops while the record cannot be written: this
                // segment and the ones after it are never written
                queued.clear();
                break;
            }
            in_flight += 1;
            seg.flush_era = unflushed.failed_flushes;
            if io_tx.send(seg).is_err() {
                return;
            }
        }
        if stop && queued.is_empty() && in_flight == 0 {
            return;
        }
    }
}

/// A segment writer thread: writes what the coordinator hands it.
fn segment_writer(inner: &Inner, jobs: &Mutex<Receiver<SegmentWrite>>, done: &Sender<FlushJob>) {
    loop {
        let Ok(mut seg) = lock(jobs).recv() else {
            return;
        };
        seal(inner, &mut seg);
        let ok = write_segment(inner, &seg);
        if done.send(FlushJob::Written { seg, ok }).is_err() {
            return;
        }
    }
}

/// Advances `last_flushed_segment_id` over the segments that landed in
/// order, and flushes the device when a FLUSH waits, when no more segments
/// are coming, or every [`FLUSH_EVERY_SEGMENTS`].
fn segments_landed(
    inner: &Inner,
    landed: &mut BTreeMap<u64, SegmentWrite>,
    unflushed: &mut UnflushedSegments,
    more_coming: bool,
) {
    let mut st = lock(&inner.metadata);
    let mut advanced = false;
    while let Some(seg) = landed.remove(&(st.log.last_flushed_id + 1)) {
        st.log.last_flushed_id = seg.id;
        unflushed.segments.push(seg);
        advanced = true;
    }
    if !advanced {
        return;
    }
    let written = st.log.last_flushed_id;
    let someone_waits = st.flush_waiters.any_up_to(written);
    let lag = written - st.log.durable_id;
    drop(st);
    inner.progress_cv.notify_all();
    if someone_waits || !more_coming || lag >= FLUSH_EVERY_SEGMENTS {
        make_durable(inner, unflushed);
    }
}

/// Fails every FLUSH waiting on a segment at or after `from_id`.
fn fail_waiters(inner: &Inner, from_id: u64, what: &str) {
    let failed: Vec<Waiter> = {
        let mut st = lock(&inner.metadata);
        st.flush_waiters.take(|w| w.target >= from_id)
    };
    for w in failed {
        (w.done)(Err(Error::io(
            DeviceRole::Cache,
            what,
            std::io::Error::from_raw_os_error(libc::EIO),
        )));
    }
}

/// Retries a cache-device write or flush (see [`retry_io`]); every failure
/// is counted and fails the FLUSHes waiting on segment `fail_from` or later.
fn retry(
    inner: &Inner,
    what: &str,
    fail_from: u64,
    op: impl FnMut() -> std::io::Result<()>,
) -> bool {
    let on_error = |e: &std::io::Error| {
        inner.stats.failure(ErrorCounter::CacheWrite, what, e);
        tracing::error!(cache = inner.cache_id, "{what} failed: {e}; retrying");
        fail_waiters(inner, fail_from, what);
        // writers waiting for a buffer decide again (they fail while this lasts)
        inner.progress_cv.notify_all();
    };
    let ok = retry_io(&inner.metadata, 3, on_error, op);
    if ok {
        inner.stats.success(ErrorCounter::CacheWrite);
    }
    ok
}

/// Gets a segment ready for its writer: commits the record first if the
/// segment reuses a slot (its writer then seals it, see [`seal`]). False (the segment must not be written) only when the cache
/// stops while the record cannot be committed.
fn prepare(inner: &Inner, seg: &mut SegmentWrite, unflushed: &mut UnflushedSegments) -> bool {
    // Before slot reuse, the durable record must say the slot's old segment
    // is written back, or a crash would make recovery start at this slot,
    // find the new id there and drop the whole log.
    let nr = inner.nr_segments;
    let record_allows = |inner: &Inner| {
        seg.id <= nr || lock(&inner.metadata).record.persisted_migrated_id >= seg.id - nr
    };
    if !record_allows(inner) {
        let what = "committing the superblock record before reusing a segment slot";
        let on_error = |e: &std::io::Error| {
            // commit() counted the failure
            tracing::error!(cache = inner.cache_id, "{what} failed: {e}; retrying");
            fail_waiters(inner, seg.id, what);
            inner.progress_cv.notify_all();
        };
        let committed = retry_io(&inner.metadata, 3, on_error, || {
            commit(inner, unflushed).map_err(|e| match e {
                Error::Io { source, .. } => source,
                other => std::io::Error::other(other.to_string()),
            })?;
            if record_allows(inner) {
                Ok(())
            } else {
                // cannot happen: a slot is only opened once written back
                Err(std::io::Error::other(format!(
                    "the record still says slot {} holds a segment not written back",
                    seg.slot
                )))
            }
        });
        if !committed {
            return false;
        }
    }
    true
}

/// Seals a prepared segment (in its writer thread, so the coordinator
/// never waits for it): waits for the writers that reserved lines before
/// it was closed to finish copying, folds their line checksums into the
/// header's, and waits until no reader has the slot pinned.
fn seal(inner: &Inner, seg: &mut SegmentWrite) {
    seg.data.wait_idle();
    SegmentHeader::seal_lines(
        &mut seg.header,
        (0..seg.length).map(|i| seg.data.line_crc(i)),
    );
    inner.pins.wait_unpinned(seg.slot);
}

/// Writes a prepared segment, header and data in one request; false only
/// if the cache stopped while the device kept failing.
fn write_segment(inner: &Inner, seg: &SegmentWrite) -> bool {
    retry(inner, "writing a segment", seg.id, || {
        write_once(inner, seg)
    })
}

/// One attempt at writing a prepared segment.
fn write_once(inner: &Inner, seg: &SegmentWrite) -> std::io::Result<()> {
    let data = seg.data.lines(seg.length);
    inner
        .dev
        .write_vectored_at(&[&seg.header, data], segment_offset(seg.slot))
}

/// Flushes the cache device (after writing the unflushed segments again
/// if a flush failed since they were written), releases their RAM, and
/// completes the FLUSHes it satisfies.
fn make_durable(inner: &Inner, unflushed: &mut UnflushedSegments) {
    let written = lock(&inner.metadata).log.last_flushed_id;
    if lock(&inner.metadata).log.durable_id < written {
        let flushed = retry(inner, "flushing the cache device", 0, || {
            let era = unflushed.failed_flushes;
            for seg in unflushed.segments.iter_mut().filter(|s| s.flush_era != era) {
                write_once(inner, seg)?;
                seg.flush_era = era;
            }
            inner
                .dev
                .flush()
                .inspect_err(|_| unflushed.failed_flushes += 1)
        });
        if !flushed {
            return;
        }
    }
    let done: Vec<Waiter> = {
        let mut st = lock(&inner.metadata);
        for seg in unflushed.segments.drain(..) {
            st.buffers.give_back(seg.slot, seg.data);
        }
        st.log.durable_id = st.log.durable_id.max(written);
        let durable = st.log.durable_id;
        st.flush_waiters.take(|w| w.target <= durable)
    };
    for w in done {
        (w.done)(Ok(()));
    }
    inner.progress_cv.notify_all();
    inner.migrate_cv.notify_all();
}

/// Writes the record block with the current `last_migrated_segment_id`,
/// flushes, then discards the segments that became written back. Fails,
/// writing nothing, when the sequence has no successor lc may write. A
/// failed flush also marks the unflushed segments for rewriting.
fn commit(inner: &Inner, unflushed: &mut UnflushedSegments) -> Result<()> {
    let (migrated, seq, old, durable) = {
        let st = lock(&inner.metadata);
        let seq = st
            .record
            .sequence
            .checked_add(1)
            .filter(|&s| s <= MAX_RECORD_SEQUENCE)
            .ok_or_else(|| {
                Error::Corrupt(format!(
                    "the superblock record's sequence {} has no successor lc may write",
                    st.record.sequence
                ))
            })?;
        (
            st.log.last_migrated_id,
            seq,
            st.record.persisted_migrated_id,
            st.log.durable_id,
        )
    };
    let record = SuperBlockRecord {
        sequence: seq,
        last_migrated_segment_id: migrated,
        uuid: inner.sb.uuid,
        durable_segment_id: durable,
    };
    let mut block = AlignedBuf::zeroed(LINE_SIZE);
    block.copy_from_slice(&record.to_block());
    let io = |e| {
        let what = "committing the superblock record";
        inner.stats.failure(ErrorCounter::CacheWrite, what, &e);
        Error::io(DeviceRole::Cache, what, e)
    };
    inner
        .dev
        .write_at(&block, RECORD_OFFSETS[(seq % 2) as usize])
        .map_err(io)?;
    inner
        .dev
        .flush()
        .inspect_err(|_| unflushed.failed_flushes += 1)
        .map_err(io)?;
    inner.stats.success(ErrorCounter::CacheWrite);
    let slots: Vec<u64> = {
        let mut st = lock(&inner.metadata);
        st.record.sequence = seq;
        st.record.persisted_migrated_id = st.record.persisted_migrated_id.max(migrated);
        let cur_slot = st.log.current.as_ref().map(|c| c.slot);
        // a slot is discarded once, however far the record moved
        (old.max(migrated.saturating_sub(inner.nr_segments)) + 1..=migrated)
            .map(|id| slot_of(id, inner.nr_segments))
            .filter(|&s| {
                st.log.slot_ids[s as usize] <= migrated
                    && st.buffers.ram[s as usize].is_none()
                    && cur_slot != Some(s)
            })
            .collect()
    };
    for slot in slots {
        inner.pins.wait_unpinned(slot);
        if let Err(e) = inner.dev.discard(segment_offset(slot), SEGMENT_SIZE as u64) {
            tracing::warn!(
                cache = inner.cache_id,
                "discarding written-back segment failed: {e}"
            );
        }
    }
    lock(&inner.metadata).record.last_commit = std::time::Instant::now();
    Ok(())
}
