//! Offline inspection of a cache device: what `lcd check` and `lcd dump`
//! report, without a running cache and without writing anything.
//!
//! [`inspect`] reads the superblock, both record blocks and every segment
//! header, verifies the full checksum of every segment of the log (not only
//! the few a resume must verify), and replays the log's metablocks into a
//! line index like resume's to count dirty lines per device. Memory is the
//! index (14 bytes per cache line) and about 48 bytes per segment header
//! found, whatever the device holds. Offline write-back needs no
//! code of its own: resume the cache, attach the backing devices and call
//! [`crate::Cache::migrate_all`].

use std::collections::BTreeMap;

use crate::device::{AlignedBuf, BlockDevice};
use crate::error::{DeviceRole, Error, Result};
use crate::format::*;
use crate::index::{Index, LineKey};

/// One segment header found on the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Slot (0-based position on the device).
    pub slot: u64,
    /// Segment id.
    pub global_id: u64,
    /// Lap.
    pub lap: u32,
    /// Valid lines.
    pub length: u32,
    /// Highest id the segment vouched for as durable when it was sealed.
    pub durable_id: u64,
    /// Whether the full checksum (header and data) matches.
    pub checksum_ok: bool,
    /// Whether the segment belongs to the log a resume would replay.
    pub in_log: bool,
}

/// What [`inspect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// The superblock header.
    pub superblock: SuperBlockHeader,
    /// The valid records, newest first ([`records_newest_first`]); the
    /// first is the one a resume uses.
    pub records: Vec<SuperBlockRecord>,
    /// Every well-formed segment header of this cache, by slot.
    pub segments: Vec<SegmentInfo>,
    /// Slots whose header is not one of this cache's (never written,
    /// discarded, torn, or another format's).
    pub empty_slots: u64,
    /// First and last id of the log a resume would replay (empty when
    /// first > last).
    pub log: (u64, u64),
    /// The first segment after the log's end that has the next id but fails
    /// its checksum: a torn write (a resume rejects it), or, if a later
    /// header or the record vouched for it as durable, damaged media.
    pub bad_segment: Option<u64>,
    /// Dirty 4 KiB lines per device id in the log.
    pub dirty_lines: BTreeMap<u8, u64>,
    /// Per device id, the end (in bytes) of the highest dirty line: a
    /// backing device must be at least this large to take the data back.
    pub dirty_extent: BTreeMap<u8, u64>,
}

impl Inspection {
    /// True when nothing needs writing back.
    pub fn is_clean(&self) -> bool {
        self.dirty_lines.values().all(|&n| n == 0)
    }
}

fn io(context: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::io(DeviceRole::Cache, context, e)
}

/// Inspects the cache on `dev` without writing to it.
pub fn inspect(dev: &dyn BlockDevice) -> Result<Inspection> {
    let superblock = crate::recover::read_superblock(dev)?;
    let nr = superblock.nr_segments;
    let mut blocks = [AlignedBuf::zeroed(LINE_SIZE), AlignedBuf::zeroed(LINE_SIZE)];
    for (block, off) in blocks.iter_mut().zip(RECORD_OFFSETS) {
        dev.read_at(block, off)
            .map_err(io("reading a record block"))?;
    }
    let records = records_newest_first([&blocks[0], &blocks[1]], &superblock);
    let migrated = newest_record(&records, nr)?.last_migrated_segment_id;

    // First pass: what each slot holds, kept compact (the metablocks are
    // read again for the log below), so memory does not grow by a header
    // per segment whatever the device holds.
    let mut headers: BTreeMap<u64, SegmentInfo> = BTreeMap::new();
    let mut empty_slots = 0;
    let mut data = AlignedBuf::zeroed(SEGMENT_SIZE);
    for slot in 0..nr {
        let off = segment_offset(slot);
        dev.read_at(&mut data, off)
            .map_err(io("reading a segment"))?;
        match SegmentHeader::parse(&data[..LINE_SIZE], slot, nr, &superblock.uuid) {
            Some(h) => {
                let end = LINE_SIZE * (1 + h.length as usize);
                let ok = SegmentHeader::verify(&data[..LINE_SIZE], &data[LINE_SIZE..end]);
                headers.insert(
                    h.global_id,
                    SegmentInfo {
                        slot,
                        global_id: h.global_id,
                        lap: h.lap,
                        length: h.length,
                        durable_id: h.durable_id,
                        checksum_ok: ok,
                        in_log: false,
                    },
                );
            }
            None => empty_slots += 1,
        }
    }

    // the log: consecutive ids from last_migrated + 1, ending before a torn one
    let first = migrated + 1;
    let mut last = migrated;
    let mut bad_segment = None;
    while let Some(info) = headers.get_mut(&(last + 1)) {
        if !info.checksum_ok {
            bad_segment = Some(last + 1);
            break;
        }
        info.in_log = true;
        last += 1;
    }
    // Second pass: replay the log's metablocks into an index like resume's
    // (newest copy wins), 14 bytes per cache line.
    let mut index = Index::new(nr as usize * LINES_PER_SEGMENT);
    let mut block = AlignedBuf::zeroed(LINE_SIZE);
    for id in first..=last {
        let slot = headers[&id].slot;
        dev.read_at(&mut block, segment_offset(slot))
            .map_err(io("reading a segment header"))?;
        let h = SegmentHeader::parse(&block, slot, nr, &superblock.uuid).ok_or_else(|| {
            Error::io(
                DeviceRole::Cache,
                "reading a segment header",
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("segment {id} changed while it was inspected"),
                ),
            )
        })?;
        for (i, m) in h.metablocks.iter().enumerate() {
            if m.device_id != 0 {
                let key = LineKey {
                    device_id: m.device_id,
                    line: m.sector / SECTORS_PER_LINE as u64,
                };
                index.insert(
                    key,
                    (slot as usize * LINES_PER_SEGMENT + i) as u32,
                    m.dirty_bits,
                );
            }
        }
    }
    let mut dirty_lines: BTreeMap<u8, u64> = BTreeMap::new();
    let mut dirty_extent: BTreeMap<u8, u64> = BTreeMap::new();
    for idx in 0..index.nr_lines() {
        if let Some(info) = index.info(idx as u32) {
            *dirty_lines.entry(info.key.device_id).or_default() += 1;
            let end = (info.key.line + 1) * LINE_SIZE as u64;
            let e = dirty_extent.entry(info.key.device_id).or_default();
            *e = (*e).max(end);
        }
    }
    let mut segments: Vec<SegmentInfo> = headers.into_values().collect();
    segments.sort_by_key(|s| s.slot);
    Ok(Inspection {
        superblock,
        records,
        segments,
        empty_slots,
        log: (first, last),
        bad_segment,
        dirty_lines,
        dirty_extent,
    })
}
