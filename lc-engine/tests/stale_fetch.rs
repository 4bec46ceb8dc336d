//! A write (or a discard) that merges an older copy of a line read from the
//! cache device must not use that image once the line's cache line holds
//! another copy:
//! while the write waited for the cache mutex after the read, the slot can
//! be written back, reused by a newer segment and hold a newer copy of the
//! same line at the same place (the same cache line index). Merging the
//! image read before would bring back sectors several writes old (a stale
//! read). The race is rare under a scheduler, so the engine is stopped in
//! that window ([`lc_engine::sim::pause_next_line_fetch`]) and the whole
//! interleaving runs through it. A binary of its own: the pause is
//! process-wide.

mod common;

use std::sync::Arc;

use common::*;
use lc_engine::sim::{pause_next_line_fetch, PowerDomain, SimDisk};
use lc_engine::{BlockDevice, Knob};

fn tags(cache: &lc_engine::Cache, sector: u64, n: u64) -> Vec<u64> {
    let mut buf = vec![0u8; n as usize * 512];
    cache.read(1, sector, &mut buf).unwrap();
    buf.chunks(512)
        .map(|c| u64::from_le_bytes(c[..8].try_into().unwrap()))
        .collect()
}

/// What stops in the window: a one-sector write or discard of line 0,
/// which must keep sectors 1..8 of the copy it finds.
#[derive(Clone, Copy)]
enum Merge {
    Write,
    Discard,
}

// one test: the pause is process-wide, two at once would take each
// other's pause
#[test]
fn a_partial_write_or_discard_never_merges_a_line_image_from_before_its_slot_was_reused() {
    run(Merge::Write, [3, 5, 5, 5, 5, 5, 5, 5]);
    // the discarded sector reads as the discarded backing range: zeros
    run(Merge::Discard, [0, 5, 5, 5, 5, 5, 5, 5]);
}

fn run(op: Merge, expected: [u64; 8]) {
    let dom = PowerDomain::new();
    // three slots: segment 4 reuses segment 1's slot
    let cdisk = sim_cache_disk(&dom, 3);
    let backing = SimDisk::new(dom.clone(), 1 << 20);
    let cache = Arc::new(resume(cdisk.clone() as Arc<dyn BlockDevice>, 4));
    cache.set_knob(Knob::AllowMigrate, 0).unwrap();
    cache.set_knob(Knob::BarrierDeadlineMs, 1).unwrap();
    cache.attach_device(1, backing).unwrap();
    // segment 1, cache line 0: line 0 of the device, tag 1
    cache.write(1, 0, &pattern(1, 0, 8)).unwrap();
    cache.flush_current_buffer();
    // segment 2: another line
    cache.write(1, 64, &pattern(2, 64, 8)).unwrap();
    cache.flush_current_buffer();
    cache.flush_sync().unwrap(); // durable: read from the device from now on

    // a one-sector write (discard) of line 0 must keep sectors 1..8 of the
    // copy in segment 1: it reads them from the cache device and stops there
    let pause = pause_next_line_fetch();
    let writer = {
        let cache = cache.clone();
        std::thread::spawn(move || match op {
            Merge::Write => cache.write(1, 0, &pattern(3, 0, 1)).unwrap(),
            Merge::Discard => cache.discard(1, 0, 1).unwrap(),
        })
    };
    pause.wait_held();

    // meanwhile: segments 1 and 2 are written back (line 0 leaves the
    // index), segment 3 fills slot 2 and segment 4 reuses slot 0 with a
    // newer copy of line 0 as its first line: cache line 0 again
    cache.migrate_all().unwrap();
    cache.write(1, 128, &pattern(4, 128, 8)).unwrap();
    cache.flush_current_buffer();
    cache.write(1, 0, &pattern(5, 0, 8)).unwrap();
    cache.flush_current_buffer();
    // segment 4 durable: its line is read from the device
    cache.flush_sync().unwrap();
    // an open segment with room for the stopped write (slot 1)
    cache.write(1, 192, &pattern(6, 192, 8)).unwrap();
    assert_eq!(
        cache.status().current_segment_id,
        5,
        "the schedule did not go as planned"
    );

    pause.release();
    writer.join().unwrap();
    assert_eq!(
        tags(&cache, 0, 8),
        expected,
        "the write (discard) kept sectors of the copy segment 1 held (tag 1), which \
         the newer copy in the reused slot (tag 5) had overwritten"
    );
    cache.flush_sync().unwrap();
    cache.migrate_all().unwrap();
    assert_eq!(tags(&cache, 0, 8), expected, "after write-back");
    cache.shutdown().unwrap();
}
