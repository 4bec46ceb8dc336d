//! Format and resume: writing a fresh superblock, and rebuilding a cache's
//! index from its segment headers after a clean stop or a crash.
//!
//! Resume reads every segment header once, in log order starting at the slot
//! of `last_migrated_segment_id + 1`. The contiguous run of well-formed
//! headers with the expected ids is the candidate log. A segment is replayed
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
use std::sync::{Arc, Condvar, Mutex, RwLock};
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
    // A reader thread streams the headers in log order while this thread
    // parses and replays them, so replay hides behind the reads.
    // Headers travel in batches: one hand-over per batch, not per header.
    const BATCH: u64 = 32;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<(u64, AlignedBuf)>>>(8);
    std::thread::scope(|scope| -> Result<()> {
        scope.spawn(move || {
            let mut k = 0;
            while k < nr {
                let batch: Result<Vec<_>> = (k..(k + BATCH).min(nr))
                    .map(|k| {
                        let slot = (first_slot + k) % nr;
                        read_block(dev, segment_offset(slot), "reading a segment header")
                            .map(|b| (slot, b))
                    })
                    .collect();
                let failed = batch.is_err();
                if tx.send(batch).is_err() || failed {
                    return;
                }
                k += BATCH;
            }
        });
        for batch in rx {
            for (slot, block) in batch? {
                let parsed = SegmentHeader::parse(&block, slot, nr, &sb.uuid);
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
