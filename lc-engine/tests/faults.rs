//! Fault injection: EIO on cache-device reads and writes and on backing-device
//! reads and writes. The failing request gets the error, background work
//! retries, counters show the errors, and no acknowledged data is lost.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use lc_engine::sim::{FaultyDevice, PowerDomain, SimDisk};
use lc_engine::stats::ErrorCounter;
use lc_engine::{BlockDevice, Cache, CacheOptions, DeviceRole, Error, Knob};

fn rig() -> (Cache, Arc<FaultyDevice>, Arc<FaultyDevice>, Arc<SimDisk>) {
    let dom = PowerDomain::new();
    let cache_disk = FaultyDevice::new(sim_cache_disk(&dom, 4));
    let backing_disk = SimDisk::from_image(dom, pattern(0, 0, 2048));
    let backing = FaultyDevice::new(backing_disk.clone());
    let cache = Cache::resume(1, cache_disk.clone(), CacheOptions { pool_segments: 2 }).unwrap();
    cache.set_knob(Knob::BarrierDeadlineMs, 1).unwrap();
    cache.attach_device(1, backing.clone()).unwrap();
    (cache, cache_disk, backing, backing_disk)
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..20_000 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("timed out waiting until {what}");
}

fn assert_io_error(err: &Error, on: DeviceRole) {
    assert!(
        matches!(err, Error::Io { role, .. } if *role == on),
        "{err}"
    );
}

fn read(cache: &Cache, sector: u64, n: u64) -> Vec<u8> {
    let mut b = vec![0u8; n as usize * 512];
    cache.read(1, sector, &mut b).unwrap();
    b
}

#[test]
fn cache_write_errors_fail_the_flush_and_lose_nothing() {
    let (cache, cdev, _, _) = rig();
    cache.write(1, 0, &pattern(1, 0, 64)).unwrap();
    cdev.plan.fail_writes.store(true, Ordering::SeqCst);
    let err = cache.flush_sync().unwrap_err();
    assert_io_error(&err, DeviceRole::Cache);
    assert!(cache.status().stats.cache_write_errors > 0);
    // the data is still served while the device fails
    assert!(read(&cache, 0, 64) == pattern(1, 0, 64));
    cdev.plan.fail_writes.store(false, Ordering::SeqCst);
    cache.flush_sync().unwrap();
    cache.shutdown().unwrap();
    drop(cache);
    // resumed from the device alone, the data is there
    let cache = Cache::resume(1, cdev, CacheOptions { pool_segments: 2 }).unwrap();
    cache
        .attach_device(
            1,
            SimDisk::from_image(PowerDomain::new(), pattern(0, 0, 2048)),
        )
        .unwrap();
    assert!(read(&cache, 0, 64) == pattern(1, 0, 64));
}

#[test]
fn cache_read_errors_fail_the_read_only() {
    let (cache, cdev, _, _) = rig();
    cache.write(1, 8, &pattern(1, 8, 8)).unwrap();
    cache.flush_sync().unwrap();
    wait_until("the segment left RAM", || {
        cache.status().last_flushed_segment_id >= 1
    });
    cdev.plan.fail_reads.store(true, Ordering::SeqCst);
    let mut b = vec![0u8; 4096];
    let err = cache.read(1, 8, &mut b).unwrap_err();
    assert_io_error(&err, DeviceRole::Cache);
    assert_eq!(err.errno(), libc::EIO);
    assert_eq!(cache.status().stats.cache_read_errors, 1);
    let health = cache.status().health;
    assert!(
        health
            .describe()
            .starts_with("failing: cache device read errors (1 since "),
        "{}",
        health.describe()
    );
    cdev.plan.fail_reads.store(false, Ordering::SeqCst);
    assert!(read(&cache, 8, 8) == pattern(1, 8, 8));
    // the next good read of the cache device ends the fault
    assert!(cache.status().health.is_healthy());
}

#[test]
fn backing_read_errors_fail_a_miss() {
    let (cache, _, bdev, _) = rig();
    bdev.plan.fail_reads.store(true, Ordering::SeqCst);
    let mut b = vec![0u8; 4096];
    let err = cache.read(1, 100, &mut b).unwrap_err();
    assert_io_error(&err, DeviceRole::Backing);
    assert_eq!(cache.status().stats.backing_read_errors, 1);
    assert!(cache
        .status()
        .health
        .fault(ErrorCounter::BackingRead)
        .is_some());
    bdev.plan.fail_reads.store(false, Ordering::SeqCst);
    assert!(read(&cache, 100, 8) == pattern(0, 100, 8));
    assert!(cache.status().health.is_healthy());
}

#[test]
fn write_back_retries_backing_errors_until_the_device_recovers() {
    let (cache, _, bdev, raw) = rig();
    cache.write(1, 0, &pattern(1, 0, 600)).unwrap();
    cache.flush_sync().unwrap();
    bdev.plan.fail_writes.store(true, Ordering::SeqCst);
    cache.set_knob(Knob::AllowMigrate, 1).unwrap();
    wait_until("write-back retried", || {
        cache.status().stats.migration_retries >= 2
    });
    let st = cache.status();
    assert_eq!(
        st.last_migrated_segment_id, 0,
        "nothing counts as written back while writes fail"
    );
    assert!(st.stats.backing_write_errors >= 2);
    assert_eq!(cache.nr_dirty_caches(1), 75);
    assert!(
        read(&cache, 0, 600) == pattern(1, 0, 600),
        "data still served from the cache"
    );
    bdev.plan.fail_writes.store(false, Ordering::SeqCst);
    cache.migrate_all().unwrap();
    assert_eq!(cache.nr_dirty_caches(1), 0);
    let mut b = vec![0u8; 600 * 512];
    raw.read_at(&mut b, 0).unwrap();
    assert!(
        b == pattern(1, 0, 600),
        "backing device holds the data after recovery"
    );
}

#[test]
fn backing_flush_errors_hold_back_last_migrated() {
    let (cache, _, bdev, _) = rig();
    cache.write(1, 0, &pattern(1, 0, 8)).unwrap();
    cache.flush_sync().unwrap();
    bdev.plan.fail_flushes.store(true, Ordering::SeqCst);
    cache.set_knob(Knob::ForceMigrate, 1).unwrap();
    wait_until("write-back retried", || {
        cache.status().stats.migration_retries >= 1
    });
    assert_eq!(cache.status().last_migrated_segment_id, 0);
    bdev.plan.fail_flushes.store(false, Ordering::SeqCst);
    wait_until("written back", || {
        cache.status().last_migrated_segment_id == 1
    });
}

#[test]
fn detach_fails_while_write_back_keeps_failing_and_keeps_the_device() {
    let (cache, _, bdev, raw) = rig();
    let cache = Arc::new(cache);
    cache.write(1, 0, &pattern(1, 0, 64)).unwrap();
    bdev.plan.fail_writes.store(true, Ordering::SeqCst);
    let detach = {
        let cache = cache.clone();
        std::thread::spawn(move || cache.detach_device(1, |_| {}))
    };
    wait_until("write-back retried", || {
        cache.status().stats.migration_retries >= 1
    });
    // while the detach runs, the device takes no writes
    if !detach.is_finished() {
        let err = cache.write(1, 0, &[0; 512]).unwrap_err();
        assert!(matches!(err, Error::Detaching(1)), "{err}");
    }
    // it gives up after DRAIN_GIVES_UP_AFTER failures in a row
    let err = detach.join().unwrap().unwrap_err();
    assert_io_error(&err, DeviceRole::Backing);
    let text = err.to_string();
    assert!(
        text.contains("backing device write errors (") && text.contains("stays in the cache"),
        "{text}"
    );
    let health = cache.status().health;
    let f = health.fault(ErrorCounter::BackingWrite).expect("failing");
    assert!(f.errors >= lc_engine::cache::DRAIN_GIVES_UP_AFTER);
    assert!(health
        .describe()
        .starts_with("failing: backing device write errors"));
    // the device is still attached, readable and writable, nothing lost
    assert!(read(&cache, 0, 64) == pattern(1, 0, 64));
    cache.write(1, 64, &pattern(2, 64, 8)).unwrap();
    assert!(cache.nr_dirty_caches(1) > 0);
    bdev.plan.fail_writes.store(false, Ordering::SeqCst);
    cache.detach_device(1, |_| {}).unwrap();
    assert!(cache.status().health.is_healthy());
    let mut b = vec![0u8; 72 * 512];
    raw.read_at(&mut b, 0).unwrap();
    assert!(b[..64 * 512] == pattern(1, 0, 64)[..]);
    assert!(b[64 * 512..] == pattern(2, 64, 8)[..]);
    assert!(matches!(
        cache.write(1, 0, &[0; 512]),
        Err(Error::UnknownDevice(1))
    ));
}

#[test]
fn write_back_device_fails_on_a_failing_backing_device_and_leaves_it_attached() {
    let (cache, _, bdev, raw) = rig();
    cache.write(1, 0, &pattern(1, 0, 16)).unwrap();
    bdev.plan.fail_flushes.store(true, Ordering::SeqCst);
    let err = cache.write_back_device(1, |_| {}).unwrap_err();
    assert_io_error(&err, DeviceRole::Backing);
    assert!(
        err.to_string()
            .contains("flushing the backing device of device 1"),
        "{err}"
    );
    // still attached and writable: a failed detach changes nothing
    cache.write(1, 16, &pattern(2, 16, 8)).unwrap();
    bdev.plan.fail_flushes.store(false, Ordering::SeqCst);
    cache.write_back_device(1, |_| {}).unwrap();
    assert_eq!(cache.nr_dirty_caches(1), 0);
    let mut b = vec![0u8; 24 * 512];
    raw.read_at(&mut b, 0).unwrap();
    assert!(b[..16 * 512] == pattern(1, 0, 16)[..] && b[16 * 512..] == pattern(2, 16, 8)[..]);
    cache.write(1, 0, &[0; 512]).unwrap();
}

#[test]
fn writers_fail_instead_of_waiting_forever_when_the_cache_device_fails_and_ram_is_full() {
    let (cache, cdev, _, _) = rig();
    // durable first: these must survive everything below
    cache.write(1, 0, &pattern(1, 0, 64)).unwrap();
    cache.flush_sync().unwrap();
    cdev.plan.fail_writes.store(true, Ordering::SeqCst);
    // two RAM buffers (pool_segments 2): the third segment's first write
    // finds no buffer while the device fails
    let mut accepted = 0u64;
    let err = loop {
        let line = accepted % 256;
        match cache.write(1, line * 8, &pattern(3, line * 8, 8)) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 10_000, "writes kept being accepted");
    };
    assert_io_error(&err, DeviceRole::Cache);
    assert!(
        err.to_string().contains("RAM segment buffers") && err.to_string().contains("fails writes"),
        "{err}"
    );
    assert!(
        accepted >= 255,
        "the RAM buffers were used first ({accepted} lines)"
    );
    let health = cache.status().health;
    assert!(
        health
            .describe()
            .starts_with("failing: cache device write errors ("),
        "{}",
        health.describe()
    );
    // FLUSH fails, reads are served
    assert_io_error(&cache.flush_sync().unwrap_err(), DeviceRole::Cache);
    let _ = read(&cache, 0, 8);
    // the fault clears: lc recovers by itself, the accepted writes get durable
    cdev.plan.fail_writes.store(false, Ordering::SeqCst);
    wait_until("the cache accepts writes again", || {
        cache.write(1, 0, &pattern(4, 0, 8)).is_ok()
    });
    cache.flush_sync().unwrap();
    assert!(cache.status().health.is_healthy());
    assert!(read(&cache, 0, 8) == pattern(4, 0, 8));
    assert!(read(&cache, 8, 56) == pattern(3, 8, 56) || accepted < 8);
}

#[test]
fn writers_fail_when_the_cache_is_full_of_dirty_data_and_write_back_fails() {
    let dom = PowerDomain::new();
    let cache_disk = FaultyDevice::new(sim_cache_disk(&dom, 4));
    let lines = 5 * 255u64;
    let backing = FaultyDevice::new(SimDisk::from_image(dom, pattern(0, 0, lines * 8)));
    let cache = Cache::resume(1, cache_disk, CacheOptions { pool_segments: 2 }).unwrap();
    cache.set_knob(Knob::BarrierDeadlineMs, 1).unwrap();
    cache.attach_device(1, backing.clone()).unwrap();
    backing.plan.fail_writes.store(true, Ordering::SeqCst);
    let mut err = None;
    for line in 0..lines {
        if let Err(e) = cache.write(1, line * 8, &pattern(1, line * 8, 8)) {
            err = Some((line, e));
            break;
        }
    }
    let (line, err) = err.expect("a write failed once the 4 slots were full");
    assert!(line >= 3 * 255, "failed at line {line}");
    assert_io_error(&err, DeviceRole::Backing);
    assert!(err.to_string().contains("full of dirty data"), "{err}");
    backing.plan.fail_writes.store(false, Ordering::SeqCst);
    // write-back's next retry (at most 2 s away) ends the fault
    wait_until("the cache accepts writes again", || {
        cache.write(1, line * 8, &pattern(1, line * 8, 8)).is_ok()
    });
    for l in line..lines {
        cache.write(1, l * 8, &pattern(1, l * 8, 8)).unwrap();
    }
    cache.flush_sync().unwrap();
    for l in (0..lines).step_by(97) {
        assert!(read(&cache, l * 8, 8) == pattern(1, l * 8, 8));
    }
}
