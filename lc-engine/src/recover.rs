//! Format and resume: writing a fresh superblock, and rebuilding a cache's
//! index from its segment headers after a clean stop or a crash.
//!
//! Resume reads every segment header once, [`RESUME_HEADER_READERS`] at a
//! time (reader threads that also parse what they read), and replays them
//! in log order starting at the slot of `last_migrated_segment_id + 1`.
//! The contiguous run of well-formed headers with the expected ids is the
//! candidate log. A segment is replayed
//! without reading its data when a later header's `durable_id` vouches that
//! it was flushed before that header was sealed; the few segments at the end
//! of the run that nobody vouches for are checked against their full
//! checksum, and the run ends before the first that fails (a torn segment is
//! never replayed). Memory stays bounded for any device content: at most
//! `MAX_UNVOUCHED_SEGMENTS` headers wait for a voucher (crafted headers that
//! never vouch are verified as they come, which at worst reads the device
//! once), besides the index and 16 bytes per header outside the log. Headers of this cache with ids beyond the run are zeroed
//! before the cache accepts I/O, so a later crash cannot resurrect them, and
//! the cache device is flushed before the replayed log counts as durable
//! (after a process crash it may still be in the device's volatile cache).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, RwLock};
use std::time::Instant;

use crate::cache::{Cache, CacheOptions, Inner, Metadata, RoomQueue};
use crate::device::{AlignedBuf, BlockDevice};
use crate::error::{DeviceRole, Error, Result};
use crate::flusher::{CommittedRecord, FlushWaiters};
use crate::format::*;
use crate::geometry::line_index;
use crate::index::{Index, LineKey};
use crate::knobs::Knobs;
use crate::migrator::WriteBackDemand;
use crate::pin::SlotPins;
use crate::segment_buffer::BufferPool;
use crate::segment_log::SegmentLog;
use crate::stats::Stats;

fn io_err(context: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::io(DeviceRole::Cache, context, e)
}

fn read_block(dev: &dyn BlockDevice, offset: u64, context: &'static str) -> Result<AlignedBuf> {
    let mut b = AlignedBuf::zeroed(LINE_SIZE);
    dev.read_at(&mut b, offset).map_err(io_err(context))?;
    Ok(b)
}

/// Smallest cache device accepted by [`format_cache_device`].
pub const MIN_CACHE_BYTES: u64 = SUPERBLOCK_REGION + MIN_SEGMENTS * SEGMENT_SIZE as u64;

/// Largest cache device accepted by [`format_cache_device`]: the superblock
/// region and [`MAX_CACHE_SEGMENTS`] segments (16 843 009 MiB, about
/// 16.06 TiB, whose index needs about 56 GiB of RAM).
pub const MAX_CACHE_BYTES: u64 = SUPERBLOCK_REGION + MAX_CACHE_SEGMENTS * SEGMENT_SIZE as u64;

/// Writes a fresh lc superblock (format v1) to `dev`, dm-lc's
/// `format_cache_device`. Refuses a device that is too small or too large
/// ([`MIN_CACHE_BYTES`], [`MAX_CACHE_BYTES`]), and one that
/// holds an lc cache or another recognisable format unless `force` is set;
/// a refusal writes nothing.
pub fn format_cache_device(dev: &dyn BlockDevice, force: bool) -> Result<SuperBlockHeader> {
    let size = dev.size_bytes();
    let nr_segments = segments_for(size);
    if size < MIN_CACHE_BYTES {
        return Err(Error::TooSmall {
            size,
            min: MIN_CACHE_BYTES,
        });
    }
    if size > MAX_CACHE_BYTES {
        return Err(Error::TooLarge {
            size,
            max: MAX_CACHE_BYTES,
        });
    }
    if !force {
        let mut head = AlignedBuf::zeroed(SIGNATURE_PROBE_BYTES.min(size as usize));
        dev.read_at(&mut head, 0)
            .map_err(io_err("reading the device start"))?;
        if let Some(sig) = detect_signature(&head) {
            return Err(Error::HasSignature(sig));
        }
    }
    let header = SuperBlockHeader {
        version: FORMAT_VERSION,
        segment_size: SEGMENT_SIZE as u32,
        lines_per_segment: LINES_PER_SEGMENT as u32,
        nr_segments,
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        uuid: rand::random(),
    };
    let mut block = AlignedBuf::zeroed(LINE_SIZE);
    for (seq, off) in RECORD_OFFSETS.iter().enumerate() {
        let r = SuperBlockRecord {
            sequence: seq as u64,
            last_migrated_segment_id: 0,
            uuid: header.uuid,
            durable_segment_id: 0,
        };
        block.copy_from_slice(&r.to_block());
        dev.write_at(&block, *off)
            .map_err(io_err("writing the superblock record"))?;
    }
    block.copy_from_slice(&header.to_block());
    dev.write_at(&block, 0)
        .map_err(io_err("writing the superblock"))?;
    dev.flush().map_err(io_err("flushing the cache device"))?;
    Ok(header)
}

/// Reads the superblock header of `dev` (to identify a cache without resuming it).
pub fn read_superblock(dev: &dyn BlockDevice) -> Result<SuperBlockHeader> {
    if dev.size_bytes() < LINE_SIZE as u64 {
        return Err(Error::NotFormatted);
    }
    let sb = SuperBlockHeader::parse(&read_block(dev, 0, "reading the superblock")?)?;
    if SUPERBLOCK_REGION + sb.nr_segments * SEGMENT_SIZE as u64 > dev.size_bytes() {
        return Err(Error::Corrupt(format!(
            "superblock says {} segments but the device has only {} bytes",
            sb.nr_segments,
            dev.size_bytes()
        )));
    }
    Ok(sb)
}

/// What a resume found, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// `last_migrated_segment_id` from the record block.
    pub last_migrated_segment_id: u64,
    /// Segments replayed into the index.
    pub replayed_segments: u64,
    /// Id of the last segment of the recovered log (the next segment gets
    /// the id after it).
    pub last_replayed_segment_id: u64,
    /// Of those, segments whose full data checksum was verified.
    pub verified_segments: u64,
    /// Segments rejected at the end of the log (torn or never completed).
    pub rejected_segments: u64,
    /// Stale headers beyond the log that were zeroed.
    pub zeroed_headers: u64,
}

impl Cache {
    /// Resumes the cache on `dev` as cache `cache_id` (dm-lc's
    /// `resume_cache`): recovers the log, then starts the flusher, the
    /// write-back and the timers. Backing devices are attached afterwards
    /// with [`Cache::attach_device`]; dirty data of a device not yet attached
    /// waits in the cache.
    pub fn resume(cache_id: u8, dev: Arc<dyn BlockDevice>, opts: CacheOptions) -> Result<Cache> {
        Ok(Self::resume_with_report(cache_id, dev, opts)?.0)
    }

    /// [`Cache::resume`], also returning what recovery found.
    pub fn resume_with_report(
        cache_id: u8,
        dev: Arc<dyn BlockDevice>,
        opts: CacheOptions,
    ) -> Result<(Cache, RecoveryReport)> {
        if cache_id == 0 {
            return Err(Error::InvalidArgument("cache ids are 1..=255".into()));
        }
        if opts.pool_segments == 0 {
            return Err(Error::InvalidArgument(
                "the RAM segment pool needs at least one buffer".into(),
            ));
        }
        let sb = read_superblock(&*dev)?;
        let nr = sb.nr_segments;
        let blocks = RECORD_OFFSETS
            .iter()
            .map(|&off| read_block(&*dev, off, "reading the superblock record"))
            .collect::<Result<Vec<_>>>()?;
        let record = newest_record(&records_newest_first([&blocks[0], &blocks[1]], &sb), nr)?;
        let migrated = record.last_migrated_segment_id;

        let mut st = Metadata {
            index: Index::new((nr as usize) * LINES_PER_SEGMENT),
            log: SegmentLog::new(nr, migrated),
            buffers: BufferPool::new(opts.pool_segments.min(nr as usize), nr),
            write_back: WriteBackDemand::default(),
            replaced_copies: Default::default(),
            flush_waiters: FlushWaiters::default(),
            record: CommittedRecord {
                sequence: record.sequence,
                persisted_migrated_id: migrated,
                last_commit: Instant::now(),
            },
            room: RoomQueue::default(),
            stopping: false,
        };
        let report = replay_log(&*dev, &sb, &record, &mut st)?;
        let end = report.last_replayed_segment_id;
        st.log.next_id = end + 1;
        st.log.last_closed_id = end;
        st.log.last_flushed_id = end;
        st.log.durable_id = end;
        tracing::info!(cache = cache_id, ?report, "cache resumed");

        let inner = Arc::new(Inner {
            cache_id,
            dev,
            sb,
            nr_segments: nr,
            knobs: Knobs::new(nr),
            stats: Stats::default(),
            metadata: Mutex::new(st),
            progress_cv: Condvar::new(),
            migrate_cv: Condvar::new(),
            ticker_cv: Condvar::new(),
            flusher_tx: Mutex::new(None),
            pins: SlotPins::new(nr),
            migration_io: RwLock::new(()),
            devices: RwLock::new(BTreeMap::new()),
            figures: Default::default(),
        });
        Ok((Cache::start(inner)?, report))
    }
}

/// Replays segment header `h` of slot `slot`: the slot's id, its lines into
/// the index, and the last segment of each device it holds lines of.
fn replay(
    index: &mut Index,
    log: &mut SegmentLog,
    write_back: &mut WriteBackDemand,
    slot: u64,
    h: &SegmentHeader,
) {
    log.slot_ids[slot as usize] = h.global_id;
    for (i, m) in h.metablocks.iter().enumerate() {
        if m.device_id == 0 {
            continue; // a line invalidated before the segment was sealed
        }
        let key = LineKey {
            device_id: m.device_id,
            line: m.sector / SECTORS_PER_LINE as u64,
        };
        index.insert(key, line_index(slot, i), m.dirty_bits);
        write_back.last_segment_of_device[m.device_id as usize] = h.global_id;
    }
}

/// Most segments of the log resume keeps in RAM (header block and parsed
/// metablocks, about 8 KiB each) waiting for a later header to vouch for
/// them; beyond this, the oldest is verified against its full checksum at once.
const MAX_UNVOUCHED_SEGMENTS: usize = 64;

/// A segment of the log that no later header has vouched for yet.
type Unvouched = (u64, SegmentHeader, AlignedBuf);

/// Verifies the oldest unvouched segment against its full checksum and
/// replays it. If it fails (torn), the log ends before it: it and every
/// later pending segment go to `others`, and false is returned.
fn verify_oldest(
    dev: &dyn BlockDevice,
    pending: &mut VecDeque<Unvouched>,
    st: &mut Metadata,
    report: &mut RecoveryReport,
    others: &mut Vec<(u64, u64)>,
) -> Result<bool> {
    let Some((slot, h, block)) = pending.pop_front() else {
        return Ok(true);
    };
    let mut data = AlignedBuf::zeroed(LINE_SIZE * (h.length as usize).max(1));
    let data = &mut data[..LINE_SIZE * h.length as usize];
    dev.read_at(data, segment_offset(slot) + LINE_SIZE as u64)
        .map_err(io_err("reading a segment"))?;
    if !SegmentHeader::verify(&block, data) {
        report.rejected_segments += 1 + pending.len() as u64;
        others.push((slot, h.global_id));
        others.extend(pending.drain(..).map(|(s, h, _)| (s, h.global_id)));
        return Ok(false);
    }
    replay(&mut st.index, &mut st.log, &mut st.write_back, slot, &h);
    report.replayed_segments += 1;
    report.verified_segments += 1;
    Ok(true)
}

/// Reader threads resume keeps reading headers: a device with a queue (an
/// SSD, a file on one, a RAID) serves several reads at once, so with this
/// many in flight the headers arrive faster than one reader could fetch
/// them one after the other; a single spindle loses nothing by it.
pub const RESUME_HEADER_READERS: usize = 4;
/// Headers a reader fetches and parses per hand-over to the replay.
const HEADER_BATCH: u64 = 16;
/// How many batches readers may run ahead of the one the replay needs next:
/// two per reader, so each always has one to read while the replay takes
/// the other. This bounds the RAM of headers read and not yet replayed to
/// 8 × 16 headers of about 8 KiB (the block and its parsed metablocks):
/// 1 MiB, whatever the device holds (`tests/bounded_memory.rs`).
const READ_AHEAD_BATCHES: u64 = 2 * RESUME_HEADER_READERS as u64;

/// Headers of consecutive slots of the log, read and parsed: `(slot, header
/// block, the header if it is a well-formed one of this cache in that slot)`.
type HeaderBatch = Vec<(u64, AlignedBuf, Option<SegmentHeader>)>;

/// How far the replay has got, for the readers that must not run ahead.
struct ReadAhead {
    /// Batches handed to the replay so far.
    delivered: u64,
    /// Set when the replay stopped (done, failed) or a reader panicked.
    stopped: bool,
}

/// The readers' gate: [`ReadAhead`] and the condition variable readers wait
/// on for room.
struct ReadGate {
    ahead: Mutex<ReadAhead>,
    room: Condvar,
}

impl ReadGate {
    /// Waits until batch `batch` may be read; false once stopped.
    fn wait_for_room(&self, batch: u64) -> bool {
        let mut a = self.ahead.lock().expect("read gate");
        while !a.stopped && batch >= a.delivered + READ_AHEAD_BATCHES {
            a = self.room.wait(a).expect("read gate");
        }
        !a.stopped
    }

    fn delivered(&self, batches: u64) {
        self.ahead.lock().expect("read gate").delivered = batches;
        self.room.notify_all();
    }

    fn stop(&self) {
        self.ahead.lock().unwrap_or_else(|e| e.into_inner()).stopped = true;
        self.room.notify_all();
    }
}

/// Stops the other readers if the reader holding it panics, so that they
/// and the replay waiting for the lost batch do not wait for ever.
struct StopOnPanic<'a>(&'a ReadGate);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.stop();
        }
    }
}

/// Reads and parses the header of every slot in log order from
/// `first_slot`, with [`RESUME_HEADER_READERS`] threads reading at once,
/// and hands each to `each` on the calling thread strictly in log order.
/// Returns the first read error or error of `each`; the readers stop then.
fn read_headers_in_log_order(
    dev: &dyn BlockDevice,
    sb: &SuperBlockHeader,
    first_slot: u64,
    mut each: impl FnMut(u64, AlignedBuf, Option<SegmentHeader>) -> Result<()>,
) -> Result<()> {
    let nr = sb.nr_segments;
    let nr_batches = nr.div_ceil(HEADER_BATCH);
    let next_batch = AtomicU64::new(0);
    let gate = ReadGate {
        ahead: Mutex::new(ReadAhead {
            delivered: 0,
            stopped: false,
        }),
        room: Condvar::new(),
    };
    let read_batch = |b: u64| -> Result<HeaderBatch> {
        (b * HEADER_BATCH..((b + 1) * HEADER_BATCH).min(nr))
            .map(|k| {
                let slot = (first_slot + k) % nr;
                let block = read_block(dev, segment_offset(slot), "reading a segment header")?;
                let header = SegmentHeader::parse(&block, slot, nr, &sb.uuid);
                Ok((slot, block, header))
            })
            .collect()
    };
    let (tx, rx) = mpsc::channel::<(u64, Result<HeaderBatch>)>();
    std::thread::scope(|scope| {
        for _ in 0..(RESUME_HEADER_READERS as u64).min(nr_batches) {
            let tx = tx.clone();
            let (gate, next_batch, read_batch) = (&gate, &next_batch, &read_batch);
            scope.spawn(move || {
                let _guard = StopOnPanic(gate);
                loop {
                    let b = next_batch.fetch_add(1, Ordering::Relaxed);
                    if b >= nr_batches || !gate.wait_for_room(b) {
                        return;
                    }
                    if tx.send((b, read_batch(b))).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let mut early: BTreeMap<u64, Result<HeaderBatch>> = BTreeMap::new();
        let mut replay = || -> Result<()> {
            for want in 0..nr_batches {
                let batch = loop {
                    if let Some(batch) = early.remove(&want) {
                        break batch;
                    }
                    // every sender gone before the batch came: a reader
                    // panicked (the scope passes its panic on)
                    let Ok((b, batch)) = rx.recv() else {
                        return Ok(());
                    };
                    early.insert(b, batch);
                };
                for (slot, block, header) in batch? {
                    each(slot, block, header)?;
                }
                gate.delivered(want + 1);
            }
            Ok(())
        };
        let result = replay();
        gate.stop();
        result
    })
}

/// Reads every header, replays the valid log after the record's
/// `last_migrated_segment_id` into `st`,
/// and zeroes stale headers beyond it.
fn replay_log(
    dev: &dyn BlockDevice,
    sb: &SuperBlockHeader,
    record: &SuperBlockRecord,
    st: &mut Metadata,
) -> Result<RecoveryReport> {
    let migrated = record.last_migrated_segment_id;
    let nr = sb.nr_segments;
    let mut report = RecoveryReport {
        last_migrated_segment_id: migrated,
        ..Default::default()
    };
    let first_slot = slot_of(migrated + 1, nr);
    let mut expected = migrated + 1;
    let mut in_run = true;
    // highest id known durable: from the record, then from each header read
    let mut vouched = migrated.max(record.durable_segment_id);
    let mut pending: VecDeque<Unvouched> = VecDeque::new();
    // (slot, id) of valid headers outside the run
    let mut others: Vec<(u64, u64)> = Vec::new();
    read_headers_in_log_order(dev, sb, first_slot, |slot, block, parsed| {
        match parsed {
            Some(h) if in_run && h.global_id == expected => {
                expected += 1;
                vouched = vouched.max(h.durable_id.min(h.global_id - 1));
                pending.push_back((slot, h, block));
                while pending
                    .front()
                    .is_some_and(|(_, h, _)| h.global_id <= vouched)
                {
                    let (slot, h, _) = pending.pop_front().expect("non-empty");
                    replay(&mut st.index, &mut st.log, &mut st.write_back, slot, &h);
                    report.replayed_segments += 1;
                }
                // A real log has at most a pool's worth of segments
                // nobody vouches for; crafted headers may have any
                // number: check the oldest now rather than keep them.
                while pending.len() > MAX_UNVOUCHED_SEGMENTS {
                    if !verify_oldest(dev, &mut pending, st, &mut report, &mut others)? {
                        in_run = false;
                    }
                }
            }
            other => {
                in_run = false;
                if let Some(h) = other {
                    others.push((slot, h.global_id));
                }
            }
        }
        Ok(())
    })?;
    // the unvouched tail: verify full checksums, stop at the first failure
    while !pending.is_empty() {
        verify_oldest(dev, &mut pending, st, &mut report, &mut others)?;
    }
    let end = migrated + report.replayed_segments;
    let zero = AlignedBuf::zeroed(LINE_SIZE);
    for (slot, id) in others {
        if id > end {
            dev.write_at(&zero, segment_offset(slot))
                .map_err(io_err("clearing a stale segment header"))?;
            report.zeroed_headers += 1;
        }
    }
    // The replayed segments may still sit in the device's volatile cache
    // (the process that wrote them died before its flush): make them
    // durable before the first new header vouches for them.
    dev.flush().map_err(io_err("flushing the cache device"))?;
    report.last_replayed_segment_id = end;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// A device whose reads take a varying time (so parallel readers finish
    /// out of order), fill each block with its offset, count the reads in
    /// flight, and fail at one offset if told to.
    struct UnevenDevice {
        size: u64,
        fail_at: Option<u64>,
        in_flight: AtomicUsize,
        most_in_flight: AtomicUsize,
        reads: AtomicUsize,
    }

    impl UnevenDevice {
        fn new(nr_segments: u64, fail_at: Option<u64>) -> Self {
            UnevenDevice {
                size: SUPERBLOCK_REGION + nr_segments * SEGMENT_SIZE as u64,
                fail_at,
                in_flight: AtomicUsize::new(0),
                most_in_flight: AtomicUsize::new(0),
                reads: AtomicUsize::new(0),
            }
        }
    }

    impl BlockDevice for UnevenDevice {
        fn size_bytes(&self) -> u64 {
            self.size
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_in_flight.fetch_max(now, Ordering::SeqCst);
            self.reads.fetch_add(1, Ordering::SeqCst);
            // 0..=300 µs, differing from one header to the next
            let spread = offset.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 55;
            std::thread::sleep(Duration::from_micros(spread % 301));
            buf.fill(0);
            buf[..8].copy_from_slice(&offset.to_le_bytes());
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            match self.fail_at {
                Some(at) if at == offset => Err(io::Error::from_raw_os_error(libc::EIO)),
                _ => Ok(()),
            }
        }
        fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
            unreachable!("header reads only")
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
        fn discard(&self, _: u64, _: u64) -> io::Result<()> {
            Ok(())
        }
        fn describe(&self) -> String {
            "uneven test device".into()
        }
    }

    fn superblock(nr_segments: u64) -> SuperBlockHeader {
        SuperBlockHeader {
            version: FORMAT_VERSION,
            segment_size: SEGMENT_SIZE as u32,
            lines_per_segment: LINES_PER_SEGMENT as u32,
            nr_segments,
            created_unix: 0,
            uuid: [7; 16],
        }
    }

    #[test]
    fn headers_read_in_parallel_arrive_in_log_order_each_once() {
        for (nr, first_slot) in [(1, 0), (31, 5), (32, 31), (33, 0), (1000, 613)] {
            let dev = UnevenDevice::new(nr, None);
            let mut seen = Vec::new();
            read_headers_in_log_order(&dev, &superblock(nr), first_slot, |slot, block, h| {
                assert!(h.is_none(), "the blocks are not headers");
                let offset = u64::from_le_bytes(block[..8].try_into().expect("8 bytes"));
                assert_eq!(offset, segment_offset(slot), "block of another slot");
                seen.push(slot);
                Ok(())
            })
            .expect("no error");
            let want: Vec<u64> = (0..nr).map(|k| (first_slot + k) % nr).collect();
            assert_eq!(seen, want, "{nr} segments from slot {first_slot}");
            assert_eq!(dev.reads.load(Ordering::SeqCst), nr as usize);
            if nr == 1000 {
                assert!(
                    dev.most_in_flight.load(Ordering::SeqCst) > 1,
                    "the headers were read one at a time"
                );
            }
        }
    }

    #[test]
    fn a_failed_header_read_ends_the_stream_with_its_error_after_the_headers_before_it() {
        let nr = 700;
        let dev = UnevenDevice::new(nr, Some(segment_offset(300)));
        let mut seen = 0u64;
        let err = read_headers_in_log_order(&dev, &superblock(nr), 100, |slot, _, _| {
            assert_eq!(slot, 100 + seen, "out of order");
            seen += 1;
            Ok(())
        })
        .expect_err("slot 300 fails");
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        // the batch holding slot 300 (slots 292..308) is not handed over
        assert_eq!(seen, 192, "headers before the failed batch");
        assert!(
            dev.reads.load(Ordering::SeqCst)
                <= (seen + (READ_AHEAD_BATCHES + 1) * HEADER_BATCH) as usize,
            "readers ran past the read-ahead bound"
        );
    }

    #[test]
    fn an_error_of_the_replay_stops_the_readers() {
        let nr = 5000;
        let dev = UnevenDevice::new(nr, None);
        let mut seen = 0;
        let err = read_headers_in_log_order(&dev, &superblock(nr), 0, |_, _, _| {
            seen += 1;
            if seen == 40 {
                return Err(Error::Corrupt("stop here".into()));
            }
            Ok(())
        })
        .expect_err("the replay fails");
        assert!(matches!(err, Error::Corrupt(_)));
        let reads = dev.reads.load(Ordering::SeqCst) as u64;
        assert!(
            reads
                <= (READ_AHEAD_BATCHES + 2) * HEADER_BATCH
                    + RESUME_HEADER_READERS as u64 * HEADER_BATCH,
            "{reads} headers read after the replay stopped at 40"
        );
    }
}
