//! The migrate daemon: writes dirty data back to the backing devices in log
//! order, through a rolling window of segments, several writes in flight.
//!
//! The window holds the oldest durable segments after
//! `last_migrated_segment_id`, up to `nr_max_batched_migration` of them (at
//! most [`MAX_WRITE_BACK_SEGMENTS`]; their data is held in RAM while they
//! are in it). A segment joins the window when it is read from the cache
//! device: its lines that are still the newest copy (or the newest durable
//! copy of a line whose newest copy is not yet durable, see
//! [`ReplacedCopies`]) become pending write-backs of their dirty sectors. The
//! pending lines are written oldest segment first, each segment's lines in
//! address order from where the last write ended (an elevator that sweeps
//! the backing devices); a segment's lines are all issued before the next
//! segment's, except where its device has no room, so segments complete
//! one after the other. Contiguous lines (of any segment in the window)
//! are merged into one write, and up to `write_back_queue_depth` writes per
//! backing device are in flight at once. Two copies of one line are never in flight
//! together, and of two pending copies only the newer is written (it holds
//! every sector of the older one that still matters).
//!
//! As soon as every line of the oldest segment in the window is written,
//! the backing devices written are flushed (after a failed flush
//! everything written since the last good one is written again first), and
//! only then do that segment's lines leave the index and
//! `last_migrated_segment_id` advance, segment by segment: a writer waiting
//! for a free slot waits for one segment, not for a whole batch. Errors are
//! counted and retried with backoff; nothing is dropped. A failure starts
//! (or extends) a fault in the cache's health and wakes waiting writers and
//! detaches, which give up after
//! [`DRAIN_GIVES_UP_AFTER`](crate::cache::DRAIN_GIVES_UP_AFTER) failures in
//! a row; the next success ends the fault.
//!
//! Each write-back write checks again, just before it is written and with
//! the discard lock shared, that its line still needs it (a discard that
//! dropped the line takes that lock exclusively before it discards the
//! backing range, so write-back never writes into a range after it was
//! discarded).
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

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cache::{lock, read_lock, Backing, Inner};
use crate::device::AlignedBuf;
use crate::error::Error;
use crate::format::*;
use crate::geometry::line_index;
use crate::index::{Index, LineKey};
use crate::knobs::Knob;
use crate::pin::SlotPin;
use crate::retry::{backoff, retry_io};
use crate::segment_log::SegmentLog;
use crate::stats::ErrorCounter;

/// Most segments the write-back window holds in RAM (1 MiB each at most),
/// whatever `nr_max_batched_migration` says.
pub const MAX_WRITE_BACK_SEGMENTS: u64 = 64;

/// Largest merged backing write.
const MAX_RUN_BYTES: usize = 1 << 20;

/// A segment in the window.
struct WindowSegment {
    id: u64,
    /// Its slot, pinned while the segment is in the window.
    pin: SlotPin,
    /// Header block followed by the `length` data lines.
    buf: AlignedBuf,
    /// Its lines that are pending or in flight.
    outstanding: usize,
    /// Its pending lines, by (device, line).
    pending_keys: BTreeSet<(u8, u64)>,
    /// Its lines chosen for write-back: (line, cache line). They leave the
    /// index when the segment is written back, if still indexed there.
    lines: Vec<(LineKey, u32)>,
}

/// A line waiting to be written back.
#[derive(Clone, Copy)]
struct Pending {
    /// Id of its segment.
    seg: u64,
    /// Line number inside the segment.
    line: usize,
    /// Its cache line.
    idx: u32,
    /// Dirty sectors of the segment's copy (its metablock).
    meta_bits: u8,
    /// Sectors to write as chosen when the segment joined.
    bits: u8,
}

/// One line of a write-back write.
struct JobLine {
    key: LineKey,
    pending: Pending,
}

/// A write-back write: lines of one device, their images side by side.
struct Job {
    dev: Arc<Backing>,
    lines: Vec<JobLine>,
    /// The 4 KiB images of `lines`, in order.
    data: AlignedBuf,
}

/// What a write-back worker reports.
struct JobDone {
    job: Job,
    /// False: the cache stops, the write was not (or not surely) made.
    ok: bool,
}

/// Why the window cannot take the next segment.
enum Blocked {
    MissingDevice(u8),
    BeyondEnd(BlockedWriteBack),
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

/// What write-back is asked to do and what stops it, under the cache's
/// metadata mutex: writers and drains set it, write-back reads and clears it.
pub(crate) struct WriteBackDemand {
    /// A writer waits for a segment that is not yet written back.
    pub urgent: bool,
    /// Write-back must reach at least this id (detach, drains).
    pub drain_target: u64,
    /// Highest segment id that held a line of each device id (detach must
    /// see every segment up to it written back before the id is reused).
    pub last_segment_of_device: Vec<u64>,
    /// Write-back is stopped by dirty data beyond a backing device's end.
    pub blocked: Option<BlockedWriteBack>,
}

impl Default for WriteBackDemand {
    fn default() -> Self {
        WriteBackDemand {
            urgent: false,
            drain_target: 0,
            last_segment_of_device: vec![0; 256],
            blocked: None,
        }
    }
}

/// The older copies of lines whose newest copy is not durable yet, as
/// writers replace them (under the cache's metadata mutex; write-back reads
/// it). For such a line, write-back must write the dirty sectors of its
/// newest *durable* copy, and of no older one: recovery replays the newest
/// durable copy with its own dirty bits, so a sector that copy holds clean
/// has its data on the backing device already (an older copy's write-back
/// wrote it there), and an older copy's data written over it would be read
/// back after a crash. The index knows only the newest copy, so each entry
/// keeps the segments of the copies replaced since the newest one that was
/// durable when it was replaced (ascending; segment ids are never reused).
#[derive(Default)]
pub(crate) struct ReplacedCopies {
    chains: HashMap<LineKey, Vec<u64>>,
    /// Entries beyond this many are pruned.
    prune_at: usize,
}

impl ReplacedCopies {
    /// Least `prune_at`: pruning is amortised over at least this many entries.
    const MIN_PRUNE_AT: usize = 1024;

    /// A write made a new copy of `key` that replaces its copy in segment
    /// `old_segment` (already replaced in `index`).
    pub(crate) fn replaced(
        &mut self,
        index: &Index,
        log: &SegmentLog,
        key: LineKey,
        old_segment: u64,
    ) {
        let chain = self.chains.entry(key).or_default();
        chain.push(old_segment);
        // copies older than the newest durable one no longer matter
        if let Some(newest_durable) = chain.iter().rposition(|&s| s <= log.durable_id) {
            chain.drain(..newest_durable);
        }
        if self.chains.len() > self.prune_at.max(Self::MIN_PRUNE_AT) {
            // keep only lines whose newest copy is still not durable
            self.chains.retain(|k, _| {
                index
                    .lookup(*k)
                    .is_some_and(|i| log.segment_of(i) > log.durable_id)
            });
            self.prune_at = 2 * self.chains.len();
            // retain walks the whole table: one left as big as a burst made
            // it would make every later pruning cost that burst's size
            self.chains.shrink_to(self.prune_at);
        }
    }

    /// A write made the first copy of `key` the index has (it replaces none).
    pub(crate) fn created(&mut self, key: LineKey) {
        self.chains.remove(&key);
    }

    /// Segment of the newest durable copy of `key` among those its newest
    /// copy (not durable) replaced, if any is still known.
    fn newest_durable(&self, key: LineKey, durable_id: u64) -> Option<u64> {
        self.chains
            .get(&key)?
            .iter()
            .rev()
            .find(|&&s| s <= durable_id)
            .copied()
    }

    /// Lines with an entry (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.chains.len()
    }
}

/// Which dirty sectors of the copy of `key` in cache line `idx` (dirty
/// bits `meta_bits` in its segment's metablock) write-back must write now.
///
/// A line is written back when its copy in this segment is still the
/// newest, and also when it is the newest durable copy and a newer copy
/// exists only in a segment that is not yet durable: a crash could lose
/// that newer copy, and once `last_migrated_segment_id` has passed this
/// segment, recovery would not replay this copy either.
fn bits_to_write(
    index: &Index,
    log: &SegmentLog,
    replaced: &ReplacedCopies,
    key: LineKey,
    idx: u32,
    meta_bits: u8,
) -> u8 {
    match index.lookup(key) {
        Some(i) if i == idx => meta_bits,
        Some(newer)
            if log.segment_of(newer) > log.durable_id
                && replaced.newest_durable(key, log.durable_id) == Some(log.segment_of(idx)) =>
        {
            // only sectors the newer copy still holds dirty (a discard may
            // have dropped some)
            meta_bits & index.info(newer).map_or(0, |i| i.dirty_bits)
        }
        // the newer copy is durable, or a newer durable copy exists, or
        // the line was discarded
        _ => 0,
    }
}

/// The write-back coordinator and its state.
struct Migrator<'a> {
    inner: &'a Inner,
    window: VecDeque<WindowSegment>,
    /// Lines to write, by (device, line): the elevator's queue.
    pending: BTreeMap<(u8, u64), Pending>,
    /// Lines in flight, by (device, line).
    in_flight: BTreeSet<(u8, u64)>,
    /// Writes in flight per device.
    device_depth: HashMap<u8, usize>,
    jobs_in_flight: usize,
    /// Where the elevator is.
    head: (u8, u64),
    /// Writes that completed since the backing devices were last flushed
    /// (written again after a failed flush).
    unflushed: Vec<Job>,
    /// Attached devices met in the window.
    devices: BTreeMap<u8, Arc<Backing>>,
    jobs: Sender<Job>,
    done: Receiver<JobDone>,
}

pub(crate) fn run(inner: Arc<Inner>) {
    let (job_tx, job_rx) = std::sync::mpsc::channel::<Job>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<JobDone>();
    let job_rx = Arc::new(Mutex::new(job_rx));
    std::thread::scope(|scope| {
        let mut m = Migrator {
            inner: &inner,
            window: VecDeque::new(),
            pending: BTreeMap::new(),
            in_flight: BTreeSet::new(),
            device_depth: HashMap::new(),
            jobs_in_flight: 0,
            head: (0, 0),
            unflushed: Vec::new(),
            devices: BTreeMap::new(),
            jobs: job_tx,
            done: done_rx,
        };
        let mut workers = 0;
        let spawn_worker = |n: usize| {
            let (inner, jobs, done) = (&*inner, job_rx.clone(), done_tx.clone());
            std::thread::Builder::new()
                .name(format!("lc{}-wb{n}", inner.cache_id))
                .spawn_scoped(scope, move || worker(inner, &jobs, &done))
        };
        loop {
            let depth = inner.knobs.get(Knob::WriteBackQueueDepth) as usize;
            while workers < depth {
                if let Err(e) = spawn_worker(workers) {
                    tracing::error!(
                        cache = inner.cache_id,
                        "starting a write-back thread failed: {e}"
                    );
                    break;
                }
                workers += 1;
            }
            if !m.step(workers.clamp(1, depth.max(1))) {
                break;
            }
        }
        m.shut_down();
    });
}

/// A write-back worker: writes what the coordinator hands it.
fn worker(inner: &Inner, jobs: &Mutex<Receiver<Job>>, done: &Sender<JobDone>) {
    loop {
        let Ok(job) = lock(jobs).recv() else { return };
        let ok = write_job(inner, &job);
        if done.send(JobDone { job, ok }).is_err() {
            return;
        }
    }
}

/// Writes a job's lines (the sectors they still need, checked now, with
/// the discard lock shared), merging contiguous sectors; retries until it
/// succeeds or the cache stops.
fn write_job(inner: &Inner, job: &Job) -> bool {
    let _io = inner.migration_io.read().unwrap_or_else(|e| e.into_inner());
    let bits: Vec<u8> = {
        let st = lock(&inner.metadata);
        job.lines
            .iter()
            .map(|l| {
                bits_to_write(
                    &st.index,
                    &st.log,
                    &st.replaced_copies,
                    l.key,
                    l.pending.idx,
                    l.pending.meta_bits,
                ) & l.pending.bits
            })
            .collect()
    };
    // dirty sector runs: (first sector, offset in job.data, bytes), merged
    let mut runs: Vec<(u64, usize, usize)> = Vec::new();
    for (k, (l, &b)) in job.lines.iter().zip(&bits).enumerate() {
        let mut s = 0;
        while s < SECTORS_PER_LINE {
            if b & (1 << s) == 0 {
                s += 1;
                continue;
            }
            let start = s;
            while s < SECTORS_PER_LINE && b & (1 << s) != 0 {
                s += 1;
            }
            let sector = l.key.line * SECTORS_PER_LINE as u64 + start as u64;
            let off = k * LINE_SIZE + start * SECTOR_SIZE;
            let bytes = (s - start) * SECTOR_SIZE;
            match runs.last_mut() {
                Some(r) if r.0 + (r.2 / SECTOR_SIZE) as u64 == sector && r.1 + r.2 == off => {
                    r.2 += bytes
                }
                _ => runs.push((sector, off, bytes)),
            }
        }
    }
    for &(sector, off, bytes) in &runs {
        let data = &job.data[off..off + bytes];
        let dev = job.dev.id;
        let what = format!("writing to the backing device of device {dev} at sector {sector}");
        // an unaligned slice goes through an aligned copy (O_DIRECT)
        let aligned;
        let buf: &[u8] = if off % LINE_SIZE == 0 {
            data
        } else {
            let mut b = AlignedBuf::zeroed(bytes);
            b.copy_from_slice(data);
            aligned = b;
            &aligned
        };
        // no success is counted before the flush after it succeeds: a
        // fault of failing flushes goes on while the rewrites succeed
        if !retry_io(&inner.metadata, 0, on_backing_error(inner, &what), || {
            job.dev.dev.write_at(buf, sector * SECTOR_SIZE as u64)
        }) {
            return false;
        }
        job.dev
            .migrated_sectors
            .fetch_add((bytes / SECTOR_SIZE) as u64, Ordering::Relaxed);
    }
    true
}

impl Migrator<'_> {
    /// One round: grow the window, issue writes, wait for one to complete
    /// (or for work), free what is written back. False when the cache stops.
    fn step(&mut self, depth: usize) -> bool {
        let inner = self.inner;
        let blocked = match self.grow() {
            Ok(()) => None,
            Err(None) => return false,
            Err(Some(b)) => Some(b),
        };
        self.issue(depth);
        if self.jobs_in_flight > 0 {
            match self.done.recv_timeout(Duration::from_millis(100)) {
                Ok(d) => {
                    if !self.completed(d) {
                        return false;
                    }
                    // take every completion that is already there
                    while let Ok(d) = self.done.try_recv() {
                        if !self.completed(d) {
                            return false;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return false,
            }
            return self.free_written();
        }
        if !self.free_written() {
            return false;
        }
        if !self.window.is_empty() || !self.pending.is_empty() {
            return true;
        }
        // nothing in the window: wait until write-back is due
        let st = lock(&inner.metadata);
        if st.stopping {
            return false;
        }
        match blocked {
            Some(Blocked::MissingDevice(dev)) => {
                tracing::warn!(
                    cache = inner.cache_id,
                    "write-back waits for device {dev}: the cache holds its dirty data but it is not attached"
                );
                let _ = inner.migrate_cv.wait_timeout(st, Duration::from_secs(1));
            }
            Some(Blocked::BeyondEnd(b)) => {
                // Writing would fail with ENOSPC (or land on the wrong
                // disk's neighbour) for ever: report it as a named fault,
                // keep the data, and look again now and then (the right
                // disk may be attached).
                let mut st = st;
                let e = b.error();
                if st.write_back.blocked != Some(b) {
                    tracing::error!(cache = inner.cache_id, "write-back stops: {e}");
                }
                st.write_back.blocked = Some(b);
                inner.stats.failure(
                    ErrorCounter::BackingWrite,
                    "writing dirty data back",
                    &std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
                );
                inner.progress_cv.notify_all();
                let _ = inner.migrate_cv.wait_timeout(st, Duration::from_secs(1));
            }
            None => {
                if !self.due(&st.log, &st.write_back) {
                    let _ = inner.migrate_cv.wait_timeout(st, Duration::from_secs(1));
                }
            }
        }
        true
    }

    /// Whether write-back is wanted and a durable segment waits for it.
    fn due(&self, log: &SegmentLog, demand: &WriteBackDemand) -> bool {
        let inner = self.inner;
        let next = self.window.back().map_or(log.last_migrated_id, |s| s.id) + 1;
        let wanted = inner.knobs.flag(Knob::AllowMigrate)
            || inner.knobs.flag(Knob::ForceMigrate)
            || demand.urgent
            || demand.drain_target > log.last_migrated_id;
        wanted && log.durable_id >= next
    }

    /// Takes durable segments into the window while it has room and
    /// write-back is wanted. `Err(None)`: the cache stops; `Err(Some)`: the
    /// next segment cannot join yet.
    fn grow(&mut self) -> Result<(), Option<Blocked>> {
        let inner = self.inner;
        loop {
            let limit = inner
                .knobs
                .get(Knob::NrMaxBatchedMigration)
                .clamp(1, MAX_WRITE_BACK_SEGMENTS) as usize;
            if self.window.len() >= limit {
                return Ok(());
            }
            let (id, pin) = {
                let st = lock(&inner.metadata);
                if st.stopping {
                    return Err(None);
                }
                if !self.due(&st.log, &st.write_back) {
                    return Ok(());
                }
                let id = self.window.back().map_or(st.log.last_migrated_id, |s| s.id) + 1;
                (id, inner.pins.pin(&st, slot_of(id, inner.nr_segments)))
            };
            // (a segment that cannot join drops its pin)
            self.load(id, pin)?;
        }
    }

    /// Reads segment `id` (its slot pinned by `pin`) and adds it to the window.
    fn load(&mut self, id: u64, pin: SlotPin) -> Result<(), Option<Blocked>> {
        let inner = self.inner;
        let slot = pin.slot();
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
            return Err(None);
        }
        let header = header.expect("parsed above");
        let mut buf = AlignedBuf::zeroed((1 + header.length as usize) * LINE_SIZE);
        if header.length > 0
            && !retry(inner, ErrorCounter::CacheRead, "reading a segment", || {
                inner.dev.read_at(&mut buf, off)
            })
        {
            return Err(None);
        }
        let mut chosen: Vec<(LineKey, Pending)> = Vec::new();
        {
            let st = lock(&inner.metadata);
            let attached = read_lock(&inner.devices);
            for (line, m) in header.metablocks.iter().enumerate() {
                if m.device_id == 0 {
                    continue;
                }
                let key = LineKey {
                    device_id: m.device_id,
                    line: m.sector / SECTORS_PER_LINE as u64,
                };
                let idx = line_index(slot, line);
                let bits = bits_to_write(
                    &st.index,
                    &st.log,
                    &st.replaced_copies,
                    key,
                    idx,
                    m.dirty_bits,
                );
                if bits == 0 {
                    continue;
                }
                match attached.get(&m.device_id) {
                    Some(b) => {
                        let first = key.line * SECTORS_PER_LINE as u64;
                        if let Some(s) = (0..SECTORS_PER_LINE as u64)
                            .find(|&s| bits & (1 << s) != 0 && first + s >= b.size_sectors)
                        {
                            return Err(Some(Blocked::BeyondEnd(BlockedWriteBack {
                                device_id: m.device_id,
                                sector: first + s,
                                size: b.size_sectors,
                            })));
                        }
                        // (a device detached and attached again is a new Backing)
                        self.devices.insert(m.device_id, b.clone());
                    }
                    None => return Err(Some(Blocked::MissingDevice(m.device_id))),
                }
                chosen.push((
                    key,
                    Pending {
                        seg: id,
                        line,
                        idx,
                        meta_bits: m.dirty_bits,
                        bits,
                    },
                ));
            }
        }
        let mut seg = WindowSegment {
            id,
            pin,
            buf,
            outstanding: 0,
            pending_keys: BTreeSet::new(),
            lines: chosen.iter().map(|(k, p)| (*k, p.idx)).collect(),
        };
        for (key, p) in chosen {
            // of two pending copies only the newer is written: it holds
            // every sector of the older one that still matters (writes
            // merge older dirty sectors in; a discard drops them on purpose)
            let k = (key.device_id, key.line);
            if let Some(older) = self.pending.insert(k, p) {
                // (a segment never holds a line twice: the older is in the window)
                let older = self.segment_mut(older.seg);
                older.outstanding -= 1;
                older.pending_keys.remove(&k);
            }
            seg.outstanding += 1;
            seg.pending_keys.insert(k);
        }
        self.window.push_back(seg);
        Ok(())
    }

    fn segment_mut(&mut self, id: u64) -> &mut WindowSegment {
        let front = self.window.front().expect("window not empty").id;
        &mut self.window[(id - front) as usize]
    }

    /// Hands pending lines to the workers while the devices have fewer than
    /// `depth` writes in flight: the oldest segment's lines first, so that
    /// segments are written back (and their slots freed) one after the
    /// other rather than all at the end of one sweep over the window; each
    /// segment's lines in elevator order from the head.
    fn issue(&mut self, depth: usize) {
        loop {
            // next line at or after the head (wrapping around) that is not
            // in flight and whose device has room, of the oldest segment
            // that has one
            let free = |k: &(u8, u64)| {
                !self.in_flight.contains(k)
                    && self.device_depth.get(&k.0).copied().unwrap_or(0) < depth
            };
            let head = self.head;
            let next = self.window.iter().find_map(|seg| {
                seg.pending_keys
                    .range(head..)
                    .chain(seg.pending_keys.range(..head))
                    .copied()
                    .find(free)
            });
            let Some(first) = next else { return };
            let (dev, line) = first;
            // the run: this line and the contiguous whole lines after it
            let mut keys = vec![first];
            let full = |p: &Pending| p.bits == 0xFF;
            if full(&self.pending[&first]) {
                while keys.len() * LINE_SIZE < MAX_RUN_BYTES {
                    let k = (dev, line + keys.len() as u64);
                    match self.pending.get(&k) {
                        Some(p) if full(p) && !self.in_flight.contains(&k) => keys.push(k),
                        _ => break,
                    }
                }
            }
            let mut data = AlignedBuf::zeroed(keys.len() * LINE_SIZE);
            let mut lines = Vec::with_capacity(keys.len());
            for (n, k) in keys.iter().enumerate() {
                let p = self.pending.remove(k).expect("pending");
                let seg = self.segment_mut(p.seg);
                seg.pending_keys.remove(k);
                let at = (1 + p.line) * LINE_SIZE;
                data[n * LINE_SIZE..(n + 1) * LINE_SIZE]
                    .copy_from_slice(&seg.buf[at..at + LINE_SIZE]);
                self.in_flight.insert(*k);
                lines.push(JobLine {
                    key: LineKey {
                        device_id: k.0,
                        line: k.1,
                    },
                    pending: p,
                });
            }
            self.head = (dev, line + keys.len() as u64);
            *self.device_depth.entry(dev).or_insert(0) += 1;
            self.jobs_in_flight += 1;
            let job = Job {
                dev: self.devices[&dev].clone(),
                lines,
                data,
            };
            if self.jobs.send(job).is_err() {
                return;
            }
        }
    }

    /// Books a completed write. False when the cache stops.
    fn completed(&mut self, d: JobDone) -> bool {
        self.jobs_in_flight -= 1;
        let dev = d.job.dev.id;
        if let Some(n) = self.device_depth.get_mut(&dev) {
            *n -= 1;
            if *n == 0 {
                self.device_depth.remove(&dev);
            }
        }
        for l in &d.job.lines {
            self.in_flight.remove(&(l.key.device_id, l.key.line));
            let seg = l.pending.seg;
            self.segment_mut(seg).outstanding -= 1;
        }
        self.unflushed.push(d.job);
        d.ok
    }

    /// Flushes the backing devices and frees the segments at the front of
    /// the window whose lines are all written. False when the cache stops.
    fn free_written(&mut self) -> bool {
        let done = self
            .window
            .iter()
            .take_while(|s| s.outstanding == 0)
            .count();
        if done == 0 {
            return true;
        }
        if !self.flush_devices() {
            return false;
        }
        let inner = self.inner;
        let freed: Vec<WindowSegment> = self.window.drain(..done).collect();
        let last = freed.last().expect("done > 0").id;
        let mut st = lock(&inner.metadata);
        for seg in freed {
            for &(key, idx) in &seg.lines {
                if st.index.lookup(key) == Some(idx) {
                    st.index.remove(idx);
                }
            }
            // its slot's pin goes with it
            drop(seg.pin);
        }
        st.write_back.blocked = None;
        st.log.last_migrated_id = last;
        st.write_back.urgent = false;
        drop(st);
        inner.progress_cv.notify_all();
        true
    }

    /// Flushes every backing device written since the last flush; after a
    /// failed flush, waits for the writes in flight and writes everything
    /// since the last good flush again before flushing again (the failed
    /// flush may have lost any of them). False when the cache stops.
    fn flush_devices(&mut self) -> bool {
        let inner = self.inner;
        let mut attempt = 0;
        loop {
            let written: BTreeMap<u8, &Arc<Backing>> =
                self.unflushed.iter().map(|j| (j.dev.id, &j.dev)).collect();
            let failed = written.iter().find_map(|(id, b)| match b.dev.flush() {
                Ok(()) => None,
                Err(e) => Some((*id, e)),
            });
            let Some((id, e)) = failed else {
                if !written.is_empty() {
                    inner.stats.success(ErrorCounter::BackingWrite);
                }
                self.unflushed.clear();
                return true;
            };
            let what = format!("flushing the backing device of device {id}");
            on_backing_error(inner, &what)(&e);
            if lock(&inner.metadata).stopping {
                return false;
            }
            std::thread::sleep(backoff(attempt));
            attempt += 1;
            while self.jobs_in_flight > 0 {
                match self.done.recv() {
                    Ok(d) => {
                        if !self.completed(d) {
                            return false;
                        }
                    }
                    Err(_) => return false,
                }
            }
            for job in &self.unflushed {
                if !write_job(inner, job) {
                    return false;
                }
            }
        }
    }

    /// The cache stops: waits for the writes in flight and releases the
    /// window's slots.
    fn shut_down(&mut self) {
        drop(std::mem::replace(
            &mut self.jobs,
            std::sync::mpsc::channel().0,
        ));
        while self.jobs_in_flight > 0 {
            match self.done.recv() {
                Ok(_) => self.jobs_in_flight -= 1,
                Err(_) => break,
            }
        }
        // the window's pins go with it
        self.window.clear();
    }
}

/// Retries a write-back read (see [`retry_io`]), counting each failure;
/// false when the cache stops first.
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
    let ok = retry_io(&inner.metadata, 0, on_error, op);
    if ok {
        inner.stats.success(counter);
    }
    ok
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

#[cfg(test)]
mod tests {
    use super::*;

    const SEGMENTS: u64 = 8;

    /// A log whose slot k holds segment k + 1, durable up to `durable_id`.
    fn log(durable_id: u64) -> SegmentLog {
        let mut log = SegmentLog::new(SEGMENTS, 0);
        for (k, id) in log.slot_ids.iter_mut().enumerate() {
            *id = k as u64 + 1;
        }
        log.durable_id = durable_id;
        log
    }

    /// Cache line `i` of segment `id`.
    fn at(id: u64, i: usize) -> u32 {
        line_index(id - 1, i)
    }

    const X: LineKey = LineKey {
        device_id: 1,
        line: 7,
    };

    /// Makes a new copy of X in segment `id` (line 0) with `bits`,
    /// replacing the indexed one, as a write does.
    fn write(index: &mut Index, log: &SegmentLog, copies: &mut ReplacedCopies, id: u64, bits: u8) {
        match index.lookup(X) {
            Some(old) => {
                index.replace(old, at(id, 0), bits);
                copies.replaced(index, log, X, log.segment_of(old));
            }
            None => {
                index.insert(X, at(id, 0), bits);
                copies.created(X);
            }
        }
    }

    #[test]
    fn only_the_newest_durable_copy_is_written_back_for_a_newer_copy_in_ram() {
        let mut index = Index::new(SEGMENTS as usize * LINES_PER_SEGMENT);
        let log = log(3);
        let mut copies = ReplacedCopies::default();
        write(&mut index, &log, &mut copies, 1, 0xFF);
        write(&mut index, &log, &mut copies, 2, 0x0F);
        write(&mut index, &log, &mut copies, 5, 0xF0);
        let bits = |id| bits_to_write(&index, &log, &copies, X, at(id, 0), 0xFF);
        assert_eq!(bits(1), 0, "segment 2 holds a newer durable copy");
        assert_eq!(bits(2), 0xF0, "the sectors the copy in RAM holds dirty");
    }

    #[test]
    fn a_copy_replaced_before_it_was_durable_counts_once_it_is() {
        let mut index = Index::new(SEGMENTS as usize * LINES_PER_SEGMENT);
        let mut log = log(1);
        let mut copies = ReplacedCopies::default();
        write(&mut index, &log, &mut copies, 1, 0xFF);
        write(&mut index, &log, &mut copies, 2, 0xFF); // not durable yet
        write(&mut index, &log, &mut copies, 3, 0xFF);
        assert_eq!(copies.newest_durable(X, log.durable_id), Some(1));
        log.durable_id = 2;
        assert_eq!(
            bits_to_write(&index, &log, &copies, X, at(1, 0), 0xFF),
            0,
            "segment 2 became durable"
        );
        assert_eq!(
            bits_to_write(&index, &log, &copies, X, at(2, 0), 0xFF),
            0xFF
        );
        log.durable_id = 3;
        assert_eq!(
            bits_to_write(&index, &log, &copies, X, at(2, 0), 0xFF),
            0,
            "the newest copy is durable: it is written back itself"
        );
    }

    #[test]
    fn a_first_copy_forgets_the_copies_of_the_line_before_it() {
        let mut index = Index::new(SEGMENTS as usize * LINES_PER_SEGMENT);
        let log = log(2);
        let mut copies = ReplacedCopies::default();
        write(&mut index, &log, &mut copies, 1, 0xFF);
        write(&mut index, &log, &mut copies, 3, 0xFF);
        // write-back of segment 1's copy took the line out of the index
        index.remove(at(3, 0));
        write(&mut index, &log, &mut copies, 4, 0x01);
        assert_eq!(bits_to_write(&index, &log, &copies, X, at(1, 0), 0xFF), 0);
        assert_eq!(copies.newest_durable(X, log.durable_id), None);
    }

    #[test]
    fn pruning_gives_back_the_room_a_burst_took() {
        // 10 000 lines written twice while nothing is durable: 10 000 entries
        let segments = 100u64;
        let mut log = SegmentLog::new(segments, 0);
        for (k, id) in log.slot_ids.iter_mut().enumerate() {
            *id = k as u64 + 1;
        }
        let mut index = Index::new(segments as usize * LINES_PER_SEGMENT);
        let mut copies = ReplacedCopies::default();
        let lines = 10_000usize;
        let key = |i: usize| LineKey {
            device_id: 1,
            line: i as u64,
        };
        let place = |pass: usize, i: usize| {
            line_index(
                (pass * 40 + i / LINES_PER_SEGMENT) as u64,
                i % LINES_PER_SEGMENT,
            )
        };
        for pass in 0..2 {
            for i in 0..lines {
                match index.lookup(key(i)) {
                    Some(old) => {
                        index.replace(old, place(pass, i), 0xFF);
                        copies.replaced(&index, &log, key(i), log.segment_of(old));
                    }
                    None => {
                        index.insert(key(i), place(pass, i), 0xFF);
                        copies.created(key(i));
                    }
                }
            }
        }
        assert_eq!(copies.len(), lines, "nothing durable, nothing pruned");
        // all of it durable; the next pruning leaves one entry
        log.durable_id = 80;
        copies.prune_at = 0;
        let old = index.lookup(key(0)).unwrap();
        index.replace(old, place(2, 0), 0xFF);
        copies.replaced(&index, &log, key(0), log.segment_of(old));
        assert_eq!(copies.len(), 1);
        assert!(
            copies.chains.capacity() <= 2 * ReplacedCopies::MIN_PRUNE_AT,
            "a table of {} entries' room kept for 1",
            copies.chains.capacity()
        );
    }

    #[test]
    fn entries_of_lines_whose_newest_copy_is_durable_are_pruned() {
        let nr_lines = SEGMENTS as usize * LINES_PER_SEGMENT;
        let mut index = Index::new(nr_lines);
        let mut log = log(1);
        let mut copies = ReplacedCopies::default();
        let mut most = 0;
        // every line of segment 1 is rewritten into segment 2, then every
        // line of segment 2 into segment 3, and so on, each segment durable
        // before the next is written
        for id in 1..SEGMENTS {
            for i in 0..LINES_PER_SEGMENT {
                let key = LineKey {
                    device_id: 1,
                    line: i as u64,
                };
                match index.lookup(key) {
                    Some(old) => {
                        index.replace(old, at(id, i), 0xFF);
                        copies.replaced(&index, &log, key, log.segment_of(old));
                    }
                    None => {
                        index.insert(key, at(id, i), 0xFF);
                        copies.created(key);
                    }
                }
                most = most.max(copies.len());
            }
            log.durable_id = id;
        }
        assert!(
            most <= ReplacedCopies::MIN_PRUNE_AT + 1,
            "{most} entries for {LINES_PER_SEGMENT} lines in RAM"
        );
    }
}
