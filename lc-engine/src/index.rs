//! The in-RAM index: which cache line holds which backing line, and its dirty
//! bits, in about 14 bytes per cache line.
//!
//! Two tables:
//! - `lines`: one `u64` per cache line of the device, packing the backing
//!   line number (48 bits), the device id (8 bits, 0 = line unused) and the
//!   dirty bits (8 bits). Cache line `i` lives in segment slot `i / 255`.
//! - `table`: an open-addressing hash table of `u32` cache-line numbers with
//!   linear probing and backward-shift deletion, 1.5 slots per cache line. Keys
//!   are not stored twice: a probe compares against `lines`.

/// A backing line: (device id, line number = sector / 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LineKey {
    /// Device id, 1..=255.
    pub device_id: u8,
    /// Line number on the backing device (sector / 8).
    pub line: u64,
}

impl LineKey {
    fn packed(self) -> u64 {
        (self.device_id as u64) << 48 | (self.line & LINE_MASK)
    }
}

const LINE_MASK: u64 = (1 << 48) - 1;
const EMPTY: u32 = u32::MAX;

// The largest cache's last line index must not be the empty marker.
const _: () = assert!(
    crate::format::MAX_CACHE_SEGMENTS * crate::format::LINES_PER_SEGMENT as u64 <= EMPTY as u64
);

/// Largest backing line number the index can address (48 bits: 1 EiB devices).
pub const MAX_LINE: u64 = LINE_MASK;

/// What the index knows about one cache line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineInfo {
    /// The backing line it caches.
    pub key: LineKey,
    /// Dirty sectors (bit s = sector s of the line).
    pub dirty_bits: u8,
}

/// Maps backing lines to cache lines; see the module documentation.
pub struct Index {
    lines: Vec<u64>,
    table: Vec<u32>,
    dirty_per_device: Vec<u64>,
}

impl Index {
    /// An empty index for `nr_lines` cache lines.
    pub fn new(nr_lines: usize) -> Self {
        assert!(nr_lines < EMPTY as usize);
        let cap = (nr_lines + nr_lines / 2).max(16);
        Index {
            lines: vec![0; nr_lines],
            table: vec![EMPTY; cap],
            dirty_per_device: vec![0; 256],
        }
    }

    /// Bytes of RAM the index holds.
    pub fn ram_bytes(&self) -> usize {
        self.lines.len() * 8 + self.table.len() * 4 + self.dirty_per_device.len() * 8
    }

    /// Number of cache lines.
    pub fn nr_lines(&self) -> usize {
        self.lines.len()
    }

    fn home(&self, packed: u64) -> usize {
        let h = packed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let h = h ^ (h >> 29);
        ((h as u128 * self.table.len() as u128) >> 64) as usize
    }

    fn packed_of(&self, idx: u32) -> u64 {
        self.lines[idx as usize] & ((1 << 56) - 1)
    }

    /// Information about cache line `idx`, if it is in use.
    pub fn info(&self, idx: u32) -> Option<LineInfo> {
        let v = self.lines[idx as usize];
        let device_id = (v >> 48) as u8;
        (device_id != 0).then_some(LineInfo {
            key: LineKey {
                device_id,
                line: v & LINE_MASK,
            },
            dirty_bits: (v >> 56) as u8,
        })
    }

    /// Where `key` is in the table: `Ok((position, cache line))`, or
    /// `Err(position)` of the empty entry that ends its probe chain (where an
    /// insert of `key` goes).
    fn find(&self, key: LineKey) -> std::result::Result<(usize, u32), usize> {
        let p = key.packed();
        let n = self.table.len();
        let mut pos = self.home(p);
        loop {
            let e = self.table[pos];
            if e == EMPTY {
                return Err(pos);
            }
            if self.packed_of(e) == p {
                return Ok((pos, e));
            }
            pos = if pos + 1 == n { 0 } else { pos + 1 };
        }
    }

    /// The cache line holding `key`.
    pub fn lookup(&self, key: LineKey) -> Option<u32> {
        self.find(key).ok().map(|(_, e)| e)
    }

    /// Records that cache line `idx` (unused) now holds `key` with `dirty_bits`,
    /// replacing any other line holding `key` (which becomes unused and is
    /// returned). One probe of the table: the old line's entry is reused
    /// in place.
    pub fn insert(&mut self, key: LineKey, idx: u32, dirty_bits: u8) -> Option<LineInfo> {
        debug_assert!(key.device_id != 0 && key.line <= MAX_LINE);
        debug_assert!(self.info(idx).is_none(), "cache line {idx} still in use");
        let old = match self.find(key) {
            Ok((pos, e)) => {
                let old = self.info(e);
                self.lines[e as usize] = 0;
                self.table[pos] = idx;
                old
            }
            Err(pos) => {
                self.dirty_per_device[key.device_id as usize] += 1;
                self.table[pos] = idx;
                None
            }
        };
        self.lines[idx as usize] = key.packed() | (dirty_bits as u64) << 56;
        old
    }

    /// Moves the key of cache line `old` (in use) to cache line `new`
    /// (unused) with `dirty_bits`; `old` becomes unused. Probes only the
    /// table's line numbers, not the keys.
    pub fn replace(&mut self, old: u32, new: u32, dirty_bits: u8) {
        debug_assert!(self.info(new).is_none(), "cache line {new} still in use");
        let packed = self.packed_of(old);
        debug_assert!(packed >> 48 != 0, "cache line {old} not in use");
        let n = self.table.len();
        let mut pos = self.home(packed);
        while self.table[pos] != old {
            pos = if pos + 1 == n { 0 } else { pos + 1 };
        }
        self.table[pos] = new;
        self.lines[old as usize] = 0;
        self.lines[new as usize] = packed | (dirty_bits as u64) << 56;
    }

    /// Sets the dirty bits of cache line `idx` (in use).
    pub fn set_dirty(&mut self, idx: u32, bits: u8) {
        let v = &mut self.lines[idx as usize];
        *v = (*v & ((1 << 56) - 1)) | (bits as u64) << 56;
    }

    /// ORs more dirty bits into cache line `idx` (in use).
    pub fn add_dirty(&mut self, idx: u32, bits: u8) {
        self.lines[idx as usize] |= (bits as u64) << 56;
    }

    /// Forgets cache line `idx`; returns what it held.
    pub fn remove(&mut self, idx: u32) -> Option<LineInfo> {
        let info = self.info(idx)?;
        let n = self.table.len();
        let mut pos = self.home(info.key.packed());
        while self.table[pos] != idx {
            pos = if pos + 1 == n { 0 } else { pos + 1 };
        }
        // backward-shift deletion keeps every probe chain unbroken
        let mut hole = pos;
        let mut next = if hole + 1 == n { 0 } else { hole + 1 };
        loop {
            let e = self.table[next];
            if e == EMPTY {
                break;
            }
            let home = self.home(self.packed_of(e));
            // can `e` move back to `hole`? only if its home is not in (hole, next]
            let dist_home = (next + n - home) % n;
            let dist_hole = (next + n - hole) % n;
            if dist_home >= dist_hole {
                self.table[hole] = e;
                hole = next;
            }
            next = if next + 1 == n { 0 } else { next + 1 };
        }
        self.table[hole] = EMPTY;
        self.lines[idx as usize] = 0;
        self.dirty_per_device[info.key.device_id as usize] -= 1;
        Some(info)
    }

    /// Number of dirty lines cached for `device_id`.
    pub fn nr_dirty(&self, device_id: u8) -> u64 {
        self.dirty_per_device[device_id as usize]
    }

    /// The cache lines holding lines of `device_id` (a scan of every cache
    /// line; for the rare administrative calls, not the I/O paths).
    fn lines_of(&self, device_id: u8) -> impl Iterator<Item = (u32, LineInfo)> + '_ {
        let none = device_id == 0 || self.nr_dirty(device_id) == 0;
        (0..if none { 0 } else { self.lines.len() as u32 })
            .filter_map(|i| self.info(i).map(|info| (i, info)))
            .filter(move |(_, info)| info.key.device_id == device_id)
    }

    /// One past the highest dirty sector of `device_id` (0 when it has no
    /// dirty line): the size its backing device must at least have.
    pub fn dirty_end_sector(&self, device_id: u8) -> u64 {
        self.lines_of(device_id)
            .map(|(_, info)| {
                let top = 8 - info.dirty_bits.leading_zeros() as u64;
                // a line without dirty bits still reaches into its line
                info.key.line * 8 + top.max(1)
            })
            .max()
            .unwrap_or(0)
    }

    /// Forgets every line of `device_id`; returns how many there were.
    pub fn remove_device(&mut self, device_id: u8) -> u64 {
        let idxs: Vec<u32> = self.lines_of(device_id).map(|(i, _)| i).collect();
        for &i in &idxs {
            self.remove(i);
        }
        idxs.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        #[test]
        fn behaves_like_a_hash_map(ops in proptest::collection::vec((0u8..3, 1u8..4, 0u64..64, 0u32..200), 1..600)) {
            let mut idx = Index::new(200);
            let mut model: HashMap<LineKey, u32> = HashMap::new();
            for (op, dev, line, slot) in ops {
                let key = LineKey { device_id: dev, line };
                match op {
                    // insert into a free cache line
                    0 if idx.info(slot).is_none() => {
                        idx.insert(key, slot, 1);
                        model.insert(key, slot);
                    }
                    1 => {
                        if let Some(i) = model.remove(&key) {
                            prop_assert_eq!(idx.remove(i).unwrap().key, key);
                        }
                    }
                    // move the key to a free cache line
                    2 if idx.info(slot).is_none() => {
                        if let Some(i) = model.get(&key).copied() {
                            idx.replace(i, slot, 3);
                            prop_assert_eq!(idx.info(i), None);
                            prop_assert_eq!(idx.info(slot).unwrap().dirty_bits, 3);
                            model.insert(key, slot);
                        }
                    }
                    _ => {}
                }
                prop_assert_eq!(idx.lookup(key), model.get(&key).copied());
            }
            for (k, v) in &model {
                prop_assert_eq!(idx.lookup(*k), Some(*v));
            }
            for d in 1..4u8 {
                prop_assert_eq!(idx.nr_dirty(d), model.keys().filter(|k| k.device_id == d).count() as u64);
            }
        }
    }

    proptest! {
        #[test]
        fn per_device_extent_and_removal_match_a_model(
            ops in proptest::collection::vec((1u8..4, 0u64..5000, 1u8..=255, 0u32..300), 1..300),
            gone in 1u8..4,
        ) {
            let mut idx = Index::new(300);
            let mut model: HashMap<LineKey, (u32, u8)> = HashMap::new();
            for (dev, line, bits, slot) in ops {
                let key = LineKey { device_id: dev, line };
                if idx.info(slot).is_some() {
                    continue;
                }
                idx.insert(key, slot, bits);
                model.retain(|_, v| v.0 != slot);
                model.insert(key, (slot, bits));
            }
            for d in 1..4u8 {
                let end = model
                    .iter()
                    .filter(|(k, _)| k.device_id == d)
                    .map(|(k, v)| k.line * 8 + (8 - v.1.leading_zeros() as u64))
                    .max()
                    .unwrap_or(0);
                prop_assert_eq!(idx.dirty_end_sector(d), end);
            }
            let n = model.keys().filter(|k| k.device_id == gone).count() as u64;
            prop_assert_eq!(idx.remove_device(gone), n);
            model.retain(|k, _| k.device_id != gone);
            prop_assert_eq!(idx.nr_dirty(gone), 0);
            prop_assert_eq!(idx.dirty_end_sector(gone), 0);
            for (k, v) in &model {
                prop_assert_eq!(idx.lookup(*k), Some(v.0));
            }
        }
    }

    #[test]
    fn full_table_ram_per_line() {
        let n = 255 * 64;
        let mut idx = Index::new(n);
        for i in 0..n as u32 {
            idx.insert(
                LineKey {
                    device_id: 1,
                    line: i as u64 * 7,
                },
                i,
                0xFF,
            );
        }
        for i in 0..n as u32 {
            assert_eq!(
                idx.lookup(LineKey {
                    device_id: 1,
                    line: i as u64 * 7
                }),
                Some(i)
            );
        }
        let per_line = (idx.ram_bytes() - 256 * 8) as f64 / n as f64;
        assert!(per_line <= 16.0, "{per_line} bytes per line");
    }
}
