//! On-disk format, version 1: the superblock header, the record block and the
//! segment header with its metablocks.
//!
//! Everything here is plain serialisation: fixed little-endian layouts written
//! into and parsed out of byte slices, with no `unsafe` and no I/O. The layout
//! is described in the crate documentation; the constants below are its
//! single source of truth.

use crate::error::{Error, Result};
use crate::index::MAX_LINE;

pub use crate::geometry::{segment_offset, slot_of};

/// Bytes in a sector, the unit of addressing of every block device.
pub const SECTOR_SIZE: usize = 512;
/// Bytes in a cache line (a "block"): the unit the index tracks.
pub const LINE_SIZE: usize = 4096;
/// Sectors in a cache line.
pub const SECTORS_PER_LINE: usize = LINE_SIZE / SECTOR_SIZE;
/// Bytes in a segment: one header block followed by [`LINES_PER_SEGMENT`] lines.
pub const SEGMENT_SIZE: usize = 1 << 20;
/// Data lines in a segment (the first 4 KiB of a segment is its header).
pub const LINES_PER_SEGMENT: usize = SEGMENT_SIZE / LINE_SIZE - 1;
/// Bytes reserved for the superblock region at the start of the cache device.
pub const SUPERBLOCK_REGION: u64 = SEGMENT_SIZE as u64;
/// Format version written by this crate.
pub const FORMAT_VERSION: u32 = 1;
/// Offsets of the two record blocks (written alternately, so a torn record
/// write never loses the last good one).
pub const RECORD_OFFSETS: [u64; 2] = [LINE_SIZE as u64, 2 * LINE_SIZE as u64];
/// Smallest number of segments a cache device may hold.
pub const MIN_SEGMENTS: u64 = 2;
/// Largest number of segments a cache device may hold (16 843 008 MiB of
/// segments, about 16.06 TiB):
/// every cache line index stays below `u32::MAX`, which the index uses as
/// its empty marker. `format` refuses a larger device, resume a superblock
/// that says more.
pub const MAX_CACHE_SEGMENTS: u64 = u32::MAX as u64 / LINES_PER_SEGMENT as u64 - 1;

/// Magic of the superblock header block.
pub const SUPERBLOCK_MAGIC: [u8; 8] = *b"lcCACHE\0";
const RECORD_MAGIC: [u8; 4] = *b"lcRC";
const SEGMENT_MAGIC: [u8; 4] = *b"lcSG";

/// Size of one serialised [`Metablock`].
pub const METABLOCK_SIZE: usize = 14;
/// Offset of the first metablock inside a segment header block.
pub const METABLOCKS_OFFSET: usize = 64;
const SEG_CHECKSUM_OFFSET: usize = 48;

/// Lap of segment `global_id`: how many times the log has wrapped, plus one.
pub fn lap_of(global_id: u64, nr_segments: u64) -> u32 {
    ((global_id - 1) / nr_segments + 1) as u32
}

/// Segment ids of a cache of `nr_segments` segments stay below this bound,
/// `nr_segments × u32::MAX`: the highest id whose lap still fits a header's
/// 32-bit lap field. The engine never opens a segment of this id or beyond,
/// so every record it commits leaves `last_migrated_segment_id + 1`, where
/// recovery starts the log, an id a header can carry.
pub fn segment_id_limit(nr_segments: u64) -> u64 {
    nr_segments.saturating_mul(u32::MAX as u64)
}

/// Highest record sequence lc writes: a record of sequence `u64::MAX`
/// would leave the next commit no number, so it is never valid.
pub const MAX_RECORD_SEQUENCE: u64 = u64::MAX - 1;

/// Highest record sequence a cache is resumed with, 2^64 − 2^32: it
/// leaves the resumed cache 2^32 − 1 commits (more than a century of them
/// at several a second), so a running cache never finds its next record
/// without a number, not even at its clean stop. lc reaches it only after
/// 2^64 − 2^32 commits: a record beyond it is damage or a crafted block.
pub const MAX_RESUMABLE_SEQUENCE: u64 = u64::MAX - (1 << 32) + 1;

/// Number of whole segments that fit on a cache device of `device_bytes`.
pub fn segments_for(device_bytes: u64) -> u64 {
    device_bytes.saturating_sub(SUPERBLOCK_REGION) / SEGMENT_SIZE as u64
}

fn put_u16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([buf[at], buf[at + 1]])
}
fn get_u32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}
fn get_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

fn corrupt(what: &str) -> Error {
    Error::Corrupt(what.to_string())
}

/// The superblock header: identity and geometry of a formatted cache device.
///
/// Layout (offset 0 of the device, 4 KiB block, rest zero):
/// `magic[8] version:u32 segment_size:u32 lines_per_segment:u32 pad:u32
/// nr_segments:u64 created_unix:u64 uuid[16] checksum:u32` where the crc32c
/// checksum covers bytes `0..56`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuperBlockHeader {
    /// Format version ([`FORMAT_VERSION`]).
    pub version: u32,
    /// Segment size in bytes (always [`SEGMENT_SIZE`] in version 1).
    pub segment_size: u32,
    /// Data lines per segment (always [`LINES_PER_SEGMENT`] in version 1).
    pub lines_per_segment: u32,
    /// Number of segments after the superblock region.
    pub nr_segments: u64,
    /// Seconds since the Unix epoch when the device was formatted.
    pub created_unix: u64,
    /// Random identity of this format; segment headers carry it too.
    pub uuid: [u8; 16],
}

impl SuperBlockHeader {
    const CHECKSUM_AT: usize = 56;

    /// Serialises into a 4 KiB block.
    pub fn to_block(&self) -> Vec<u8> {
        let mut b = vec![0u8; LINE_SIZE];
        b[0..8].copy_from_slice(&SUPERBLOCK_MAGIC);
        put_u32(&mut b, 8, self.version);
        put_u32(&mut b, 12, self.segment_size);
        put_u32(&mut b, 16, self.lines_per_segment);
        put_u64(&mut b, 24, self.nr_segments);
        put_u64(&mut b, 32, self.created_unix);
        b[40..56].copy_from_slice(&self.uuid);
        let c = crc32c::crc32c(&b[..Self::CHECKSUM_AT]);
        put_u32(&mut b, Self::CHECKSUM_AT, c);
        b
    }

    /// True when `block` starts with the lc superblock magic (whatever its state).
    pub fn has_magic(block: &[u8]) -> bool {
        block.len() >= 8 && block[0..8] == SUPERBLOCK_MAGIC
    }

    /// Parses a header block; rejects a wrong magic, checksum, version or geometry.
    pub fn parse(b: &[u8]) -> Result<Self> {
        if b.len() < LINE_SIZE || !Self::has_magic(b) {
            return Err(Error::NotFormatted);
        }
        if crc32c::crc32c(&b[..Self::CHECKSUM_AT]) != get_u32(b, Self::CHECKSUM_AT) {
            return Err(corrupt("superblock header checksum mismatch"));
        }
        let h = SuperBlockHeader {
            version: get_u32(b, 8),
            segment_size: get_u32(b, 12),
            lines_per_segment: get_u32(b, 16),
            nr_segments: get_u64(b, 24),
            created_unix: get_u64(b, 32),
            uuid: b[40..56].try_into().expect("16 bytes"),
        };
        if h.version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion(h.version));
        }
        if h.segment_size as usize != SEGMENT_SIZE
            || h.lines_per_segment as usize != LINES_PER_SEGMENT
            || h.nr_segments < MIN_SEGMENTS
            || h.nr_segments > MAX_CACHE_SEGMENTS
        {
            return Err(corrupt("superblock geometry is not valid for format v1"));
        }
        Ok(h)
    }
}

/// The record block: the mutable part of the superblock.
///
/// Layout (4 KiB block at one of [`RECORD_OFFSETS`]): `magic[4] pad:u32
/// sequence:u64 last_migrated_segment_id:u64 uuid[16] durable_segment_id:u64
/// checksum:u32`, crc32c over bytes `0..48`. Record `sequence` is written to
/// `RECORD_OFFSETS[sequence % 2]`; resume and inspection take the newest
/// valid record ([`records_newest_first`], [`newest_record`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuperBlockRecord {
    /// Incremented on every commit.
    pub sequence: u64,
    /// Every segment with an id up to this one has been written back.
    pub last_migrated_segment_id: u64,
    /// Must equal the superblock header's uuid.
    pub uuid: [u8; 16],
    /// Every segment up to this id was written and flushed before this
    /// record was written (after a clean stop: every segment), so resume
    /// need not verify their data checksums.
    pub durable_segment_id: u64,
}

impl SuperBlockRecord {
    const CHECKSUM_AT: usize = 48;

    /// Serialises into a 4 KiB block.
    pub fn to_block(&self) -> Vec<u8> {
        let mut b = vec![0u8; LINE_SIZE];
        b[0..4].copy_from_slice(&RECORD_MAGIC);
        put_u64(&mut b, 8, self.sequence);
        put_u64(&mut b, 16, self.last_migrated_segment_id);
        b[24..40].copy_from_slice(&self.uuid);
        put_u64(&mut b, 40, self.durable_segment_id);
        let c = crc32c::crc32c(&b[..Self::CHECKSUM_AT]);
        put_u32(&mut b, Self::CHECKSUM_AT, c);
        b
    }

    /// Checks that a record with a valid checksum can be used by a cache of
    /// `nr_segments` segments: its sequence is at most
    /// [`MAX_RESUMABLE_SEQUENCE`] and its `last_migrated_segment_id` is below
    /// [`segment_id_limit`]. lc never writes a record that fails this, so
    /// such a record is damage or a crafted block: resume and inspection
    /// refuse the device rather than fall back to the older record (whose
    /// log may have been overwritten since).
    pub fn check_usable(&self, nr_segments: u64) -> Result<()> {
        if self.sequence > MAX_RESUMABLE_SEQUENCE {
            return Err(corrupt(&format!(
                "the newest superblock record has sequence {}, beyond the highest a cache is resumed with ({MAX_RESUMABLE_SEQUENCE}, which leaves room for its commits)",
                self.sequence
            )));
        }
        let limit = segment_id_limit(nr_segments);
        if self.last_migrated_segment_id >= limit {
            return Err(corrupt(&format!(
                "the newest superblock record says segment {} is written back, but a cache of {nr_segments} segments uses ids below {limit} only",
                self.last_migrated_segment_id
            )));
        }
        Ok(())
    }

    /// Parses a record block; `None` when it is not a valid record.
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < LINE_SIZE || b[0..4] != RECORD_MAGIC {
            return None;
        }
        if crc32c::crc32c(&b[..Self::CHECKSUM_AT]) != get_u32(b, Self::CHECKSUM_AT) {
            return None;
        }
        Some(SuperBlockRecord {
            sequence: get_u64(b, 8),
            last_migrated_segment_id: get_u64(b, 16),
            uuid: b[24..40].try_into().expect("16 bytes"),
            durable_segment_id: get_u64(b, 40),
        })
    }
}

/// The valid records of the cache `sb` describes (valid checksum, `sb`'s
/// uuid), newest first, from its two record blocks (`blocks[i]` as read at
/// `RECORD_OFFSETS[i]`). Newer means a higher sequence; of two records of one
/// sequence (lc never writes that; a copied block does), the one in the
/// block that sequence belongs to, `RECORD_OFFSETS[sequence % 2]`, counts as
/// the newer, so every reader picks the same one.
pub fn records_newest_first(blocks: [&[u8]; 2], sb: &SuperBlockHeader) -> Vec<SuperBlockRecord> {
    let mut records: Vec<(bool, SuperBlockRecord)> = blocks
        .iter()
        .enumerate()
        .filter_map(|(i, b)| SuperBlockRecord::parse(b).map(|r| (r.sequence % 2 == i as u64, r)))
        .filter(|(_, r)| r.uuid == sb.uuid)
        .collect();
    records.sort_by_key(|&(home, r)| std::cmp::Reverse((r.sequence, home)));
    records.into_iter().map(|(_, r)| r).collect()
}

/// The record recovery starts from: the first of `records` (as
/// [`records_newest_first`] orders them), which must pass
/// [`SuperBlockRecord::check_usable`]. Resume and inspection both use it.
pub fn newest_record(records: &[SuperBlockRecord], nr_segments: u64) -> Result<SuperBlockRecord> {
    let newest = *records
        .first()
        .ok_or_else(|| corrupt("no valid superblock record"))?;
    newest.check_usable(nr_segments)?;
    Ok(newest)
}

/// What one cache line of a segment holds: where its data belongs.
///
/// Layout (14 bytes): `sector:u64 device_id:u8 dirty_bits:u8 lap:u32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Metablock {
    /// First backing sector of the line (a multiple of 8, and its line
    /// `sector / 8` at most [`MAX_LINE`], the largest line the index keeps).
    pub sector: u64,
    /// Backing device id, 1..=255; 0 (with no dirty bits) marks a line that
    /// was invalidated before its segment was sealed.
    pub device_id: u8,
    /// One bit per 512 B sector of the line that holds data to write back.
    pub dirty_bits: u8,
    /// Lap of the segment this metablock was written in.
    pub lap: u32,
}

impl Metablock {
    /// Serialises into `out[..METABLOCK_SIZE]`.
    pub fn write_to(&self, out: &mut [u8]) {
        put_u64(out, 0, self.sector);
        out[8] = self.device_id;
        out[9] = self.dirty_bits;
        put_u32(out, 10, self.lap);
    }

    /// Parses from `b[..METABLOCK_SIZE]`.
    pub fn read_from(b: &[u8]) -> Self {
        Metablock {
            sector: get_u64(b, 0),
            device_id: b[8],
            dirty_bits: b[9],
            lap: get_u32(b, 10),
        }
    }
}

/// The linear map "append 4 KiB of zeros" on crc32c values, as four tables
/// of 256 entries (one per byte of the crc), built once from
/// [`crc32c::crc32c_combine`].
fn line_shift_tables() -> &'static [[u32; 256]; 4] {
    static TABLES: std::sync::OnceLock<Box<[[u32; 256]; 4]>> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| {
        let bit: Vec<u32> = (0..32)
            .map(|i| crc32c::crc32c_combine(1 << i, 0, LINE_SIZE))
            .collect();
        let mut t = Box::new([[0u32; 256]; 4]);
        for (k, table) in t.iter_mut().enumerate() {
            for (b, e) in table.iter_mut().enumerate() {
                *e = (0..8)
                    .filter(|j| b & (1 << j) != 0)
                    .fold(0, |acc, j| acc ^ bit[8 * k + j]);
            }
        }
        t
    })
}

/// A segment header: the first 4 KiB block of every segment.
///
/// Layout: `magic[4] version:u16 pad:u16 global_id:u64 durable_id:u64 lap:u32
/// length:u32 uuid[16] checksum:u32 pad[12]`, then 255 [`Metablock`]s from
/// offset [`METABLOCKS_OFFSET`]; the rest of the block is zero. The crc32c
/// checksum covers the whole header block (with the checksum field zero)
/// followed by the data of the `length` valid lines.
///
/// `durable_id` is the highest segment id that was known to be durable on the
/// cache device (written and flushed) when this segment was sealed; recovery
/// uses it to limit full-data verification to segments that could be torn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Log position of the segment, 1-based, never reused.
    pub global_id: u64,
    /// See the type documentation.
    pub durable_id: u64,
    /// `(global_id - 1) / nr_segments + 1`.
    pub lap: u32,
    /// Number of valid lines, 0..=255.
    pub length: u32,
    /// The cache's uuid, so segments of an earlier format are never replayed.
    pub uuid: [u8; 16],
    /// The checksum as stored (filled by [`SegmentHeader::seal`]).
    pub checksum: u32,
    /// Metablocks of the valid lines (`length` entries).
    pub metablocks: Vec<Metablock>,
}

impl SegmentHeader {
    /// Writes header fields and metablocks into a 4 KiB header block, with a
    /// zero checksum field (call [`SegmentHeader::seal`] afterwards).
    pub fn write_to(&self, b: &mut [u8]) {
        b[..LINE_SIZE].fill(0);
        b[0..4].copy_from_slice(&SEGMENT_MAGIC);
        put_u16(b, 4, FORMAT_VERSION as u16);
        put_u64(b, 8, self.global_id);
        put_u64(b, 16, self.durable_id);
        put_u32(b, 24, self.lap);
        put_u32(b, 28, self.length);
        b[32..48].copy_from_slice(&self.uuid);
        for (i, m) in self.metablocks.iter().enumerate() {
            let at = METABLOCKS_OFFSET + i * METABLOCK_SIZE;
            m.write_to(&mut b[at..at + METABLOCK_SIZE]);
        }
    }

    /// Computes the checksum over a header block (checksum field zero) and the
    /// following `data` lines, and stores it in the header block.
    pub fn seal(header_block: &mut [u8], data: &[u8]) -> u32 {
        put_u32(header_block, SEG_CHECKSUM_OFFSET, 0);
        let c = crc32c::crc32c_append(crc32c::crc32c(&header_block[..LINE_SIZE]), data);
        put_u32(header_block, SEG_CHECKSUM_OFFSET, c);
        c
    }

    /// [`SegmentHeader::seal`] from the crc32c of each data line instead of
    /// the data: the same checksum, in O(header) (each line's crc is folded
    /// in with a precomputed "append 4 KiB" operator).
    pub fn seal_lines(header_block: &mut [u8], line_crcs: impl Iterator<Item = u32>) -> u32 {
        put_u32(header_block, SEG_CHECKSUM_OFFSET, 0);
        let mut c = crc32c::crc32c(&header_block[..LINE_SIZE]);
        let shift = line_shift_tables();
        for line in line_crcs {
            // crc(A ‖ B) = crc(A) shifted over |B| zero bytes ^ crc(B)
            c = shift[0][(c & 0xFF) as usize]
                ^ shift[1][(c >> 8 & 0xFF) as usize]
                ^ shift[2][(c >> 16 & 0xFF) as usize]
                ^ shift[3][(c >> 24) as usize]
                ^ line;
        }
        put_u32(header_block, SEG_CHECKSUM_OFFSET, c);
        c
    }

    /// Verifies a parsed header's checksum against the segment's data lines.
    pub fn verify(header_block: &[u8], data: &[u8]) -> bool {
        let mut copy = header_block[..LINE_SIZE].to_vec();
        put_u32(&mut copy, SEG_CHECKSUM_OFFSET, 0);
        let c = crc32c::crc32c_append(crc32c::crc32c(&copy), data);
        c == get_u32(header_block, SEG_CHECKSUM_OFFSET)
    }

    /// Parses a header block found in `slot` of a cache of `nr_segments`
    /// segments formatted with `uuid`. Rejects anything that is not a
    /// well-formed header of that cache living where its id says it lives,
    /// including a header with a metablock whose line is beyond
    /// [`MAX_LINE`] (the engine never writes one; replaying it would
    /// truncate the line and write the data back elsewhere).
    pub fn parse(b: &[u8], slot: u64, nr_segments: u64, uuid: &[u8; 16]) -> Option<Self> {
        if b.len() < LINE_SIZE || b[0..4] != SEGMENT_MAGIC {
            return None;
        }
        if get_u16(b, 4) as u32 != FORMAT_VERSION || b[32..48] != uuid[..] {
            return None;
        }
        let global_id = get_u64(b, 8);
        let lap = get_u32(b, 24);
        let length = get_u32(b, 28);
        if global_id == 0
            || length as usize > LINES_PER_SEGMENT
            || slot_of(global_id, nr_segments) != slot
            || (global_id - 1) / nr_segments + 1 > u32::MAX as u64
            || lap_of(global_id, nr_segments) != lap
        {
            return None;
        }
        let mut metablocks = Vec::with_capacity(length as usize);
        for i in 0..length as usize {
            let at = METABLOCKS_OFFSET + i * METABLOCK_SIZE;
            let m = Metablock::read_from(&b[at..at + METABLOCK_SIZE]);
            // a line invalidated before sealing is a hole: device 0, no dirty bits
            if m.lap != lap
                || (m.device_id == 0) != (m.dirty_bits == 0)
                || m.sector % 8 != 0
                || m.sector / SECTORS_PER_LINE as u64 > MAX_LINE
            {
                return None;
            }
            metablocks.push(m);
        }
        Some(SegmentHeader {
            global_id,
            durable_id: get_u64(b, 16),
            lap,
            length,
            uuid: *uuid,
            checksum: get_u32(b, SEG_CHECKSUM_OFFSET),
            metablocks,
        })
    }
}

/// Other formats `format` refuses to overwrite without `force`: (name, offset, magic).
const FOREIGN_SIGNATURES: &[(&str, u64, &[u8])] = &[
    ("ext2/3/4 file system", 1080, &[0x53, 0xEF]),
    ("XFS file system", 0, b"XFSB"),
    ("btrfs file system", 65600, b"_BHRfS_M"),
    ("LVM2 physical volume", 536, b"LVM2 001"),
    ("LUKS encrypted volume", 0, b"LUKS\xba\xbe"),
    ("swap space", 4086, b"SWAPSPACE2"),
    ("bcache device", 4120, b"\xc6\x85\x73\xf6\x4e\x1a\x45\xca"),
    ("GPT partition table", 512, b"EFI PART"),
];

/// Names a recognisable signature in the first 68 KiB of a device, if any.
pub fn detect_signature(head: &[u8]) -> Option<&'static str> {
    if SuperBlockHeader::has_magic(head) {
        return Some("lc cache");
    }
    FOREIGN_SIGNATURES.iter().find_map(|(name, off, magic)| {
        let off = *off as usize;
        (head.len() >= off + magic.len() && &head[off..off + magic.len()] == *magic)
            .then_some(*name)
    })
}

/// Bytes of the device start that [`detect_signature`] looks at.
pub const SIGNATURE_PROBE_BYTES: usize = 68 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> SuperBlockHeader {
        SuperBlockHeader {
            version: FORMAT_VERSION,
            segment_size: SEGMENT_SIZE as u32,
            lines_per_segment: LINES_PER_SEGMENT as u32,
            nr_segments: 100,
            created_unix: 1_700_000_000,
            uuid: [7; 16],
        }
    }

    #[test]
    fn superblock_round_trip_and_corruption() {
        let h = header();
        let mut b = h.to_block();
        assert_eq!(SuperBlockHeader::parse(&b).unwrap(), h);
        b[30] ^= 1;
        assert!(matches!(
            SuperBlockHeader::parse(&b),
            Err(Error::Corrupt(_))
        ));
        assert!(matches!(
            SuperBlockHeader::parse(&vec![0; LINE_SIZE]),
            Err(Error::NotFormatted)
        ));
    }

    #[test]
    fn superblock_rejects_other_version() {
        let mut h = header();
        h.version = 2;
        assert!(matches!(
            SuperBlockHeader::parse(&h.to_block()),
            Err(Error::UnsupportedVersion(2))
        ));
    }

    #[test]
    fn newest_record_breaks_a_tie_by_the_block_of_the_sequence() {
        let sb = header();
        let rec = |sequence, last_migrated_segment_id| SuperBlockRecord {
            sequence,
            last_migrated_segment_id,
            uuid: sb.uuid,
            durable_segment_id: 0,
        };
        let (a, b) = (rec(7, 1).to_block(), rec(7, 2).to_block());
        // sequence 7 belongs in block 1, wherever it is found
        for blocks in [[&a[..], &b[..]], [&b[..], &a[..]]] {
            let records = records_newest_first(blocks, &sb);
            assert_eq!(records.len(), 2);
            assert_eq!(records[0], SuperBlockRecord::parse(blocks[1]).unwrap());
            assert_eq!(newest_record(&records, sb.nr_segments).unwrap(), records[0]);
        }
        let high = rec(8, 0).to_block();
        assert_eq!(records_newest_first([&high, &a], &sb)[0].sequence, 8);
        // a newest record lc cannot have written: no fall-back to the older one
        let limit = segment_id_limit(sb.nr_segments);
        for bad in [
            rec(u64::MAX, 0),
            rec(MAX_RECORD_SEQUENCE, 0),
            rec(MAX_RESUMABLE_SEQUENCE + 1, 0),
            rec(9, limit),
            rec(9, u64::MAX),
        ] {
            let records = records_newest_first([&a, &bad.to_block()], &sb);
            assert!(newest_record(&records, sb.nr_segments).is_err());
        }
        for good in [rec(9, limit - 1), rec(MAX_RESUMABLE_SEQUENCE, 0)] {
            assert!(newest_record(
                &records_newest_first([&good.to_block(), &a], &sb),
                sb.nr_segments
            )
            .is_ok());
        }
        assert!(newest_record(&[], sb.nr_segments).is_err());
    }

    #[test]
    fn geometry_helpers() {
        assert_eq!(LINES_PER_SEGMENT, 255);
        assert_eq!(slot_of(1, 10), 0);
        assert_eq!(slot_of(11, 10), 0);
        assert_eq!(lap_of(10, 10), 1);
        assert_eq!(lap_of(11, 10), 2);
        assert_eq!(segment_offset(0), 1 << 20);
        assert_eq!(segments_for(3 << 20), 2);
        assert_eq!(segments_for(100), 0);
    }

    #[test]
    fn detects_signatures() {
        let mut head = vec![0u8; SIGNATURE_PROBE_BYTES];
        assert_eq!(detect_signature(&head), None);
        head[1080] = 0x53;
        head[1081] = 0xEF;
        assert_eq!(detect_signature(&head), Some("ext2/3/4 file system"));
        head[..4096].copy_from_slice(&header().to_block());
        assert_eq!(detect_signature(&head), Some("lc cache"));
    }

    fn seg_header(id: u64, nr: u64, mbs: Vec<Metablock>) -> SegmentHeader {
        SegmentHeader {
            global_id: id,
            durable_id: id.saturating_sub(2),
            lap: lap_of(id, nr),
            length: mbs.len() as u32,
            uuid: [3; 16],
            checksum: 0,
            metablocks: mbs,
        }
    }

    proptest! {
        #[test]
        fn record_round_trip(seq in any::<u64>(), l in any::<u64>(), d in any::<u64>(), uuid in any::<[u8; 16]>()) {
            let r = SuperBlockRecord { sequence: seq, last_migrated_segment_id: l, uuid, durable_segment_id: d };
            prop_assert_eq!(SuperBlockRecord::parse(&r.to_block()), Some(r));
        }

        #[test]
        fn segment_header_round_trip(
            id in 1u64..1_000_000,
            nr in 2u64..5000,
            lines in proptest::collection::vec((0u64..1 << 40, 1u8..=255, 1u8..=255), 0..=255),
        ) {
            let lap = lap_of(id, nr);
            let mbs: Vec<_> = lines
                .iter()
                .map(|&(s, d, bits)| Metablock { sector: s * 8, device_id: d, dirty_bits: bits, lap })
                .collect();
            let h = seg_header(id, nr, mbs);
            let mut block = vec![0u8; LINE_SIZE];
            h.write_to(&mut block);
            let data = vec![0xAB; h.length as usize * LINE_SIZE];
            let c = SegmentHeader::seal(&mut block, &data);
            let parsed = SegmentHeader::parse(&block, slot_of(id, nr), nr, &[3; 16]).unwrap();
            prop_assert_eq!(parsed.checksum, c);
            prop_assert_eq!(SegmentHeader { checksum: 0, ..parsed }, h);
            prop_assert!(SegmentHeader::verify(&block, &data));
            // wrong slot, wrong uuid, flipped data: all rejected
            prop_assert!(SegmentHeader::parse(&block, (slot_of(id, nr) + 1) % nr, nr, &[3; 16]).is_none());
            prop_assert!(SegmentHeader::parse(&block, slot_of(id, nr), nr, &[4; 16]).is_none());
            if !data.is_empty() {
                let mut bad = data.clone();
                bad[data.len() / 2] ^= 0x10;
                prop_assert!(!SegmentHeader::verify(&block, &bad));
            }
        }

        #[test]
        fn sealing_from_line_crcs_equals_sealing_the_data(
            header_bytes in proptest::collection::vec(any::<u8>(), LINE_SIZE),
            seeds in proptest::collection::vec(any::<u64>(), 0..=20),
        ) {
            let data: Vec<u8> = seeds
                .iter()
                .flat_map(|&s| {
                    let mut x = s | 1;
                    (0..LINE_SIZE).map(move |_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                })
                .collect();
            let mut a = header_bytes.clone();
            let mut b = header_bytes;
            let whole = SegmentHeader::seal(&mut a, &data);
            let folded = SegmentHeader::seal_lines(
                &mut b,
                data.chunks(LINE_SIZE).map(crc32c::crc32c),
            );
            prop_assert_eq!(whole, folded);
            prop_assert_eq!(a, b);
        }

        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4200), slot in 0u64..10) {
            let _ = SuperBlockHeader::parse(&bytes);
            let _ = SuperBlockRecord::parse(&bytes);
            let _ = SegmentHeader::parse(&bytes, slot, 10, &[0; 16]);
            let _ = detect_signature(&bytes);
        }
    }
}
