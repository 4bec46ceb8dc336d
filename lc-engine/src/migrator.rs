//! The migrate daemon: writes dirty data back to the backing devices in log
//! order, a batch of segments at a time.
//!
//! A batch is the next `nr_max_batched_migration` durable segments after
//! `last_migrated_segment_id`. Their still-valid lines are read from the
//! cache device, the dirty sectors are written to each backing device sorted
//! by address (contiguous runs merged), the backing devices are flushed, and
//! only then do the lines leave the index and `last_migrated_segment_id`
//! advance. Errors are counted and retried with backoff; nothing is dropped.
//!
//! Write-back runs while `allow_migrate` or `force_migrate` is set, while a
//! writer waits for a slot that is not yet written back, and while a detach
//! drains a device.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::{backoff, line_index, lock, Backing, Inner};
use crate::device::AlignedBuf;
use crate::format::*;
use crate::index::LineKey;
use crate::knobs::Knob;
use crate::stats::ErrorCounter;

/// One still-valid line of a batch.
struct Item {
    key: LineKey,
    idx: u32,
    bits: u8,
    /// Position of its segment in the batch.
    seg: usize,
    /// Line number inside the segment.
    line: usize,
}

/// A planned batch: the lines to write back and where they live.
struct Batch {
    end_id: u64,
    slots: Vec<u64>,
    items: Vec<Item>,
    devices: BTreeMap<u8, Arc<Backing>>,
}

pub(crate) fn run(inner: Arc<Inner>) {
    while let Some(batch) = next_batch(&inner) {
        if !migrate(&inner, &batch) {
            for &s in &batch.slots {
                inner.unpin(s);
            }
            return;
        }
        let mut st = lock(&inner.state);
        for &s in &batch.slots {
            inner.unpin(s);
        }
        for it in &batch.items {
            if st.index.lookup(it.key) == Some(it.idx) {
                st.index.remove(it.idx);
            }
        }
        st.last_migrated_id = batch.end_id;
        st.migrate_urgent = false;
        drop(st);
        inner.progress_cv.notify_all();
    }
}

/// Waits until a batch is due and every device it touches is attached;
/// `None` when the cache stops.
fn next_batch(inner: &Inner) -> Option<Batch> {
    let mut st = lock(&inner.state);
    let mut warned_missing = 0u8;
    loop {
        if st.stopping {
            return None;
        }
        let from = st.last_migrated_id;
        let wanted = inner.knobs.flag(Knob::AllowMigrate)
            || inner.knobs.flag(Knob::ForceMigrate)
            || st.migrate_urgent
            || st.drain_target > from;
        if wanted && st.durable_id > from {
            let batched = inner.knobs.get(Knob::NrMaxBatchedMigration).max(1);
            let end_id = (from + batched).min(st.durable_id);
            let mut batch = Batch {
                end_id,
                slots: Vec::new(),
                items: Vec::new(),
                devices: BTreeMap::new(),
            };
            let mut missing = None;
            for (seg, id) in (from + 1..=end_id).enumerate() {
                let slot = slot_of(id, inner.nr_segments);
                batch.slots.push(slot);
                for line in 0..LINES_PER_SEGMENT {
                    let idx = line_index(slot, line);
                    if let Some(info) = st.index.info(idx) {
                        let dev = info.key.device_id;
                        match st.devices.get(&dev) {
                            Some(b) => {
                                batch.devices.entry(dev).or_insert_with(|| b.clone());
                            }
                            None => missing = Some(dev),
                        }
                        batch.items.push(Item {
                            key: info.key,
                            idx,
                            bits: info.dirty_bits,
                            seg,
                            line,
                        });
                    }
                }
            }
            match missing {
                None => {
                    for &s in &batch.slots {
                        inner.pin(s);
                    }
                    return Some(batch);
                }
                Some(dev) if warned_missing != dev => {
                    warned_missing = dev;
                    tracing::warn!(
                        cache = inner.cache_id,
                        "write-back waits for device {dev}: the cache holds its dirty data but it is not attached"
                    );
                }
                Some(_) => {}
            }
        }
        st = inner
            .migrate_cv
            .wait_timeout(st, Duration::from_secs(1))
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// Retries `op` with backoff until it succeeds; false when the cache stops first.
fn retry(
    inner: &Inner,
    counter: ErrorCounter,
    what: &str,
    mut op: impl FnMut() -> std::io::Result<()>,
) -> bool {
    let mut attempt = 0;
    loop {
        match op() {
            Ok(()) => return true,
            Err(e) => {
                inner.stats.error(counter);
                inner.stats.error(ErrorCounter::MigrationRetry);
                tracing::warn!(
                    cache = inner.cache_id,
                    "write-back: {what} failed: {e}; retrying"
                );
                if lock(&inner.state).stopping {
                    return false;
                }
                std::thread::sleep(backoff(attempt));
                attempt += 1;
            }
        }
    }
}

/// Largest merged backing write.
const MAX_RUN_BYTES: usize = 1 << 20;

/// Copies the batch's dirty data to the backing devices and flushes them.
fn migrate(inner: &Inner, batch: &Batch) -> bool {
    // read the segments that hold lines (one sequential read each)
    let mut seg_data: Vec<Option<AlignedBuf>> = (0..batch.slots.len()).map(|_| None).collect();
    for (seg, &slot) in batch.slots.iter().enumerate() {
        let Some(max_line) = batch
            .items
            .iter()
            .filter(|it| it.seg == seg)
            .map(|it| it.line)
            .max()
        else {
            continue;
        };
        let mut buf = AlignedBuf::zeroed((max_line + 1) * LINE_SIZE);
        let off = segment_offset(slot) + LINE_SIZE as u64;
        if !retry(inner, ErrorCounter::CacheRead, "reading a segment", || {
            inner.dev.read_at(&mut buf, off)
        }) {
            return false;
        }
        seg_data[seg] = Some(buf);
    }
    // dirty sector runs: (device, first sector, bytes)
    let mut runs: Vec<(u8, u64, &[u8])> = Vec::new();
    for it in &batch.items {
        let data = seg_data[it.seg].as_ref().expect("read above");
        let line = &data[it.line * LINE_SIZE..(it.line + 1) * LINE_SIZE];
        let mut s = 0;
        while s < SECTORS_PER_LINE {
            if it.bits & (1 << s) == 0 {
                s += 1;
                continue;
            }
            let start = s;
            while s < SECTORS_PER_LINE && it.bits & (1 << s) != 0 {
                s += 1;
            }
            let sector = it.key.line * SECTORS_PER_LINE as u64 + start as u64;
            runs.push((
                it.key.device_id,
                sector,
                &line[start * SECTOR_SIZE..s * SECTOR_SIZE],
            ));
        }
    }
    runs.sort_by_key(|&(d, s, _)| (d, s));
    let _io = lock(&inner.migration_io);
    let mut i = 0;
    while i < runs.len() {
        let (dev, start, _) = runs[i];
        let mut j = i;
        let mut bytes = 0;
        while j < runs.len()
            && runs[j].0 == dev
            && runs[j].1 == start + (bytes / SECTOR_SIZE) as u64
            && bytes + runs[j].2.len() <= MAX_RUN_BYTES
        {
            bytes += runs[j].2.len();
            j += 1;
        }
        let mut buf = AlignedBuf::zeroed(bytes);
        let mut pos = 0;
        for r in &runs[i..j] {
            buf[pos..pos + r.2.len()].copy_from_slice(r.2);
            pos += r.2.len();
        }
        let b = &batch.devices[&dev];
        let off = start * SECTOR_SIZE as u64;
        if !retry(
            inner,
            ErrorCounter::BackingWrite,
            "writing a backing device",
            || b.dev.write_at(&buf, off),
        ) {
            return false;
        }
        b.migrated_sectors
            .fetch_add((bytes / SECTOR_SIZE) as u64, Ordering::Relaxed);
        i = j;
    }
    for b in batch.devices.values() {
        if !retry(
            inner,
            ErrorCounter::BackingWrite,
            "flushing a backing device",
            || b.dev.flush(),
        ) {
            return false;
        }
    }
    true
}
