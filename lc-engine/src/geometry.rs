//! Where things are: segment slots on the cache device, cache lines in
//! segments, sectors in lines. Pure arithmetic on the layout the crate
//! documentation describes (its sizes are in [`crate::format`]); no state,
//! no I/O.
//!
//! A *cache line index* (`u32`, what the [`crate::index`] stores) numbers
//! the data lines of all slots in order: line `i` of slot `s` is
//! `s × LINES_PER_SEGMENT + i`.

use crate::format::{
    LINES_PER_SEGMENT, LINE_SIZE, SECTORS_PER_LINE, SEGMENT_SIZE, SUPERBLOCK_REGION,
};

/// Offset in bytes of segment `slot` (0-based) on the cache device.
pub fn segment_offset(slot: u64) -> u64 {
    SUPERBLOCK_REGION + slot * SEGMENT_SIZE as u64
}

/// Slot (0-based segment index on the device) that holds segment `global_id`.
pub fn slot_of(global_id: u64, nr_segments: u64) -> u64 {
    (global_id - 1) % nr_segments
}

/// Bytes of data lines in a segment (its RAM buffer; the header is built apart).
pub(crate) const SEGMENT_DATA_BYTES: usize = LINES_PER_SEGMENT * LINE_SIZE;

/// Segment slot that cache line `idx` lies in.
pub(crate) fn slot_of_line(idx: u32) -> u64 {
    idx as u64 / LINES_PER_SEGMENT as u64
}

/// Line number of cache line `idx` within its segment (its place in the
/// segment's RAM data buffer).
pub(crate) fn line_in_segment(idx: u32) -> usize {
    idx as usize % LINES_PER_SEGMENT
}

/// Line index of line `i` of segment slot `slot`.
pub(crate) fn line_index(slot: u64, i: usize) -> u32 {
    (slot as usize * LINES_PER_SEGMENT + i) as u32
}

/// Device offset of the data of cache line `idx`.
pub(crate) fn line_offset(idx: u32) -> u64 {
    segment_offset(slot_of_line(idx)) + (1 + line_in_segment(idx) as u64) * LINE_SIZE as u64
}

/// Splits a sector range into per-line pieces: (line, first sector in line, sectors).
pub(crate) fn line_pieces(sector: u64, nr: u64) -> impl Iterator<Item = (u64, usize, usize)> {
    let end = sector + nr;
    let mut s = sector;
    std::iter::from_fn(move || {
        if s >= end {
            return None;
        }
        let line = s / SECTORS_PER_LINE as u64;
        let s0 = (s % SECTORS_PER_LINE as u64) as usize;
        let n = ((SECTORS_PER_LINE - s0) as u64).min(end - s) as usize;
        s += n as u64;
        Some((line, s0, n))
    })
}

/// Dirty-bit mask of `n` sectors from sector `s0` of a line.
pub(crate) fn mask_of(s0: usize, n: usize) -> u8 {
    (((1u16 << n) - 1) << s0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_split_at_line_boundaries() {
        let v: Vec<_> = line_pieces(6, 12).collect();
        assert_eq!(v, vec![(0, 6, 2), (1, 0, 8), (2, 0, 2)]);
        assert_eq!(mask_of(6, 2), 0xC0);
        assert_eq!(mask_of(0, 8), 0xFF);
    }

    #[test]
    fn a_line_index_names_its_slot_and_place() {
        let idx = line_index(3, 7);
        assert_eq!((slot_of_line(idx), line_in_segment(idx)), (3, 7));
        assert_eq!(line_offset(idx), segment_offset(3) + 8 * LINE_SIZE as u64);
        assert_eq!(slot_of(1, 10), 0);
        assert_eq!(slot_of(11, 10), 0);
    }
}
