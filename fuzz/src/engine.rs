//! The checks the engine's fuzz targets run on each input: superblock and
//! record parsing, segment-header parsing, and recovery (resume and offline
//! inspection) over a whole cache device built from the input.
//!
//! Shared by the fuzz targets (`fuzz/fuzz_targets/`) and by the
//! deterministic regression tests (`lc-engine/tests/fuzz_regressions.rs`
//! includes this file), so a crash input replays exactly as it was found.
//! Uses only lc-engine's public API, crc32c and std. Every check panics on a
//! violation; libFuzzer reports the panic with the input.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lc_engine::format::{
    detect_signature, lap_of, segment_offset, segments_for, slot_of, Metablock, SegmentHeader,
    SuperBlockHeader, SuperBlockRecord, FORMAT_VERSION, LINES_PER_SEGMENT, LINE_SIZE,
    METABLOCKS_OFFSET, METABLOCK_SIZE, MIN_SEGMENTS, RECORD_OFFSETS, SECTORS_PER_LINE,
    SEGMENT_SIZE, SIGNATURE_PROBE_BYTES, SUPERBLOCK_MAGIC, SUPERBLOCK_REGION,
};
use lc_engine::{
    format_cache_device, read_superblock, rescue, BlockDevice, Cache, CacheOptions, Error,
    MAX_CACHE_BYTES, MIN_CACHE_BYTES,
};

/// Uuid of every cache image the recovery target builds.
pub const UUID: [u8; 16] = *b"lc-fuzz-uuid-v1!";
/// Another cache's uuid: its records and segments must never be used.
pub const OTHER_UUID: [u8; 16] = *b"lc-fuzz-other-v1";

const SEGMENT_MAGIC: &[u8; 4] = b"lcSG";
const RECORD_MAGIC: &[u8; 4] = b"lcRC";

/// Fuzz input read as a stream of fields; past its end every field is 0.
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    /// Reads `data` from its start.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data, pos: 0 }
    }

    /// True once every byte was read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    /// `n` bytes, zero-padded past the end.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        let start = self.pos.min(self.data.len());
        let avail = (self.data.len() - start).min(n);
        v[..avail].copy_from_slice(&self.data[start..start + avail]);
        self.pos += n;
        v
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes(4).try_into().expect("4 bytes"))
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes(8).try_into().expect("8 bytes"))
    }

    /// A number that is usually small: 0..=127 from one byte, or, when that
    /// byte's top bit is set, a raw u64 from the next eight (so extreme
    /// values stay one mutation away).
    pub fn num(&mut self) -> u64 {
        let b = self.u8();
        if b & 0x80 == 0 {
            b as u64
        } else {
            self.u64()
        }
    }

    /// What is left.
    pub fn rest(&mut self) -> &'a [u8] {
        let r = &self.data[self.pos.min(self.data.len())..];
        self.pos = self.data.len();
        r
    }
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// An in-memory device that panics on any I/O the engine must never issue
/// (unaligned, or beyond the end of the device), and counts writes. Bytes
/// past `data` read as zero, so a large device costs only what is written.
pub struct MemDisk {
    size: u64,
    data: Mutex<Vec<u8>>,
    /// Writes served (inspection must issue none).
    pub writes: AtomicU64,
}

impl MemDisk {
    /// A device of `size` bytes (rounded down to 512) whose first bytes are `data`.
    pub fn new(mut data: Vec<u8>, size: u64) -> Arc<Self> {
        let size = size & !511;
        data.truncate(size as usize);
        Arc::new(MemDisk {
            size,
            data: Mutex::new(data),
            writes: AtomicU64::new(0),
        })
    }

    /// A device holding exactly `image`.
    pub fn from_image(image: Vec<u8>) -> Arc<Self> {
        let size = image.len() as u64;
        Self::new(image, size)
    }

    /// `len` bytes at `offset`.
    pub fn bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.read_at(&mut b, offset).expect("in range");
        b
    }

    fn check(&self, what: &str, offset: u64, len: usize) {
        assert!(
            offset % 512 == 0 && len % 512 == 0,
            "engine issued an unaligned {what}: offset {offset}, {len} bytes"
        );
        assert!(
            offset.checked_add(len as u64).is_some_and(|end| end <= self.size),
            "engine issued a {what} beyond the device: offset {offset}, {len} bytes, device has {} bytes",
            self.size
        );
    }
}

impl BlockDevice for MemDisk {
    fn size_bytes(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check("read", offset, buf.len());
        let data = self.data.lock().expect("disk");
        let off = offset as usize;
        let avail = data.len().saturating_sub(off).min(buf.len());
        if avail > 0 {
            buf[..avail].copy_from_slice(&data[off..off + avail]);
        }
        buf[avail..].fill(0);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check("write", offset, buf.len());
        self.writes.fetch_add(1, Ordering::SeqCst);
        let mut data = self.data.lock().expect("disk");
        let end = offset as usize + buf.len();
        if data.len() < end {
            data.resize(end, 0);
        }
        data[offset as usize..end].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        // like FileDevice: the range is clipped at the end of the device
        assert!(
            offset % 512 == 0 && offset <= self.size,
            "engine discarded at {offset} on a device of {} bytes",
            self.size
        );
        self.writes.fetch_add(1, Ordering::SeqCst);
        let mut data = self.data.lock().expect("disk");
        let start = (offset as usize).min(data.len());
        let end = (offset.saturating_add(len).min(self.size) as usize).min(data.len());
        data[start..end].fill(0);
        Ok(())
    }

    fn describe(&self) -> String {
        format!("fuzz disk of {} bytes", self.size)
    }
}

// ---------------------------------------------------------------------------
// superblock: the header, the record, signature detection, read_superblock
// and format_cache_device.

/// What `SuperBlockHeader::parse` must decide for a block whose magic and
/// checksum are valid, from the format documentation alone.
fn header_verdict(b: &[u8]) -> Result<(), &'static str> {
    let version = get_u32(b, 8);
    if version != FORMAT_VERSION {
        return Err("version");
    }
    let nr = get_u64(b, 24);
    if get_u32(b, 12) as usize != SEGMENT_SIZE
        || get_u32(b, 16) as usize != LINES_PER_SEGMENT
        || nr < MIN_SEGMENTS
        // every line index below u32::MAX, the index's empty marker
        || nr >= u32::MAX as u64 / LINES_PER_SEGMENT as u64
    {
        return Err("geometry");
    }
    Ok(())
}

fn check_header_fields(h: &SuperBlockHeader, b: &[u8]) {
    assert_eq!(h.version, get_u32(b, 8));
    assert_eq!(h.segment_size, get_u32(b, 12));
    assert_eq!(h.lines_per_segment, get_u32(b, 16));
    assert_eq!(h.nr_segments, get_u64(b, 24));
    assert_eq!(h.created_unix, get_u64(b, 32));
    assert_eq!(h.uuid[..], b[40..56]);
    assert_eq!(header_verdict(b), Ok(()));
    assert_eq!(SuperBlockHeader::parse(&h.to_block()).ok(), Some(*h));
}

/// The superblock target: arbitrary bytes as a superblock header block, a
/// record block and the start of a device.
pub fn superblock(data: &[u8]) {
    // as they are
    let crc_ok = data.len() >= LINE_SIZE && crc32c::crc32c(&data[..56]) == get_u32(data, 56);
    match SuperBlockHeader::parse(data) {
        Ok(h) => check_header_fields(&h, data),
        Err(Error::NotFormatted) => {
            assert!(data.len() < LINE_SIZE || data[..8] != SUPERBLOCK_MAGIC)
        }
        Err(Error::Corrupt(_)) | Err(Error::UnsupportedVersion(_)) => {
            assert!(data.len() >= LINE_SIZE && data[..8] == SUPERBLOCK_MAGIC);
            assert!(!crc_ok || header_verdict(data).is_err());
        }
        Err(e) => panic!("unexpected error parsing a superblock: {e}"),
    }
    if let Some(r) = SuperBlockRecord::parse(data) {
        assert_eq!(SuperBlockRecord::parse(&r.to_block()), Some(r));
    }
    let _ = detect_signature(data);

    // with magic and checksums made valid, so the checks behind them run
    let mut b = data.to_vec();
    b.resize(b.len().max(LINE_SIZE), 0);
    b[..8].copy_from_slice(&SUPERBLOCK_MAGIC);
    let c = crc32c::crc32c(&b[..56]);
    put_u32(&mut b, 56, c);
    match (SuperBlockHeader::parse(&b), header_verdict(&b)) {
        (Ok(h), Ok(())) => check_header_fields(&h, &b),
        (Err(Error::UnsupportedVersion(v)), Err("version")) => assert_eq!(v, get_u32(&b, 8)),
        (Err(Error::Corrupt(_)), Err("geometry")) => {}
        (got, want) => panic!("superblock parse gave {got:?}, the format says {want:?}"),
    }
    let mut r = b.clone();
    r[..4].copy_from_slice(RECORD_MAGIC);
    let c = crc32c::crc32c(&r[..48]);
    put_u32(&mut r, 48, c);
    let rec = SuperBlockRecord::parse(&r).expect("a record with a valid checksum");
    assert_eq!(
        (
            rec.sequence,
            rec.last_migrated_segment_id,
            rec.durable_segment_id
        ),
        (get_u64(&r, 8), get_u64(&r, 16), get_u64(&r, 40))
    );
    assert_eq!(rec.uuid[..], r[24..40]);

    // read_superblock on a (sparse) device of a size chosen by the input
    let size = (get_u64(&b, 64) % (1 << 40)).max(b.len() as u64);
    let disk = MemDisk::new(b.clone(), size);
    match read_superblock(&*disk) {
        Ok(h) => {
            check_header_fields(&h, &b);
            assert!(SUPERBLOCK_REGION + h.nr_segments * SEGMENT_SIZE as u64 <= disk.size_bytes());
        }
        Err(_) => assert!(
            header_verdict(&b).is_err()
                || SUPERBLOCK_REGION
                    .saturating_add(get_u64(&b, 24).saturating_mul(SEGMENT_SIZE as u64))
                    > disk.size_bytes()
        ),
    }

    // format_cache_device over the raw bytes: refuses what it must, writes
    // nothing when it refuses, and what it writes reads back
    let disk = MemDisk::new(data.to_vec(), size);
    let head = disk.bytes(0, SIGNATURE_PROBE_BYTES.min(disk.size_bytes() as usize));
    let force = get_u64(&b, 72) & 1 == 1;
    let res = format_cache_device(&*disk, force);
    match res {
        Err(Error::TooSmall { .. }) => assert!(disk.size_bytes() < MIN_CACHE_BYTES),
        Err(Error::TooLarge { .. }) => assert!(disk.size_bytes() > MAX_CACHE_BYTES),
        Err(Error::HasSignature(s)) => {
            assert!(!force);
            assert_eq!(detect_signature(&head), Some(s));
        }
        Ok(h) => {
            assert!(disk.size_bytes() >= MIN_CACHE_BYTES);
            assert!(force || detect_signature(&head).is_none());
            assert_eq!(h.nr_segments, segments_for(disk.size_bytes()));
            assert_eq!(read_superblock(&*disk).ok(), Some(h));
            if h.nr_segments <= 8 {
                // (inspection reads every segment: only small devices)
                let inspected = rescue::inspect(&*disk).expect("a fresh cache inspects");
                assert!(inspected.is_clean() && inspected.log == (1, 0));
            }
        }
        Err(e) => panic!("unexpected format error: {e}"),
    }
    if res.is_err() {
        assert_eq!(
            disk.writes.load(Ordering::SeqCst),
            0,
            "a refused format wrote"
        );
    }
}

// ---------------------------------------------------------------------------
// segment: SegmentHeader::parse, write_to, seal and verify.

/// What `SegmentHeader::parse` must return, from the format documentation.
fn expected_segment(b: &[u8], slot: u64, nr: u64, uuid: &[u8; 16]) -> Option<SegmentHeader> {
    if b.len() < LINE_SIZE
        || &b[0..4] != SEGMENT_MAGIC
        || get_u16(b, 4) as u32 != FORMAT_VERSION
        || b[32..48] != uuid[..]
    {
        return None;
    }
    let global_id = get_u64(b, 8);
    let lap = get_u32(b, 24);
    let length = get_u32(b, 28);
    if global_id == 0 || length as usize > LINES_PER_SEGMENT {
        return None;
    }
    if (global_id - 1) % nr != slot || (global_id - 1) / nr + 1 != lap as u64 {
        return None;
    }
    let metablocks: Vec<Metablock> = (0..length as usize)
        .map(|i| Metablock::read_from(&b[METABLOCKS_OFFSET + i * METABLOCK_SIZE..]))
        .collect();
    // a line beyond what the index keeps (48 bits) makes the header invalid
    let ok = metablocks.iter().all(|m| {
        m.lap == lap
            && (m.device_id == 0) == (m.dirty_bits == 0)
            && m.sector % 8 == 0
            && m.sector / SECTORS_PER_LINE as u64 <= lc_engine::index::MAX_LINE
    });
    ok.then(|| SegmentHeader {
        global_id,
        durable_id: get_u64(b, 16),
        lap,
        length,
        uuid: *uuid,
        checksum: get_u32(b, 48),
        metablocks,
    })
}

/// The segment target: a header block (optionally fixed up so it passes
/// the magic, uuid and id checks) and data lines.
pub fn segment(data: &[u8]) {
    let mut inp = Input::new(data);
    let nr = (inp.u32() as u64 % (u32::MAX as u64 / LINES_PER_SEGMENT as u64)).max(MIN_SEGMENTS);
    let slot = inp.u64() % nr;
    let flags = inp.u8();
    let mut block = inp.bytes(LINE_SIZE);
    let lines = inp.rest();
    if flags & 1 != 0 {
        block[0..4].copy_from_slice(SEGMENT_MAGIC);
        block[4..6].copy_from_slice(&(FORMAT_VERSION as u16).to_le_bytes());
        block[32..48].copy_from_slice(&UUID);
    }
    if flags & 2 != 0 {
        let id = slot + 1 + nr * (get_u64(&block, 8) % 1_000_000);
        put_u64(&mut block, 8, id);
        let lap = lap_of(id, nr);
        put_u32(&mut block, 24, lap);
        let length = block[28] as u32;
        put_u32(&mut block, 28, length);
        for i in 0..length as usize {
            let at = METABLOCKS_OFFSET + i * METABLOCK_SIZE;
            put_u32(&mut block, at + 10, lap);
            if flags & 4 != 0 {
                let s = get_u64(&block, at) & !7;
                put_u64(&mut block, at, s);
                if block[at + 8] == 0 {
                    block[at + 9] = 0;
                } else if block[at + 9] == 0 {
                    block[at + 9] = 1;
                }
            }
        }
    }
    let parsed = SegmentHeader::parse(&block, slot, nr, &UUID);
    assert_eq!(parsed, expected_segment(&block, slot, nr, &UUID));
    assert_eq!(SegmentHeader::parse(&block, slot, nr, &OTHER_UUID), None);
    let short = lines.len() % LINE_SIZE;
    assert_eq!(SegmentHeader::parse(&block[..short], slot, nr, &UUID), None);
    if let Some(h) = &parsed {
        assert!(h.metablocks.len() == h.length as usize && h.length as usize <= LINES_PER_SEGMENT);
        assert_eq!(slot_of(h.global_id, nr), slot);
        assert_eq!(lap_of(h.global_id, nr), h.lap);
        // written out again it parses to the same header
        let mut again = vec![0u8; LINE_SIZE];
        h.write_to(&mut again);
        let back = SegmentHeader::parse(&again, slot, nr, &UUID).expect("own header parses");
        assert_eq!(
            back,
            SegmentHeader {
                checksum: 0,
                ..h.clone()
            }
        );
    }
    // checksums over any data: seal then verify; one changed byte fails
    let _ = SegmentHeader::verify(&block, lines);
    let mut sealed = block.clone();
    SegmentHeader::seal(&mut sealed, lines);
    assert!(SegmentHeader::verify(&sealed, lines));
    let mut bad = lines.to_vec();
    if !bad.is_empty() {
        let at = get_u64(&block, 100) as usize % bad.len();
        bad[at] ^= block[108] | 1;
        assert!(!SegmentHeader::verify(&sealed, &bad));
    }
    let mut torn = sealed.clone();
    let at = 64 + get_u64(&block, 110) as usize % (LINE_SIZE - 64);
    torn[at] ^= 0x80;
    assert!(!SegmentHeader::verify(&torn, lines));
}

// ---------------------------------------------------------------------------
// recovery: resume and inspect over a cache device built from the input.

/// A cache device image built from fuzz input: a valid superblock (or one
/// with a fuzzed segment count), records and segments made the way the
/// engine makes them (or raw), optional damage, then raw byte patches.
///
/// Encoding (every field reads 0 past the end of the input, so the empty
/// input is a freshly formatted cache of 2 segments):
/// - byte: segments - 2 (bits 0-1); bit 4: the superblock names
///   [`Input::num`] segments instead
/// - per record block (2): byte kind % 4: 0 as format writes it, 1 fields
///   `num` sequence, `num` last_migrated, `num` durable, 2 the same with
///   another cache's uuid, 3 64 raw bytes
/// - per slot: byte kind % 4: 0 empty; 1-2 a sealed segment: `num` laps
///   past the first (id = slot + 1 + nr × laps), durable id (`num` if
///   kind bit 4, else id - 1 - byte % 3), byte length, then per line a
///   byte (device = bits 0-1, line = bits 2-5; with kind bit 5 a `num`
///   sector follows instead) and a dirty-bits byte for devices ≠ 0, and
///   with kind bit 6 a byte flipped after sealing (u32 offset, byte); 3 a
///   4 KiB raw header, with magic, version and uuid fixed when kind bit 4
///   is set
/// - the rest: (u32 offset, byte) patches anywhere in the image.
pub fn build_image(data: &[u8]) -> Vec<u8> {
    let mut inp = Input::new(data);
    let h0 = inp.u8();
    let nr = MIN_SEGMENTS + (h0 & 3) as u64;
    let mut img = vec![0u8; (SUPERBLOCK_REGION + nr * SEGMENT_SIZE as u64) as usize];
    let sb = SuperBlockHeader {
        version: FORMAT_VERSION,
        segment_size: SEGMENT_SIZE as u32,
        lines_per_segment: LINES_PER_SEGMENT as u32,
        nr_segments: if h0 & 0x10 != 0 { inp.num() } else { nr },
        created_unix: 1_700_000_000,
        uuid: UUID,
    };
    img[..LINE_SIZE].copy_from_slice(&sb.to_block());
    for (seq, off) in RECORD_OFFSETS.iter().enumerate() {
        let off = *off as usize;
        let kind = inp.u8() % 4;
        let block = match kind {
            0 => SuperBlockRecord {
                sequence: seq as u64,
                last_migrated_segment_id: 0,
                uuid: UUID,
                durable_segment_id: 0,
            }
            .to_block(),
            1 | 2 => SuperBlockRecord {
                sequence: inp.num(),
                last_migrated_segment_id: inp.num(),
                uuid: if kind == 1 { UUID } else { OTHER_UUID },
                durable_segment_id: inp.num(),
            }
            .to_block(),
            _ => inp.bytes(64),
        };
        img[off..off + block.len()].copy_from_slice(&block);
    }
    for slot in 0..nr {
        let kind = inp.u8();
        let at = segment_offset(slot) as usize;
        match kind % 4 {
            0 => {}
            1 | 2 => {
                let lapm = inp.num();
                let id = lapm
                    .checked_mul(nr)
                    .and_then(|x| x.checked_add(slot + 1))
                    .unwrap_or(slot + 1);
                let durable_id = if kind & 0x10 != 0 {
                    inp.num()
                } else {
                    id.saturating_sub(1 + (inp.u8() % 3) as u64)
                };
                let length = inp.u8() as usize;
                let lap = lap_of(id, nr);
                let mut metablocks = Vec::with_capacity(length);
                for i in 0..length {
                    let b = inp.u8();
                    let device_id = b & 3;
                    let sector = if kind & 0x20 != 0 {
                        inp.num() & !7
                    } else {
                        ((b >> 2) & 15) as u64 * SECTORS_PER_LINE as u64
                    };
                    let dirty_bits = match device_id {
                        0 => 0,
                        _ => inp.u8().max(1),
                    };
                    metablocks.push(Metablock {
                        sector,
                        device_id,
                        dirty_bits,
                        lap,
                    });
                    // recognisable data: (id, line) at both ends of the line
                    let line = at + (1 + i) * LINE_SIZE;
                    put_u64(&mut img, line, id);
                    put_u64(&mut img, line + 8, i as u64);
                    put_u64(&mut img, line + LINE_SIZE - 8, !id);
                }
                let h = SegmentHeader {
                    global_id: id,
                    durable_id,
                    lap,
                    length: length as u32,
                    uuid: UUID,
                    checksum: 0,
                    metablocks,
                };
                let (head, rest) = img[at..at + SEGMENT_SIZE].split_at_mut(LINE_SIZE);
                h.write_to(head);
                SegmentHeader::seal(head, &rest[..length * LINE_SIZE]);
                if kind & 0x40 != 0 {
                    let off = inp.u32() as usize % (LINE_SIZE * (1 + length));
                    img[at + off] ^= inp.u8().max(1);
                }
            }
            _ => {
                let raw = inp.bytes(LINE_SIZE);
                img[at..at + LINE_SIZE].copy_from_slice(&raw);
                if kind & 0x10 != 0 {
                    img[at..at + 4].copy_from_slice(SEGMENT_MAGIC);
                    img[at + 4..at + 6].copy_from_slice(&(FORMAT_VERSION as u16).to_le_bytes());
                    img[at + 32..at + 48].copy_from_slice(&UUID);
                }
            }
        }
    }
    while !inp.is_empty() {
        let off = inp.u32() as usize % img.len();
        img[off] = inp.u8();
    }
    img
}

/// One segment of the candidate log, as the model sees it.
struct LogSegment {
    slot: u64,
    header: SegmentHeader,
    checksum_ok: bool,
}

/// What recovery of an image must give, computed from the format
/// documentation (crate docs of lc-engine and `recover.rs`).
#[derive(Debug, Default)]
struct Expected {
    /// `None`: resume and inspect must refuse the device.
    ok: bool,
    migrated: u64,
    replayed: u64,
    verified: u64,
    rejected: u64,
    end: u64,
    /// Slots whose header resume must zero (ids beyond the recovered log).
    zeroed: Vec<u64>,
    /// (device, line) -> (slot, line in segment, dirty bits) after replay.
    lines: BTreeMap<(u8, u64), (u64, usize, u8)>,
    /// What inspection must report (its log starts after `migrated` too):
    /// last id of its log (every checksum verified), the bad segment, dirty
    /// lines per device.
    inspect_last: u64,
    inspect_bad: Option<u64>,
    inspect_dirty: BTreeMap<u8, u64>,
}

fn seg_header_block(img: &[u8], slot: u64) -> &[u8] {
    let at = segment_offset(slot) as usize;
    &img[at..at + LINE_SIZE]
}

fn seg_checksum_ok(img: &[u8], slot: u64, h: &SegmentHeader) -> bool {
    let at = segment_offset(slot) as usize;
    let end = at + LINE_SIZE * (1 + h.length as usize);
    SegmentHeader::verify(&img[at..at + LINE_SIZE], &img[at + LINE_SIZE..end])
}

fn replay_into(lines: &mut BTreeMap<(u8, u64), (u64, usize, u8)>, slot: u64, h: &SegmentHeader) {
    for (i, m) in h.metablocks.iter().enumerate() {
        if m.device_id != 0 {
            let key = (m.device_id, m.sector / SECTORS_PER_LINE as u64);
            lines.insert(key, (slot, i, m.dirty_bits));
        }
    }
}

fn model(img: &[u8]) -> Expected {
    let mut e = Expected::default();
    let Ok(sb) = SuperBlockHeader::parse(&img[..LINE_SIZE]) else {
        return e;
    };
    if SUPERBLOCK_REGION + sb.nr_segments * SEGMENT_SIZE as u64 > img.len() as u64 {
        return e;
    }
    let nr = sb.nr_segments;
    // the newest valid record of this cache: highest sequence; of two with
    // one sequence (never written by lc), the one in block sequence % 2
    let Some((_, record)) = RECORD_OFFSETS
        .iter()
        .enumerate()
        .filter_map(|(i, &off)| {
            SuperBlockRecord::parse(&img[off as usize..off as usize + LINE_SIZE])
                .map(|r| (i as u64, r))
        })
        .filter(|(_, r)| r.uuid == sb.uuid)
        .max_by_key(|&(i, r)| (r.sequence, r.sequence % 2 == i))
    else {
        return e;
    };
    // a newest record lc could not have written makes the device corrupt:
    // a sequence that leaves too few successors for a running cache's
    // commits, or a log start whose id no header can carry
    if record.sequence > lc_engine::format::MAX_RESUMABLE_SEQUENCE
        || record.last_migrated_segment_id >= nr.saturating_mul(u32::MAX as u64)
    {
        return e;
    }
    e.ok = true;
    let migrated = record.last_migrated_segment_id;
    e.migrated = migrated;
    let headers: Vec<Option<SegmentHeader>> = (0..nr)
        .map(|slot| SegmentHeader::parse(seg_header_block(img, slot), slot, nr, &sb.uuid))
        .collect();

    // resume: the run of consecutive ids in log order from migrated + 1
    let mut run: Vec<LogSegment> = Vec::new();
    let first_slot = migrated % nr; // slot_of(migrated + 1)
    let mut expected = migrated.wrapping_add(1);
    for k in 0..nr {
        let slot = (first_slot + k) % nr;
        match &headers[slot as usize] {
            Some(h) if h.global_id == expected => {
                run.push(LogSegment {
                    slot,
                    header: h.clone(),
                    checksum_ok: seg_checksum_ok(img, slot, h),
                });
                expected = expected.wrapping_add(1);
            }
            _ => break,
        }
    }
    // a segment is trusted without its data when the record or a later
    // header of the run vouches that it was durable
    let vouched = run
        .iter()
        .fold(migrated.max(record.durable_segment_id), |v, s| {
            v.max(s.header.durable_id.min(s.header.global_id - 1))
        });
    e.end = migrated;
    for (k, s) in run.iter().enumerate() {
        if s.header.global_id <= vouched {
            e.replayed += 1;
        } else if s.checksum_ok {
            e.replayed += 1;
            e.verified += 1;
        } else {
            e.rejected = (run.len() - k) as u64;
            break;
        }
        replay_into(&mut e.lines, s.slot, &s.header);
        e.end = s.header.global_id;
    }
    e.zeroed = (0..nr)
        .filter(|&slot| {
            headers[slot as usize]
                .as_ref()
                .is_some_and(|h| h.global_id > e.end)
        })
        .collect();

    // inspection: ids from migrated + 1 while each has a valid checksum
    let by_id: BTreeMap<u64, (u64, &SegmentHeader)> = headers
        .iter()
        .enumerate()
        .filter_map(|(slot, h)| h.as_ref().map(|h| (h.global_id, (slot as u64, h))))
        .collect();
    let mut last = migrated;
    let mut lines = BTreeMap::new();
    while let Some((slot, h)) = by_id.get(&last.wrapping_add(1)) {
        if !seg_checksum_ok(img, *slot, h) {
            e.inspect_bad = Some(last + 1);
            break;
        }
        replay_into(&mut lines, *slot, h);
        last += 1;
    }
    e.inspect_last = last;
    for (dev, _) in lines.keys() {
        *e.inspect_dirty.entry(*dev).or_default() += 1;
    }
    e
}

/// Largest backing line whose data the recovery check reads back.
const CHECKED_LINES: u64 = 16;

/// What a read of backing `line` must return after recovery of `img`.
fn expected_line(img: &[u8], slot: u64, i: usize, bits: u8) -> Vec<u8> {
    let at = segment_offset(slot) as usize + (1 + i) * LINE_SIZE;
    let mut want = vec![0u8; LINE_SIZE];
    for s in 0..SECTORS_PER_LINE {
        if bits & (1 << s) != 0 {
            want[s * 512..(s + 1) * 512].copy_from_slice(&img[at + s * 512..at + (s + 1) * 512]);
        }
    }
    want
}

/// The recovery target: builds an image from `data` and checks it.
pub fn recovery(data: &[u8]) {
    let img = build_image(data);
    if known_bug(&img).is_some() && !check_known_bugs() {
        return;
    }
    check_recovery(img);
}

/// Whether to check inputs that reach a bug found earlier and not fixed
/// yet (environment variable `LC_FUZZ_KNOWN_BUGS` set): by default they are
/// skipped, so a short run looks for new bugs rather than finding these
/// again. Each has an ignored test in lc-engine/tests/fuzz_regressions.rs.
pub fn check_known_bugs() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("LC_FUZZ_KNOWN_BUGS").is_some())
}

/// The known, unfixed bug `img` reaches, if any (none at present: when a
/// finding cannot be fixed at once, a check for it goes here).
pub fn known_bug(_img: &[u8]) -> Option<&'static str> {
    None
}

/// Checks inspection and resume of a cache device holding `img` against
/// the model: never panics, never touches bytes outside the device, never
/// replays a segment whose checksum fails unless the record or a later
/// header vouches for it, replays exactly the log the format allows (the
/// same lines, with the same data), zeroes exactly the stale headers, and
/// resumes again to the same state after a clean stop.
pub fn check_recovery(img: Vec<u8>) {
    let want = model(&img);

    // offline inspection: same log and dirty lines, and no write
    let disk = MemDisk::from_image(img.clone());
    match rescue::inspect(&*disk) {
        Ok(got) => {
            assert!(want.ok, "inspect accepted a device resume must refuse");
            assert_eq!(
                got.log,
                (want.migrated.wrapping_add(1), want.inspect_last),
                "inspected log"
            );
            assert_eq!(got.bad_segment, want.inspect_bad, "bad segment");
            assert_eq!(got.dirty_lines, want.inspect_dirty, "inspected dirty lines");
            for s in &got.segments {
                let h = SegmentHeader::parse(
                    seg_header_block(&img, s.slot),
                    s.slot,
                    got.superblock.nr_segments,
                    &UUID,
                )
                .expect("inspect lists only valid headers");
                assert_eq!(s.checksum_ok, seg_checksum_ok(&img, s.slot, &h));
            }
        }
        Err(e) => assert!(!want.ok, "inspect refused a recoverable device: {e}"),
    }
    assert_eq!(disk.writes.load(Ordering::SeqCst), 0, "inspect wrote");

    // resume
    let disk = MemDisk::from_image(img.clone());
    let opts = CacheOptions { pool_segments: 2 };
    let (cache, report) = match Cache::resume_with_report(1, disk.clone(), opts.clone()) {
        Ok(x) => x,
        Err(e) => {
            assert!(!want.ok, "resume refused a recoverable device: {e}");
            return;
        }
    };
    assert!(want.ok, "resume accepted a device it must refuse");
    assert_eq!(
        (
            report.last_migrated_segment_id,
            report.replayed_segments,
            report.verified_segments,
            report.rejected_segments,
            report.last_replayed_segment_id,
            report.zeroed_headers,
        ),
        (
            want.migrated,
            want.replayed,
            want.verified,
            want.rejected,
            want.end,
            want.zeroed.len() as u64,
        ),
        "recovery report (left) differs from what the format allows (right)"
    );
    let nr = cache.nr_segments();
    for slot in 0..nr {
        let now = disk.bytes(segment_offset(slot), LINE_SIZE);
        if want.zeroed.contains(&slot) {
            assert!(
                now.iter().all(|&b| b == 0),
                "stale header in slot {slot} kept"
            );
        } else {
            assert_eq!(
                now,
                seg_header_block(&img, slot),
                "header in slot {slot} changed"
            );
        }
    }
    check_lines(&cache, &img, &want);
    cache.shutdown().expect("clean stop");
    drop(cache);

    // resumed again after the clean stop: the same log, nothing to verify
    let (cache, again) =
        Cache::resume_with_report(1, disk.clone(), opts).expect("resume after a clean stop");
    assert_eq!(
        (
            again.last_replayed_segment_id,
            again.replayed_segments,
            again.rejected_segments,
            again.zeroed_headers
        ),
        (want.end, want.replayed, 0, 0),
        "second resume"
    );
    check_lines(&cache, &img, &want);
    cache.shutdown().expect("clean stop");
}

/// Dirty-line counts per device and the data of the first lines of each
/// device as the replayed log says they must be.
fn check_lines(cache: &Cache, img: &[u8], want: &Expected) {
    let mut per_dev: BTreeMap<u8, u64> = BTreeMap::new();
    for (dev, _) in want.lines.keys() {
        *per_dev.entry(*dev).or_default() += 1;
    }
    for dev in 1..=255u8 {
        assert_eq!(
            cache.nr_dirty_caches(dev),
            per_dev.get(&dev).copied().unwrap_or(0),
            "dirty lines of device {dev}"
        );
    }
    assert_eq!(
        cache.status().nr_dirty_caches,
        want.lines.len() as u64,
        "dirty lines"
    );
    // each device's backing covers every line the log holds of it (attach
    // refuses a smaller one); only a line no device can hold (the last
    // index line) may keep its device unattached
    let mut unattached = std::collections::BTreeSet::new();
    for (&dev, _) in per_dev.iter() {
        let last = want
            .lines
            .keys()
            .filter(|(d, _)| *d == dev)
            .map(|&(_, l)| l)
            .max();
        let lines = last.map_or(0, |l| l + 1).max(CHECKED_LINES);
        let backing = MemDisk::new(Vec::new(), lines.saturating_mul(LINE_SIZE as u64));
        if let Err(e) = cache.attach_device(dev, backing) {
            if cache.devices().iter().any(|d| d.device_id == dev) {
                continue; // attached by an earlier check of this cache
            }
            assert!(
                lines > lc_engine::index::MAX_LINE,
                "device {dev} with lines up to {last:?} refused: {e}"
            );
            unattached.insert(dev);
        }
    }
    for (&(dev, line), &(slot, i, bits)) in want.lines.iter() {
        if line >= CHECKED_LINES || unattached.contains(&dev) {
            continue;
        }
        let mut got = vec![0u8; LINE_SIZE];
        cache
            .read(dev, line * SECTORS_PER_LINE as u64, &mut got)
            .expect("read a replayed line");
        assert!(
            got == expected_line(img, slot, i, bits),
            "device {dev} line {line}: data differs from segment slot {slot} line {i}"
        );
    }
}
