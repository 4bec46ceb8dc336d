//! Deterministic tests of the data-safety defects of issue 15 (and the
//! engine side of issue 20's write-back and size limits): each sets up the
//! exact window a defect needed and checks that nothing acknowledged is lost,
//! nothing stale is read, and nothing hangs.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use lc_engine::format::{
    segment_offset, SuperBlockHeader, SuperBlockRecord, LINE_SIZE, RECORD_OFFSETS,
};
use lc_engine::sim::{FaultyDevice, PowerDomain, SimDisk};
use lc_engine::{
    format_cache_device, BlockDevice, Cache, CacheOptions, Error, Knob, MAX_CACHE_BYTES,
    MAX_CACHE_SEGMENTS,
};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..20_000 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("timed out waiting until {what}");
}

fn read(cache: &Cache, dev: u8, sector: u64, n: u64) -> Vec<u8> {
    let mut b = vec![0u8; n as usize * 512];
    cache.read(dev, sector, &mut b).unwrap();
    b
}

/// Resumes from power-cut images with device 1 attached.
fn boot(images: &mut Vec<Vec<u8>>) -> Cache {
    let dom = PowerDomain::new();
    let cache = resume(SimDisk::from_image(dom.clone(), images.remove(0)), 2);
    cache
        .attach_device(1, SimDisk::from_image(dom, images.remove(0)))
        .unwrap();
    cache
}

#[test]
fn a_failed_record_commit_before_slot_reuse_is_retried() {
    // Issue 15 defect 1: two segments flushed; segment 1 written back; the
    // record write before segment 3 reuses slot 0 fails once. The segment
    // must not land in slot 0 before the record says slot 0 is free, or
    // recovery starts at slot 0, finds id 3, and drops segment 2.
    let dom = PowerDomain::new();
    let sdisk = sim_cache_disk(&dom, 2);
    let cdev = FaultyDevice::new(sdisk.clone());
    let b = SimDisk::from_image(dom.clone(), pattern(0, 0, 64));
    let cache = resume(cdev.clone(), 1);
    cache.set_knob(Knob::BarrierDeadlineMs, 1).unwrap();
    cache.set_knob(Knob::NrMaxBatchedMigration, 1).unwrap();
    cache.attach_device(1, b.clone()).unwrap();
    cache.write(1, 0, &pattern(1, 0, 8)).unwrap();
    cache.flush_sync().unwrap();
    cache.write(1, 16, &pattern(2, 16, 8)).unwrap();
    cache.flush_sync().unwrap();
    cdev.plan
        .fail_next_writes(RECORD_OFFSETS[0]..RECORD_OFFSETS[1] + LINE_SIZE as u64, 1);
    cache.write(1, 32, &pattern(3, 32, 8)).unwrap(); // waits for segment 1's write-back
    if cache.flush_sync().is_err() {
        // the failed record write failed the FLUSH waiting meanwhile
        cache.flush_sync().unwrap();
    }
    assert_eq!(cdev.plan.injected.load(Ordering::SeqCst), 1);
    let mut images = dom.cut(&[&sdisk, &b], &mut StdRng::seed_from_u64(1));
    drop(cache);
    let cache = boot(&mut images);
    assert!(
        read(&cache, 1, 16, 8) == pattern(2, 16, 8),
        "acknowledged write 2 (sectors 16..24) lost"
    );
    assert!(read(&cache, 1, 32, 8) == pattern(3, 32, 8));
    assert!(read(&cache, 1, 0, 8) == pattern(1, 0, 8));
}

#[test]
fn resume_makes_the_replayed_log_durable_before_vouching_for_it() {
    // Issue 15 defect 3: segment 1 reaches the cache device but not its
    // media (its flush fails), the process dies, a new one resumes, reads it
    // and writes segment 2, whose header vouches for segment 1; a power cut
    // then keeps segment 2 and drops or tears segment 1. What the new
    // process read after its resume must survive.
    let mut bad = Vec::new();
    for seed in 0..48 {
        let dom = PowerDomain::new();
        let sdisk = sim_cache_disk(&dom, 4);
        let b = SimDisk::from_image(dom.clone(), pattern(0, 0, 64));
        let h1 = FaultyDevice::new(sdisk.clone());
        let cache = resume(h1.clone(), 2);
        cache.attach_device(1, b.clone()).unwrap();
        cache.write(1, 0, &pattern(1, 0, 8)).unwrap();
        h1.plan.fail_flushes.store(true, Ordering::SeqCst);
        cache.flush_current_buffer();
        wait_until("segment 1 was written", || {
            cache.status().last_flushed_segment_id == 1
        });
        // the process dies; the devices keep what they hold in their caches
        h1.fence();
        drop(cache);
        let h2 = FaultyDevice::new(sdisk.clone());
        let cache = resume(h2.clone(), 2);
        cache.attach_device(1, b.clone()).unwrap();
        let after_restart = read(&cache, 1, 0, 8);
        assert!(after_restart == pattern(1, 0, 8));
        h2.plan.fail_flushes.store(true, Ordering::SeqCst);
        cache.write(1, 8, &pattern(2, 8, 8)).unwrap();
        cache.flush_current_buffer();
        wait_until("segment 2 was written", || {
            cache.status().last_flushed_segment_id == 2
        });
        let mut images = dom.cut(&[&sdisk, &b], &mut StdRng::seed_from_u64(seed));
        drop(cache);
        let cache = boot(&mut images);
        if read(&cache, 1, 0, 8) != after_restart {
            bad.push(seed);
        }
    }
    assert!(
        bad.is_empty(),
        "after power cuts with seeds {bad:?}, sectors 0..8 no longer read what they read after \
         the restart (a replayed segment was not durable)"
    );
}

#[test]
fn a_partial_discard_never_replaces_a_concurrent_write() {
    // Issue 15 defect 4: a discard of sectors 0..4 reads the line from the
    // cache device; meanwhile a write to sectors 4..8 completes. The
    // discard must not put the line back with the old sectors 4..8.
    let dom = PowerDomain::new();
    let gated = GatedDevice::new(sim_cache_disk(&dom, 4));
    let cache = resume(gated.clone(), 2);
    cache.set_knob(Knob::BarrierDeadlineMs, 1).unwrap();
    cache
        .attach_device(1, SimDisk::from_image(dom, pattern(0, 0, 64)))
        .unwrap();
    cache.write(1, 0, &pattern(1, 0, 8)).unwrap();
    cache.flush_sync().unwrap();
    // line 0 of segment slot 0
    let line = segment_offset(0) + LINE_SIZE as u64;
    gated.hold_next_read(line..line + LINE_SIZE as u64);
    std::thread::scope(|s| {
        let discard = s.spawn(|| cache.discard(1, 0, 4));
        gated.wait_held();
        cache.write(1, 4, &pattern(2, 4, 4)).unwrap();
        gated.release();
        discard.join().unwrap().unwrap();
    });
    assert!(
        read(&cache, 1, 4, 4) == pattern(2, 4, 4),
        "sectors 4..8 lost the completed write"
    );
}

#[test]
fn write_back_after_a_failed_backing_flush_writes_the_batch_again() {
    // Issue 15 defect 5 (backing side): the flush after a write-back batch
    // fails and the device loses what it held in its cache; a later
    // successful flush proves nothing about it, so the batch is rewritten.
    let dom = PowerDomain::new();
    let cache = resume(sim_cache_disk(&dom, 4), 2);
    let bdisk = SimDisk::from_image(dom.clone(), pattern(0, 0, 64));
    let b = FaultyDevice::over_sim(bdisk.clone());
    cache.attach_device(1, b.clone()).unwrap();
    cache.write(1, 8, &pattern(1, 8, 8)).unwrap();
    cache.flush_sync().unwrap();
    b.plan.fail_next_flushes(1);
    cache.migrate_all().unwrap();
    assert_eq!(b.plan.injected.load(Ordering::SeqCst), 1);
    assert_eq!(cache.nr_dirty_caches(1), 0);
    assert!(
        read(&cache, 1, 8, 8) == pattern(1, 8, 8),
        "written back, then lost by the failed flush: reads return stale data"
    );
}

#[test]
fn a_failed_cache_flush_makes_its_segments_be_written_again() {
    // Issue 15 defect 5 (cache side): the FLUSH fails and the device loses
    // the segment it held in its cache; the next FLUSH must not succeed
    // without writing it again.
    let dom = PowerDomain::new();
    let sdisk = sim_cache_disk(&dom, 4);
    let cdev = FaultyDevice::over_sim(sdisk.clone());
    let b = SimDisk::from_image(dom.clone(), pattern(0, 0, 64));
    let cache = resume(cdev.clone(), 2);
    cache.set_knob(Knob::BarrierDeadlineMs, 1).unwrap();
    cache.attach_device(1, b.clone()).unwrap();
    cache.write(1, 0, &pattern(1, 0, 8)).unwrap();
    cdev.plan.fail_next_flushes(1);
    assert!(
        cache.flush_sync().is_err(),
        "the failed flush fails the FLUSH"
    );
    cache.flush_sync().unwrap();
    assert!(
        read(&cache, 1, 0, 8) == pattern(1, 0, 8),
        "read after the FLUSH"
    );
    let mut images = dom.cut(&[&sdisk, &b], &mut StdRng::seed_from_u64(2));
    drop(cache);
    let cache = boot(&mut images);
    assert!(
        read(&cache, 1, 0, 8) == pattern(1, 0, 8),
        "the acknowledged write was lost with the failed flush"
    );
}

#[test]
fn write_back_device_closes_the_segment_it_waits_for() {
    // Issue 15 defect 7: a write lands between the FLUSH of a detach's
    // first phase and the drain, opening a segment; the device then goes
    // idle. The drain must force that segment out rather than wait forever.
    let dom = PowerDomain::new();
    let gated = GatedDevice::new(sim_cache_disk(&dom, 4));
    let cache = resume(gated.clone(), 2);
    cache
        .attach_device(1, SimDisk::from_image(dom, pattern(0, 0, 64)))
        .unwrap();
    cache.write(1, 0, &pattern(1, 0, 8)).unwrap();
    gated.hold_next_flush();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let _ = tx.send(cache.write_back_device(1, |_| {}));
        });
        gated.wait_held(); // the FLUSH of segment 1 is in flight
        cache.write(1, 8, &pattern(2, 8, 8)).unwrap(); // opens segment 2
        gated.release();
        let res = rx.recv_timeout(Duration::from_secs(30));
        if res.is_err() {
            cache.flush_current_buffer(); // let the stuck drain end
            panic!("write_back_device still waits for the open segment after 30 s");
        }
        res.unwrap().unwrap();
    });
    assert_eq!(cache.nr_dirty_caches(1), 0);
}

#[test]
fn write_back_holds_a_bounded_number_of_segments_whatever_the_batch_knob() {
    // Issue 15 defect 9: nr_max_batched_migration may be 4096; write-back
    // must not read that many segments into RAM at once.
    let dom = PowerDomain::new();
    let reads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let most = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let segments = lc_engine::MAX_WRITE_BACK_SEGMENTS + 8;
    // the cache device counts segment reads (more than a header) since
    // the last write of the backing device
    let cdev = Arc::new(ObservedDevice {
        on_read: Some(Box::new({
            let (reads, most) = (reads.clone(), most.clone());
            move |len, _| {
                if len > LINE_SIZE {
                    let n = reads.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(n, Ordering::SeqCst);
                }
            }
        })),
        ..ObservedDevice::new(sim_cache_disk(&dom, segments + 2))
    });
    let cache = resume(cdev, 2);
    cache.set_knob(Knob::BarrierDeadlineMs, 1).unwrap();
    cache
        .set_knob(Knob::NrMaxBatchedMigration, cache.nr_segments())
        .unwrap();
    assert!(cache.knob(Knob::NrMaxBatchedMigration) > lc_engine::MAX_WRITE_BACK_SEGMENTS);
    let backing = Arc::new(ObservedDevice {
        on_write: Some(Box::new(move |_, _| reads.store(0, Ordering::SeqCst))),
        ..ObservedDevice::new(SimDisk::from_image(dom, pattern(0, 0, 8 * segments)))
    });
    cache.attach_device(1, backing).unwrap();
    for s in 0..segments {
        cache.write(1, s * 8, &pattern(1, s * 8, 8)).unwrap();
        cache.flush_sync().unwrap(); // one segment per line
    }
    cache.migrate_all().unwrap();
    for s in 0..segments {
        assert!(read(&cache, 1, s * 8, 8) == pattern(1, s * 8, 8));
    }
    let most = most.load(Ordering::SeqCst);
    assert!(
        most <= lc_engine::MAX_WRITE_BACK_SEGMENTS,
        "write-back read {most} segments into RAM before writing any"
    );
}

#[test]
fn format_refuses_a_cache_beyond_the_largest_supported_size() {
    // Issue 15 defect 9: the largest cache is a named, documented limit.
    let at_limit = SparseDisk::new(MAX_CACHE_BYTES);
    let sb = format_cache_device(&*at_limit, false).unwrap();
    assert_eq!(sb.nr_segments, MAX_CACHE_SEGMENTS);
    let beyond = SparseDisk::new(MAX_CACHE_BYTES + (1 << 20));
    match format_cache_device(&*beyond, false) {
        Err(Error::TooLarge { size, max }) => {
            assert_eq!((size, max), (MAX_CACHE_BYTES + (1 << 20), MAX_CACHE_BYTES))
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(
        beyond.writes.load(Ordering::SeqCst),
        0,
        "a refusal writes nothing"
    );
}

#[test]
fn resume_refuses_a_superblock_beyond_the_largest_supported_size() {
    // Issue 15 defect 9: a crafted superblock of u32::MAX / 255 segments
    // (its last line index would be the index's EMPTY marker) is refused
    // cleanly, without a panic or a huge allocation.
    assert_eq!(MAX_CACHE_SEGMENTS + 1, u32::MAX as u64 / 255);
    for nr_segments in [MAX_CACHE_SEGMENTS + 1] {
        let dev = SparseDisk::new((1 + nr_segments) << 20);
        let header = SuperBlockHeader {
            version: 1,
            segment_size: 1 << 20,
            lines_per_segment: 255,
            nr_segments,
            created_unix: 0,
            uuid: [7; 16],
        };
        dev.write_at(&header.to_block(), 0).unwrap();
        for (seq, off) in RECORD_OFFSETS.iter().enumerate() {
            let r = SuperBlockRecord {
                sequence: seq as u64,
                last_migrated_segment_id: 0,
                uuid: header.uuid,
                durable_segment_id: 0,
            };
            dev.write_at(&r.to_block(), *off).unwrap();
        }
        let res =
            std::panic::catch_unwind(|| Cache::resume(1, dev.clone(), CacheOptions::default()));
        match res {
            Ok(Err(Error::Corrupt(_))) => {}
            Ok(Err(e)) => panic!("{nr_segments} segments: unexpected error {e}"),
            Ok(Ok(_)) => panic!("{nr_segments} segments: resumed"),
            Err(_) => panic!("{nr_segments} segments: resume panicked"),
        }
    }
}

#[test]
fn dirty_data_beyond_the_end_of_the_backing_device_is_refused_and_hangs_nothing() {
    // Issue 20 item 4: the cache holds dirty data of device 1 at sector
    // 1600; after a restart a smaller disk (1024 sectors) is offered as
    // device 1. It must be refused with a named error before anything is
    // written (write-back would otherwise spin on ENOSPC), the data must
    // stay, and other devices must go on.
    let dom = PowerDomain::new();
    let sdisk = sim_cache_disk(&dom, 2);
    let cache = resume(sdisk.clone(), 1);
    cache
        .attach_device(1, SimDisk::from_image(dom.clone(), pattern(0, 0, 2048)))
        .unwrap();
    cache.write(1, 1600, &pattern(1, 1600, 8)).unwrap();
    cache.shutdown().unwrap();
    drop(cache);

    let cache = resume(sdisk, 1);
    cache.set_knob(Knob::BarrierDeadlineMs, 1).unwrap();
    let small = SparseDisk::new(1024 * 512);
    // attach refuses the too-small disk before anything is written to it
    // (write-back keeps its own check as a second line of defence: with
    // this refusal no public call can bind such data to a smaller disk)
    match cache.attach_device(1, small.clone()) {
        Err(Error::BackingTooSmall {
            device_id: 1,
            dirty_end_sector: 1608,
            size_sectors: 1024,
        }) => {}
        other => panic!("expected BackingTooSmall, got {other:?}"),
    }
    assert_eq!(
        small.refused.load(Ordering::SeqCst),
        0,
        "something tried to write beyond the end of the device"
    );
    assert!(
        cache.nr_dirty_caches(1) >= 1,
        "the dirty data stays in the cache"
    );
    // writers of other devices are not held up by it
    cache
        .attach_device(2, SimDisk::from_image(dom, pattern(0, 0, 8192)))
        .unwrap();
    cache.write(2, 0, &pattern(2, 0, 8)).unwrap();
    cache.flush_sync().unwrap();
}

#[test]
fn sub_line_discards_racing_writes_to_the_same_lines_lose_no_write() {
    // The class of issue 15 defect 4: one thread writes sectors 4..8 of
    // lines 0..16 (each write read back at once), another discards sectors
    // 0..4 of the same lines, while segments are sealed and flushed so the
    // discard must read lines from the cache device. The writer's sectors
    // must always read its last write.
    const LINES: u64 = 16;
    let dom = PowerDomain::new();
    let cache = resume(sim_cache_disk(&dom, 8), 2);
    cache.set_knob(Knob::BarrierDeadlineMs, 1).unwrap();
    cache.set_knob(Knob::AllowMigrate, 1).unwrap();
    cache
        .attach_device(1, SimDisk::from_image(dom, pattern(0, 0, LINES * 8)))
        .unwrap();
    for line in 0..LINES {
        cache.write(1, line * 8, &pattern(1, line * 8, 8)).unwrap();
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    let last: Vec<std::sync::atomic::AtomicU64> = (0..LINES)
        .map(|_| std::sync::atomic::AtomicU64::new(1))
        .collect();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let line = i % LINES;
                cache.discard(1, line * 8, 4).unwrap();
                if i % 7 == 0 {
                    cache.flush_current_buffer();
                }
                i += 1;
            }
        });
        let writer = s.spawn(|| {
            let mut rng = StdRng::seed_from_u64(4);
            for tag in 2..3000u64 {
                use rand::Rng;
                let line = rng.gen_range(0..LINES);
                let s4 = line * 8 + 4;
                cache.write(1, s4, &pattern(tag, s4, 4)).unwrap();
                last[line as usize].store(tag, Ordering::SeqCst);
                if tag % 5 == 0 {
                    cache.flush_sync().unwrap();
                }
                let l2 = rng.gen_range(0..LINES);
                let want = last[l2 as usize].load(Ordering::SeqCst);
                let got = read(&cache, 1, l2 * 8 + 4, 4);
                assert!(
                    got == pattern(want, l2 * 8 + 4, 4),
                    "line {l2}: sectors 4..8 lost write {want} to a racing discard"
                );
            }
        });
        let res = writer.join();
        stop.store(true, Ordering::SeqCst);
        if let Err(panic) = res {
            std::panic::resume_unwind(panic);
        }
    });
}
