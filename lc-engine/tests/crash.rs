//! Crash simulation: random workloads on a cache over simulated disks that
//! lose power at random moments (unflushed writes dropped, reordered or
//! torn), then resume and check every sector:
//! - a write acknowledged by a completed FLUSH/FUA reads back (or a newer one);
//! - no sector holds bytes that were never written there.
//!
//! The number of power cuts covered is printed (`--nocapture` shows it).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use lc_engine::sim::{PowerDomain, SimDisk};
use lc_engine::{format_cache_device, Cache, CacheOptions, Knob};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DEVICES: usize = 2;
const BACKING_SECTORS: u64 = 1024; // 512 KiB, 128 lines per device

/// What may be in one sector.
#[derive(Clone)]
struct SectorModel {
    /// Every tag ever written, oldest first (0 = the initial content).
    history: Vec<u64>,
    /// Tags written since the last boot.
    recent: Vec<u64>,
    /// Tag of the newest write known durable.
    floor: u64,
    /// Tag of the last write before the newest discard of this sector: when
    /// it is at least `floor`, the content is undefined (zero or any tag).
    discarded_after: Option<u64>,
}

impl SectorModel {
    fn new() -> Self {
        SectorModel {
            history: vec![0],
            recent: Vec::new(),
            floor: 0,
            discarded_after: None,
        }
    }

    fn discarded(&self) -> bool {
        self.discarded_after.is_some_and(|d| d >= self.floor)
    }

    fn check(&self, data: &[u8], sector: u64) -> Result<u64, String> {
        if data.iter().all(|&b| b == 0) {
            return if self.discarded() {
                Ok(0)
            } else {
                Err("zeros in a sector that was never discarded".into())
            };
        }
        let tag = u64::from_le_bytes(data[..8].try_into().unwrap());
        if data != sector_pattern(tag, sector) {
            return Err("bytes that were never written to this sector (torn or misplaced)".into());
        }
        if !self.history.contains(&tag) {
            return Err(format!("tag {tag} was never written to this sector"));
        }
        if !self.discarded()
            && tag != self.floor
            && !self.recent.iter().any(|&t| t == tag && t >= self.floor)
        {
            return Err(format!(
                "tag {tag} is neither the acknowledged tag {} nor newer",
                self.floor
            ));
        }
        Ok(tag)
    }
}

struct Flush {
    boundary: u64,
    done: Arc<AtomicBool>,
}

struct World {
    rng: StdRng,
    cache_img: Vec<u8>,
    backing_img: Vec<Vec<u8>>,
    model: Vec<Vec<SectorModel>>,
    next_tag: u64,
    cuts: u64,
    verified_sectors: u64,
}

impl World {
    fn new(seed: u64, segments: u64) -> Self {
        let dom = PowerDomain::new();
        let c = SimDisk::new(dom.clone(), MIB * (1 + segments));
        format_cache_device(&*c, false).unwrap();
        let initial: Vec<u8> = pattern(0, 0, BACKING_SECTORS);
        World {
            rng: StdRng::seed_from_u64(seed),
            cache_img: c.snapshot(),
            backing_img: vec![initial; DEVICES],
            model: vec![vec![SectorModel::new(); BACKING_SECTORS as usize]; DEVICES],
            next_tag: 1,
            cuts: 0,
            verified_sectors: 0,
        }
    }

    /// Boots the disks from their images, resumes, checks every sector.
    fn boot(&mut self) -> (Cache, Arc<PowerDomain>, Arc<SimDisk>, Vec<Arc<SimDisk>>) {
        let dom = PowerDomain::new();
        let cdisk = SimDisk::from_image(dom.clone(), self.cache_img.clone());
        let bdisks: Vec<_> = self
            .backing_img
            .iter()
            .map(|i| SimDisk::from_image(dom.clone(), i.clone()))
            .collect();
        let pool = self.rng.gen_range(1..=4);
        let (cache, report) = Cache::resume_with_report(
            1,
            cdisk.clone(),
            CacheOptions {
                pool_segments: pool,
            },
        )
        .expect("resume");
        trace(format_args!("BOOT {report:?}"));
        cache.set_knob(Knob::BarrierDeadlineMs, 1).unwrap();
        for (i, b) in bdisks.iter().enumerate() {
            cache.attach_device(i as u8 + 1, b.clone()).unwrap();
        }
        let mut buf = vec![0u8; BACKING_SECTORS as usize * 512];
        for d in 0..DEVICES {
            cache.read(d as u8 + 1, 0, &mut buf).unwrap();
            for s in 0..BACKING_SECTORS {
                let data = &buf[s as usize * 512..(s as usize + 1) * 512];
                let m = &mut self.model[d][s as usize];
                match m.check(data, s) {
                    Ok(tag) => {
                        // What recovery returned is durable from now on, except
                        // in a discarded sector: that stays undefined until a
                        // write to it is acknowledged.
                        if !m.discarded() {
                            m.floor = tag;
                        }
                        m.recent.clear();
                    }
                    Err(e) => {
                        if let Some(dir) = std::env::var_os("CRASH_DUMP") {
                            let dir = std::path::PathBuf::from(dir);
                            std::fs::write(dir.join("cache.img"), &self.cache_img).unwrap();
                            for (i, b) in self.backing_img.iter().enumerate() {
                                std::fs::write(dir.join(format!("backing{}.img", i + 1)), b)
                                    .unwrap();
                            }
                        }
                        panic!("after cut {}: device {} sector {s}: {e}", self.cuts, d + 1)
                    }
                }
                self.verified_sectors += 1;
            }
        }
        (cache, dom, cdisk, bdisks)
    }

    fn epoch(&mut self) {
        let (cache, dom, cdisk, bdisks) = self.boot();
        let mut flushes: Vec<Flush> = Vec::new();
        let steps = self.rng.gen_range(1..120);
        for _ in 0..steps {
            let d = self.rng.gen_range(0..DEVICES);
            let op = self.rng.gen_range(0..100);
            match op {
                0..=69 => {
                    let n = if self.rng.gen_bool(0.5) {
                        self.rng.gen_range(1..=8)
                    } else {
                        self.rng.gen_range(1..=24)
                    };
                    let sector = self.rng.gen_range(0..=BACKING_SECTORS - n);
                    let tag = self.next_tag;
                    self.next_tag += 1;
                    for s in sector..sector + n {
                        self.model[d][s as usize].history.push(tag);
                        self.model[d][s as usize].recent.push(tag);
                    }
                    let data = pattern(tag, sector, n);
                    trace(format_args!(
                        "w d{d} s{sector} n{n} tag{tag} fua{}",
                        op >= 60
                    ));
                    if op < 60 {
                        cache.write(d as u8 + 1, sector, &data).unwrap();
                    } else {
                        let done = Arc::new(AtomicBool::new(false));
                        let flag = done.clone();
                        cache
                            .write_fua(
                                d as u8 + 1,
                                sector,
                                &data,
                                Box::new(move |r| flag.store(r.is_ok(), Ordering::SeqCst)),
                            )
                            .unwrap();
                        flushes.push(Flush {
                            boundary: tag,
                            done,
                        });
                    }
                }
                70..=84 => {
                    let done = Arc::new(AtomicBool::new(false));
                    let flag = done.clone();
                    trace(format_args!("flush upto {}", self.next_tag - 1));
                    cache.flush(Box::new(move |r| flag.store(r.is_ok(), Ordering::SeqCst)));
                    flushes.push(Flush {
                        boundary: self.next_tag - 1,
                        done,
                    });
                }
                85..=87 => {
                    trace(format_args!("flush_sync upto {}", self.next_tag - 1));
                    cache.flush_sync().unwrap();
                    flushes.push(Flush {
                        boundary: self.next_tag - 1,
                        done: Arc::new(AtomicBool::new(true)),
                    });
                }
                88..=90 => {
                    let n = self.rng.gen_range(1..=24);
                    let sector = self.rng.gen_range(0..=BACKING_SECTORS - n);
                    trace(format_args!("discard d{d} s{sector} n{n}"));
                    cache.discard(d as u8 + 1, sector, n).unwrap();
                    for s in sector..sector + n {
                        self.model[d][s as usize].discarded_after = Some(self.next_tag - 1);
                    }
                }
                91..=95 => {
                    let on = self.rng.gen_bool(0.5) as u64;
                    trace(format_args!("allow {on}"));
                    cache.set_knob(Knob::AllowMigrate, on).unwrap();
                }
                96..=97 => {
                    trace(format_args!("fcb"));
                    cache.flush_current_buffer()
                }
                _ => std::thread::sleep(std::time::Duration::from_micros(
                    self.rng.gen_range(0..1500),
                )),
            }
        }
        if self.rng.gen_bool(0.3) {
            std::thread::sleep(std::time::Duration::from_micros(
                self.rng.gen_range(0..3000),
            ));
        }
        // what was acknowledged before the cut (flags read before the cut: sound)
        let acked = flushes
            .iter()
            .filter(|f| f.done.load(Ordering::SeqCst))
            .map(|f| f.boundary)
            .max()
            .unwrap_or(0);
        let mut disks: Vec<&SimDisk> = vec![&cdisk];
        disks.extend(bdisks.iter().map(|b| &**b));
        trace(format_args!(
            "CUT acked={acked} status={:?}",
            cache.status()
        ));
        let mut images = dom.cut(&disks, &mut self.rng);
        drop(cache);
        self.cache_img = images.remove(0);
        self.backing_img = images;
        for dev in &mut self.model {
            for m in dev.iter_mut() {
                if let Some(&t) = m.recent.iter().rev().find(|&&t| t <= acked) {
                    m.floor = m.floor.max(t);
                }
            }
        }
        self.cuts += 1;
    }
}

fn trace(a: std::fmt::Arguments) {
    if std::env::var_os("CRASH_TRACE").is_some() {
        eprintln!("[{}] {a}", std::thread::current().name().unwrap_or("?"));
    }
}

fn run(seeds: std::ops::Range<u64>, epochs: u64) -> (u64, u64) {
    let (mut cuts, mut sectors) = (0, 0);
    let seeds = match std::env::var("CRASH_SEED") {
        Ok(s) => {
            let s: u64 = s.parse().unwrap();
            s..s + 1
        }
        Err(_) => seeds,
    };
    for seed in seeds {
        trace(format_args!("SEED {seed}"));
        let segments = 2 + seed % 5;
        let mut w = World::new(seed, segments);
        for _ in 0..epochs {
            w.epoch();
        }
        // a last boot checks the state after the final cut
        let (cache, ..) = w.boot();
        drop(cache);
        cuts += w.cuts;
        sectors += w.verified_sectors;
    }
    (cuts, sectors)
}

#[test]
fn power_cuts_lose_no_acknowledged_write_part1() {
    let (cuts, sectors) = run(0..64, 40);
    println!("crash simulation part 1: {cuts} power cuts, {sectors} sectors verified");
    assert!(cuts >= 2500);
}

#[test]
fn power_cuts_lose_no_acknowledged_write_part2() {
    let (cuts, sectors) = run(1000..1064, 40);
    println!("crash simulation part 2: {cuts} power cuts, {sectors} sectors verified");
    assert!(cuts >= 2500);
}

#[test]
fn a_torn_last_segment_is_never_replayed() {
    // Segment 1 is durable; segment 2 is written and flushed, the power
    // fails, and segment 2's data is damaged by hand. No later header or
    // record vouches for segment 2, so its checksum is checked and it is
    // rejected: recovery falls back to segment 1.
    let dom = PowerDomain::new();
    let cdev = sim_cache_disk(&dom, 4);
    let b = SimDisk::from_image(dom.clone(), pattern(0, 0, 8192));
    let cache = resume(cdev.clone(), 2);
    cache.attach_device(1, b.clone()).unwrap();
    cache.write(1, 0, &pattern(1, 0, 8)).unwrap();
    cache.flush_sync().unwrap();
    cache.write(1, 0, &pattern(2, 0, 8)).unwrap();
    cache.write(1, 8, &pattern(2, 8, 8)).unwrap();
    cache.flush_sync().unwrap();
    // the power fails (a clean stop would vouch for every segment in the record)
    let mut rng = StdRng::seed_from_u64(3);
    let mut img = dom.cut(&[&cdev], &mut rng).remove(0);
    drop(cache);
    // segment 2 lives in slot 1: flip a byte of its second data line
    let off = (MIB + MIB + 2 * 4096) as usize;
    img[off] ^= 0xFF;
    let dom2 = PowerDomain::new();
    let c2 = SimDisk::from_image(dom2.clone(), img);
    let bb = SimDisk::from_image(dom2, pattern(0, 0, 8192));
    let (cache, report) =
        Cache::resume_with_report(1, c2, CacheOptions { pool_segments: 2 }).unwrap();
    assert_eq!(report.replayed_segments, 1, "{report:?}");
    assert_eq!(report.rejected_segments, 1, "{report:?}");
    cache.attach_device(1, bb).unwrap();
    let mut buf = vec![0u8; 4096];
    cache.read(1, 0, &mut buf).unwrap();
    assert!(
        buf == pattern(1, 0, 8),
        "falls back to the older, intact copy"
    );
}

/// Cuts the power of a cache device and one backing device, then resumes
/// the cache from what survived, with device 1 attached again.
fn cut_and_resume(
    cache: Cache,
    dom: &PowerDomain,
    cdev: &SimDisk,
    b: &SimDisk,
    seed: u64,
) -> Cache {
    let mut images = dom.cut(&[cdev, b], &mut StdRng::seed_from_u64(seed));
    drop(cache);
    let dom2 = PowerDomain::new();
    let cache = resume(SimDisk::from_image(dom2.clone(), images.remove(0)), 2);
    cache
        .attach_device(1, SimDisk::from_image(dom2, images.remove(0)))
        .unwrap();
    cache
}

#[test]
fn write_back_keeps_an_acknowledged_line_whose_newer_copy_is_not_durable() {
    // X is acknowledged in segment 1; a newer copy of X sits in the open,
    // not yet durable segment 2. Write-back passes segment 1, then the power
    // fails: recovery starts after segment 1, so X must be on the backing device.
    let dom = PowerDomain::new();
    let cdev = sim_cache_disk(&dom, 4);
    let b = SimDisk::from_image(dom.clone(), pattern(0, 0, 64));
    let cache = resume(cdev.clone(), 2);
    cache.attach_device(1, b.clone()).unwrap();
    cache.write(1, 8, &pattern(1, 8, 8)).unwrap();
    cache.flush_sync().unwrap();
    cache.write(1, 8, &pattern(2, 8, 8)).unwrap(); // stays in RAM
    cache.set_knob(Knob::ForceMigrate, 1).unwrap();
    while cache.status().last_migrated_segment_id < 1 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    cache.commit_super_block().unwrap();
    assert_eq!(cache.status().persisted_migrated_segment_id, 1);
    let cache = cut_and_resume(cache, &dom, &cdev, &b, 7);
    let mut buf = vec![0u8; 4096];
    cache.read(1, 8, &mut buf).unwrap();
    assert!(buf == pattern(1, 8, 8), "the acknowledged copy survives");
}

/// One writer thread's region and what it knows about it.
struct Region {
    dev: u8,
    start: u64,
    len: u64,
    model: Vec<SectorModel>,
}

#[test]
fn concurrent_writers_lose_nothing_acknowledged_at_power_cuts() {
    const THREADS: u64 = 8;
    const REGION: u64 = 512;
    let mut rng = StdRng::seed_from_u64(99);
    let dom = PowerDomain::new();
    let mut cache_img = {
        let c = SimDisk::new(dom.clone(), MIB * 4);
        format_cache_device(&*c, false).unwrap();
        c.snapshot()
    };
    let mut backing_img = vec![pattern(0, 0, REGION * THREADS / 2); 2];
    let mut regions: Vec<Region> = (0..THREADS)
        .map(|t| Region {
            dev: (t % 2) as u8 + 1,
            start: (t / 2) * REGION,
            len: REGION,
            model: vec![SectorModel::new(); REGION as usize],
        })
        .collect();
    let next_tag = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let mut cuts = 0;
    for _ in 0..150 {
        let dom = PowerDomain::new();
        let cdisk = SimDisk::from_image(dom.clone(), cache_img.clone());
        let bdisks: Vec<_> = backing_img
            .iter()
            .map(|i| SimDisk::from_image(dom.clone(), i.clone()))
            .collect();
        let cache = Arc::new(
            Cache::resume(
                1,
                cdisk.clone(),
                CacheOptions {
                    pool_segments: rng.gen_range(1..=3),
                },
            )
            .unwrap(),
        );
        cache.set_knob(Knob::BarrierDeadlineMs, 1).unwrap();
        cache
            .set_knob(Knob::AllowMigrate, rng.gen_range(0..2))
            .unwrap();
        for (i, b) in bdisks.iter().enumerate() {
            cache.attach_device(i as u8 + 1, b.clone()).unwrap();
        }
        for r in &mut regions {
            let mut buf = vec![0u8; (r.len * 512) as usize];
            cache.read(r.dev, r.start, &mut buf).unwrap();
            for (i, m) in r.model.iter_mut().enumerate() {
                let tag = m
                    .check(&buf[i * 512..(i + 1) * 512], r.start + i as u64)
                    .unwrap_or_else(|e| {
                        panic!(
                            "after cut {cuts}: device {} sector {}: {e}",
                            r.dev,
                            r.start + i as u64
                        )
                    });
                m.floor = tag;
                m.recent.clear();
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = regions
            .drain(..)
            .enumerate()
            .map(|(t, mut r)| {
                let (cache, stop, dom, next_tag) =
                    (cache.clone(), stop.clone(), dom.clone(), next_tag.clone());
                let seed = rng.gen::<u64>() ^ t as u64;
                std::thread::spawn(move || {
                    let mut rng = StdRng::seed_from_u64(seed);
                    let mut written: Vec<u64> = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let n = rng.gen_range(1..=16);
                        let off = rng.gen_range(0..=r.len - n);
                        let tag = next_tag.fetch_add(1, Ordering::SeqCst);
                        for s in off..off + n {
                            r.model[s as usize].history.push(tag);
                            r.model[s as usize].recent.push(tag);
                        }
                        written.push(tag);
                        if cache
                            .write(r.dev, r.start + off, &pattern(tag, r.start + off, n))
                            .is_err()
                        {
                            break;
                        }
                        if rng.gen_bool(0.2) {
                            let ok = cache.flush_sync().is_ok();
                            // acknowledged only if it completed before the power failed
                            if ok && !dom.is_dead() {
                                let acked = *written.last().unwrap();
                                for m in r.model.iter_mut() {
                                    if let Some(&t) = m.recent.iter().rev().find(|&&t| t <= acked) {
                                        m.floor = m.floor.max(t);
                                    }
                                }
                            }
                        }
                    }
                    r
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_micros(rng.gen_range(200..6000)));
        let mut disks: Vec<&SimDisk> = vec![&cdisk];
        disks.extend(bdisks.iter().map(|b| &**b));
        let mut images = dom.cut(&disks, &mut rng);
        stop.store(true, Ordering::SeqCst);
        // writers may wait for space the dead disks will never give: stopping
        // the cache releases them with an error
        let _ = cache.shutdown();
        regions = handles.into_iter().map(|h| h.join().unwrap()).collect();
        drop(cache);
        cache_img = images.remove(0);
        backing_img = images;
        cuts += 1;
    }
    println!("concurrent crash simulation: {cuts} power cuts with {THREADS} writer threads");
}

#[test]
fn write_back_of_two_copies_in_one_batch_keeps_the_newer() {
    // Line 1 has copies in segments 1 (sectors 6-7) and 2 (sectors 1-7,
    // merged); a third, not yet durable copy supersedes both, so one batch
    // writes the line back. The older copy must not land last.
    let dom = PowerDomain::new();
    let cdev = sim_cache_disk(&dom, 4);
    let b = SimDisk::from_image(dom.clone(), pattern(0, 0, 64));
    let cache = resume(cdev.clone(), 2);
    cache.attach_device(1, b.clone()).unwrap();
    cache.set_knob(Knob::NrMaxBatchedMigration, 4).unwrap();
    cache.write(1, 14, &pattern(1, 14, 2)).unwrap();
    cache.flush_sync().unwrap();
    cache.write(1, 9, &pattern(2, 9, 7)).unwrap();
    cache.flush_sync().unwrap();
    cache.write(1, 8, &pattern(3, 8, 6)).unwrap(); // stays in RAM
    cache.set_knob(Knob::ForceMigrate, 1).unwrap();
    while cache.status().last_migrated_segment_id < 2 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    cache.commit_super_block().unwrap();
    let cache = cut_and_resume(cache, &dom, &cdev, &b, 5);
    let mut buf = vec![0u8; 8 * 512];
    cache.read(1, 8, &mut buf).unwrap();
    let mut want = pattern(0, 8, 1);
    want.extend(pattern(2, 9, 7));
    assert!(buf == want, "the acknowledged newer copy wins");
}
