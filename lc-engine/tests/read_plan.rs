//! Read plans ([`Cache::plan_read`]) executed as a frontend would, with
//! plain `pread`s on the devices' own file descriptors, against
//! [`Cache::read`] and a reference model: sequentially over generated
//! operations, and under concurrent writes, flushes and write-back with
//! segment slots being reused. Every path (finish, failure, drop) releases
//! the segment pins.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{pattern, sector_pattern};
use lc_engine::read_plan::pinned_lines;
use lc_engine::{
    format_cache_device, AlignedBuf, Cache, CacheOptions, FileDevice, Knob, ReadPlan, ReadSource,
    ReadTarget,
};
use proptest::prelude::*;

const MIB: u64 = 1 << 20;

/// A cache of `segments` segments on a file and one backing file of
/// `backing_sectors` sectors (device 1), filled with `pattern(0, ..)`.
struct Rig {
    cache: Arc<Cache>,
    _dir: tempfile::TempDir,
}

fn rig(segments: u64, pool: usize, backing_sectors: u64) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let (cpath, bpath) = (dir.path().join("cache"), dir.path().join("backing"));
    std::fs::File::create(&cpath)
        .unwrap()
        .set_len(MIB * (1 + segments))
        .unwrap();
    std::fs::write(&bpath, pattern(0, 0, backing_sectors)).unwrap();
    let dev = FileDevice::open(&cpath).unwrap();
    format_cache_device(&dev, false).unwrap();
    let cache = Cache::resume(
        1,
        Arc::new(dev),
        CacheOptions {
            pool_segments: pool,
        },
    )
    .unwrap();
    cache
        .attach_device(1, Arc::new(FileDevice::open(&bpath).unwrap()))
        .unwrap();
    cache.set_knob(Knob::BarrierDeadlineMs, 1).unwrap();
    Rig {
        cache: Arc::new(cache),
        _dir: dir,
    }
}

/// Reads `target.len()` bytes at `offset` of `fd` with blocking `pread`s.
fn pread_all(fd: i32, target: &mut [u8], offset: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < target.len() {
        // SAFETY: reads into the live slice `target[done..]`.
        let n = unsafe {
            libc::pread(
                fd,
                target[done..].as_mut_ptr().cast(),
                target.len() - done,
                (offset + done as u64) as libc::off_t,
            )
        };
        match n {
            0 => return Err(std::io::Error::from_raw_os_error(libc::EIO)),
            n if n < 0 => return Err(std::io::Error::last_os_error()),
            n => done += n as usize,
        }
    }
    Ok(())
}

/// Executes `plan` as lcd's queue threads do, but with blocking `pread`s
/// on the devices' file descriptors, and finishes it. With `request`, as
/// under zero copy: every [`ReadTarget::Out`] read goes straight into
/// `request`, and after `finish` the plan's [`ReadPlan::from_memory`]
/// ranges are carried over from `out` to it.
fn execute_with_pread(
    mut plan: ReadPlan,
    out: &mut [u8],
    mut request: Option<&mut [u8]>,
) -> lc_engine::Result<()> {
    let mut failed = None;
    let from_memory = plan.from_memory();
    for read in plan.reads().to_vec() {
        let fd = plan
            .raw_fd(read.source)
            .expect("a FileDevice has a descriptor");
        let target = match (read.target, request.as_deref_mut()) {
            (ReadTarget::Out(at), Some(request)) => &mut request[at..at + read.len],
            _ => plan.target_mut(&read, out),
        };
        if let Err(e) = pread_all(fd, target, read.offset) {
            failed = Some((read.source, e));
            break;
        }
    }
    plan.finish(out, failed)?;
    if let Some(request) = request {
        for r in from_memory {
            request[r.clone()].copy_from_slice(&out[r]);
        }
    }
    Ok(())
}

fn plan_and_execute(cache: &Cache, sector: u64, len: usize) -> Vec<u8> {
    let mut out = AlignedBuf::zeroed(len);
    let plan = cache.plan_read(1, sector, &mut out).unwrap();
    execute_with_pread(plan, &mut out, None).unwrap();
    out.to_vec()
}

/// [`plan_and_execute`] as under zero copy: the bytes end up in a separate
/// "request" buffer; both it and the plan's own buffer start with
/// different garbage, so that a byte carried over that should not be, or
/// one not carried over that should, shows.
fn plan_and_execute_zero_copy(cache: &Cache, sector: u64, len: usize) -> Vec<u8> {
    let mut out = AlignedBuf::zeroed(len);
    out.fill(0xdd);
    let mut request = AlignedBuf::zeroed(len);
    request.fill(0xee);
    let plan = cache.plan_read(1, sector, &mut out).unwrap();
    execute_with_pread(plan, &mut out, Some(&mut request)).unwrap();
    request.to_vec()
}

#[derive(Debug, Clone)]
enum Op {
    Write { sector: u64, n: u64, tag: u64 },
    Read { sector: u64, n: u64 },
    Flush,
    FlushCurrentBuffer,
    WriteBack,
}

const DEVICE_SECTORS: u64 = 4096; // 2 MiB

fn op() -> impl Strategy<Value = Op> {
    let range =
        (0..DEVICE_SECTORS - 1).prop_flat_map(|s| (Just(s), 1..=(DEVICE_SECTORS - s).min(80)));
    prop_oneof![
        4 => (range.clone(), any::<u64>()).prop_map(|((sector, n), tag)| Op::Write { sector, n, tag: tag | 1 }),
        4 => range.prop_map(|(sector, n)| Op::Read { sector, n }),
        1 => Just(Op::Flush),
        1 => Just(Op::FlushCurrentBuffer),
        1 => Just(Op::WriteBack),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Over generated writes, flushes and write-backs (RAM lines, lines on
    /// the cache device, partially dirty lines, misses), a plan executed
    /// with preads reads what `Cache::read` reads and what was written,
    /// also when its device reads go straight to another buffer and its
    /// `from_memory` ranges are carried over (zero copy), and leaves no
    /// pin behind.
    #[test]
    fn a_plan_reads_what_cache_read_reads(ops in proptest::collection::vec(op(), 1..60)) {
        let r = rig(6, 3, DEVICE_SECTORS);
        let mut model: Vec<[u8; 512]> = (0..DEVICE_SECTORS).map(|s| sector_pattern(0, s)).collect();
        for op in ops {
            match op {
                Op::Write { sector, n, tag } => {
                    r.cache.write(1, sector, &pattern(tag, sector, n)).unwrap();
                    for s in sector..sector + n {
                        model[s as usize] = sector_pattern(tag, s);
                    }
                }
                Op::Read { sector, n } => {
                    let got = plan_and_execute(&r.cache, sector, n as usize * 512);
                    let mut via_read = vec![0u8; n as usize * 512];
                    r.cache.read(1, sector, &mut via_read).unwrap();
                    prop_assert!(got == via_read, "plan and Cache::read differ at {sector}+{n}");
                    let zero_copy = plan_and_execute_zero_copy(&r.cache, sector, n as usize * 512);
                    prop_assert!(
                        zero_copy == via_read,
                        "plan executed as under zero copy and Cache::read differ at {sector}+{n}"
                    );
                    let want: Vec<u8> = model[sector as usize..(sector + n) as usize].concat();
                    prop_assert!(got == want, "plan and model differ at {sector}+{n}");
                }
                Op::Flush => r.cache.flush_sync().unwrap(),
                Op::FlushCurrentBuffer => r.cache.flush_current_buffer(),
                Op::WriteBack => r.cache.migrate_all().unwrap(),
            }
        }
        // the migrator may hold pins of its own while it works: let it finish
        r.cache.migrate_all().unwrap();
        prop_assert_eq!(pinned_lines(&r.cache), 0);
    }
}

/// Sector ownership of the concurrent test: writer `w` owns sectors
/// `w * REGION .. (w + 1) * REGION`; REGION is not a multiple of 8, so
/// writers share lines and lines are partially dirty.
const REGION: u64 = 8 * 40 + 3;
const WRITERS: u64 = 3;
/// Sectors after the writers' regions that nobody writes during the run.
const STABLE: u64 = 8 * 24;

/// Plans taken while three writers, a flusher and write-back run on a
/// cache small enough that its slots are reused many times: every sector
/// read is a version no older than the last write of it completed before
/// the plan and no newer than the last one started before the read
/// landed (the reader lingers between plan and preads, so a slot that was
/// not pinned would be overwritten), and sectors nobody writes read the
/// same through a plan as through `Cache::read`.
#[test]
fn plans_under_concurrent_writes_flushes_and_write_back() {
    let total = WRITERS * REGION + STABLE;
    let r = rig(5, 2, total);
    r.cache.set_knob(Knob::AllowMigrate, 1).unwrap();
    // the stable sectors: written once, then only moved by the cache
    r.cache
        .write(
            1,
            WRITERS * REGION,
            &pattern(7, WRITERS * REGION, STABLE / 2),
        )
        .unwrap();
    let started: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let completed: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let version = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for w in 0..WRITERS {
        let (cache, started, completed, version, stop) = (
            r.cache.clone(),
            started.clone(),
            completed.clone(),
            version.clone(),
            stop.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut rng = proptest::test_runner::TestRng::deterministic_rng(
                proptest::test_runner::RngAlgorithm::ChaCha,
            );
            for _ in 0..w {
                let _ = rng.next_u64();
            }
            let base = w * REGION;
            while !stop.load(Ordering::SeqCst) {
                let off = rng.next_u64() % REGION;
                let n = 1 + rng.next_u64() % (REGION - off).min(40);
                let v = version.fetch_add(1, Ordering::SeqCst);
                for s in base + off..base + off + n {
                    started[s as usize].store(v, Ordering::SeqCst);
                }
                cache
                    .write(1, base + off, &pattern(v, base + off, n))
                    .unwrap();
                for s in base + off..base + off + n {
                    completed[s as usize].store(v, Ordering::SeqCst);
                }
            }
        }));
    }
    {
        let (cache, stop) = (r.cache.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                if i % 3 == 0 {
                    cache.flush_sync().unwrap();
                } else {
                    cache.flush_current_buffer();
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
        }));
    }
    let mut rng = proptest::test_runner::TestRng::deterministic_rng(
        proptest::test_runner::RngAlgorithm::ChaCha,
    );
    let start_id = r.cache.status().last_migrated_segment_id;
    let (mut reads, mut lingered) = (0u64, 0u64);
    // enough reads that slots are reused, bounded so a slow machine ends
    while reads < 3000
        && (reads < 400
            || lingered < 200
            || r.cache.status().last_migrated_segment_id < start_id + 3 * 5)
    {
        reads += 1;
        let sector = rng.next_u64() % total;
        let n = 1 + rng.next_u64() % (total - sector).min(64);
        let len = n as usize * 512;
        let before: Vec<u64> = (sector..sector + n)
            .map(|s| completed[s as usize].load(Ordering::SeqCst))
            .collect();
        let mut out = AlignedBuf::zeroed(len);
        let plan = r.cache.plan_read(1, sector, &mut out).unwrap();
        if plan.reads().iter().any(|rd| rd.source == ReadSource::Cache) {
            // long enough for the flusher to fill the slot again if the
            // plan had not pinned it
            lingered += 1;
            std::thread::sleep(Duration::from_millis(if lingered % 2 == 0 {
                20
            } else {
                1
            }));
        }
        // every other read as under zero copy, into a separate buffer
        let zero_copy = reads % 2 == 0;
        let mut request = AlignedBuf::zeroed(len);
        request.fill(0xee);
        execute_with_pread(plan, &mut out, zero_copy.then_some(&mut request[..])).unwrap();
        let read = if zero_copy { &request } else { &out };
        for (i, s) in (sector..sector + n).enumerate() {
            let got = &read[i * 512..(i + 1) * 512];
            let v = u64::from_le_bytes(got[..8].try_into().unwrap());
            if s >= WRITERS * REGION {
                let want = if s < WRITERS * REGION + STABLE / 2 {
                    7
                } else {
                    0
                };
                assert_eq!(v, want, "stable sector {s}");
            } else {
                let after = started[s as usize].load(Ordering::SeqCst);
                assert!(
                    before[i] <= v && v <= after,
                    "sector {s}: read version {v}, but {} had completed before the plan and \
                     {after} was the newest started",
                    before[i]
                );
            }
            assert_eq!(got, sector_pattern(v, s), "sector {s} is one write's data");
        }
        if sector + n > WRITERS * REGION {
            // stable sectors: the plan reads what Cache::read reads
            let s0 = sector.max(WRITERS * REGION);
            let bytes = ((sector + n - s0) * 512) as usize;
            let mut via_read = vec![0u8; bytes];
            r.cache.read(1, s0, &mut via_read).unwrap();
            let off = ((s0 - sector) * 512) as usize;
            assert!(
                read[off..] == via_read[..],
                "stable sectors from {s0} differ"
            );
        }
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let migrated = r.cache.status().last_migrated_segment_id - start_id;
    assert!(
        migrated >= 5,
        "write-back reused slots during the run ({migrated} segments)"
    );
    r.cache.migrate_all().unwrap();
    assert_eq!(pinned_lines(&r.cache), 0);
}

/// A plan whose device read failed, and one dropped unfinished, release
/// their pins; the failure is the engine's error for that device.
#[test]
fn failed_and_dropped_plans_release_their_pins() {
    let r = rig(6, 3, DEVICE_SECTORS);
    r.cache.write(1, 0, &pattern(3, 0, 64)).unwrap();
    r.cache.flush_sync().unwrap();
    // the written segment is on the device now, not in RAM
    r.cache.write(1, 800, &pattern(4, 800, 8)).unwrap();
    r.cache.flush_sync().unwrap();
    let mut out = AlignedBuf::zeroed(64 * 512);
    let plan = r.cache.plan_read(1, 0, &mut out).unwrap();
    assert!(
        plan.reads().iter().any(|rd| rd.source == ReadSource::Cache),
        "{plan:?}"
    );
    assert_eq!(pinned_lines(&r.cache), plan.pinned_slots().len() as u64);
    assert!(pinned_lines(&r.cache) > 0);
    let e = plan
        .finish(
            &mut out,
            Some((
                ReadSource::Cache,
                std::io::Error::from_raw_os_error(libc::EIO),
            )),
        )
        .unwrap_err();
    assert_eq!(e.errno(), libc::EIO, "{e}");
    assert_eq!(pinned_lines(&r.cache), 0, "a failed plan unpins");
    let plan = r.cache.plan_read(1, 0, &mut out).unwrap();
    assert!(pinned_lines(&r.cache) > 0);
    drop(plan);
    assert_eq!(pinned_lines(&r.cache), 0, "a dropped plan unpins");
    // and what was read through a finished plan is right
    let got = plan_and_execute(&r.cache, 0, 64 * 512);
    assert_eq!(got, pattern(3, 0, 64));
    assert_eq!(pinned_lines(&r.cache), 0);
}

/// A read of lines in the RAM segment is served by the plan itself: no
/// device read is left to do.
#[test]
fn ram_hits_need_no_device_read() {
    let r = rig(6, 3, DEVICE_SECTORS);
    r.cache.write(1, 16, &pattern(9, 16, 24)).unwrap();
    let mut out = AlignedBuf::zeroed(24 * 512);
    let plan = r.cache.plan_read(1, 16, &mut out).unwrap();
    assert!(plan.reads().is_empty(), "{plan:?}");
    plan.finish(&mut out, None).unwrap();
    assert_eq!(&out[..], &pattern(9, 16, 24)[..]);
    // a miss of 32 KiB is one backing read
    let plan = r.cache.plan_read(1, 1024, &mut out).unwrap();
    assert_eq!(plan.reads().len(), 1, "{plan:?}");
    assert_eq!(plan.reads()[0].source, ReadSource::Backing);
}
