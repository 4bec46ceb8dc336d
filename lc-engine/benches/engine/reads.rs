//! Measurement 2: reads through the engine ÷ direct reads of the same data.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use lc_engine::format::{LINES_PER_SEGMENT, LINE_SIZE};
use lc_engine::{AlignedBuf, BlockDevice, FileDevice};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{
    cpus_busy, create_file, fresh_cache, mean, row_ops, sequential_write, share, with_cpu,
    BoxResult, Config, Summary, Timing, DEVICE_ID, LINE_SECTORS, MIB,
};

/// Segments of lines on the cache device (the device-hit set).
const DEVICE_SEGMENTS: u64 = 64;
/// Lines in the open RAM segment (the RAM-hit set; fewer than 255 so that
/// the segment stays open).
const RAM_LINES: usize = 200;
/// Distinct uncached backing lines read by the miss measurement.
const MISS_LINES: usize = 16_320;

/// `threads` threads do `ops` reads in all; thread `t` reads entry
/// `k = rng.gen_range(0..n)` of the target set each time, with `read(k, buf)`.
fn timed_reads(
    threads: usize,
    ops: u64,
    n: usize,
    read: &(dyn Fn(usize, &mut [u8]) -> BoxResult<()> + Sync),
) -> BoxResult<Timing> {
    let start_line = Barrier::new(threads + 1);
    let start = std::thread::scope(|s| -> BoxResult<Instant> {
        let workers: Vec<_> = (0..threads as u64)
            .map(|t| {
                let start_line = &start_line;
                let count = share(ops, threads, t);
                s.spawn(move || -> Result<(), String> {
                    let mut rng = StdRng::seed_from_u64(0x7ead + t);
                    let mut buf = AlignedBuf::zeroed(LINE_SIZE);
                    start_line.wait();
                    for _ in 0..count {
                        read(rng.gen_range(0..n), &mut buf).map_err(|e| e.to_string())?;
                    }
                    Ok(())
                })
            })
            .collect();
        start_line.wait();
        let start = Instant::now();
        for w in workers {
            w.join().map_err(|_| "a reader thread panicked")??;
        }
        Ok(start)
    })?;
    Ok(Timing {
        amount: ops,
        elapsed: start.elapsed(),
    })
}

/// One kind of read: lc and its direct baseline (before, after, mean).
struct ReadPair {
    lc: Timing,
    /// CPU time of the process during `lc` and (mean) during the direct runs.
    lc_cpu: Duration,
    direct_cpu: Duration,
    before: Timing,
    after: Timing,
    direct: Timing,
}

impl ReadPair {
    /// lc throughput ÷ direct throughput.
    fn ratio(&self) -> f64 {
        self.direct.secs() / self.lc.secs()
    }
}

/// Times direct reads, lc reads, direct reads again.
fn pair(
    cfg: &Config,
    n: usize,
    direct: &(dyn Fn(usize, &mut [u8]) -> BoxResult<()> + Sync),
    lc: &(dyn Fn(usize, &mut [u8]) -> BoxResult<()> + Sync),
) -> BoxResult<ReadPair> {
    let (before, cpu_before) = with_cpu(|| timed_reads(cfg.threads, cfg.read_ops, n, direct))?;
    let (lc, lc_cpu) = with_cpu(|| timed_reads(cfg.threads, cfg.read_ops, n, lc))?;
    let (after, cpu_after) = with_cpu(|| timed_reads(cfg.threads, cfg.read_ops, n, direct))?;
    Ok(ReadPair {
        lc,
        lc_cpu,
        direct_cpu: (cpu_before + cpu_after) / 2,
        before,
        after,
        direct: mean(before, after),
    })
}

fn print_pair(threads: usize, what: &str, direct_what: &str, p: &ReadPair) {
    row_ops(&format!("{direct_what}, before"), p.before);
    row_ops(&format!("{direct_what}, after"), p.after);
    row_ops(&format!("{direct_what}, mean"), p.direct);
    row_ops(&format!("lc: {what}"), p.lc);
    println!(
        "  lc/direct = {:.3} (mean latency {:.1} µs vs {:.1} µs)",
        p.ratio(),
        p.lc.secs() * 1e6 * threads as f64 / p.lc.amount as f64,
        p.direct.secs() * 1e6 * threads as f64 / p.direct.amount as f64,
    );
    println!(
        "  CPU time per read: lc {:.1} µs, direct {:.1} µs (lc: {}; direct: {})",
        p.lc_cpu.as_secs_f64() * 1e6 / p.lc.amount as f64,
        p.direct_cpu.as_secs_f64() * 1e6 / p.direct.amount as f64,
        cpus_busy(p.lc_cpu, p.lc),
        cpus_busy(p.direct_cpu, p.direct)
    );
}

/// Measurement 2.
pub fn run(
    cfg: &Config,
    scratch: &Path,
    backing: &Arc<dyn BlockDevice>,
    summary: &mut Summary,
) -> BoxResult<()> {
    let backing_lines = backing.size_bytes() / LINE_SIZE as u64;
    let device_lines = (DEVICE_SEGMENTS * LINES_PER_SEGMENT as u64) as usize;
    // distinct random backing lines: device hits, RAM hits, misses
    let mut rng = StdRng::seed_from_u64(0x2ead);
    let mut seen = HashSet::new();
    let mut lines = Vec::new();
    while lines.len() < device_lines + RAM_LINES + MISS_LINES {
        let l = rng.gen_range(0..backing_lines);
        if seen.insert(l) {
            lines.push(l);
        }
    }
    let (device_set, rest) = lines.split_at(device_lines);
    let (ram_set, miss_set) = rest.split_at(RAM_LINES);

    let cache_path = scratch.join("read-cache.img");
    let nr_segments = DEVICE_SEGMENTS + 4;
    create_file(&cache_path, (1 + nr_segments) * MIB)?;
    sequential_write(&cache_path, (1 + nr_segments) * MIB, None)?; // allocate
    let cache = fresh_cache(&cache_path, None, backing)?;
    let mut data = [0x3Cu8; LINE_SIZE];
    for (j, &l) in device_set.iter().enumerate() {
        data[..8].copy_from_slice(&(j as u64).to_le_bytes());
        cache.write(DEVICE_ID, l * LINE_SECTORS, &data)?;
    }
    cache.flush_sync()?; // the device set is on the cache device, out of RAM
    for &l in ram_set {
        cache.write(DEVICE_ID, l * LINE_SECTORS, &data)?; // stays in the open segment
    }
    // Line j of the device set is line j % 255 of segment id j / 255 + 1,
    // which lives in slot j / 255: (1 + slot) MiB + (1 + line) * 4 KiB.
    let device_offset = |j: usize| {
        let (slot, i) = (
            (j / LINES_PER_SEGMENT) as u64,
            (j % LINES_PER_SEGMENT) as u64,
        );
        (1 + slot) * MIB + (1 + i) * LINE_SIZE as u64
    };
    let cache_file = FileDevice::open(&cache_path)?;
    cache.clear_stat();

    let lc_read = |set: &[u64], k: usize, buf: &mut [u8]| -> BoxResult<()> {
        Ok(cache.read(DEVICE_ID, set[k] * LINE_SECTORS, buf)?)
    };
    let backing_read = |set: &[u64], k: usize, buf: &mut [u8]| -> BoxResult<()> {
        Ok(backing.read_at(buf, set[k] * LINE_SIZE as u64)?)
    };
    let ram = pair(
        cfg,
        ram_set.len(),
        &|k, buf| backing_read(ram_set, k, buf),
        &|k, buf| lc_read(ram_set, k, buf),
    )?;
    let device = pair(
        cfg,
        device_set.len(),
        &|k, buf| Ok(cache_file.read_at(buf, device_offset(k))?),
        &|k, buf| lc_read(device_set, k, buf),
    )?;
    let miss = pair(
        cfg,
        miss_set.len(),
        &|k, buf| backing_read(miss_set, k, buf),
        &|k, buf| lc_read(miss_set, k, buf),
    )?;
    let stats = cache.status().stats;
    cache.shutdown()?;
    drop(cache);
    drop(cache_file);
    std::fs::remove_file(&cache_path)?;

    println!(
        "2. random 4 KiB reads ({} threads, {} per run) through lc vs O_DIRECT reads of the same data",
        cfg.threads, cfg.read_ops
    );
    println!(
        "  hit from the RAM buffer ({} lines of the open segment) vs the same lines of the backing file:",
        ram_set.len()
    );
    print_pair(cfg.threads, "RAM-buffer hits", "direct: backing file", &ram);
    println!(
        "  hit from the cache device ({} lines, {DEVICE_SEGMENTS} segments) vs those blocks of the cache file:",
        device_set.len()
    );
    print_pair(
        cfg.threads,
        "cache-device hits",
        "direct: cache file",
        &device,
    );
    println!(
        "  miss ({} uncached lines) vs the same lines of the backing file:",
        miss_set.len()
    );
    print_pair(cfg.threads, "misses", "direct: backing file", &miss);
    // the engine's own counters say which path each read took
    println!(
        "  engine counters: {} hits on buffer, {} hits on the cache device, {} misses (expected {} each)",
        stats.get(false, true, true, true),
        stats.get(false, true, false, true),
        stats.get(false, false, false, true),
        cfg.read_ops
    );
    println!();
    summary.plain("2  lc/direct reads, hit from the RAM buffer", ram.ratio());
    summary.plain(
        "2  lc/direct reads, hit from the cache device",
        device.ratio(),
    );
    summary.plain("2  lc/direct reads, miss", miss.ratio());
    Ok(())
}
