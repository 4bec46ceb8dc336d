//! Model-based property test: random sequences of write, read, FLUSH, FUA,
//! discard, write-back, clean restart, process crash and power cut (both
//! after a FLUSH), and transient I/O errors on the next cache or backing
//! write or flush, on 1–3 backing devices, checked against a plain
//! in-memory reference.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::*;
use lc_engine::sim::{FaultyDevice, PowerDomain, SimDisk};
use lc_engine::{BlockDevice, Cache, CacheOptions, Knob};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use rand::SeedableRng;

const SECTORS: u64 = 256;

#[derive(Debug, Clone)]
enum Op {
    Write {
        dev: u8,
        sector: u64,
        n: u64,
    },
    Fua {
        dev: u8,
        sector: u64,
        n: u64,
    },
    Read {
        dev: u8,
        sector: u64,
        n: u64,
    },
    Discard {
        dev: u8,
        sector: u64,
        n: u64,
    },
    Flush,
    Migrate,
    AllowMigrate(bool),
    Restart,
    PowerCutAfterFlush,
    ProcessCrashAfterFlush,
    /// The next write (or flush) of the cache device (or of every backing
    /// device) fails once.
    Fault {
        cache: bool,
        flush: bool,
    },
}

fn range() -> impl Strategy<Value = (u64, u64)> {
    (1u64..=20).prop_flat_map(|n| (0..=SECTORS - n, Just(n)))
}

fn op(devices: u8) -> impl Strategy<Value = Op> {
    let dev = 1..=devices;
    prop_oneof![
        8 => (dev.clone(), range()).prop_map(|(dev, (sector, n))| Op::Write { dev, sector, n }),
        2 => (dev.clone(), range()).prop_map(|(dev, (sector, n))| Op::Fua { dev, sector, n }),
        6 => (dev.clone(), range()).prop_map(|(dev, (sector, n))| Op::Read { dev, sector, n }),
        1 => (dev, range()).prop_map(|(dev, (sector, n))| Op::Discard { dev, sector, n }),
        2 => Just(Op::Flush),
        1 => Just(Op::Migrate),
        1 => any::<bool>().prop_map(Op::AllowMigrate),
        1 => Just(Op::Restart),
        1 => Just(Op::PowerCutAfterFlush),
        1 => Just(Op::ProcessCrashAfterFlush),
        2 => (any::<bool>(), any::<bool>()).prop_map(|(cache, flush)| Op::Fault { cache, flush }),
    ]
}

struct Rig {
    cache_disk: Arc<SimDisk>,
    backing: Vec<Arc<SimDisk>>,
    dom: Arc<PowerDomain>,
    cache: Option<Cache>,
    pool: usize,
    /// This process's handles on the disks (cache device first).
    handles: Vec<Arc<FaultyDevice>>,
}

impl Rig {
    fn boot(&mut self) {
        self.handles = std::iter::once(&self.cache_disk)
            .chain(&self.backing)
            .map(|d| FaultyDevice::over_sim(d.clone()))
            .collect();
        let c = Cache::resume(
            1,
            self.handles[0].clone(),
            CacheOptions {
                pool_segments: self.pool,
            },
        )
        .unwrap();
        c.set_knob(Knob::BarrierDeadlineMs, 1).unwrap();
        for (i, b) in self.handles[1..].iter().enumerate() {
            c.attach_device(i as u8 + 1, b.clone()).unwrap();
        }
        self.cache = Some(c);
    }

    /// A FLUSH, repeated while an injected fault fails it.
    fn flush(&self) {
        for _ in 0..20 {
            if self.cache().flush_sync().is_ok() {
                return;
            }
        }
        panic!("FLUSH keeps failing after one injected fault");
    }

    fn cache(&self) -> &Cache {
        self.cache.as_ref().unwrap()
    }
}

fn check_read(model: &[Option<[u8; 512]>], got: &[u8], sector: u64) -> Result<(), TestCaseError> {
    for (i, chunk) in got.chunks(512).enumerate() {
        if let Some(want) = &model[sector as usize + i] {
            prop_assert!(
                chunk == &want[..],
                "sector {} differs from the model",
                sector as usize + i
            );
        }
    }
    Ok(())
}

fn run(ops: Vec<Op>, devices: u8, segments: u64, pool: usize) -> Result<(), TestCaseError> {
    let dom = PowerDomain::new();
    let mut rig = Rig {
        cache_disk: sim_cache_disk(&dom, segments),
        backing: (0..devices)
            .map(|_| SimDisk::from_image(dom.clone(), pattern(0, 0, SECTORS)))
            .collect(),
        dom,
        cache: None,
        pool,
        handles: Vec::new(),
    };
    rig.boot();
    // None: discarded, content undefined
    let mut model: Vec<Vec<Option<[u8; 512]>>> =
        vec![(0..SECTORS).map(|s| Some(sector_pattern(0, s))).collect(); devices as usize];
    let mut tag = 0u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(segments * 31 + pool as u64);
    for op in ops {
        match op {
            Op::Write { dev, sector, n } | Op::Fua { dev, sector, n } => {
                tag += 1;
                let data = pattern(tag, sector, n);
                // A writer that needs room only a failing device can free
                // gets EIO at once; the fault is transient: write again.
                let mut tries = 0;
                let write = |rig: &Rig| {
                    if matches!(op, Op::Fua { .. }) {
                        let (tx, rx) = std::sync::mpsc::channel();
                        rig.cache().write_fua(
                            dev,
                            sector,
                            &data,
                            Box::new(move |r| tx.send(r).unwrap()),
                        )?;
                        if rx.recv().unwrap().is_err() {
                            rig.flush(); // an injected fault failed the FUA's flush
                        }
                        Ok(())
                    } else {
                        rig.cache().write(dev, sector, &data)
                    }
                };
                while let Err(e) = write(&rig) {
                    tries += 1;
                    assert!(tries < 500, "a write keeps failing after one fault: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                for s in 0..n {
                    model[dev as usize - 1][(sector + s) as usize] =
                        Some(sector_pattern(tag, sector + s));
                }
            }
            Op::Read { dev, sector, n } => {
                let mut buf = vec![0u8; n as usize * 512];
                rig.cache().read(dev, sector, &mut buf).unwrap();
                check_read(&model[dev as usize - 1], &buf, sector)?;
            }
            Op::Discard { dev, sector, n } => {
                // an injected fault may fail the pass-through to the backing device
                let _ = rig.cache().discard(dev, sector, n);
                for s in sector..sector + n {
                    model[dev as usize - 1][s as usize] = None;
                }
            }
            Op::Flush => rig.flush(),
            Op::Migrate => {
                // its FLUSH may meet an injected fault: once more
                let mut res = rig.cache().migrate_all();
                for _ in 0..5 {
                    if res.is_ok() {
                        break;
                    }
                    res = rig.cache().migrate_all();
                }
                res.unwrap();
                for d in 1..=devices {
                    prop_assert_eq!(rig.cache().nr_dirty_caches(d), 0);
                }
            }
            Op::AllowMigrate(on) => rig.cache().set_knob(Knob::AllowMigrate, on as u64).unwrap(),
            Op::Restart => {
                rig.flush();
                // the record commit may meet an injected fault: nothing is lost
                let _ = rig.cache.take().unwrap().shutdown();
                rig.boot();
            }
            Op::ProcessCrashAfterFlush => {
                rig.flush();
                for h in &rig.handles {
                    h.fence();
                }
                drop(rig.cache.take());
                rig.boot();
            }
            Op::Fault { cache, flush } => {
                let handles = if cache {
                    &rig.handles[..1]
                } else {
                    &rig.handles[1..]
                };
                for h in handles {
                    h.plan.heal(); // one fault at a time
                    if flush {
                        h.plan.fail_next_flushes(1);
                    } else {
                        h.plan.fail_next_writes(0..u64::MAX, 1);
                    }
                }
            }
            Op::PowerCutAfterFlush => {
                rig.flush();
                let mut disks: Vec<&SimDisk> = vec![&rig.cache_disk];
                disks.extend(rig.backing.iter().map(|b| &**b));
                let mut images = rig.dom.cut(&disks, &mut rng);
                drop(rig.cache.take());
                let dom = PowerDomain::new();
                rig.cache_disk = SimDisk::from_image(dom.clone(), images.remove(0));
                rig.backing = images
                    .into_iter()
                    .map(|i| SimDisk::from_image(dom.clone(), i))
                    .collect();
                rig.dom = dom;
                rig.boot();
            }
        }
    }
    for h in &rig.handles {
        h.plan.heal();
    }
    // everything still reads back, through the cache and after a full write-back
    for d in 1..=devices {
        let mut buf = vec![0u8; SECTORS as usize * 512];
        rig.cache().read(d, 0, &mut buf).unwrap();
        check_read(&model[d as usize - 1], &buf, 0)?;
    }
    rig.cache().migrate_all().unwrap();
    for (i, b) in rig.backing.iter().enumerate() {
        let mut raw = vec![0u8; SECTORS as usize * 512];
        b.read_at(&mut raw, 0).unwrap();
        check_read(&model[i], &raw, 0)?;
    }
    Ok(())
}

static OPS_RUN: AtomicU64 = AtomicU64::new(0);

#[test]
fn engine_matches_reference_model() {
    let cases = 96;
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        ..ProptestConfig::default()
    });
    let strategy = (1u8..=3).prop_flat_map(|devices| {
        (
            Just(devices),
            2u64..=4,
            1usize..=3,
            proptest::collection::vec(op(devices), 1..120),
        )
    });
    let result = runner.run(&strategy, |(devices, segments, pool, ops)| {
        OPS_RUN.fetch_add(ops.len() as u64, Ordering::Relaxed);
        run(ops, devices, segments, pool)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    println!(
        "model test: {cases} random cases, {} operations checked against the reference",
        OPS_RUN.load(Ordering::Relaxed)
    );
}
