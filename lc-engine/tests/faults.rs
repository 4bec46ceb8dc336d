//! Fault injection: EIO on cache-device reads and writes and on backing-device
//! reads and writes. The failing request gets the error, background work
//! retries, counters show the errors, and no acknowledged data is lost.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use lc_engine::sim::{FaultyDevice, PowerDomain, SimDisk};
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
    cdev.plan.fail_reads.store(false, Ordering::SeqCst);
    assert!(read(&cache, 8, 8) == pattern(1, 8, 8));
}

#[test]
fn backing_read_errors_fail_a_miss() {
    let (cache, _, bdev, _) = rig();
    bdev.plan.fail_reads.store(true, Ordering::SeqCst);
    let mut b = vec![0u8; 4096];
    let err = cache.read(1, 100, &mut b).unwrap_err();
    assert_io_error(&err, DeviceRole::Backing);
    assert_eq!(cache.status().stats.backing_read_errors, 1);
    bdev.plan.fail_reads.store(false, Ordering::SeqCst);
    assert!(read(&cache, 100, 8) == pattern(0, 100, 8));
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
fn detach_waits_for_a_failing_backing_device_and_refuses_new_writes() {
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
    let err = cache.write(1, 0, &[0; 512]).unwrap_err();
    assert!(matches!(err, Error::Detaching(1)), "{err}");
    assert!(
        !detach.is_finished(),
        "detach cannot finish while the backing device fails"
    );
    bdev.plan.fail_writes.store(false, Ordering::SeqCst);
    detach.join().unwrap().unwrap();
    let mut b = vec![0u8; 64 * 512];
    raw.read_at(&mut b, 0).unwrap();
    assert!(b == pattern(1, 0, 64));
    assert!(matches!(
        cache.write(1, 0, &[0; 512]),
        Err(Error::UnknownDevice(1))
    ));
}
