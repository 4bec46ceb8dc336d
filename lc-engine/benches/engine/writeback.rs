//! Measurement 5: write-back over a latency-modelled backing disk ÷ that
//! disk's own random-write rate (see the crate documentation of the bench).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lc_engine::format::{LINES_PER_SEGMENT, LINE_SIZE};
use lc_engine::{AlignedBuf, BlockDevice, Cache, CacheOptions, FileDevice, Knob};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::devices::LatencyModel;
use crate::{create_file, env_u64, format_cache_device, BoxResult, Config, Summary, MIB};

/// Rounds of each variant.
const ROUNDS: usize = 3;
/// Size of the modelled backing disk.
const BACKING_BYTES: u64 = 4096 * MIB;

/// The lines a round writes: scattered, or in runs of `run` contiguous ones.
fn lines(n: u64, run: u64, seed: u64) -> Vec<u64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let total = BACKING_BYTES / LINE_SIZE as u64;
    let mut v = Vec::new();
    while (v.len() as u64) < n {
        let first = rng.gen_range(0..total / run) * run;
        v.extend((first..first + run).take((n - v.len() as u64) as usize));
    }
    v
}

/// The model's own rate: `threads` threads write the lines straight to it.
fn direct_rate(model: &LatencyModel, lines: &[u64], threads: usize) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut buf = AlignedBuf::zeroed(LINE_SIZE);
                buf.fill(t as u8);
                for l in lines.iter().skip(t).step_by(threads) {
                    model
                        .write_at(&buf, l * LINE_SIZE as u64)
                        .expect("direct write");
                }
            });
        }
    });
    lines.len() as f64 / start.elapsed().as_secs_f64()
}

/// Measurement 5.
pub fn run(cfg: &Config, scratch: &Path, summary: &mut Summary) -> BoxResult<()> {
    let n = env_u64("LC_BENCH_WB_LINES", 4096)?;
    let latency = Duration::from_millis(env_u64("LC_BENCH_WB_LATENCY_MS", 5)?);
    let depth = env_u64("LC_BENCH_WB_DEPTH", 16)? as usize;
    let backing_path = scratch.join("wb-backing.img");
    create_file(&backing_path, BACKING_BYTES)?;
    let segments = n.div_ceil(LINES_PER_SEGMENT as u64) + 8;
    let cache_path = scratch.join("wb-cache.img");
    create_file(&cache_path, (1 + segments) * MIB)?;
    println!(
        "5. write-back of {n} dirty lines over a modelled disk (every write {} ms, {depth} at \
         once) vs {depth} threads writing the same lines straight to it; {ROUNDS} rounds",
        latency.as_millis()
    );
    let knob_depth = Knob::WriteBackQueueDepth.spec().default;
    println!("  write_back_queue_depth = {knob_depth} (default)");
    for (run, name, target) in [(1u64, "scattered lines", 0.8), (8, "runs of 8 lines", 1.0)] {
        let mut ratios = Vec::new();
        for round in 0..ROUNDS {
            let lines = lines(n, run, 0x5eed + round as u64);
            let model = Arc::new(LatencyModel::new(
                Arc::new(FileDevice::open(&backing_path)?),
                latency,
                depth,
            ));
            let before = direct_rate(&model, &lines, depth);
            format_cache_device(&FileDevice::open(&cache_path)?, true)?;
            let cache = Cache::resume(
                crate::CACHE_ID,
                Arc::new(FileDevice::open(&cache_path)?),
                CacheOptions::default(),
            )?;
            cache.set_knob(Knob::AllowMigrate, 0)?;
            cache.attach_device(crate::DEVICE_ID, model.clone())?;
            let mut buf = AlignedBuf::zeroed(LINE_SIZE);
            for (i, l) in lines.iter().enumerate() {
                buf[..8].copy_from_slice(&(i as u64).to_le_bytes());
                cache.write(crate::DEVICE_ID, l * crate::LINE_SECTORS, &buf)?;
            }
            cache.flush_sync()?;
            let w0 = model.writes.load(Ordering::Relaxed);
            let start = Instant::now();
            cache.migrate_all()?;
            let secs = start.elapsed().as_secs_f64();
            let wb_writes = model.writes.load(Ordering::Relaxed) - w0;
            cache.shutdown()?;
            drop(cache);
            let after = direct_rate(&model, &lines, depth);
            let direct = (before + after) / 2.0;
            let rate = n as f64 / secs;
            println!(
                "  {name}, round {}: write-back {rate:.0} lines/s ({wb_writes} disk writes in \
                 {secs:.3} s); direct {before:.0} and {after:.0} writes/s; ratio {:.3}",
                round + 1,
                rate / direct
            );
            ratios.push(rate / direct);
        }
        ratios.sort_by(f64::total_cmp);
        let median = ratios[ratios.len() / 2];
        println!(
            "  {name}: write-back/direct median {median:.3} (range {:.3}–{:.3}), target >= \
             {target}",
            ratios[0],
            ratios[ratios.len() - 1]
        );
        summary.target(
            format!("5  write-back/direct over the latency model, {name}"),
            median,
            true,
            target,
        );
    }
    let _ = cfg;
    std::fs::remove_file(&cache_path)?;
    std::fs::remove_file(&backing_path)?;
    println!();
    Ok(())
}
