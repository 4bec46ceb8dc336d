//! The engine's API as the daemon uses it: format/resume refusals, bad
//! input (typed errors, nothing changed), counters, knobs, several devices and
//! caches, concurrent callers, detach, and real files with O_DIRECT.

mod common;

use std::sync::Arc;

use common::*;
use lc_engine::sim::{PowerDomain, SimDisk};
use lc_engine::{
    format_cache_device, read_superblock, BlockDevice, Cache, CacheOptions, DeviceKnob, Error,
    FileDevice, Knob, MIN_CACHE_BYTES,
};

fn opts() -> CacheOptions {
    CacheOptions { pool_segments: 2 }
}

#[test]
fn format_refuses_small_devices_and_foreign_signatures_without_changing_them() {
    let dom = PowerDomain::new();
    let small = SimDisk::new(dom.clone(), MIN_CACHE_BYTES - 512);
    assert!(matches!(
        format_cache_device(&*small, false),
        Err(Error::TooSmall { .. })
    ));
    assert!(small.snapshot().iter().all(|&b| b == 0), "nothing written");

    let mut img = vec![0u8; 4 * MIB as usize];
    img[1080] = 0x53;
    img[1081] = 0xEF; // ext4 superblock magic
    let ext4 = SimDisk::from_image(dom.clone(), img.clone());
    let err = format_cache_device(&*ext4, false).unwrap_err();
    assert!(err.to_string().contains("ext2/3/4"), "{err}");
    assert!(ext4.snapshot() == img, "nothing written");
    format_cache_device(&*ext4, true).unwrap();
    assert!(read_superblock(&*ext4).is_ok());

    let err = format_cache_device(&*ext4, false).unwrap_err();
    assert!(matches!(err, Error::HasSignature("lc cache")), "{err}");
}

#[test]
fn resume_refuses_unformatted_corrupt_and_bad_ids() {
    let dom = PowerDomain::new();
    let blank = SimDisk::new(dom.clone(), 4 * MIB);
    assert!(matches!(
        Cache::resume(1, blank, opts()),
        Err(Error::NotFormatted)
    ));

    let dev = sim_cache_disk(&dom, 3);
    assert!(matches!(
        Cache::resume(0, dev.clone(), opts()),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        Cache::resume(1, dev.clone(), CacheOptions { pool_segments: 0 }),
        Err(Error::InvalidArgument(_))
    ));
    let mut img = dev.snapshot();
    img[30] ^= 1;
    let corrupt = SimDisk::from_image(dom.clone(), img);
    assert!(matches!(
        Cache::resume(1, corrupt, opts()),
        Err(Error::Corrupt(_))
    ));

    // both records broken: refuse rather than guess
    let mut img = dev.snapshot();
    img[4096 + 20] ^= 1;
    img[8192 + 20] ^= 1;
    let no_record = SimDisk::from_image(dom.clone(), img);
    assert!(matches!(
        Cache::resume(1, no_record, opts()),
        Err(Error::Corrupt(_))
    ));

    // a device shrunk below what the superblock says
    let img = dev.snapshot();
    let shrunk = SimDisk::from_image(dom, img[..3 * MIB as usize].to_vec());
    assert!(matches!(
        Cache::resume(1, shrunk, opts()),
        Err(Error::Corrupt(_))
    ));
}

#[test]
fn bad_io_and_knob_values_are_typed_errors_and_change_nothing() {
    let dom = PowerDomain::new();
    let cache = resume(sim_cache_disk(&dom, 3), 2);
    let b = SimDisk::from_image(dom.clone(), pattern(0, 0, 64));
    assert!(matches!(
        cache.attach_device(0, b.clone()),
        Err(Error::InvalidArgument(_))
    ));
    cache.attach_device(7, b.clone()).unwrap();
    assert!(matches!(
        cache.attach_device(7, b.clone()),
        Err(Error::DeviceExists(7))
    ));

    let mut buf = vec![0u8; 4096];
    assert!(matches!(
        cache.write(8, 0, &buf),
        Err(Error::UnknownDevice(8))
    ));
    assert!(matches!(
        cache.read(8, 0, &mut buf),
        Err(Error::UnknownDevice(8))
    ));
    assert!(matches!(
        cache.write(7, 60, &buf),
        Err(Error::OutOfRange {
            end: 68,
            size: 64,
            ..
        })
    ));
    assert!(matches!(
        cache.read(7, u64::MAX - 2, &mut buf),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        cache.discard(7, 63, 2),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        cache.write(7, 0, &buf[..100]),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        cache.write(7, 0, &[]),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(
        cache.nr_dirty_caches(7),
        0,
        "no failed request wrote anything"
    );

    for (knob, bad) in [
        (Knob::NrMaxBatchedMigration, 0),
        (Knob::NrMaxBatchedMigration, 4),
        (Knob::AllowMigrate, 2),
        (Knob::BarrierDeadlineMs, 0),
        (Knob::UpdateInterval, 0),
    ] {
        let before = cache.knob(knob);
        let err = cache.set_knob(knob, bad).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert!(err.to_string().contains(knob.spec().name), "{err}");
        assert_eq!(cache.knob(knob), before);
    }
    for s in &DeviceKnob::ALL {
        assert_eq!(
            cache.device_knob(7, s.knob).unwrap(),
            s.default,
            "{}",
            s.name
        );
        let err = cache.set_device_knob(7, s.knob, s.max + 1).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert!(err.to_string().contains(s.name), "{err}");
        assert_eq!(
            cache.device_knob(7, s.knob).unwrap(),
            s.default,
            "unchanged"
        );
    }
    cache
        .set_device_knob(7, DeviceKnob::MigrateThreshold, 40)
        .unwrap();
    assert_eq!(
        cache.devices()[0].knobs.get(DeviceKnob::MigrateThreshold),
        40
    );
    assert!(matches!(
        cache.set_device_knob(8, DeviceKnob::MigrateThreshold, 40),
        Err(Error::UnknownDevice(8))
    ));
}

#[test]
fn the_sixteen_counters_count_each_kind_of_io() {
    let dom = PowerDomain::new();
    let cache = resume(sim_cache_disk(&dom, 3), 2);
    cache
        .attach_device(1, SimDisk::new(dom.clone(), MIB))
        .unwrap();
    let full = vec![1u8; 4096];
    cache.write(1, 0, &full).unwrap(); // write miss, fullsize
    cache.write(1, 0, &full[..512]).unwrap(); // write hit on the RAM buffer, partial
    let mut b = vec![0u8; 4096];
    cache.read(1, 0, &mut b).unwrap(); // read hit on buffer, fullsize
    cache.read(1, 8, &mut b[..512]).unwrap(); // read miss, partial
    let s = cache.status().stats;
    assert_eq!(s.get(true, false, false, true), 1);
    assert_eq!(s.get(true, true, true, false), 1);
    assert_eq!(s.get(false, true, true, true), 1);
    assert_eq!(s.get(false, false, false, false), 1);
    assert_eq!(s.counters.iter().sum::<u64>(), 4);
    cache.flush_sync().unwrap();
    while cache.status().last_flushed_segment_id < 1 {
        std::thread::yield_now();
    }
    cache.read(1, 0, &mut b).unwrap(); // read hit from the cache device
    assert_eq!(cache.status().stats.get(false, true, false, true), 1);
    cache.clear_stat();
    assert_eq!(cache.status().stats.counters, [0; 16]);
}

#[test]
fn recent_figures_are_at_most_their_age_old_and_fresh_after_administrative_calls() {
    use lc_engine::figures::RECENT_FIGURES_MAX_AGE;
    let dom = PowerDomain::new();
    let cache = resume(sim_cache_disk(&dom, 3), 2);
    let backing = SimDisk::new(dom.clone(), MIB);
    cache.attach_device(1, backing.clone()).unwrap();
    assert_eq!(cache.recent_nr_dirty(1), 0);
    cache.write(1, 0, &[1u8; 4096]).unwrap();
    // a write does not make the figures fresh (the I/O path pays nothing
    // for them), but they are never older than their age
    std::thread::sleep(RECENT_FIGURES_MAX_AGE * 2);
    assert_eq!(cache.recent_nr_dirty(1), 1);
    assert_eq!(cache.recent_device_status(1).unwrap().nr_dirty_caches, 1);
    assert_eq!(cache.recent_status().nr_dirty_caches, 1);
    assert_eq!(cache.recent_status().stats.counters.iter().sum::<u64>(), 1);
    // administrative calls show at once
    cache.clear_stat();
    assert_eq!(cache.recent_status().stats.counters, [0; 16]);
    cache.set_knob(Knob::CommitSuperBlockInterval, 9).unwrap();
    let knobs = cache.recent_status().knobs;
    assert!(
        knobs.contains(&("commit_super_block_interval", 9)),
        "{knobs:?}"
    );
    cache.flush_sync().unwrap();
    // (the flusher moves the id just after the flush completes)
    while cache.recent_status().last_flushed_segment_id < 1 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    cache.detach_device(1, |_| {}).unwrap();
    assert!(cache.recent_device_status(1).is_none());
    assert_eq!(cache.recent_nr_dirty(1), 0, "written back by the detach");
}

#[test]
fn partially_dirty_lines_read_backing_data_overlaid_with_dirty_sectors() {
    let dom = PowerDomain::new();
    let cdev = sim_cache_disk(&dom, 3);
    let b = SimDisk::from_image(dom.clone(), pattern(0, 0, 64));
    let cache = resume(cdev, 2);
    cache.attach_device(1, b).unwrap();
    cache.write(1, 10, &pattern(1, 10, 2)).unwrap(); // sectors 2,3 of line 1
    cache.flush_sync().unwrap();
    cache.write(1, 13, &pattern(2, 13, 1)).unwrap(); // sector 5, newer segment: merges
    let mut got = vec![0u8; 8 * 512];
    cache.read(1, 8, &mut got).unwrap();
    let mut want = pattern(0, 8, 8);
    want[2 * 512..4 * 512].copy_from_slice(&pattern(1, 10, 2));
    want[5 * 512..6 * 512].copy_from_slice(&pattern(2, 13, 1));
    assert!(got == want);
    // discard of sectors 10..12 keeps sector 13's dirty data
    cache.discard(1, 10, 2).unwrap();
    let mut s13 = vec![0u8; 512];
    cache.read(1, 13, &mut s13).unwrap();
    assert!(s13 == pattern(2, 13, 1));
}

#[test]
fn detach_writes_everything_back_reports_progress_and_forgets_the_id() {
    let dom = PowerDomain::new();
    let cdev = sim_cache_disk(&dom, 4);
    let b1 = SimDisk::from_image(dom.clone(), pattern(0, 0, 2048));
    let b2 = SimDisk::from_image(dom.clone(), pattern(0, 0, 2048));
    let cache = resume(cdev.clone(), 2);
    cache.attach_device(1, b1.clone()).unwrap();
    cache.attach_device(2, b2.clone()).unwrap();
    for round in 1..=3u64 {
        cache.write(1, 0, &pattern(round, 0, 2048)).unwrap();
        cache.write(2, 100, &pattern(10 + round, 100, 64)).unwrap();
        cache.flush_sync().unwrap();
    }
    assert_eq!(cache.nr_dirty_caches(1), 256);
    let mut calls = Vec::new();
    cache.detach_device(1, |p| calls.push(p)).unwrap();
    let last = calls.last().unwrap();
    assert!(
        !calls.is_empty() && last.done == last.total && last.total > 0,
        "{calls:?}"
    );
    let mut raw = vec![0u8; 2048 * 512];
    b1.read_at(&mut raw, 0).unwrap();
    assert!(
        raw == pattern(3, 0, 2048),
        "backing device 1 holds the newest data"
    );
    assert!(matches!(
        cache.write(1, 0, &[0; 512]),
        Err(Error::UnknownDevice(1))
    ));
    assert!(matches!(
        cache.detach_device(1, |_| {}),
        Err(Error::UnknownDevice(1))
    ));
    // device 2 still works and its data is intact
    let mut got = vec![0u8; 64 * 512];
    cache.read(2, 100, &mut got).unwrap();
    assert!(got == pattern(13, 100, 64));
    // a crash now must not resurrect device 1's old lines under a new device 1
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
    let mut images = dom.cut(&[&cdev], &mut rng);
    drop(cache);
    let fresh = SimDisk::from_image(PowerDomain::new(), pattern(0, 0, 2048));
    let cache = Cache::resume(
        1,
        SimDisk::from_image(PowerDomain::new(), images.remove(0)),
        opts(),
    )
    .unwrap();
    cache.attach_device(1, fresh).unwrap();
    assert_eq!(cache.nr_dirty_caches(1), 0);
    let mut got = vec![0u8; 2048 * 512];
    cache.read(1, 0, &mut got).unwrap();
    assert!(got == pattern(0, 0, 2048));
}

#[test]
fn several_caches_and_concurrent_callers() {
    let dom = PowerDomain::new();
    let c1 = Arc::new(Cache::resume(1, sim_cache_disk(&dom, 4), opts()).unwrap());
    let c2 = Arc::new(Cache::resume(2, sim_cache_disk(&dom, 4), opts()).unwrap());
    assert_ne!(c1.uuid(), c2.uuid());
    for c in [&c1, &c2] {
        c.attach_device(1, SimDisk::from_image(dom.clone(), pattern(0, 0, 4096)))
            .unwrap();
        c.attach_device(2, SimDisk::from_image(dom.clone(), pattern(0, 0, 4096)))
            .unwrap();
        c.set_knob(Knob::AllowMigrate, 1).unwrap();
    }
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let c = if t % 2 == 0 { c1.clone() } else { c2.clone() };
            std::thread::spawn(move || {
                let dev = (t / 2 % 2) as u8 + 1;
                let base = (t / 4) * 2048;
                for round in 1..=20u64 {
                    let tag = t * 1000 + round;
                    for k in 0..16 {
                        let s = base + (k * 37 + round * 11) % 2000;
                        c.write(dev, s, &pattern(tag, s, 7)).unwrap();
                        let mut back = vec![0u8; 7 * 512];
                        c.read(dev, s, &mut back).unwrap();
                        assert!(back == pattern(tag, s, 7), "read your own write");
                    }
                    if round % 5 == 0 {
                        c.flush_sync().unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for c in [&c1, &c2] {
        c.migrate_all().unwrap();
        assert!(
            c.devices().iter().all(|d| d.nr_dirty_caches == 0),
            "{:?} {:?}",
            c.devices(),
            c.status()
        );
    }
}

#[test]
fn works_on_real_files_with_direct_io() {
    let dir = tempfile::tempdir().unwrap();
    let cpath = dir.path().join("cache.img");
    let bpath = dir.path().join("backing.img");
    std::fs::File::create(&cpath)
        .unwrap()
        .set_len(6 * MIB)
        .unwrap();
    std::fs::File::create(&bpath)
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();
    let cdev = Arc::new(FileDevice::open(&cpath).unwrap());
    format_cache_device(&*cdev, false).unwrap();
    // the cache holds the only handle: a file is opened by one owner at a time
    let cache = Cache::resume(3, cdev, opts()).unwrap();
    cache
        .attach_device(1, Arc::new(FileDevice::open(&bpath).unwrap()))
        .unwrap();
    for i in 0..600u64 {
        let s = (i * 97) % 16000;
        cache.write(1, s, &pattern(i, s, 3)).unwrap();
    }
    cache.flush_sync().unwrap();
    let st = cache.status();
    assert!(st.static_ram_bytes >= st.index_ram_bytes && st.index_ram_bytes > 0);
    cache.shutdown().unwrap();
    drop(cache);
    let (cache, report) =
        Cache::resume_with_report(3, Arc::new(FileDevice::open(&cpath).unwrap()), opts()).unwrap();
    assert!(report.replayed_segments >= 1, "{report:?}");
    assert_eq!(
        report.verified_segments, 0,
        "a clean stop vouches for every segment: {report:?}"
    );
    cache
        .attach_device(1, Arc::new(FileDevice::open(&bpath).unwrap()))
        .unwrap();
    cache.migrate_all().unwrap();
    drop(cache);
    let raw = std::fs::read(&bpath).unwrap();
    let mut want = vec![0u8; 8 * MIB as usize];
    for i in 0..600u64 {
        let s = (i * 97) % 16000;
        want[s as usize * 512..(s as usize + 3) * 512].copy_from_slice(&pattern(i, s, 3));
    }
    assert!(
        raw == want,
        "backing file holds every write after write-back"
    );
}

#[test]
fn resume_replays_a_log_of_many_segments() {
    let dom = PowerDomain::new();
    let cdev = sim_cache_disk(&dom, 80);
    let b = SimDisk::new(dom.clone(), 80 * MIB);
    let cache = Cache::resume(1, cdev.clone(), CacheOptions { pool_segments: 8 }).unwrap();
    cache.attach_device(1, b.clone()).unwrap();
    let lines = 70 * 255u64;
    for l in 0..lines {
        cache.write(1, l * 8, &pattern(l + 1, l * 8, 8)).unwrap();
    }
    cache.shutdown().unwrap();
    drop(cache);
    let (cache, report) = Cache::resume_with_report(1, cdev, opts()).unwrap();
    assert_eq!(report.replayed_segments, 70, "{report:?}");
    cache.attach_device(1, b).unwrap();
    assert_eq!(cache.nr_dirty_caches(1), lines);
    let mut buf = vec![0u8; 4096];
    for l in (0..lines).step_by(97) {
        cache.read(1, l * 8, &mut buf).unwrap();
        assert!(buf == pattern(l + 1, l * 8, 8), "line {l}");
    }
}

#[test]
fn a_file_is_opened_by_one_owner_at_a_time_whatever_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cache.img");
    std::fs::File::create(&p).unwrap().set_len(4 * MIB).unwrap();
    let link = dir.path().join("link.img");
    std::os::unix::fs::symlink(&p, &link).unwrap();
    let hard = dir.path().join("hard.img");
    std::fs::hard_link(&p, &hard).unwrap();
    let first = FileDevice::open(&p).unwrap();
    for other in [&p, &link, &hard] {
        match FileDevice::open(other) {
            Err(Error::Open { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::EBUSY), "{other:?}")
            }
            Err(e) => panic!("{other:?}: {e}"),
            Ok(_) => panic!("{other:?} opened twice"),
        }
    }
    // another process (lcd writeback, a second lcd) is refused the same way
    let status = std::process::Command::new("flock")
        .args(["--nonblock", "--exclusive"])
        .arg(&p)
        .arg("true")
        .status();
    if let Ok(status) = status {
        assert!(!status.success(), "another process took the lock");
    }
    drop(first);
    let again = FileDevice::open(&link).unwrap();
    let meta = std::fs::metadata(&p).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (
            again.identity().dev,
            again.identity().ino,
            again.identity().rdev
        ),
        (meta.dev(), meta.ino(), None)
    );
}

#[test]
fn what_is_opened_is_what_the_identity_says_while_the_path_is_swapped() {
    // a writer keeps swapping a symlink between two files; every open
    // reports the identity of the file it actually writes to
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.img");
    let b = dir.path().join("b.img");
    for (p, fill) in [(&a, 0xaau8), (&b, 0xbb)] {
        std::fs::write(p, vec![fill; 1 << 16]).unwrap();
    }
    let ino = |p: &std::path::Path| std::fs::metadata(p).unwrap().ino();
    let (ino_a, ino_b) = (ino(&a), ino(&b));
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&a, &link).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, dir, a, b) = (stop.clone(), dir.path().to_path_buf(), a.clone(), b.clone());
        std::thread::spawn(move || {
            let tmp = dir.join("link.tmp");
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::remove_file(&tmp);
                std::os::unix::fs::symlink(if n % 2 == 0 { &b } else { &a }, &tmp).unwrap();
                std::fs::rename(&tmp, dir.join("link")).unwrap();
                n += 1;
            }
        })
    };
    let mut seen = [0u32; 2];
    for _ in 0..2000 {
        let d = FileDevice::open(&link).unwrap();
        let mut buf = vec![0u8; 512];
        d.read_at(&mut buf, 0).unwrap();
        let id = d.identity().ino;
        match buf[0] {
            0xaa => {
                assert_eq!(id, ino_a);
                seen[0] += 1
            }
            0xbb => {
                assert_eq!(id, ino_b);
                seen[1] += 1
            }
            x => panic!("read {x:#x}"),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().unwrap();
    assert!(seen[0] > 0 || seen[1] > 0);
}

#[test]
fn attach_refuses_a_device_smaller_than_the_dirty_data_of_its_id() {
    let dom = PowerDomain::new();
    let cdev = sim_cache_disk(&dom, 4);
    let big = SimDisk::new(dom.clone(), 4 * MIB);
    let cache = resume(cdev.clone(), 2);
    cache.set_knob(Knob::AllowMigrate, 0).unwrap();
    cache.attach_device(5, big.clone()).unwrap();
    // dirty sectors up to 3 MiB - 512 B + 512 B
    let last = 3 * MIB / 512 - 1;
    cache.write(5, last, &[7u8; 512]).unwrap();
    cache.write(5, 0, &[8u8; 4096]).unwrap();
    cache.flush_sync().unwrap();
    assert_eq!(cache.dirty_end_sector(5), last + 1);
    cache.shutdown().unwrap();
    drop(cache);
    // after a restart, the id's data is bound to no device yet
    let cache = resume(cdev.clone(), 2);
    assert_eq!(cache.dirty_end_sector(5), last + 1);
    let small = SimDisk::new(dom.clone(), 2 * MIB);
    match cache.attach_device(5, small.clone()) {
        Err(Error::BackingTooSmall {
            device_id: 5,
            dirty_end_sector,
            size_sectors,
        }) => assert_eq!((dirty_end_sector, size_sectors), (last + 1, 2 * MIB / 512)),
        other => panic!("attached a too small device: {other:?}"),
    }
    assert!(cache.devices().is_empty(), "nothing attached");
    assert!(small.snapshot().iter().all(|&b| b == 0), "nothing written");
    // exactly large enough is fine
    let exact = SimDisk::new(dom.clone(), 3 * MIB);
    cache.attach_device(5, exact).unwrap();
}

#[test]
fn discarding_a_missing_devices_lines_unblocks_write_back_for_good() {
    let dom = PowerDomain::new();
    let cdev = sim_cache_disk(&dom, 4);
    let gone = SimDisk::new(dom.clone(), 4 * MIB);
    let kept = SimDisk::new(dom.clone(), 4 * MIB);
    let cache = resume(cdev.clone(), 2);
    cache.set_knob(Knob::AllowMigrate, 0).unwrap();
    cache.attach_device(3, gone.clone()).unwrap();
    cache.attach_device(4, kept.clone()).unwrap();
    cache.write(3, 0, &pattern(1, 0, 8)).unwrap();
    cache.write(4, 8, &pattern(2, 8, 8)).unwrap();
    cache.write(3, 64, &pattern(3, 64, 8)).unwrap();
    cache.flush_sync().unwrap();
    cache.shutdown().unwrap();
    drop(cache);
    // device 3 is gone at the next start
    let cache = resume(cdev.clone(), 2);
    cache.attach_device(4, kept.clone()).unwrap();
    assert_eq!(cache.nr_dirty_caches(3), 2);
    assert!(matches!(
        cache.discard_device_lines(4, |_| {}),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(
        cache.nr_dirty_caches(4),
        1,
        "an attached device keeps its data"
    );
    assert_eq!(cache.discard_device_lines(3, |_| {}).unwrap(), 2);
    assert_eq!(cache.nr_dirty_caches(3), 0);
    // write-back no longer waits for device 3: device 4's data goes back
    cache.migrate_all().unwrap();
    let mut got = vec![0u8; 8 * 512];
    kept.read_at(&mut got, 8 * 512).unwrap();
    assert!(got == pattern(2, 8, 8));
    // a crash after the call does not bring the lines back
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(2);
    let mut images = dom.cut(&[&cdev], &mut rng);
    drop(cache);
    let cache = Cache::resume(
        1,
        SimDisk::from_image(PowerDomain::new(), images.remove(0)),
        opts(),
    )
    .unwrap();
    assert_eq!(cache.nr_dirty_caches(3), 0);
    assert_eq!(cache.dirty_end_sector(3), 0);
    let fresh = SimDisk::new(PowerDomain::new(), MIB);
    cache.attach_device(3, fresh.clone()).unwrap();
    let mut got = vec![0u8; 8 * 512];
    cache.read(3, 0, &mut got).unwrap();
    assert!(
        got.iter().all(|&b| b == 0),
        "the discarded data is not served"
    );
    assert!(
        gone.snapshot().iter().all(|&b| b == 0),
        "nothing written to the missing device"
    );
}

#[test]
fn discarding_one_of_two_missing_devices_says_which_blocks_and_never_hangs() {
    let dom = PowerDomain::new();
    let cdev = sim_cache_disk(&dom, 4);
    let x = SimDisk::new(dom.clone(), 4 * MIB);
    let y = SimDisk::new(dom.clone(), 4 * MIB);
    let cache = resume(cdev.clone(), 2);
    cache.set_knob(Knob::AllowMigrate, 0).unwrap();
    cache.attach_device(3, x.clone()).unwrap();
    cache.attach_device(4, y.clone()).unwrap();
    cache.write(4, 0, &pattern(1, 0, 8)).unwrap(); // y's line first in the log
    cache.write(3, 8, &pattern(2, 8, 8)).unwrap();
    cache.flush_sync().unwrap();
    cache.shutdown().unwrap();
    drop(cache);
    // both disks are gone
    let cache = resume(cdev.clone(), 2);
    match cache.discard_device_lines(3, |_| {}) {
        Err(Error::MissingDevice(4)) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(cache.nr_dirty_caches(3), 0, "dropped at once");
    assert!(!cache.device_lines_gone_for_good(3), "but not for good yet");
    // a disk attached as device 3 now would get the dropped lines back at
    // the next resume (they are still in the log): refused, whatever disk
    let other = SimDisk::new(dom.clone(), 4 * MIB);
    match cache.attach_device(3, other.clone()) {
        Err(Error::DiscardUnfinished {
            device_id: 3,
            waits_for: 4,
        }) => {}
        r => panic!("attach of id 3 with its discard unfinished: {r:?}"),
    }
    assert_eq!(cache.dirty_end_sector(3), 0);
    assert_eq!(cache.discard_device_lines(4, |_| {}).unwrap(), 1);
    assert!(cache.device_lines_gone_for_good(4));
    assert_eq!(cache.discard_device_lines(3, |_| {}).unwrap(), 0);
    assert!(cache.device_lines_gone_for_good(3));
    // now the id is free for another disk
    cache.attach_device(3, other.clone()).unwrap();
    cache.detach_device(3, |_| {}).unwrap();
    cache.shutdown().unwrap();
    drop(cache);
    let cache = resume(cdev.clone(), 2);
    assert_eq!((cache.nr_dirty_caches(3), cache.nr_dirty_caches(4)), (0, 0));
    assert!(x.snapshot().iter().all(|&b| b == 0) && y.snapshot().iter().all(|&b| b == 0));
    assert!(
        other.snapshot().iter().all(|&b| b == 0),
        "nothing of the old device 3 written to the disk attached as 3 later"
    );
}

/// `write_may_wait` says true while every RAM buffer waits for the cache
/// device (a frontend then writes on a thread that may wait), false when
/// there is room.
#[test]
fn write_may_wait_while_every_ram_buffer_waits_for_the_cache_device() {
    let dom = PowerDomain::new();
    let gated = GatedDevice::new(sim_cache_disk(&dom, 8));
    let cache = resume(gated.clone(), 2);
    let backing = SimDisk::new(dom.clone(), 16 * MIB);
    cache.attach_device(1, backing).unwrap();
    assert!(!cache.write_may_wait(4096), "a new cache has room");
    gated.hold_next_flush();
    // fill segment 1 and open segment 2: both pool buffers in use
    cache.write(1, 0, &pattern(1, 0, 255 * 8)).unwrap();
    cache.write(1, 255 * 8, &pattern(1, 255 * 8, 8)).unwrap();
    gated.wait_held();
    assert!(
        cache.write_may_wait(4096),
        "no buffer is free while segment 1 waits for its flush"
    );
    gated.release();
    let start = std::time::Instant::now();
    while cache.write_may_wait(4096) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "room never came back"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // a write too big for the free buffers may wait
    assert!(cache.write_may_wait(3 << 20));
}

#[test]
fn write_back_finishes_the_oldest_segment_before_the_next_one() {
    // Segment 1 holds lines 0, 4, 8, …; segment 2 lines 2, 6, 10, …: an
    // elevator over both would interleave them and free both slots at the
    // end; oldest first frees segment 1's slot after its own lines.
    let dom = PowerDomain::new();
    let cache = resume(sim_cache_disk(&dom, 8), 2);
    // the backing device records where each write starts, in order
    let writes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let backing = Arc::new(ObservedDevice {
        on_write: Some(Box::new({
            let writes = writes.clone();
            move |_, offset| writes.lock().unwrap().push(offset)
        })),
        ..ObservedDevice::new(SimDisk::from_image(dom.clone(), vec![0; 1 << 20]))
    });
    cache.attach_device(1, backing.clone()).unwrap();
    const LINES: u64 = 40;
    for first in [0, 2] {
        for k in 0..LINES {
            let sector = (first + 4 * k) * 8;
            cache
                .write(1, sector, &pattern(first + 1, sector, 8))
                .unwrap();
        }
        cache.flush_sync().unwrap();
    }
    cache.set_knob(Knob::NrMaxBatchedMigration, 2).unwrap();
    cache.set_knob(Knob::WriteBackQueueDepth, 1).unwrap();
    cache.set_knob(Knob::ForceMigrate, 1).unwrap();
    while cache.status().last_migrated_segment_id < 2 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let lines: Vec<u64> = writes
        .lock()
        .unwrap()
        .iter()
        .map(|&off| off / 4096)
        .collect();
    assert_eq!(lines.len(), 2 * LINES as usize, "{lines:?}");
    let seg_of = |line: u64| if line % 4 == 0 { 1 } else { 2 };
    let order: Vec<u8> = lines.iter().map(|&l| seg_of(l)).collect();
    let first_of_2 = order.iter().position(|&s| s == 2).unwrap();
    assert!(
        order[first_of_2..].iter().all(|&s| s == 2),
        "segment 2's lines interleaved with segment 1's: {lines:?}"
    );
    let mut buf = vec![0u8; 4096];
    cache.read(1, 4 * 8, &mut buf).unwrap();
    assert!(buf == pattern(1, 4 * 8, 8));
}

/// Known, not fixed (issue 15 defect 2(a), the writers' part): device 3's
/// dirty data is in the log but its disk is not attached; write-back waits
/// for it, so once every slot holds dirty data a writer on device 4 waits
/// for ever. Failing such a writer at once was tried and broke lcd's
/// restore, which attaches the saved devices one by one: for a moment a
/// device being restored looks missing (the guest soak got I/O errors). The
/// fix needs lcd to tell the engine which devices are missing for good.
#[test]
#[ignore = "known defect: a writer waits while write-back waits for a missing device"]
fn a_writer_that_needs_room_only_a_missing_device_can_free_gets_an_error_not_a_hang() {
    let dom = PowerDomain::new();
    let cdev = sim_cache_disk(&dom, 3);
    let gone = SimDisk::new(dom.clone(), 4 * MIB);
    let kept = SimDisk::new(dom.clone(), 4 * MIB);
    let cache = resume(cdev.clone(), 2);
    cache.attach_device(3, gone).unwrap();
    cache.write(3, 0, &pattern(1, 0, 8)).unwrap();
    cache.flush_sync().unwrap();
    cache.shutdown().unwrap();
    drop(cache);
    let cache = Arc::new(resume(cdev, 2));
    cache.attach_device(4, kept).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let writer = {
        let cache = cache.clone();
        std::thread::spawn(move || {
            // 3 slots of 255 lines: the fourth segment needs slot 1 back
            let res = (0..4 * 255u64).try_for_each(|l| {
                cache
                    .write(4, l % 1024 * 8, &pattern(2, l % 1024 * 8, 8))
                    .map(|_| ())
            });
            let _ = tx.send(res);
        })
    };
    let res = match rx.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(res) => res,
        Err(_) => {
            cache.discard_device_lines(3, |_| {}).unwrap(); // let the writer end
            panic!("the writer still waits for room after 60 s");
        }
    };
    writer.join().unwrap();
    let e = res.expect_err("no room can be made");
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    let text = lc_engine::error::describe(&e);
    assert!(text.contains("device 3"), "{text}");
    // giving device 3's data up makes room again
    cache.discard_device_lines(3, |_| {}).unwrap();
    cache.write(4, 0, &pattern(3, 0, 8)).unwrap();
}
