//! Crash simulation: random histories on a cache over simulated disks with
//! volatile write caches. One history combines, process lifetime after
//! process lifetime: several writer threads (writes, FUA writes, FLUSHes,
//! sub-line discards, reads), knob changes, random transient I/O errors on
//! cache and backing reads, writes (the record blocks included) and flushes
//! (a failed flush loses the disk's volatile writes), then either a
//! **process crash** (the process's handles are fenced and the Cache
//! dropped, while the disks keep their volatile writes; a new Cache resumes
//! on the same disks) or a **power cut** (unflushed writes dropped,
//! reordered or torn). After each, resume and check every sector:
//! - a write acknowledged by a completed FLUSH/FUA reads back (or a newer one);
//! - no sector holds bytes that were never written there;
//! - what a resumed cache reads is durable from then on.
//!
//! What was covered is printed (`--nocapture` or `--show-output` shows it).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use lc_engine::sim::{FaultyDevice, PowerDomain, RandomFaultRates, SimDisk};
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

/// Regions of `REGION` sectors: each writer thread owns some, so every
/// sector has one writer and its model stays sequential.
const REGION: u64 = 256;
const REGIONS: usize = DEVICES * (BACKING_SECTORS / REGION) as usize;

fn region(r: usize) -> (usize, u64) {
    let per_dev = (BACKING_SECTORS / REGION) as usize;
    (r / per_dev, (r % per_dev) as u64 * REGION)
}

/// A FLUSH (or FUA) that completed before the power or the process died:
/// every write its thread issued up to tag `boundary` is durable.
struct Ack {
    regions: Vec<usize>,
    boundary: u64,
}

/// What the writer threads and the main thread share.
struct Shared {
    model: Vec<Vec<SectorModel>>,
    /// Tags of writes that returned an error (maybe partly applied, never
    /// acknowledged).
    failed: std::collections::HashSet<u64>,
    acks: Vec<Ack>,
}

/// What one history covered.
#[derive(Default, Clone, Copy)]
struct Coverage {
    histories: u64,
    cuts: u64,
    crashes: u64,
    faults: u64,
    failed_resumes: u64,
    sectors: u64,
}

impl Coverage {
    fn add(&mut self, o: Coverage) {
        self.histories += o.histories;
        self.cuts += o.cuts;
        self.crashes += o.crashes;
        self.faults += o.faults;
        self.failed_resumes += o.failed_resumes;
        self.sectors += o.sectors;
    }
}

/// The simulated machine: disks that outlive a process (their volatile
/// caches included) until the power is cut.
struct Machine {
    dom: Arc<PowerDomain>,
    cache_disk: Arc<SimDisk>,
    backing: Vec<Arc<SimDisk>>,
}

/// One process running the cache: its handles on the disks.
struct Process {
    cache: Arc<Cache>,
    handles: Vec<Arc<FaultyDevice>>,
}

struct World {
    rng: StdRng,
    seed: u64,
    /// Sectors at the start of each region that the writers use.
    span: u64,
    machine: Machine,
    shared: Arc<Mutex<Shared>>,
    next_tag: Arc<AtomicU64>,
    cov: Coverage,
}

impl World {
    fn new(seed: u64, segments: u64, span: u64) -> Self {
        let dom = PowerDomain::new();
        let c = SimDisk::new(dom.clone(), MIB * (1 + segments));
        format_cache_device(&*c, false).unwrap();
        let initial: Vec<u8> = pattern(0, 0, BACKING_SECTORS);
        let backing = (0..DEVICES)
            .map(|_| SimDisk::from_image(dom.clone(), initial.clone()))
            .collect();
        World {
            rng: StdRng::seed_from_u64(seed),
            seed,
            span,
            machine: Machine {
                dom,
                cache_disk: c,
                backing,
            },
            shared: Arc::new(Mutex::new(Shared {
                model: vec![vec![SectorModel::new(); BACKING_SECTORS as usize]; DEVICES],
                failed: Default::default(),
                acks: Vec::new(),
            })),
            next_tag: Arc::new(AtomicU64::new(1)),
            cov: Coverage::default(),
        }
    }

    fn fault_rates(&mut self, cache: bool) -> Option<RandomFaultRates> {
        if !self.rng.gen_bool(0.5) {
            return None;
        }
        Some(RandomFaultRates {
            read_ppm: 10_000,
            write_ppm: 20_000,
            superblock_write_ppm: if cache { 150_000 } else { 20_000 },
            flush_ppm: 50_000,
        })
    }

    /// Starts a process on the machine's disks: resumes (retrying when an
    /// injected fault fails the resume), then checks every sector.
    fn start(&mut self) -> Process {
        let m = &self.machine;
        let cdev = FaultyDevice::over_sim(m.cache_disk.clone());
        let bdevs: Vec<_> = m
            .backing
            .iter()
            .map(|b| FaultyDevice::over_sim(b.clone()))
            .collect();
        let pool = self.rng.gen_range(1..=4);
        let resume_faults = self.fault_rates(true);
        let fault_seed = self.rng.gen();
        cdev.plan.set_random(fault_seed, resume_faults);
        let mut attempt = 0;
        let cache = loop {
            match Cache::resume_with_report(
                1,
                cdev.clone(),
                CacheOptions {
                    pool_segments: pool,
                },
            ) {
                Ok((cache, report)) => {
                    trace(format_args!("BOOT {report:?}"));
                    break cache;
                }
                Err(e) => {
                    trace(format_args!("resume failed: {e}"));
                    self.cov.failed_resumes += 1;
                    attempt += 1;
                    if attempt == 3 {
                        cdev.plan.heal();
                    }
                }
            }
        };
        cdev.plan.heal();
        cache.set_knob(Knob::BarrierDeadlineMs, 1).unwrap();
        for (i, b) in bdevs.iter().enumerate() {
            cache.attach_device(i as u8 + 1, b.clone()).unwrap();
        }
        self.check(&cache);
        let mut handles = vec![cdev];
        handles.extend(bdevs);
        Process {
            cache: Arc::new(cache),
            handles,
        }
    }

    /// Reads every sector and checks it against the model; what it reads
    /// is durable from now on (resume flushed the cache device).
    fn check(&mut self, cache: &Cache) {
        let mut buf = vec![0u8; BACKING_SECTORS as usize * 512];
        let mut shared = self.shared.lock().unwrap();
        for d in 0..DEVICES {
            cache.read(d as u8 + 1, 0, &mut buf).unwrap();
            for s in 0..BACKING_SECTORS {
                let data = &buf[s as usize * 512..(s as usize + 1) * 512];
                let m = &mut shared.model[d][s as usize];
                match m.check(data, s) {
                    Ok(tag) => {
                        // A discarded sector stays undefined until a write
                        // to it is acknowledged.
                        if !m.discarded() {
                            m.floor = tag;
                        }
                        m.recent.clear();
                    }
                    Err(e) => {
                        if let Some(dir) = std::env::var_os("CRASH_DUMP") {
                            let dir = std::path::PathBuf::from(dir);
                            let img = self.machine.cache_disk.snapshot();
                            std::fs::write(dir.join("cache.img"), img).unwrap();
                        }
                        panic!(
                            "seed {} (history {} of this run), after {} power cuts and {} process \
                             crashes: device {} sector {s}: {e}",
                            self.seed,
                            self.cov.histories + 1,
                            self.cov.cuts,
                            self.cov.crashes,
                            d + 1
                        )
                    }
                }
                self.cov.sectors += 1;
            }
        }
    }

    /// One process lifetime: writer threads and the main thread work on
    /// the cache, with faults injected or not, until the process crashes
    /// or the power is cut.
    fn epoch(&mut self, p: Process) {
        let rates_cache = self.fault_rates(true);
        let rates_backing = self.fault_rates(false);
        for (i, h) in p.handles.iter().enumerate() {
            let rates = if i == 0 { rates_cache } else { rates_backing };
            h.plan.set_random(self.rng.gen(), rates);
        }
        let threads = self.rng.gen_range(1..=3usize);
        let total_ops = self.rng.gen_range(1..160u64);
        let dead = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let regions: Vec<usize> = (0..REGIONS).filter(|r| r % threads == t).collect();
                let seed: u64 = self.rng.gen();
                let my_ops = total_ops / threads as u64 + 1;
                let span = self.span;
                let (cache, shared, next_tag, dead, ops) = (
                    p.cache.clone(),
                    self.shared.clone(),
                    self.next_tag.clone(),
                    dead.clone(),
                    ops.clone(),
                );
                std::thread::Builder::new()
                    .name(format!("sim-writer{t}"))
                    .spawn(move || {
                        worker(
                            seed, &regions, span, my_ops, &cache, &shared, &next_tag, &dead, &ops,
                        )
                    })
                    .unwrap()
            })
            .collect();
        // the main thread turns knobs meanwhile, then picks the moment
        let main_ops = self.rng.gen_range(0..4);
        let stop_at = self.rng.gen_range(0..=total_ops);
        let linger = self
            .rng
            .gen_bool(0.3)
            .then(|| self.rng.gen_range(0..3000u64));
        for _ in 0..main_ops {
            match self.rng.gen_range(0..3) {
                0 => {
                    let on = self.rng.gen_bool(0.5) as u64;
                    p.cache.set_knob(Knob::AllowMigrate, on).unwrap();
                }
                1 => p.cache.flush_current_buffer(),
                _ => {
                    let n = self.rng.gen_range(1..=p.cache.nr_segments());
                    p.cache.set_knob(Knob::NrMaxBatchedMigration, n).unwrap();
                }
            }
        }
        // on hot lines, write-back mostly starts in the middle of the
        // lifetime, one or two segments at a time, while newer copies of
        // the lines it passes wait in RAM
        let mut migrate_at = None;
        if self.span < REGION {
            if self.rng.gen_bool(0.5) {
                let n = self.rng.gen_range(1..=2);
                p.cache.set_knob(Knob::NrMaxBatchedMigration, n).unwrap();
            }
            migrate_at = self
                .rng
                .gen_bool(0.8)
                .then(|| self.rng.gen_range(0..=stop_at));
        }
        loop {
            let done = ops.load(Ordering::SeqCst);
            if migrate_at.is_some_and(|at| done >= at) {
                p.cache.set_knob(Knob::AllowMigrate, 1).unwrap();
                migrate_at = None;
            }
            if done >= stop_at || workers.iter().all(|w| w.is_finished()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        if let Some(us) = linger {
            std::thread::sleep(std::time::Duration::from_micros(us));
        }
        let power_cut = self.rng.gen_bool(0.7);
        let cut_seed: u64 = self.rng.gen();
        // From here on nothing completes "before the end".
        dead.store(true, Ordering::SeqCst);
        let images = if power_cut {
            let m = &self.machine;
            let mut disks: Vec<&SimDisk> = vec![&m.cache_disk];
            disks.extend(m.backing.iter().map(|b| &**b));
            trace(format_args!("CUT status={:?}", p.cache.status()));
            Some(m.dom.cut(&disks, &mut StdRng::seed_from_u64(cut_seed)))
        } else {
            trace(format_args!("CRASH status={:?}", p.cache.status()));
            for h in &p.handles {
                h.fence();
            }
            None
        };
        // the dead process's threads end (what they do reaches no disk)
        let _ = p.cache.shutdown();
        for w in workers {
            w.join().unwrap();
        }
        self.cov.faults += p
            .handles
            .iter()
            .map(|h| h.plan.injected.load(Ordering::SeqCst))
            .sum::<u64>();
        drop(p);
        {
            let mut shared = self.shared.lock().unwrap();
            let Shared {
                model,
                failed,
                acks,
            } = &mut *shared;
            for ack in acks.drain(..) {
                for &r in &ack.regions {
                    let (d, start) = region(r);
                    for m in &mut model[d][start as usize..(start + REGION) as usize] {
                        if let Some(&t) = m
                            .recent
                            .iter()
                            .rev()
                            .find(|&&t| t <= ack.boundary && !failed.contains(&t))
                        {
                            m.floor = m.floor.max(t);
                        }
                    }
                }
            }
            failed.clear();
        }
        if let Some(mut images) = images {
            let dom = PowerDomain::new();
            self.machine = Machine {
                cache_disk: SimDisk::from_image(dom.clone(), images.remove(0)),
                backing: images
                    .into_iter()
                    .map(|i| SimDisk::from_image(dom.clone(), i))
                    .collect(),
                dom,
            };
            self.cov.cuts += 1;
        } else {
            self.cov.crashes += 1;
        }
    }
}

/// A writer thread: random writes, FUA writes, FLUSHes, sub-line discards
/// and reads on the first `span` sectors of its own regions.
#[allow(clippy::too_many_arguments)]
fn worker(
    seed: u64,
    regions: &[usize],
    span: u64,
    nr_ops: u64,
    cache: &Cache,
    shared: &Arc<Mutex<Shared>>,
    next_tag: &AtomicU64,
    dead: &Arc<AtomicBool>,
    ops: &AtomicU64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut last_tag = 0;
    // a FLUSH's callback records it if it completed before the end
    let on_flush = |boundary: u64| -> lc_engine::FlushCallback {
        let (shared, dead, regions) = (shared.clone(), dead.clone(), regions.to_vec());
        Box::new(move |res| {
            if res.is_ok() && !dead.load(Ordering::SeqCst) {
                shared.lock().unwrap().acks.push(Ack { regions, boundary });
            }
        })
    };
    for _ in 0..nr_ops {
        if dead.load(Ordering::SeqCst) {
            return;
        }
        ops.fetch_add(1, Ordering::SeqCst);
        let r = regions[rng.gen_range(0..regions.len())];
        let (d, start) = region(r);
        let dev = d as u8 + 1;
        let op = rng.gen_range(0..100);
        match op {
            0..=64 => {
                let n = if rng.gen_bool(0.5) {
                    rng.gen_range(1..=8)
                } else {
                    rng.gen_range(1..=24)
                };
                let sector = start + rng.gen_range(0..=span - n);
                let tag = next_tag.fetch_add(1, Ordering::SeqCst);
                {
                    let mut sh = shared.lock().unwrap();
                    for s in sector..sector + n {
                        let m = &mut sh.model[d][s as usize];
                        m.history.push(tag);
                        m.recent.push(tag);
                    }
                }
                last_tag = tag;
                let data = pattern(tag, sector, n);
                let fua = op >= 55;
                trace(format_args!("w d{d} s{sector} n{n} tag{tag} fua{fua}"));
                let res = if fua {
                    cache.write_fua(dev, sector, &data, on_flush(tag))
                } else {
                    cache.write(dev, sector, &data)
                };
                if res.is_err() {
                    shared.lock().unwrap().failed.insert(tag);
                }
            }
            65..=76 => {
                trace(format_args!("flush upto {last_tag}"));
                cache.flush(on_flush(last_tag));
            }
            77..=80 => {
                let boundary = last_tag;
                if cache.flush_sync().is_ok() && !dead.load(Ordering::SeqCst) {
                    shared.lock().unwrap().acks.push(Ack {
                        regions: regions.to_vec(),
                        boundary,
                    });
                }
            }
            81..=87 => {
                let n = rng.gen_range(1..=12);
                let sector = start + rng.gen_range(0..=span - n);
                trace(format_args!("discard d{d} s{sector} n{n}"));
                {
                    let mut sh = shared.lock().unwrap();
                    for s in sector..sector + n {
                        let m = &mut sh.model[d][s as usize];
                        m.discarded_after = Some(*m.history.last().unwrap());
                    }
                }
                let _ = cache.discard(dev, sector, n);
            }
            88..=94 => {
                let n = rng.gen_range(1..=24);
                let sector = start + rng.gen_range(0..=span - n);
                let mut buf = vec![0u8; n as usize * 512];
                let _ = cache.read(dev, sector, &mut buf);
            }
            _ => std::thread::sleep(std::time::Duration::from_micros(rng.gen_range(0..400))),
        }
    }
}

fn trace(a: std::fmt::Arguments) {
    if std::env::var_os("CRASH_TRACE").is_some() {
        eprintln!("[{}] {a}", std::thread::current().name().unwrap_or("?"));
    }
}

/// Runs the histories of `seeds`, each `epochs` process lifetimes long, with
/// writers on the first `span` sectors of each region (a short span makes
/// them overwrite a few lines over and over, partially, while write-back
/// passes older copies of them).
fn run(seeds: std::ops::Range<u64>, epochs: u64, span: u64) -> Coverage {
    let mut cov = Coverage::default();
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
        let mut w = World::new(seed, segments, span);
        w.cov.histories = cov.histories;
        for _ in 0..epochs {
            let p = w.start();
            w.epoch(p);
        }
        // a last start checks the state after the final crash or cut
        let p = w.start();
        let _ = p.cache.shutdown();
        w.cov.histories = 1;
        cov.add(w.cov);
    }
    cov
}

fn report(part: u32, cov: Coverage, started: std::time::Instant) {
    println!(
        "crash simulation part {part}: {} histories, {} power cuts, {} process crashes, {} \
         injected I/O faults, {} resumes failed by a fault, {} sectors verified, in {:.1} s",
        cov.histories,
        cov.cuts,
        cov.crashes,
        cov.faults,
        cov.failed_resumes,
        cov.sectors,
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn power_cuts_and_crashes_lose_no_acknowledged_write_part1() {
    let started = std::time::Instant::now();
    let cov = run(0..64, 60, REGION);
    report(1, cov, started);
    if std::env::var_os("CRASH_SEED").is_none() {
        assert!(cov.cuts >= 2500 && cov.crashes > 0 && cov.faults > 0);
    }
}

#[test]
fn power_cuts_and_crashes_lose_no_acknowledged_write_part2() {
    let started = std::time::Instant::now();
    let cov = run(1000..1064, 60, REGION);
    report(2, cov, started);
    if std::env::var_os("CRASH_SEED").is_none() {
        assert!(cov.cuts >= 2500 && cov.crashes > 0 && cov.faults > 0);
    }
}

#[test]
fn power_cuts_and_crashes_lose_no_acknowledged_write_on_hot_lines() {
    // writers on 4 lines per region: partial overwrites of lines whose
    // older copies write-back is passing (it found a write-back of an old
    // copy over what a newer durable copy had left clean)
    let started = std::time::Instant::now();
    let cov = run(2000..2064, 60, 32);
    report(3, cov, started);
    if std::env::var_os("CRASH_SEED").is_none() {
        assert!(cov.cuts >= 2500 && cov.crashes > 0 && cov.faults > 0);
    }
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

#[test]
fn write_back_of_an_older_copy_leaves_what_a_newer_durable_copy_left_clean() {
    // Line X (sectors 8..16): t1 in segment 1, t2 on sectors 8..15 in
    // segment 2; both are written back (the backing device holds t2 and
    // t1 on sector 15, flushed) while the record still says 0, so X left
    // the index. Segment 3 then holds a copy of X with only sectors 14..16
    // dirty (t3): the rest of that copy is clean, its data on the backing
    // device. After a restart segments 1..=3 are replayed and segment 3's
    // copy counts. A newer copy (t4 on sectors 12..16) stays in RAM, not
    // durable. Write-back passes segment 1 and the power fails before it
    // passes segment 2: segment 1's copy of X is not the newest durable one,
    // so it must have written nothing of X (t1 over the t2 of sectors 12, 13
    // would be read back through segment 3's clean sectors).
    let dom = PowerDomain::new();
    let c = sim_cache_disk(&dom, 4);
    let b = SimDisk::from_image(dom.clone(), pattern(0, 0, 64));
    let cache = resume(c.clone(), 2);
    cache.attach_device(1, b.clone()).unwrap();
    cache.write(1, 8, &pattern(1, 8, 8)).unwrap();
    cache.flush_sync().unwrap();
    cache.write(1, 8, &pattern(2, 8, 7)).unwrap();
    cache.flush_sync().unwrap();
    cache.set_knob(Knob::ForceMigrate, 1).unwrap();
    while cache.status().last_migrated_segment_id < 2 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    cache.set_knob(Knob::ForceMigrate, 0).unwrap();
    cache.write(1, 14, &pattern(3, 14, 2)).unwrap();
    cache.flush_sync().unwrap();
    assert_eq!(cache.status().persisted_migrated_segment_id, 0);
    let mut images = dom.cut(&[&c, &b], &mut StdRng::seed_from_u64(1));
    drop(cache);

    let dom = PowerDomain::new();
    let c = SimDisk::from_image(dom.clone(), images.remove(0));
    let b = SimDisk::from_image(dom.clone(), images.remove(0));
    let gated = GatedDevice::new(c.clone());
    let (cache, report) =
        Cache::resume_with_report(1, gated.clone(), CacheOptions { pool_segments: 2 }).unwrap();
    assert_eq!(
        (report.last_migrated_segment_id, report.replayed_segments),
        (0, 3),
        "{report:?}"
    );
    cache.attach_device(1, b.clone()).unwrap();
    let mut expected = pattern(2, 8, 6);
    expected.extend(pattern(3, 14, 2));
    let mut buf = vec![0u8; 4096];
    cache.read(1, 8, &mut buf).unwrap();
    assert!(buf == expected, "segment 3's copy over the backing device");
    cache.write(1, 12, &pattern(4, 12, 4)).unwrap(); // stays in RAM
                                                     // write-back takes one segment at a time and stops at segment 2's header
    cache.set_knob(Knob::NrMaxBatchedMigration, 1).unwrap();
    let slot2 = lc_engine::format::segment_offset(1);
    gated.hold_next_read(slot2..slot2 + 4096);
    cache.set_knob(Knob::ForceMigrate, 1).unwrap();
    gated.wait_held();
    while cache.status().last_migrated_segment_id < 1 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let mut images = dom.cut(&[&c, &b], &mut StdRng::seed_from_u64(2));
    gated.release();
    drop(cache);

    let dom = PowerDomain::new();
    let cache = resume(SimDisk::from_image(dom.clone(), images.remove(0)), 2);
    cache
        .attach_device(1, SimDisk::from_image(dom, images.remove(0)))
        .unwrap();
    cache.read(1, 8, &mut buf).unwrap();
    assert!(
        buf == expected,
        "the flushed t2 of sectors 12 and 13 survives write-back of segment 1"
    );
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
