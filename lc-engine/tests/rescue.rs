//! Offline inspection (`lcd check` / `lcd dump`): agrees with what a running
//! cache wrote, finds damaged segments, and never writes.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::*;
use lc_engine::rescue::inspect;
use lc_engine::sim::{PowerDomain, SimDisk};
use lc_engine::Knob;

fn resume_with_two_devices(dom: &Arc<PowerDomain>, cdev: &Arc<SimDisk>) -> lc_engine::Cache {
    let cache = resume(cdev.clone(), 2);
    for id in 1..=2 {
        cache
            .attach_device(id, SimDisk::new(dom.clone(), 4 * MIB))
            .unwrap();
    }
    cache
}

#[test]
fn inspection_agrees_with_the_cache_and_writes_nothing() {
    let dom = PowerDomain::new();
    let cdev = sim_cache_disk(&dom, 6);
    let fresh = inspect(&*cdev).unwrap();
    assert!(fresh.segments.is_empty() && fresh.is_clean());
    assert_eq!(fresh.empty_slots, 6);

    let cache = resume_with_two_devices(&dom, &cdev);
    for l in 0..300u64 {
        cache.write(1, l * 8, &pattern(l, l * 8, 8)).unwrap();
    }
    cache.write(2, 40, &pattern(9, 40, 3)).unwrap();
    cache.write(1, 0, &pattern(99, 0, 8)).unwrap(); // a newer copy of line 0
    let (d1, d2) = (cache.nr_dirty_caches(1), cache.nr_dirty_caches(2));
    cache.shutdown().unwrap();
    drop(cache);

    let writes = cdev.writes.load(Ordering::SeqCst);
    let report = inspect(&*cdev).unwrap();
    assert_eq!(
        cdev.writes.load(Ordering::SeqCst),
        writes,
        "inspection wrote to the device"
    );
    assert_eq!(report.dirty_lines.get(&1), Some(&d1));
    assert_eq!(report.dirty_lines.get(&2), Some(&d2));
    assert_eq!((d1, d2), (300, 1));
    assert_eq!(report.dirty_extent.get(&1), Some(&(300 * 4096)));
    assert_eq!(report.dirty_extent.get(&2), Some(&(6 * 4096)));
    assert!(
        report.segments.iter().all(|s| s.checksum_ok && s.in_log),
        "{:?}",
        report.segments
    );
    assert_eq!(report.log, (1, report.segments.len() as u64));
    assert_eq!(report.bad_segment, None);

    // after a full write-back the cache is clean
    let cache = resume_with_two_devices(&dom, &cdev);
    cache.set_knob(Knob::AllowMigrate, 1).unwrap();
    cache.migrate_all().unwrap();
    cache.shutdown().unwrap();
    drop(cache);
    assert!(inspect(&*cdev).unwrap().is_clean());
}

#[test]
fn inspection_reports_a_damaged_segment() {
    let dom = PowerDomain::new();
    let cdev = sim_cache_disk(&dom, 4);
    let cache = resume(cdev.clone(), 2);
    cache
        .attach_device(1, SimDisk::new(dom.clone(), 4 * MIB))
        .unwrap();
    cache.write(1, 0, &pattern(1, 0, 8)).unwrap();
    cache.flush_sync().unwrap();
    cache.write(1, 8, &pattern(2, 8, 8)).unwrap();
    cache.shutdown().unwrap();
    drop(cache);
    let mut img = cdev.snapshot();
    img[(2 * MIB + 4096) as usize] ^= 1; // segment 2 (slot 1), first data line
    let damaged = SimDisk::from_image(PowerDomain::new(), img);
    let report = inspect(&*damaged).unwrap();
    assert_eq!(report.bad_segment, Some(2));
    assert_eq!(report.log, (1, 1));
    let seg2 = report.segments.iter().find(|s| s.global_id == 2).unwrap();
    assert!(!seg2.checksum_ok && !seg2.in_log);
    assert_eq!(report.dirty_lines.get(&1), Some(&1));
}

#[test]
fn inspection_refuses_what_is_not_an_lc_cache() {
    let blank = SimDisk::new(PowerDomain::new(), 4 * MIB);
    assert!(matches!(
        inspect(&*blank),
        Err(lc_engine::Error::NotFormatted)
    ));
}
