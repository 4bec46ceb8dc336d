//! A cache: its shared state and the foreground paths (write, read, flush,
//! discard, attach, detach, status).
//!
//! One mutex guards the metadata (`Metadata`), split by owner: the
//! index, the segment log (`segment_log.rs`: ids, open segment, slot ids),
//! the RAM buffer pool (`segment_buffer.rs`), write-back's demand
//! (`migrator.rs`: urgent flag, drain target, last segment per device),
//! the FLUSH waiters and the committed record beside the flusher
//! (`flusher.rs`), and the writers' queue for room (here); a write
//! takes it once per request (not per line) to look its lines up and
//! reserve their places in the open segment, then copies the data and
//! computes the lines' checksums outside it (`segment_buffer.rs`). It is
//! never held across device I/O.
//! Device reads of cached lines happen outside it, with the line's segment
//! slot *pinned* (a guard from `pin.rs`) so the flusher cannot overwrite or
//! discard it meanwhile.
//! The background jobs live in their own files: `flusher.rs`,
//! `migrator.rs`, `ticker.rs`; format and resume in [`crate::recover`];
//! line geometry in `geometry.rs`, the status records in [`crate::status`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::device::{AlignedBuf, BlockDevice};
use crate::error::{DeviceRole, Error, Result};
use crate::figures::{Figures, RecentFigures};
use crate::flusher::{CommittedRecord, FlushWaiters, Waiter};
use crate::flusher::{FlushJob, SegmentWrite};
use crate::format::*;
use crate::geometry::{
    line_in_segment, line_index, line_offset, line_pieces, mask_of, slot_of_line,
    SEGMENT_DATA_BYTES,
};
use crate::index::{Index, LineKey, MAX_LINE};
use crate::knobs::{DeviceKnob, DeviceKnobs, Knob, Knobs};
use crate::migrator::{ReplacedCopies, WriteBackDemand};
use crate::pin::SlotPins;
use crate::read_plan::ReadPlan;
use crate::segment_buffer::BufferPool;
use crate::segment_buffer::SegmentBuffer;
use crate::segment_log::{OpenSegment, SegmentLog};
use crate::stats::{ErrorCounter, Stats};
pub use crate::status::{CacheStatus, DeviceStatus, DrainProgress};

/// Called once when a FLUSH (or the flush part of a FUA write) completes.
pub type FlushCallback = Box<dyn FnOnce(Result<()>) + Send>;

/// Options fixed when a cache is resumed.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// RAM segment buffers (1 MiB each); dm-lc used 64.
    pub pool_segments: usize,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions { pool_segments: 64 }
    }
}

/// A backing device attached to a cache.
pub struct Backing {
    /// Device id, 1..=255.
    pub id: u8,
    /// The device.
    pub dev: Arc<dyn BlockDevice>,
    /// Size in sectors.
    pub size_sectors: u64,
    /// Its knobs (`migrate_threshold`: percent of backing-device
    /// busyness under which the daemon's policy allows write-back).
    pub knobs: DeviceKnobs,
    /// Sectors written to the device by write-back.
    pub migrated_sectors: AtomicU64,
    /// Sectors read from the device (read misses and partial hits).
    pub read_sectors: AtomicU64,
    /// Set while a detach writes its data back: new writes are refused.
    detaching: AtomicBool,
}

/// The cache's metadata, guarded by its one mutex, by owner: each part
/// is changed by the job its doc names, and functions that need one part
/// take only that part.
pub(crate) struct Metadata {
    /// Where each cached line is (every path).
    pub index: Index,
    /// Segment ids, the open segment, slot ids (writers open and close
    /// segments; the flusher and write-back move the log's ids).
    pub log: SegmentLog,
    /// The RAM segment buffers (writers take them, the flusher gives them
    /// back).
    pub buffers: BufferPool,
    /// What write-back is asked to do (writers, drains) and what stops it.
    pub write_back: WriteBackDemand,
    /// Older copies of lines whose newest copy is not durable yet (writers
    /// record them, write-back reads them).
    pub replaced_copies: ReplacedCopies,
    /// FLUSHes waiting for durability (the flusher completes them).
    pub flush_waiters: FlushWaiters,
    /// The superblock record as last written (the flusher).
    pub record: CommittedRecord,
    /// The queue of writers waiting for room.
    pub room: RoomQueue,
    /// The cache is stopping: every path gives up.
    pub stopping: bool,
}

/// Writers that had to wait for write-back to free a slot queue in ticket
/// order: the next ticket to hand out, and the ticket whose writer may go
/// on now. While the queue is not empty, arriving writers queue behind it,
/// so the lines of a freed segment go to the writers that waited longest.
#[derive(Default)]
pub(crate) struct RoomQueue {
    pub next_ticket: u64,
    pub serving: u64,
}

impl RoomQueue {
    /// Whether writers wait in the queue.
    fn is_waited_on(&self) -> bool {
        self.next_ticket > self.serving
    }

    /// Hands out the next ticket.
    fn take_ticket(&mut self) -> u64 {
        let t = self.next_ticket;
        self.next_ticket += 1;
        t
    }

    /// Ends the turn of the writer holding `ticket` (if it is its turn);
    /// true: the next writer may go on.
    fn end_turn(&mut self, ticket: Option<u64>) -> bool {
        let ends = ticket.is_some_and(|t| t == self.serving);
        if ends {
            self.serving += 1;
        }
        ends
    }
}

/// What the cache shares with its background threads.
pub(crate) struct Inner {
    pub cache_id: u8,
    pub dev: Arc<dyn BlockDevice>,
    pub sb: SuperBlockHeader,
    pub nr_segments: u64,
    pub knobs: Knobs,
    pub stats: Stats,
    pub metadata: Mutex<Metadata>,
    /// Writers waiting for a buffer or a written-back slot; detach and
    /// sync waiters too. Notified whenever ids advance.
    pub progress_cv: Condvar,
    pub migrate_cv: Condvar,
    pub ticker_cv: Condvar,
    pub flusher_tx: Mutex<Option<Sender<FlushJob>>>,
    /// Pins on segment slots read outside the mutex.
    pub pins: Arc<SlotPins>,
    /// Shared by each write-back write (which checks that its line still
    /// needs it first), held exclusively by discard while it discards the
    /// backing devices, so write-back never writes into a discarded range
    /// after the discard.
    pub migration_io: RwLock<()>,
    /// Attached backing devices (read on every I/O, so not under `metadata`).
    /// Lock order: `metadata` before `devices`.
    pub devices: RwLock<BTreeMap<u8, Arc<Backing>>>,
    /// What read-only status calls are served from.
    pub figures: RecentFigures,
}

/// Locks a mutex, ignoring poisoning: a panic in another thread is a bug
/// that is reported where it happened; the cache keeps serving rather than
/// turning it into a panic in every caller.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Read-locks an RwLock, ignoring poisoning (see [`lock`]).
pub(crate) fn read_lock<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

/// A detach (or any drain) fails once write-back has failed this many times
/// in a row (about 2.5 s of backoff), rather than waiting for the device.
pub const DRAIN_GIVES_UP_AFTER: u64 = 8;

/// Where the data of a cache line is in RAM (see [`Metadata::ram_line`]).
pub(crate) enum RamLine<'a> {
    /// Not in RAM: on the cache device.
    Absent,
    /// In RAM, readable while the mutex is held.
    Ready(&'a [u8]),
    /// In RAM, but a writer is filling it outside the mutex: release the
    /// mutex, wait for that line ([`SegmentBuffer::wait_line`]), look again.
    Busy(Arc<SegmentBuffer>, usize),
}

impl Metadata {
    /// Makes cache line `new` (in the open segment, with `dirty_bits`) the
    /// newest copy of `key` instead of cache line `old`, and tells
    /// write-back which copy it replaced.
    fn replace_copy(&mut self, key: LineKey, old: u32, new: u32, dirty_bits: u8) {
        let old_segment = self.log.segment_of(old);
        self.index.replace(old, new, dirty_bits);
        self.replaced_copies
            .replaced(&self.index, &self.log, key, old_segment);
    }

    /// The RAM buffer of slot `slot`, if the slot's segment is in RAM (the
    /// open one, or a closed one not yet durable).
    fn ram_buffer(&self, slot: u64) -> Option<&Arc<SegmentBuffer>> {
        match &self.log.current {
            Some(cur) if cur.slot == slot => Some(&cur.buf),
            _ => self.buffers.ram[slot as usize].as_ref(),
        }
    }

    /// Where the data of cache line `idx` is in RAM, if it is.
    pub(crate) fn ram_line(&self, idx: u32) -> RamLine<'_> {
        let slot = slot_of_line(idx);
        let i = line_in_segment(idx);
        match self.ram_buffer(slot) {
            None => RamLine::Absent,
            Some(b) if b.is_busy(i) => RamLine::Busy(b.clone(), i),
            Some(b) => RamLine::Ready(b.line(i)),
        }
    }
}

/// How a line write treats an older copy of the same line.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WriteMode {
    /// Discard the sectors in the mask from cache line `expect` of segment
    /// `segment`, which had dirty bits `bits` when the discard looked
    /// (`fetched`: the data passed is that line as read from the cache
    /// device). If the index no longer says so (a write got in while the
    /// lock was released, or the slot was written back and reused, maybe
    /// with the same line at the same place), nothing is changed and the
    /// discard looks again.
    Discard {
        expect: u32,
        segment: u64,
        bits: u8,
        fetched: bool,
    },
}

/// A write-back cache over one cache device, serving up to 255 backing devices.
///
/// Create with [`Cache::resume`] on a device prepared by [`crate::format_cache_device`].
/// All methods take `&self` and may be called from many threads at once.
pub struct Cache {
    pub(crate) inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Inner {
    pub(crate) fn send_job(&self, job: FlushJob) {
        if let Some(tx) = lock(&self.flusher_tx).as_ref() {
            let _ = tx.send(job);
        }
    }

    /// Seals the current segment and hands it to the flusher. Caller holds the lock.
    pub(crate) fn close_current(&self, st: &mut Metadata) {
        let Some(cur) = st.log.current.take() else {
            return;
        };
        if cur.length == 0 {
            st.log.current = Some(cur);
            return;
        }
        let OpenSegment {
            id,
            slot,
            buf,
            length,
            ..
        } = cur;
        let lap = lap_of(id, self.nr_segments);
        let metablocks = (0..length)
            .map(|i| match st.index.info(line_index(slot, i)) {
                Some(info) => Metablock {
                    sector: info.key.line * SECTORS_PER_LINE as u64,
                    device_id: info.key.device_id,
                    dirty_bits: info.dirty_bits,
                    lap,
                },
                // invalidated (discarded) while the segment was open
                None => Metablock {
                    lap,
                    ..Metablock::default()
                },
            })
            .collect();
        let header = SegmentHeader {
            global_id: id,
            durable_id: st.log.durable_id,
            lap,
            length: length as u32,
            uuid: self.sb.uuid,
            checksum: 0,
            metablocks,
        };
        // The flusher seals it (checksum) outside the lock.
        let mut head = AlignedBuf::zeroed(LINE_SIZE);
        header.write_to(&mut head);
        let data = buf;
        st.buffers.ram[slot as usize] = Some(data.clone());
        st.log.last_closed_id = id;
        st.flush_waiters.barrier_since = None;
        self.send_job(FlushJob::Segment(SegmentWrite::new(
            id, slot, head, data, length,
        )));
    }

    /// Makes sure an open segment with a free line exists; may wait (then
    /// the caller must look everything up again).
    ///
    /// `ticket` (writes; discards pass `None`): the caller's place in the
    /// queue of writers waiting for room, taken here when it must wait (or
    /// when others already wait); the caller ends its turn with
    /// [`Inner::end_turn`] once its request has its lines.
    fn open_segment<'a>(
        &'a self,
        mut st: MutexGuard<'a, Metadata>,
        mut ticket: Option<&mut Option<u64>>,
    ) -> Result<MutexGuard<'a, Metadata>> {
        loop {
            if st.stopping {
                return Err(Error::Stopped);
            }
            if let Some(t) = ticket.as_deref_mut() {
                if t.is_none() && st.room.is_waited_on() {
                    *t = Some(st.room.take_ticket());
                }
                if t.is_some_and(|t| t != st.room.serving) {
                    st = self.progress_cv.wait(st).unwrap_or_else(|e| e.into_inner());
                    continue;
                }
            }
            // another writer may have opened (or even filled) one while we waited
            match &st.log.current {
                Some(c) if !c.is_full() => return Ok(st),
                Some(_) => {
                    self.close_current(&mut st);
                    continue;
                }
                None => {}
            }
            let id = st.log.next_id;
            if id >= segment_id_limit(self.nr_segments) {
                // its lap would not fit the header: refuse, never truncate
                return Err(Error::io(
                    DeviceRole::Cache,
                    format!(
                        "opening segment {id}: a cache of {} segments has used every segment id; write everything back (migrate_all), then reformat the cache device",
                        self.nr_segments
                    ),
                    std::io::Error::from_raw_os_error(libc::ENOSPC),
                ));
            }
            let slot_free = st.log.slot_free_for(id, self.nr_segments);
            let buf_free = st.buffers.available() > 0;
            if slot_free && buf_free {
                break;
            }
            // (only a wait for write-back queues: a wait for a RAM buffer is
            // short, and a queue there would hand the lines out one by one)
            if let Some(t) = ticket.as_deref_mut().filter(|_| !slot_free) {
                if t.is_none() {
                    *t = Some(st.room.take_ticket());
                }
            }
            if !slot_free {
                st.write_back.urgent = true;
                self.migrate_cv.notify_all();
            }
            // Waiting is right while the devices work (the flusher or
            // write-back frees room soon); while the device that must free
            // room fails, the write fails instead of hanging with no sign.
            if let Some(e) = self.no_room_error(&st.buffers, buf_free, slot_free) {
                return Err(e);
            }
            st = self.progress_cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        let buf = st.buffers.take();
        let id = st.log.next_id;
        let slot = slot_of(id, self.nr_segments);
        debug_assert!((0..LINES_PER_SEGMENT).all(|i| st.index.info(line_index(slot, i)).is_none()));
        st.log.next_id += 1;
        st.log.slot_ids[slot as usize] = id;
        st.log.current = Some(OpenSegment {
            id,
            slot,
            buf,
            length: 0,
            opened_at: Instant::now(),
        });
        self.ticker_cv.notify_all();
        Ok(st)
    }

    /// Why a writer that needs room it cannot get now must fail rather
    /// than wait: every RAM buffer is full while the cache device fails
    /// writes, or every slot holds dirty data while write-back fails.
    fn no_room_error(
        &self,
        buffers: &BufferPool,
        buf_free: bool,
        slot_free: bool,
    ) -> Option<Error> {
        let eio = || std::io::Error::from_raw_os_error(libc::EIO);
        let health = self.stats.health();
        if !buf_free {
            if let Some(f) = health.fault(ErrorCounter::CacheWrite) {
                return Some(Error::io(
                    DeviceRole::Cache,
                    format!(
                        "accepting a write: all {} RAM segment buffers wait to be written to the \
                         cache device, which fails writes ({})",
                        buffers.capacity,
                        f.describe()
                    ),
                    eio(),
                ));
            }
        }
        if !slot_free {
            let fault = health
                .fault(ErrorCounter::BackingWrite)
                .or_else(|| health.fault(ErrorCounter::CacheRead));
            if let Some(f) = fault {
                return Some(Error::io(
                    DeviceRole::Backing,
                    format!(
                        "accepting a write: the cache is full of dirty data and write-back \
                         fails ({})",
                        f.describe()
                    ),
                    eio(),
                ));
            }
        }
        None
    }

    /// Copies cache line `idx` into `out`: from RAM under the lock, or from
    /// the cache device with the slot pinned and the lock released. Returns
    /// the guard and where the line came from; [`Fetched::LookAgain`] when
    /// the line was being filled by a writer (this waited for it with the
    /// lock released: the caller looks the line up again).
    fn fetch_line<'a>(
        &'a self,
        st: MutexGuard<'a, Metadata>,
        idx: u32,
        out: &mut [u8],
    ) -> (MutexGuard<'a, Metadata>, Result<Fetched>) {
        let slot = slot_of_line(idx);
        match st.ram_line(idx) {
            RamLine::Ready(data) => {
                out.copy_from_slice(data);
                return (st, Ok(Fetched::Ram));
            }
            RamLine::Busy(buf, i) => {
                drop(st);
                buf.wait_line(i);
                drop(buf);
                return (lock(&self.metadata), Ok(Fetched::LookAgain));
            }
            RamLine::Absent => {}
        }
        let pin = self.pins.pin(&st, slot);
        drop(st);
        let res = self.dev.read_at(out, line_offset(idx));
        drop(pin);
        crate::sim::line_fetched();
        let res = match res {
            Ok(()) => {
                self.stats.success(ErrorCounter::CacheRead);
                Ok(Fetched::Device)
            }
            Err(e) => {
                self.stats
                    .failure(ErrorCounter::CacheRead, "reading a cached line", &e);
                Err(Error::io(DeviceRole::Cache, "reading a cached line", e))
            }
        };
        (lock(&self.metadata), res)
    }

    /// Discards the sectors in `mask` from `key` (see [`WriteMode::Discard`];
    /// `data` is the line image the discard fetched, if it did). False: the
    /// line changed, the discard must look again.
    fn write_line(&self, key: LineKey, mask: u8, data: &[u8], mode: WriteMode) -> Result<bool> {
        let WriteMode::Discard {
            expect,
            segment,
            bits: seen,
            fetched,
        } = mode;
        let mut st = lock(&self.metadata);
        loop {
            if st.stopping {
                return Err(Error::Stopped);
            }
            let existing = st.index.lookup(key);
            let still = existing == Some(expect)
                && st.log.segment_of(expect) == segment
                && st.index.info(expect).is_some_and(|i| i.dirty_bits == seen);
            if !still {
                return Ok(false);
            }
            let keep = seen & !mask;
            if keep == 0 {
                st.index.remove(expect);
                return Ok(true);
            }
            if st.log.in_current(expect) {
                // the open segment holds the newest data in place
                st.index.set_dirty(expect, keep);
                return Ok(true);
            }
            // a line outside the open segment never changes: take it
            // from RAM if it is there, else as the discard read it
            let mut image = AlignedBuf::zeroed(LINE_SIZE);
            match st.ram_line(expect) {
                RamLine::Ready(line) => image.copy_from_slice(line),
                RamLine::Busy(buf, i) => {
                    drop(st);
                    buf.wait_line(i);
                    return Ok(false);
                }
                RamLine::Absent if fetched => image.copy_from_slice(&data[..LINE_SIZE]),
                RamLine::Absent => return Ok(false),
            }
            if st.log.needs_segment() {
                st = self.open_segment(st, None)?;
                continue;
            }
            let cur = st.log.current.as_mut().expect("opened above");
            let i = cur.length;
            cur.length += 1;
            let (id, slot) = (cur.id, cur.slot);
            cur.buf.write_locked(i, |line| {
                line.fill(0);
                copy_sectors(line, &image, keep);
            });
            st.replace_copy(key, expect, line_index(slot, i), keep);
            st.write_back.last_segment_of_device[key.device_id as usize] = id;
            return Ok(true);
        }
    }

    /// Writes `data` at `sector` of device `device_id` (range checked):
    /// every line is looked up and given its place in the open segment
    /// under one hold of the cache mutex, and the data is copied (and each
    /// line's checksum computed) after it is released. The mutex is taken
    /// again only when the open segment fills up, when an older copy of a
    /// partially written line must be read from the cache device, or when a
    /// line is being filled by another writer at that moment.
    fn write_request(&self, device_id: u8, sector: u64, data: &[u8]) -> Result<()> {
        let pieces: Vec<(u64, usize, usize)> =
            line_pieces(sector, (data.len() / SECTOR_SIZE) as u64).collect();
        let mut fills: Vec<Fill<'_>> = Vec::with_capacity(pieces.len());
        // counted after the mutex is released: (hit, on_buffer, full)
        let mut counts: Vec<(bool, bool, bool)> = Vec::with_capacity(pieces.len());
        // data of an older copy read from the device: (cache line, its
        // segment, line image); the segment id tells that copy from a newer
        // one a reused slot holds at the same cache line
        let mut fetched: Option<(u32, u64, AlignedBuf)> = None;
        let mut next = 0;
        let mut pos = 0;
        let mut st = lock(&self.metadata);
        // writers wait for room: queue behind them
        let mut ticket = None;
        if st.room.is_waited_on() {
            let t = st.room.take_ticket();
            ticket = Some(t);
            while st.room.serving != t && !st.stopping {
                st = self.progress_cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        }
        let res = loop {
            let Some(&(ln, s0, n)) = pieces.get(next) else {
                break Ok(());
            };
            if st.stopping {
                break Err(Error::Stopped);
            }
            let bytes = n * SECTOR_SIZE;
            let piece = &data[pos..pos + bytes];
            let key = LineKey {
                device_id,
                line: ln,
            };
            let mask = mask_of(s0, n);
            let full = mask == 0xFF;
            let existing = st.index.lookup(key);
            if let Some(idx) = existing {
                if st.log.in_current(idx) {
                    let cur = st.log.current.as_ref().expect("in_current");
                    let i = line_in_segment(idx);
                    if cur.buf.is_busy(i) {
                        // another writer fills it now: let it finish
                        let buf = cur.buf.clone();
                        st = self.unlocked(st, &mut fills, || buf.wait_line(i));
                        continue;
                    }
                    cur.buf.reserve(i);
                    fills.push(Fill {
                        buf: cur.buf.clone(),
                        line: i,
                        zero: false,
                        old: None,
                        s0,
                        data: piece,
                    });
                    st.index.add_dirty(idx, mask);
                    counts.push((true, true, full));
                    next += 1;
                    pos += bytes;
                    continue;
                }
            }
            if st.log.needs_segment() {
                // the lines this request filled must be complete before
                // it may wait for room (the flusher waits for them)
                if !fills.is_empty() {
                    st = self.unlocked(st, &mut fills, || {});
                }
                st = match self.open_segment(st, Some(&mut ticket)) {
                    Ok(g) => g,
                    Err(e) => {
                        // (the fills are done: the mutex was released above)
                        self.end_turn(&mut lock(&self.metadata).room, ticket);
                        for (hit, on_buffer, full) in counts {
                            self.stats.count(true, hit, on_buffer, full);
                        }
                        return Err(e);
                    }
                };
                continue;
            }
            let mut bits = mask;
            let mut old: Option<(AlignedBuf, u8)> = None;
            if let Some(idx) = existing {
                let old_bits = st.index.info(idx).expect("indexed").dirty_bits;
                if old_bits & !mask != 0 {
                    match st.ram_line(idx) {
                        RamLine::Ready(line) => {
                            let mut b = AlignedBuf::zeroed(LINE_SIZE);
                            b.copy_from_slice(line);
                            old = Some((b, old_bits & !mask));
                        }
                        RamLine::Busy(buf, i) => {
                            st = self.unlocked(st, &mut fills, || buf.wait_line(i));
                            continue;
                        }
                        RamLine::Absent => {
                            let segment = st.log.segment_of(idx);
                            match fetched
                                .take()
                                .filter(|(i, seg, _)| *i == idx && *seg == segment)
                            {
                                Some((_, _, b)) => old = Some((b, old_bits & !mask)),
                                None => {
                                    if !fills.is_empty() {
                                        st = self.unlocked(st, &mut fills, || {});
                                        continue;
                                    }
                                    let mut b = AlignedBuf::zeroed(LINE_SIZE);
                                    let (g, res) = self.fetch_line(st, idx, &mut b);
                                    st = g;
                                    match res {
                                        Ok(Fetched::Device) => fetched = Some((idx, segment, b)),
                                        Ok(_) => {}
                                        Err(e) => break Err(e),
                                    }
                                    continue; // the world may have changed while unlocked
                                }
                            }
                        }
                    }
                    bits |= old_bits;
                }
            }
            let cur = st.log.current.as_mut().expect("opened above");
            let i = cur.length;
            cur.length += 1;
            let (id, slot) = (cur.id, cur.slot);
            cur.buf.reserve(i);
            fills.push(Fill {
                buf: cur.buf.clone(),
                line: i,
                // sectors nobody wrote hold zeros, not stale bytes
                zero: bits != 0xFF,
                old,
                s0,
                data: piece,
            });
            let new_idx = line_index(slot, i);
            match existing {
                Some(idx) => st.replace_copy(key, idx, new_idx, bits),
                None => {
                    st.index.insert(key, new_idx, bits);
                    st.replaced_copies.created(key);
                }
            }
            st.write_back.last_segment_of_device[key.device_id as usize] = id;
            counts.push((existing.is_some(), false, full));
            next += 1;
            pos += bytes;
        };
        self.end_turn(&mut st.room, ticket);
        drop(st);
        run_fills(&mut fills);
        for (hit, on_buffer, full) in counts {
            self.stats.count(true, hit, on_buffer, full);
        }
        res
    }

    /// Ends the turn of the writer holding `ticket` in the queue for room
    /// (if it is its turn), letting the next one go on.
    fn end_turn(&self, room: &mut RoomQueue, ticket: Option<u64>) {
        if room.end_turn(ticket) {
            self.progress_cv.notify_all();
        }
    }

    /// Releases the mutex, fills the lines reserved so far (so nobody
    /// waits for this writer while it waits), runs `wait`, and locks again.
    fn unlocked<'a>(
        &'a self,
        st: MutexGuard<'a, Metadata>,
        fills: &mut Vec<Fill<'_>>,
        wait: impl FnOnce(),
    ) -> MutexGuard<'a, Metadata> {
        drop(st);
        run_fills(fills);
        wait();
        lock(&self.metadata)
    }

    /// Registers a FLUSH; `done` runs when every earlier write is durable.
    pub(crate) fn flush(&self, done: FlushCallback) {
        let mut st = lock(&self.metadata);
        if st.stopping {
            drop(st);
            return done(Err(Error::Stopped));
        }
        let target = match &st.log.current {
            Some(c) if c.length > 0 => {
                let id = c.id;
                if st.flush_waiters.barrier_since.is_none() {
                    st.flush_waiters.barrier_since = Some(Instant::now());
                    self.ticker_cv.notify_all();
                }
                id
            }
            _ => st.log.last_closed_id,
        };
        if st.log.durable_id >= target {
            drop(st);
            return done(Ok(()));
        }
        let closed = target <= st.log.last_closed_id;
        st.flush_waiters.waiting.push(Waiter { target, done });
        drop(st);
        if closed {
            self.send_job(FlushJob::Barrier);
        }
    }

    pub(crate) fn flush_sync(&self) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.flush(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        rx.recv().unwrap_or(Err(Error::Stopped))
    }
}

/// A line a write reserved in a RAM segment, to be filled once the mutex
/// is released.
struct Fill<'d> {
    buf: Arc<SegmentBuffer>,
    /// Line number in the segment.
    line: usize,
    /// Zero the line first (a new line not wholly written).
    zero: bool,
    /// Sectors of an older copy to keep: (its image, which sectors).
    old: Option<(AlignedBuf, u8)>,
    /// First sector of the line the data covers.
    s0: usize,
    /// The data: whole sectors from `s0`.
    data: &'d [u8],
}

/// Fills the reserved lines and marks them ready.
fn run_fills(fills: &mut Vec<Fill<'_>>) {
    for f in fills.drain(..) {
        f.buf.fill(f.line, |line| {
            if f.zero {
                line.fill(0);
            }
            if let Some((image, keep)) = &f.old {
                copy_sectors(line, image, *keep);
            }
            let at = f.s0 * SECTOR_SIZE;
            line[at..at + f.data.len()].copy_from_slice(f.data);
        });
    }
}

/// Where [`Inner::fetch_line`] found a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetched {
    /// In a RAM segment buffer.
    Ram,
    /// On the cache device.
    Device,
    /// A writer was filling it: nothing was copied; look it up again.
    LookAgain,
}

/// Copies the sectors selected by `mask` from `src` to `dst` (both 4 KiB).
fn copy_sectors(dst: &mut [u8], src: &[u8], mask: u8) {
    if mask == 0xFF {
        dst.copy_from_slice(&src[..LINE_SIZE]);
        return;
    }
    for s in 0..SECTORS_PER_LINE {
        if mask & (1 << s) != 0 {
            let r = s * SECTOR_SIZE..(s + 1) * SECTOR_SIZE;
            dst[r.clone()].copy_from_slice(&src[r]);
        }
    }
}

impl Cache {
    pub(crate) fn start(inner: Arc<Inner>) -> Result<Cache> {
        let (tx, rx) = std::sync::mpsc::channel();
        *lock(&inner.flusher_tx) = Some(tx.clone());
        let cache = Cache {
            inner,
            threads: Mutex::new(Vec::new()),
        };
        let started = (|| -> std::io::Result<()> {
            let inner = &cache.inner;
            let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
                std::thread::Builder::new()
                    .name(format!("lc{}-{name}", inner.cache_id))
                    .spawn(f)
            };
            let mut threads = lock(&cache.threads);
            threads.extend(crate::flusher::spawn(inner, tx, rx)?);
            let i = inner.clone();
            threads.push(spawn("migrate", Box::new(move || crate::migrator::run(i)))?);
            let i = inner.clone();
            threads.push(spawn("ticker", Box::new(move || crate::ticker::run(i)))?);
            Ok(())
        })();
        if let Err(e) = started {
            // the threads that did start stop again; nothing was written
            cache.stop_threads();
            return Err(Error::io(
                DeviceRole::Cache,
                "starting the cache threads",
                e,
            ));
        }
        Ok(cache)
    }

    /// The cache id given at resume.
    pub fn id(&self) -> u8 {
        self.inner.cache_id
    }

    /// Number of segments on the cache device.
    pub fn nr_segments(&self) -> u64 {
        self.inner.nr_segments
    }

    /// The cache device's uuid.
    pub fn uuid(&self) -> [u8; 16] {
        self.inner.sb.uuid
    }

    fn backing(&self, device_id: u8) -> Result<Arc<Backing>> {
        read_lock(&self.inner.devices)
            .get(&device_id)
            .cloned()
            .ok_or(Error::UnknownDevice(device_id))
    }

    fn check_range(&self, b: &Backing, sector: u64, len_bytes: usize) -> Result<()> {
        if len_bytes == 0 || len_bytes % SECTOR_SIZE != 0 {
            return Err(Error::InvalidArgument(format!(
                "I/O length {len_bytes} is not a positive multiple of 512"
            )));
        }
        let end = sector.saturating_add((len_bytes / SECTOR_SIZE) as u64);
        if end > b.size_sectors {
            return Err(Error::OutOfRange {
                device_id: b.id,
                start: sector,
                end,
                size: b.size_sectors,
            });
        }
        Ok(())
    }

    /// Attaches backing device `device_id` (1..=255).
    pub fn attach_device(&self, device_id: u8, dev: Arc<dyn BlockDevice>) -> Result<()> {
        let _fresh = self.inner.figures.forget_when_done();
        if device_id == 0 {
            return Err(Error::InvalidArgument("device ids are 1..=255".into()));
        }
        let size_sectors = dev.size_bytes() / SECTOR_SIZE as u64;
        if size_sectors == 0 || size_sectors / SECTORS_PER_LINE as u64 > MAX_LINE {
            return Err(Error::InvalidArgument(format!(
                "backing device {} has an unusable size of {} bytes",
                dev.describe(),
                dev.size_bytes()
            )));
        }
        // the lines this id already holds (from an earlier life) must fit
        let st = lock(&self.inner.metadata);
        let dirty_end = st.index.dirty_end_sector(device_id);
        if dirty_end > size_sectors {
            return Err(Error::BackingTooSmall {
                device_id,
                dirty_end_sector: dirty_end,
                size_sectors,
            });
        }
        let mut devices = self
            .inner
            .devices
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if devices.contains_key(&device_id) {
            return Err(Error::DeviceExists(device_id));
        }
        // discarded lines still in the log come back at the next resume as
        // this id's: no disk may take the id before write-back passed them
        let last = st.write_back.last_segment_of_device[device_id as usize];
        if st.index.nr_dirty(device_id) == 0 && st.log.last_migrated_id < last {
            drop(st);
            drop(devices);
            let waits_for = self.first_missing_device_before(last).unwrap_or(0);
            return Err(Error::DiscardUnfinished {
                device_id,
                waits_for,
            });
        }
        drop(st);
        devices.insert(
            device_id,
            Arc::new(Backing {
                id: device_id,
                dev,
                size_sectors,
                knobs: DeviceKnobs::default(),
                migrated_sectors: AtomicU64::new(0),
                read_sectors: AtomicU64::new(0),
                detaching: AtomicBool::new(false),
            }),
        );
        self.inner.migrate_cv.notify_all();
        Ok(())
    }

    /// Writes back every dirty line of `device_id`, records that on the cache
    /// device, and detaches it. The caller must have stopped I/O to it.
    /// `progress` is called now and then while write-back runs.
    pub fn detach_device(
        &self,
        device_id: u8,
        mut progress: impl FnMut(DrainProgress),
    ) -> Result<()> {
        let _fresh = self.inner.figures.forget_when_done();
        let backing = self.backing(device_id)?;
        // From now on its writes are refused, so the drain below ends.
        backing.detaching.store(true, Ordering::SeqCst);
        let res = (|| loop {
            self.inner.flush_sync()?;
            let target =
                lock(&self.inner.metadata).write_back.last_segment_of_device[device_id as usize];
            self.drain_to(target, &mut progress)?;
            // a write that passed the check just before the flag was set
            // may have landed after `target`: go round once more
            if lock(&self.inner.metadata).write_back.last_segment_of_device[device_id as usize]
                == target
            {
                return self.commit_super_block();
            }
        })();
        if let Err(e) = res {
            backing.detaching.store(false, Ordering::SeqCst);
            return Err(e);
        }
        debug_assert_eq!(lock(&self.inner.metadata).index.nr_dirty(device_id), 0);
        let mut devices = self
            .inner
            .devices
            .write()
            .unwrap_or_else(|e| e.into_inner());
        devices.remove(&device_id);
        Ok(())
    }

    /// One past the highest dirty sector device id `device_id` holds in
    /// this cache (0: none): the smallest backing device it can be attached
    /// to.
    pub fn dirty_end_sector(&self, device_id: u8) -> u64 {
        lock(&self.inner.metadata).index.dirty_end_sector(device_id)
    }

    /// Drops every dirty line of `device_id`, which must not be attached,
    /// for good: the lines leave the index at once (write-back skips them
    /// and stops waiting for the device), then write-back runs past the
    /// last segment that held one and the record is committed, so a later
    /// resume does not bring them back. The data is lost; this is for an
    /// administrator who forgets a device that is gone. Returns how many
    /// lines were dropped.
    pub fn discard_device_lines(
        &self,
        device_id: u8,
        mut progress: impl FnMut(DrainProgress),
    ) -> Result<u64> {
        let _fresh = self.inner.figures.forget_when_done();
        if device_id == 0 {
            return Err(Error::InvalidArgument("device ids are 1..=255".into()));
        }
        let (dropped, target) = {
            let mut st = lock(&self.inner.metadata);
            if read_lock(&self.inner.devices).contains_key(&device_id) {
                return Err(Error::InvalidArgument(format!(
                    "device {device_id} is attached; detach it (which writes its data back) \
                     instead of discarding its data"
                )));
            }
            let dropped = st.index.remove_device(device_id);
            (
                dropped,
                st.write_back.last_segment_of_device[device_id as usize],
            )
        };
        self.inner.migrate_cv.notify_all();
        self.inner.flush_sync()?;
        // write-back stops at the first line of another device that is not
        // attached: say so rather than wait for it (the lines stay dropped;
        // calling this again once it is attached or dropped finishes)
        if let Some(other) = self.first_missing_device_before(target) {
            return Err(Error::MissingDevice(other));
        }
        self.drain_to(target, &mut progress)?;
        self.commit_super_block()?;
        Ok(dropped)
    }

    /// A device that is not attached whose dirty lines lie in a segment up
    /// to `target` (write-back cannot pass it), if any.
    fn first_missing_device_before(&self, target: u64) -> Option<u8> {
        let st = lock(&self.inner.metadata);
        let attached = read_lock(&self.inner.devices);
        (0..st.index.nr_lines() as u32)
            .filter_map(|i| st.index.info(i).map(|info| (i, info)))
            .filter(|(_, info)| !attached.contains_key(&info.key.device_id))
            .filter(|(i, _)| {
                let seg = st.log.slot_ids[slot_of_line(*i) as usize];
                seg > st.log.last_migrated_id && seg <= target
            })
            .map(|(_, info)| info.key.device_id)
            .next()
    }

    /// Whether nothing of `device_id` can come back at the next resume:
    /// write-back has passed the last segment that held a line of it.
    pub fn device_lines_gone_for_good(&self, device_id: u8) -> bool {
        let st = lock(&self.inner.metadata);
        st.index.nr_dirty(device_id) == 0
            && st.log.last_migrated_id >= st.write_back.last_segment_of_device[device_id as usize]
    }

    /// Forces write-back until `last_migrated_segment_id` reaches `target`,
    /// reporting progress now and then. Seals the current segment if it is
    /// the target (or older), so the drain never waits for a segment that
    /// only a later write or FLUSH would close.
    fn drain_to(&self, target: u64, progress: &mut impl FnMut(DrainProgress)) -> Result<()> {
        // errors so far: a drain gives up only after a failure of its own
        // (a device fixed since the last failure gets its next retry)
        let errors_before = self.write_back_errors();
        let mut st = lock(&self.inner.metadata);
        let start = st.log.last_migrated_id.min(target);
        st.write_back.drain_target = st.write_back.drain_target.max(target);
        self.inner.migrate_cv.notify_all();
        loop {
            // A write may have opened the target segment after the caller's
            // FLUSH; with the device idle nothing else would close it.
            if st.log.current.as_ref().is_some_and(|c| c.id <= target) {
                self.inner.close_current(&mut st);
            }
            progress(DrainProgress {
                done: st.log.last_migrated_id.min(target) - start,
                total: target - start,
            });
            if st.log.last_migrated_id >= target {
                return Ok(());
            }
            if st.stopping {
                return Err(Error::Stopped);
            }
            if let Some(blocked) = st.write_back.blocked {
                return Err(blocked.error());
            }
            if let Some(e) = self.write_back_failing(errors_before) {
                return Err(e);
            }
            st = self
                .inner
                .progress_cv
                .wait_timeout(st, Duration::from_millis(200))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Backing-write and cache-read errors so far (the errors that stop
    /// write-back).
    fn write_back_errors(&self) -> u64 {
        let s = self.inner.stats.snapshot();
        s.backing_write_errors + s.cache_read_errors
    }

    /// An error when write-back has failed [`DRAIN_GIVES_UP_AFTER`] times
    /// in a row, at least once since `errors_before` was taken: a detach or
    /// drain returns it instead of waiting for the device to come back
    /// (write-back itself goes on retrying).
    fn write_back_failing(&self, errors_before: u64) -> Option<Error> {
        let stats = &self.inner.stats;
        if self.write_back_errors() == errors_before {
            return None;
        }
        let (kind, role) = [
            (ErrorCounter::BackingWrite, DeviceRole::Backing),
            (ErrorCounter::CacheRead, DeviceRole::Cache),
        ]
        .into_iter()
        .find(|(k, _)| stats.streak(*k) >= DRAIN_GIVES_UP_AFTER)?;
        let health = stats.health();
        let f = health.fault(kind)?;
        Some(Error::io(
            role,
            format!(
                "writing dirty data back: {}; the dirty data stays in the cache and write-back \
                 goes on retrying",
                f.describe()
            ),
            std::io::Error::from_raw_os_error(libc::EIO),
        ))
    }

    /// Writes back every dirty line `device_id` has now, leaving the device
    /// attached and writable (lcd does this before it takes the block device
    /// away, so a detach that fails leaves the device as it was). Fails with
    /// an I/O error when write-back keeps failing.
    pub fn write_back_device(
        &self,
        device_id: u8,
        mut progress: impl FnMut(DrainProgress),
    ) -> Result<()> {
        let _fresh = self.inner.figures.forget_when_done();
        self.backing(device_id)?;
        self.inner.flush_sync()?;
        let target =
            lock(&self.inner.metadata).write_back.last_segment_of_device[device_id as usize];
        self.drain_to(target, &mut progress)
    }

    /// Attached devices.
    pub fn devices(&self) -> Vec<DeviceStatus> {
        let devices: Vec<Arc<Backing>> = read_lock(&self.inner.devices).values().cloned().collect();
        let st = lock(&self.inner.metadata);
        devices
            .iter()
            .map(|b| DeviceStatus {
                device_id: b.id,
                dev: b.dev.describe(),
                size_sectors: b.size_sectors,
                nr_dirty_caches: st.index.nr_dirty(b.id),
                knobs: b.knobs.clone(),
            })
            .collect()
    }

    /// One attached device (what [`Cache::devices`] lists for it), without
    /// building the whole list.
    pub fn device_status(&self, device_id: u8) -> Option<DeviceStatus> {
        let b = self.backing(device_id).ok()?;
        let nr_dirty_caches = lock(&self.inner.metadata).index.nr_dirty(b.id);
        Some(DeviceStatus {
            device_id: b.id,
            dev: b.dev.describe(),
            size_sectors: b.size_sectors,
            nr_dirty_caches,
            knobs: b.knobs.clone(),
        })
    }

    /// Sets knob `knob` of attached device `device_id`; an out-of-range
    /// value changes nothing.
    pub fn set_device_knob(&self, device_id: u8, knob: DeviceKnob, value: u64) -> Result<()> {
        self.backing(device_id)?.knobs.set(knob, value)
    }

    /// Knob `knob` of attached device `device_id`.
    pub fn device_knob(&self, device_id: u8, knob: DeviceKnob) -> Result<u64> {
        Ok(self.backing(device_id)?.knobs.get(knob))
    }

    /// The device ids this cache holds dirty lines of, attached or not.
    pub fn dirty_device_ids(&self) -> Vec<u8> {
        let st = lock(&self.inner.metadata);
        (1..=255u8).filter(|&d| st.index.nr_dirty(d) > 0).collect()
    }

    /// Dirty lines cached for `device_id`.
    pub fn nr_dirty_caches(&self, device_id: u8) -> u64 {
        lock(&self.inner.metadata).index.nr_dirty(device_id)
    }

    /// Writes `data` (a multiple of 512 bytes) at `sector` of device
    /// `device_id`. Returns once the data is in the cache's RAM: like a disk
    /// with a volatile write cache, it is durable after the next FLUSH.
    pub fn write(&self, device_id: u8, sector: u64, data: &[u8]) -> Result<()> {
        let b = self.backing(device_id)?;
        if b.detaching.load(Ordering::SeqCst) {
            return Err(Error::Detaching(device_id));
        }
        self.check_range(&b, sector, data.len())?;
        self.inner.write_request(device_id, sector, data)
    }

    /// A write with FUA: `done` runs once this write (and every earlier one)
    /// is durable. Errors of the write itself are returned at once.
    pub fn write_fua(
        &self,
        device_id: u8,
        sector: u64,
        data: &[u8],
        done: FlushCallback,
    ) -> Result<()> {
        self.write(device_id, sector, data)?;
        self.inner.flush(done);
        Ok(())
    }

    /// Reads `buf.len()` bytes (a multiple of 512) at `sector` of `device_id`.
    pub fn read(&self, device_id: u8, sector: u64, buf: &mut [u8]) -> Result<()> {
        let b = self.backing(device_id)?;
        self.check_range(&b, sector, buf.len())?;
        let mut line = AlignedBuf::zeroed(LINE_SIZE);
        let mut pos = 0;
        for (ln, s0, n) in line_pieces(sector, (buf.len() / SECTOR_SIZE) as u64) {
            let out = &mut buf[pos..pos + n * SECTOR_SIZE];
            pos += n * SECTOR_SIZE;
            self.read_piece(&b, ln, s0, n, out, &mut line)?;
        }
        Ok(())
    }

    /// Resolves a read of `buf.len()` bytes (a multiple of 512) at `sector`
    /// of `device_id` into a [`ReadPlan`] for a frontend that does its own
    /// device I/O: RAM lines are copied into `buf` now, the device reads
    /// are left to the caller (see [`crate::read_plan`]). Executing the plan
    /// and finishing it gives what [`Cache::read`] gives.
    pub fn plan_read(&self, device_id: u8, sector: u64, buf: &mut [u8]) -> Result<ReadPlan> {
        let b = self.backing(device_id)?;
        self.check_range(&b, sector, buf.len())?;
        Ok(crate::read_plan::plan(&self.inner, b, sector, buf))
    }

    /// Whether a write of `bytes` issued now might have to wait for room
    /// (a free RAM buffer, a written-back slot) inside [`Cache::write`].
    /// False only when room for every line of the write is there even if
    /// the open segment were closed first: then the write does not wait
    /// unless another writer takes that room meanwhile. A frontend whose
    /// thread must not block serves the writes this says true of on
    /// another thread.
    pub fn write_may_wait(&self, bytes: usize) -> bool {
        let inner = &*self.inner;
        let lines = bytes.div_ceil(LINE_SIZE) as u64 + 1;
        let segments = lines.div_ceil(LINES_PER_SEGMENT as u64);
        let st = lock(&inner.metadata);
        let bufs = st.buffers.available() as u64;
        let slots_free =
            (0..segments).all(|k| st.log.slot_free_for(st.log.next_id + k, inner.nr_segments));
        // writers already queued for room go first (open_segment's tickets)
        let queued = st.room.is_waited_on();
        st.stopping || queued || bufs < segments || !slots_free
    }

    fn read_piece(
        &self,
        b: &Backing,
        ln: u64,
        s0: usize,
        n: usize,
        out: &mut [u8],
        line: &mut [u8],
    ) -> Result<()> {
        let inner = &*self.inner;
        let mask = mask_of(s0, n);
        let full = n == SECTORS_PER_LINE;
        let mut st = lock(&inner.metadata);
        let key = LineKey {
            device_id: b.id,
            line: ln,
        };
        let (bits, on_buffer) = loop {
            let hit = st
                .index
                .lookup(key)
                .map(|idx| (idx, st.index.info(idx).expect("indexed").dirty_bits));
            let Some((idx, bits)) = hit else {
                drop(st);
                inner.stats.count(false, false, false, full);
                return self.read_backing(b, ln * SECTORS_PER_LINE as u64 + s0 as u64, out);
            };
            let (g, res) = inner.fetch_line(st, idx, line);
            st = g;
            match res? {
                Fetched::LookAgain => continue,
                f => break (bits, f == Fetched::Ram),
            }
        };
        drop(st);
        inner.stats.count(false, true, on_buffer, full);
        if mask & !bits != 0 {
            // partially dirty: backing data overlaid with the dirty sectors
            self.read_backing(b, ln * SECTORS_PER_LINE as u64 + s0 as u64, out)?;
        }
        for s in s0..s0 + n {
            if bits & (1 << s) != 0 {
                let o = (s - s0) * SECTOR_SIZE;
                out[o..o + SECTOR_SIZE]
                    .copy_from_slice(&line[s * SECTOR_SIZE..(s + 1) * SECTOR_SIZE]);
            }
        }
        Ok(())
    }

    fn read_backing(&self, b: &Backing, sector: u64, out: &mut [u8]) -> Result<()> {
        b.read_sectors
            .fetch_add((out.len() / SECTOR_SIZE) as u64, Ordering::Relaxed);
        match b.dev.read_at(out, sector * SECTOR_SIZE as u64) {
            Ok(()) => {
                self.inner.stats.success(ErrorCounter::BackingRead);
                Ok(())
            }
            Err(e) => {
                let what = format!("reading device {} at sector {sector}", b.id);
                self.inner
                    .stats
                    .failure(ErrorCounter::BackingRead, &what, &e);
                Err(Error::io(DeviceRole::Backing, what, e))
            }
        }
    }

    /// FLUSH: `done` runs once every write issued before this call is durable.
    pub fn flush(&self, done: FlushCallback) {
        self.inner.flush(done)
    }

    /// FLUSH and wait for it.
    pub fn flush_sync(&self) -> Result<()> {
        let _fresh = self.inner.figures.forget_when_done();
        self.inner.flush_sync()
    }

    /// Discards `nr_sectors` at `sector` of `device_id`: cached lines in the
    /// range are dropped (dirty sectors outside the range are kept) and the
    /// discard is passed to the backing device.
    pub fn discard(&self, device_id: u8, sector: u64, nr_sectors: u64) -> Result<()> {
        let b = self.backing(device_id)?;
        if b.detaching.load(Ordering::SeqCst) {
            return Err(Error::Detaching(device_id));
        }
        let bytes = usize::try_from(nr_sectors.saturating_mul(SECTOR_SIZE as u64))
            .map_err(|_| Error::InvalidArgument("discard range too large".into()))?;
        self.check_range(&b, sector, bytes)?;
        let inner = &*self.inner;
        let mut line = AlignedBuf::zeroed(LINE_SIZE);
        for (ln, s0, n) in line_pieces(sector, nr_sectors) {
            let key = LineKey {
                device_id,
                line: ln,
            };
            let discarded = mask_of(s0, n);
            // A write may change the line while the lock is released to
            // read it from the device: then look again.
            loop {
                let mut st = lock(&inner.metadata);
                let Some(idx) = st.index.lookup(key) else {
                    break;
                };
                let bits = st.index.info(idx).expect("indexed").dirty_bits;
                if bits & !discarded == 0 {
                    st.index.remove(idx);
                    break;
                }
                let segment = st.log.segment_of(idx);
                let fetched = matches!(st.ram_line(idx), RamLine::Absent);
                if fetched {
                    let (g, res) = inner.fetch_line(st, idx, &mut line);
                    st = g;
                    if res? == Fetched::LookAgain {
                        continue;
                    }
                }
                drop(st);
                let mode = WriteMode::Discard {
                    expect: idx,
                    segment,
                    bits,
                    fetched,
                };
                if inner.write_line(key, discarded, &line, mode)? {
                    break;
                }
            }
        }
        let _io = inner
            .migration_io
            .write()
            .unwrap_or_else(|e| e.into_inner());
        b.dev
            .discard(sector * SECTOR_SIZE as u64, nr_sectors * SECTOR_SIZE as u64)
            .map_err(|e| {
                inner.stats.failure(
                    ErrorCounter::BackingWrite,
                    "discarding on the backing device",
                    &e,
                );
                Error::io(
                    DeviceRole::Backing,
                    format!("discarding on device {device_id}"),
                    e,
                )
            })
    }

    /// Current value of a knob.
    pub fn knob(&self, knob: Knob) -> u64 {
        self.inner.knobs.get(knob)
    }

    /// Sets a knob (validated; an invalid value changes nothing).
    pub fn set_knob(&self, knob: Knob, value: u64) -> Result<()> {
        let _fresh = self.inner.figures.forget_when_done();
        self.inner.knobs.set(knob, value)?;
        self.inner.migrate_cv.notify_all();
        self.inner.ticker_cv.notify_all();
        Ok(())
    }

    /// Writes the record block (`last_migrated_segment_id`) now.
    pub fn commit_super_block(&self) -> Result<()> {
        let _fresh = self.inner.figures.forget_when_done();
        let (tx, rx) = std::sync::mpsc::channel();
        self.inner.send_job(FlushJob::Commit(Some(tx)));
        rx.recv().unwrap_or(Err(Error::Stopped))
    }

    /// Seals the partial current segment and queues it for writing.
    pub fn flush_current_buffer(&self) {
        let _fresh = self.inner.figures.forget_when_done();
        let mut st = lock(&self.inner.metadata);
        self.inner.close_current(&mut st);
    }

    /// Zeroes the 16 I/O counters.
    pub fn clear_stat(&self) {
        let _fresh = self.inner.figures.forget_when_done();
        self.inner.stats.clear()
    }

    /// Bytes of RAM this cache holds for its index and segment buffers.
    pub fn static_ram_bytes(&self) -> u64 {
        let st = lock(&self.inner.metadata);
        self.static_ram(&st.index, &st.buffers)
    }

    fn static_ram(&self, index: &Index, buffers: &BufferPool) -> u64 {
        let per_segment = 8 + 8 + 4; // slot id, RAM buffer pointer, pin count
        (index.ram_bytes()
            + buffers.capacity * SEGMENT_DATA_BYTES
            + self.inner.nr_segments as usize * per_segment) as u64
    }

    /// Status snapshot.
    pub fn status(&self) -> CacheStatus {
        let inner = &*self.inner;
        let st = lock(&inner.metadata);
        CacheStatus {
            cache_id: inner.cache_id,
            device: inner.dev.describe(),
            nr_segments: inner.nr_segments,
            nr_caches: inner.nr_segments * LINES_PER_SEGMENT as u64,
            static_ram_bytes: self.static_ram(&st.index, &st.buffers),
            index_ram_bytes: st.index.ram_bytes() as u64,
            current_segment_id: st.log.current.as_ref().map_or(0, |c| c.id),
            cursor: st.log.current.as_ref().map_or(0, |c| c.length as u64),
            last_flushed_segment_id: st.log.last_flushed_id,
            last_durable_segment_id: st.log.durable_id,
            last_migrated_segment_id: st.log.last_migrated_id,
            persisted_migrated_segment_id: st.record.persisted_migrated_id,
            nr_dirty_caches: (1..=255u8).map(|d| st.index.nr_dirty(d)).sum(),
            stats: inner.stats.snapshot(),
            knobs: Knob::ALL
                .iter()
                .map(|s| (s.name, inner.knobs.get(s.knob)))
                .collect(),
            health: inner.stats.health(),
        }
    }

    /// The status as [`Cache::status`] gives it, at most
    /// [`crate::figures::RECENT_FIGURES_MAX_AGE`] old: for read-only calls
    /// anyone may make as often as they like, which then take the cache's
    /// lock at most once per that age.
    pub fn recent_status(&self) -> CacheStatus {
        self.recent_figures().status
    }

    /// Dirty lines cached for `device_id`, attached or not, as recent as
    /// [`Cache::recent_status`].
    pub fn recent_nr_dirty(&self, device_id: u8) -> u64 {
        self.recent_figures().nr_dirty[device_id as usize]
    }

    /// One attached device as [`Cache::device_status`] gives it, its dirty
    /// lines as recent as [`Cache::recent_status`].
    pub fn recent_device_status(&self, device_id: u8) -> Option<DeviceStatus> {
        let b = self.backing(device_id).ok()?;
        Some(DeviceStatus {
            device_id: b.id,
            dev: b.dev.describe(),
            size_sectors: b.size_sectors,
            nr_dirty_caches: self.recent_nr_dirty(device_id),
            knobs: b.knobs.clone(),
        })
    }

    fn recent_figures(&self) -> Figures {
        self.inner.figures.get(|| {
            let status = self.status();
            let st = lock(&self.inner.metadata);
            let mut nr_dirty = Box::new([0u64; 256]);
            for (d, n) in nr_dirty.iter_mut().enumerate().skip(1) {
                *n = st.index.nr_dirty(d as u8);
            }
            Figures { status, nr_dirty }
        })
    }

    /// Waits until every segment sealed so far is written back (used by
    /// tests and by the daemon before a clean stop when asked to drain).
    /// Forces write-back for the wait.
    pub fn migrate_all(&self) -> Result<()> {
        let _fresh = self.inner.figures.forget_when_done();
        self.flush_sync()?;
        let target = lock(&self.inner.metadata).log.last_closed_id;
        self.drain_to(target, &mut |_| {})
    }

    /// Stops the cache cleanly (dm-lc's free_cache): seals and writes the
    /// current segment, flushes, commits the record and stops the threads.
    /// Dirty data stays on the cache device; `resume` finds it again.
    pub fn shutdown(&self) -> Result<()> {
        let res = self.flush_sync().and_then(|()| self.commit_super_block());
        self.stop_threads();
        res
    }

    fn stop_threads(&self) {
        {
            let mut st = lock(&self.inner.metadata);
            st.stopping = true;
            let waiters = std::mem::take(&mut st.flush_waiters.waiting);
            drop(st);
            for w in waiters {
                (w.done)(Err(Error::Stopped));
            }
        }
        self.inner.send_job(FlushJob::Stop);
        self.inner.progress_cv.notify_all();
        self.inner.migrate_cv.notify_all();
        self.inner.ticker_cv.notify_all();
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
        *lock(&self.inner.flusher_tx) = None;
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        if !lock(&self.threads).is_empty() {
            if let Err(e) = self.shutdown() {
                tracing::error!(
                    cache = self.inner.cache_id,
                    "clean stop failed: {}",
                    crate::error::describe(&e)
                );
            }
        }
    }
}
