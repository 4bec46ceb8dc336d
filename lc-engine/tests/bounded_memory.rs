//! Issue 20 item 5: crafted segment headers must not make resume or
//! offline inspection hold memory per segment beyond the index's own
//! (which is sized by the device). The heap is measured with a counting
//! allocator, so this binary holds nothing else.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use common::*;
use lc_engine::format::*;
use lc_engine::index::Index;
use lc_engine::{format_cache_device, read_superblock, BlockDevice, Cache, CacheOptions};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds GlobalAlloc::alloc's contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for alloc.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr was allocated by System with this layout.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One test at a time: the counters are global.
static SERIAL: Mutex<()> = Mutex::new(());

const SEGMENTS: u64 = 2000;

/// A cache of SEGMENTS full segments that chain ids 1, 2, … but never
/// vouch for one another (durable_id 0), so every one of them is
/// "unvouched" and would need its data checked.
fn crafted_cache() -> std::sync::Arc<SparseDisk> {
    let dev = SparseDisk::new((1 + SEGMENTS) << 20);
    format_cache_device(&*dev, false).unwrap();
    let sb = read_superblock(&*dev).unwrap();
    let data = vec![0u8; LINES_PER_SEGMENT * LINE_SIZE];
    let mut block = vec![0u8; LINE_SIZE];
    for k in 0..SEGMENTS {
        let h = SegmentHeader {
            global_id: k + 1,
            durable_id: 0,
            lap: 1,
            length: LINES_PER_SEGMENT as u32,
            uuid: sb.uuid,
            checksum: 0,
            metablocks: (0..LINES_PER_SEGMENT as u64)
                .map(|i| Metablock {
                    sector: 8 * (k * LINES_PER_SEGMENT as u64 + i),
                    device_id: 1,
                    dirty_bits: 0xFF,
                    lap: 1,
                })
                .collect(),
        };
        h.write_to(&mut block);
        SegmentHeader::seal(&mut block, &data);
        dev.write_at(&block, segment_offset(k)).unwrap();
    }
    dev
}

/// Peak heap above what was allocated before `f` ran.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let v = f();
    (v, PEAK.load(Ordering::SeqCst) - base)
}

const SLACK: usize = 4 << 20;

#[test]
fn resume_of_crafted_headers_holds_no_memory_per_segment() {
    let _serial = SERIAL.lock().unwrap();
    let dev = crafted_cache();
    let ((cache, report), peak) = peak_during(|| {
        Cache::resume_with_report(1, dev.clone(), CacheOptions { pool_segments: 2 }).unwrap()
    });
    assert_eq!(report.replayed_segments, SEGMENTS, "{report:?}");
    let index = cache.status().index_ram_bytes as usize;
    assert!(
        peak < index + SLACK,
        "resume of {SEGMENTS} unvouched segments peaked at {peak} bytes of heap, the index holds {index}"
    );
    drop(cache);
}

#[test]
fn inspection_of_crafted_headers_holds_no_memory_per_segment() {
    let _serial = SERIAL.lock().unwrap();
    let dev = crafted_cache();
    let index = Index::new(SEGMENTS as usize * LINES_PER_SEGMENT).ram_bytes();
    let (found, peak) = peak_during(|| lc_engine::rescue::inspect(&*dev).unwrap());
    assert_eq!(found.log, (1, SEGMENTS));
    let kept = std::mem::size_of_val(&found.segments[..]);
    assert!(
        peak < index + kept + SLACK,
        "inspection of {SEGMENTS} segments peaked at {peak} bytes of heap (an index would hold {index}, its report {kept})"
    );
}
