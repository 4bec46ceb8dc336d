//! Measurement 3: a full cache in steady state, write-back running, in front
//! of a modelled hard disk, ÷ the same workload straight to that disk.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use lc_engine::format::LINE_SIZE;
use lc_engine::{AlignedBuf, BlockDevice, Cache, FileDevice, Knob};

use crate::devices::HddModel;
use crate::{
    create_file, fresh_cache, sequential_write, workload_lines, BoxResult, Config, Summary,
    DEVICE_ID, LINE_SECTORS, MIB,
};

/// Sampling period of the throughput over time.
const SAMPLE: Duration = Duration::from_millis(250);
/// Target: lc steady-state throughput ÷ direct throughput (at least).
const TARGET_FULL_RATIO: f64 = 1.0;

/// One sample of a run.
#[derive(Clone, Copy, Default)]
struct Sample {
    /// Seconds since the start of the run.
    t: f64,
    /// Bytes of writes acknowledged so far.
    acked: u64,
    /// Bytes written to the modelled disk so far.
    disk: u64,
    /// Segments of the cache in use (0 for the direct run).
    used: u64,
    /// `last_migrated_segment_id` (0 for the direct run).
    migrated: u64,
}

/// One write's time: (when it returned, s since the start, how long it took, s).
type WriteTime = (f64, f64);

/// `threads` threads write 4 KiB lines of the random workload with `write`
/// until `secs` have passed; `probe` is sampled every [`SAMPLE`]. Returns
/// the samples and every write's [`WriteTime`].
fn drive(
    threads: usize,
    secs: u64,
    backing_lines: u64,
    write: &(dyn Fn(u64, &[u8]) -> BoxResult<()> + Sync),
    probe: &dyn Fn() -> (u64, u64, u64),
) -> BoxResult<(Vec<Sample>, Vec<WriteTime>)> {
    let origin = Instant::now();
    let acked = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let start_line = Barrier::new(threads + 1);
    std::thread::scope(|s| -> BoxResult<(Vec<Sample>, Vec<WriteTime>)> {
        let workers: Vec<_> = (0..threads as u64)
            .map(|t| {
                let (acked, stop, start_line) = (&acked, &stop, &start_line);
                s.spawn(move || -> Result<Vec<WriteTime>, String> {
                    let mut data = AlignedBuf::zeroed(LINE_SIZE);
                    data.fill(t as u8);
                    let mut times = Vec::new();
                    start_line.wait();
                    for (i, line) in workload_lines(t, backing_lines).enumerate() {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        data[..8].copy_from_slice(&i.to_le_bytes());
                        let began = Instant::now();
                        write(line, &data).map_err(|e| e.to_string())?;
                        let end = Instant::now();
                        times.push(((end - origin).as_secs_f64(), (end - began).as_secs_f64()));
                        acked.fetch_add(LINE_SIZE as u64, Ordering::Relaxed);
                    }
                    Ok(times)
                })
            })
            .collect();
        let sample = |start: Instant| {
            let (disk, used, migrated) = probe();
            Sample {
                t: start.elapsed().as_secs_f64(),
                acked: acked.load(Ordering::Relaxed),
                disk,
                used,
                migrated,
            }
        };
        start_line.wait();
        let start = Instant::now();
        let offset = (start - origin).as_secs_f64();
        let mut samples = vec![sample(start)];
        let end = start + Duration::from_secs(secs);
        let mut next = start + SAMPLE;
        while next <= end {
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            samples.push(sample(start));
            next += SAMPLE;
        }
        stop.store(true, Ordering::Relaxed);
        let mut times = Vec::new();
        for w in workers {
            times.extend(w.join().map_err(|_| "a writer thread panicked")??);
        }
        // times since the start, as the samples have them
        for t in &mut times {
            t.0 -= offset;
        }
        Ok((samples, times))
    })
}

/// Longest and 99th-percentile wait of the writes that returned at or after
/// `from` s.
fn waits(times: &[WriteTime], from: f64) -> (f64, f64, usize) {
    let mut w: Vec<f64> = times.iter().filter(|t| t.0 >= from).map(|t| t.1).collect();
    if w.is_empty() {
        return (0.0, 0.0, 0);
    }
    w.sort_by(f64::total_cmp);
    let p99 = w[(w.len() * 99 / 100).min(w.len() - 1)];
    (w[w.len() - 1], p99, w.len())
}

/// The steady-state window of the lc run: (index of the first sample where
/// the cache is full, first and last sample after it at which a write-back
/// batch had completed).
fn steady_window(samples: &[Sample], nr_segments: u64) -> Option<(usize, usize, usize)> {
    let full = samples.iter().position(|s| s.used + 1 >= nr_segments)?;
    let steps: Vec<usize> = (full.max(1)..samples.len())
        .filter(|&k| samples[k].migrated > samples[k - 1].migrated)
        .collect();
    match (steps.first(), steps.last()) {
        (Some(&a), Some(&b)) if b > a => Some((full, a, b)),
        _ => None,
    }
}

/// MiB/s between two samples of the acknowledged writes.
fn rate(a: &Sample, b: &Sample) -> f64 {
    (b.acked - a.acked) as f64 / MIB as f64 / (b.t - a.t)
}

/// Appends the samples of one run to `csv`.
fn csv_rows(
    csv: &mut String,
    run: &str,
    samples: &[Sample],
    nr_segments: u64,
    window: Option<(usize, usize, usize)>,
) {
    for (k, s) in samples.iter().enumerate() {
        let (w, wb) = if k == 0 {
            (0.0, 0.0)
        } else {
            let p = &samples[k - 1];
            let dt = s.t - p.t;
            (
                (s.acked - p.acked) as f64 / MIB as f64 / dt,
                (s.disk - p.disk) as f64 / MIB as f64 / dt,
            )
        };
        let phase = match window {
            _ if nr_segments == 0 => "direct",
            Some((_, a, b)) if k > a && k <= b => "steady",
            Some((full, _, _)) if k >= full => "full",
            _ => "filling",
        };
        let used_pct = if nr_segments == 0 {
            0.0
        } else {
            100.0 * s.used.min(nr_segments) as f64 / nr_segments as f64
        };
        let _ = writeln!(
            csv,
            "{run},{:.3},{:.3},{w:.3},{wb:.3},{used_pct:.1},{},{phase}",
            s.t,
            s.acked as f64 / MIB as f64,
            s.migrated
        );
    }
}

/// Measurement 3.
pub fn run(cfg: &Config, scratch: &Path, summary: &mut Summary) -> BoxResult<()> {
    let backing_path = scratch.join("hdd.img");
    let backing_bytes = cfg.full_backing_mb * MIB;
    create_file(&backing_path, backing_bytes)?;
    let backing_lines = backing_bytes / LINE_SIZE as u64;
    let cache_path = scratch.join("full-cache.img");
    let cache_bytes = (1 + cfg.full_cache_mb) * MIB;
    create_file(&cache_path, cache_bytes)?;
    sequential_write(&cache_path, cache_bytes, None)?; // allocate

    // lc: the cache in front of the modelled disk, write-back allowed
    let hdd = Arc::new(HddModel::new(
        Arc::new(FileDevice::open(&backing_path)?),
        cfg.hdd,
    ));
    let backing: Arc<dyn BlockDevice> = hdd.clone();
    let describe = backing.describe();
    let cache: Cache = fresh_cache(&cache_path, cfg.throttle_mib_s, &backing)?;
    cache.set_knob(Knob::AllowMigrate, 1)?;
    let nr_segments = cache.nr_segments();
    let (lc, lc_times) = drive(
        cfg.threads,
        cfg.full_secs,
        backing_lines,
        &|line, data| Ok(cache.write(DEVICE_ID, line * LINE_SECTORS, data)?),
        &|| {
            let st = cache.status();
            let top = st.current_segment_id.max(st.last_flushed_segment_id);
            (
                hdd.written.load(Ordering::Relaxed),
                top.saturating_sub(st.last_migrated_segment_id),
                st.last_migrated_segment_id,
            )
        },
    )?;
    cache.set_knob(Knob::AllowMigrate, 0)?;
    cache.shutdown()?;
    let status = cache.status();
    drop(cache);
    let lc_ios = hdd.ios.load(Ordering::Relaxed);
    let lc_disk = hdd.written.load(Ordering::Relaxed);
    drop(backing);
    drop(hdd);

    // direct: the same threads, the same offsets, straight to the same model
    let hdd = Arc::new(HddModel::new(
        Arc::new(FileDevice::open(&backing_path)?),
        cfg.hdd,
    ));
    let (direct, direct_times) = drive(
        cfg.threads,
        cfg.full_secs,
        backing_lines,
        &|line, data| Ok(hdd.write_at(data, line * LINE_SIZE as u64)?),
        &|| (hdd.written.load(Ordering::Relaxed), 0, 0),
    )?;
    hdd.flush()?;
    let direct_ios = hdd.ios.load(Ordering::Relaxed);
    drop(hdd);
    std::fs::remove_file(&cache_path)?;
    std::fs::remove_file(&backing_path)?;

    let window = steady_window(&lc, nr_segments);
    let (first, last) = (lc[0], *lc.last().expect("samples"));
    let direct_rate = rate(&direct[0], direct.last().expect("samples"));
    println!(
        "3. full cache, steady state with write-back running: {} threads of random 4 KiB writes \
         for {} s each side",
        cfg.threads, cfg.full_secs
    );
    println!("  backing: {describe}");
    println!(
        "  cache device {} MiB ({nr_segments} segments){}, backing file {} MiB (sparse)",
        cfg.full_cache_mb,
        cfg.throttle_mib_s.map_or(String::new(), |r| format!(
            ", writes throttled to {r} MiB/s"
        )),
        cfg.full_backing_mb
    );
    println!(
        "  direct to the modelled disk: {:.1} MiB written, {:.3} MiB/s, {:.0} IOPS",
        direct.last().expect("samples").acked as f64 / MIB as f64,
        direct_rate,
        direct_ios as f64 / cfg.full_secs as f64
    );
    println!(
        "  through lc: {:.1} MiB acknowledged, {:.3} MiB/s over the whole run; by the end \
         of the run and the clean stop after it, {:.1} MiB written back in {lc_ios} disk \
         writes, last migrated segment {}, {} write-back retries",
        last.acked as f64 / MIB as f64,
        rate(&first, &last),
        lc_disk as f64 / MIB as f64,
        status.last_migrated_segment_id,
        status.stats.migration_retries
    );
    let steady = match window {
        Some((full, a, b)) => {
            println!(
                "  cache full at {:.2} s; steady state from {:.2} s to {:.2} s ({} segments \
                 written back in it, in batches of up to {})",
                lc[full].t,
                lc[a].t,
                lc[b].t,
                lc[b].migrated - lc[a].migrated,
                cache_knob_batch()
            );
            let r = rate(&lc[a], &lc[b]);
            println!(
                "  lc steady state: {r:.3} MiB/s; from full to end: {:.3} MiB/s",
                rate(&lc[full], &last)
            );
            let (longest, p99, n) = waits(&lc_times, lc[full].t);
            let (d_longest, d_p99, d_n) = waits(&direct_times, 0.0);
            println!(
                "  writer waits once the cache was full: longest {longest:.3} s, 99th \
                 percentile {p99:.3} s ({n} writes); straight to the disk: longest \
                 {d_longest:.3} s, 99th percentile {d_p99:.3} s ({d_n} writes)"
            );
            summary.target(
                "3  longest writer wait at a full cache, s",
                longest,
                false,
                1.0,
            );
            summary.plain("3  99th-percentile writer wait at a full cache, s", p99);
            Some(r)
        }
        None => {
            println!(
                "  no steady state: the cache never filled, or fewer than two write-back \
                 batches completed after it did (lengthen LC_BENCH_FULL_SECS)"
            );
            None
        }
    };
    if let Some(path) = &cfg.csv {
        let mut csv = String::from(
            "run,t_s,written_mib,written_mib_s,to_disk_mib_s,cache_used_pct,last_migrated_segment_id,phase\n",
        );
        csv_rows(&mut csv, "lc", &lc, nr_segments, window);
        csv_rows(&mut csv, "direct", &direct, 0, None);
        std::fs::write(path, csv)?;
        println!(
            "  samples every {} ms: {}",
            SAMPLE.as_millis(),
            path.display()
        );
    }
    if let Some(r) = steady {
        println!("  lc/direct = {:.3}", r / direct_rate);
        summary.target(
            "3  lc/direct, full cache steady state (modelled HDD backing)",
            r / direct_rate,
            true,
            TARGET_FULL_RATIO,
        );
    }
    println!();
    Ok(())
}

/// `nr_max_batched_migration` as a fresh cache has it.
fn cache_knob_batch() -> u64 {
    Knob::NrMaxBatchedMigration.spec().default
}
