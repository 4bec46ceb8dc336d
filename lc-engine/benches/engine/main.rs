//! Throughput, read, full-cache, index-RAM, resume and RSS benchmark of the
//! lc engine.
//!
//! Run with
//!
//! ```text
//! cargo bench -p lc-engine --bench engine
//! ```
//!
//! or `bash bench/run` at the top of the workspace, which also builds `lcd`
//! for the RSS figure, keeps the output and plots the full-cache run
//! (see BENCHMARKS.md). Each figure is a ratio of two measurements taken in
//! the same run on the same file system; the raw figures are printed with
//! it. This is a measurement, not a test: it asserts nothing about timings.
//!
//! 1. **random write / sequential write**: 4 KiB writes at random 4 KiB-aligned
//!    offsets of a backing file, issued by `LC_BENCH_THREADS` threads (default
//!    32, i.e. 32 writes in flight) on one [`Cache`], `LC_BENCH_MB` MiB in all
//!    (default 1024), ended by `flush_sync()`; the cache device is large
//!    enough that no write-back is needed (`allow_migrate` stays 0). The
//!    baseline writes as many bytes with sequential 1 MiB `O_DIRECT` writes
//!    through [`FileDevice`] to the same file, as many in flight as the
//!    engine's flusher keeps segment writes in flight
//!    ([`lc_engine::SEGMENT_WRITES_IN_FLIGHT`], 4), then flushes; it runs
//!    before and after the engine and the mean is used. Target >= 0.97; the
//!    format's limit is 255/256 (one header block per 255 data lines).
//!
//!    **1b**, the same with a throttled cache device: measurement 1 again,
//!    `LC_BENCH_THROTTLED_MB` MiB in all (default 512), but every write to
//!    the cache file, by the engine and by the baseline alike, goes through
//!    `ThrottledDevice`, which paces writes to `LC_BENCH_CACHE_MBPS` MiB/s
//!    (default 500, a SATA SSD; 0 skips 1b). It exists because ratio 1 only
//!    says whether the engine keeps a cache device busy when the device, not
//!    the CPU, is the bottleneck. On the 2-vCPU VM this benchmark was written
//!    on, the "disk" (virtio over the host's page cache) takes about 2 GB/s,
//!    more than the engine's CPU-bound in-RAM write path produces on 2 CPUs,
//!    so there ratio 1 measures the CPU, whereas dm-lc's reference figure
//!    (0.97 of the SSD's sequential bandwidth) was device-bound. The throttle
//!    is a model of an SSD's write bandwidth, not a real SSD: no command
//!    latency, write cache or garbage collection; reads, flushes and
//!    discards pass through. It is applied identically to both sides of the
//!    ratio, and it never completes a write earlier than the bandwidth
//!    allows, so it cannot make the engine look faster than the device.
//!
//!    **1c, speed-up**: the same workload (the same threads, the same random
//!    offsets, the same amount) written with 4 KiB `O_DIRECT` writes straight
//!    to the backing file, then a flush, before and after measurement 1;
//!    reported as lc throughput (measurement 1's engine run) ÷ the mean
//!    direct throughput. No target: it is what a user gains while the cache
//!    has room. The backing file is written in full once beforehand
//!    (untimed), so that direct writes pay no block allocation, as on a disk.
//! 2. **reads** ÷ direct `O_DIRECT` reads of the same data, `LC_BENCH_THREADS`
//!    threads, `LC_BENCH_READ_OPS` random 4 KiB reads per side (default
//!    100000), direct before and after lc (mean used): **hit from the RAM
//!    buffer** (200 lines written to the open segment, never flushed) ÷ direct
//!    reads of the same lines of the backing file; **hit from the cache
//!    device** (64 segments of lines, flushed) ÷ direct reads of those lines'
//!    blocks in the cache file; **miss** (lines not cached) ÷ direct reads of
//!    the same lines of the backing file. Reported as lc ÷ direct
//!    throughput; the overhead is 1 - that. No target in the issue.
//! 3. **full cache, steady state**: a cache of `LC_BENCH_FULL_CACHE_MB` MiB
//!    (default 256; writes throttled to `LC_BENCH_CACHE_MBPS` as in 1b) in
//!    front of a backing file of `LC_BENCH_FULL_BACKING_MB` MiB (default
//!    16384, sparse) behind `HddModel`, a hard disk model (defaults: 150
//!    MiB/s, 7200 rpm, seeks 0.5 to `LC_BENCH_HDD_SEEK_MS` = 15 ms, elevator
//!    over the queued requests; documented in `devices.rs`). `LC_BENCH_THREADS`
//!    threads write 4 KiB at random offsets of the whole backing file for
//!    `LC_BENCH_FULL_SECS` s (default 90) with `allow_migrate` 1 from the
//!    start (what lcd's policy sets while the backing disk is idle): the cache
//!    fills, then writers wait for write-back. Then the same threads write
//!    the same offsets straight to the same modelled disk for as long.
//!    Written and written-back MiB/s are sampled every 250 ms into the CSV
//!    file `LC_BENCH_CSV` (if set), for the plot. Steady state is the span
//!    between the first and the last write-back batch completed after the
//!    cache first was full. Ratio: lc steady-state throughput ÷ direct
//!    throughput, target >= 1.0.
//! 4. For each size in `LC_BENCH_RESUME_MB` (comma-separated MiB, default
//!    `1024,16384`): a **full cache** is made as a sparse file: format, then
//!    every segment header written as the engine would write it (ids
//!    1..=nr_segments, 255 dirty lines each, every line a distinct backing
//!    line), data blocks left as holes, which read as the zeros the
//!    checksums cover. Then
//!    * **index RAM per cache line** after resume: `index_ram_bytes /
//!      nr_caches`, target <= 16 B;
//!    * **resume / header read**: [`Cache::resume`] ÷ reading the 4 KiB header
//!      of every segment with one thread, in alternating rounds (9 to 51: up
//!      to about 3 s of header reads; 3 when one header read takes over
//!      20 s), medians compared; target <= 1.1, and <= 2.0 for a cache of
//!      1 TiB or more (`LC_BENCH_RESUME_MB=1048576`: 4 GiB of headers
//!      written, about 3.7 GB of index RAM per resumed copy). The headers
//!      are also read once with as many threads as resume uses, to show
//!      whether resume waits for the device or for its replay;
//!    * **peak RSS** (VmHWM) of a child process that resumes the cache: this
//!      bench binary re-executed (engine only), and, if `LC_BENCH_LCD` names
//!      an `lcd` binary, the real daemon on a private dbus-daemon resuming
//!      it through `ResumeCacheAs` with busctl (`--frontend none`). No target
//!      in the issue.
//!
//! 5. **write-back over a latency-modelled disk** (`writeback.rs`): a cache
//!    holding `LC_BENCH_WB_LINES` (default 4096) dirty lines in front of a
//!    `LatencyModel` backing device (every write takes `LC_BENCH_WB_LATENCY_MS`
//!    = 5 ms, at most `LC_BENCH_WB_DEPTH` = 16 at once: dm-delay over a disk
//!    with 16 tags), written back by `migrate_all`; lines per second ÷ the
//!    model's own 4 KiB random writes per second with 16 writer threads
//!    (before and after, mean), for scattered lines (target >= 0.8) and for
//!    lines in runs of 8 contiguous ones (target >= 1.0: merged writes), in
//!    3 rounds each. Measurement 3 also reports the longest and the 99th
//!    percentile time a write waited once the cache was full.
//!
//! Other variables: `LC_BENCH_DIR` (default [`std::env::temp_dir`]): where
//! the temporary directory of the files is created and removed at the end;
//! choose a directory on the disk you want to measure (on tmpfs the "disk"
//! is RAM and before Linux 6.6 `O_DIRECT` is refused there, so the files are
//! opened buffered). `LC_BENCH_ONLY`: comma-separated subset of `write`
//! (1, 1b, 1c), `read`, `full`, `writeback`, `resume`; default all. `LC_BENCH_HDD_MBPS`
//! (150), `LC_BENCH_HDD_RPM` (7200): the disk model. `LC_BENCH_CHILD_RESUME`
//! is internal: set to a cache path, the binary is the child of the RSS
//! figure (resumes that cache, prints its memory use, exits). The run needs about
//! 4 × `LC_BENCH_MB` MiB (backing file) plus `LC_BENCH_MB` + 64 MiB of
//! free space; the sparse files use little.
//!
//! If the random writes of 1/1b make no progress for a minute, the run
//! reports that and exits with status 2.

mod devices;
mod full;
mod reads;
mod resume;
mod writeback;

use std::error::Error as StdError;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use lc_engine::format::{LINES_PER_SEGMENT, LINE_SIZE, SECTOR_SIZE, SEGMENT_SIZE};
use lc_engine::{
    format_cache_device, AlignedBuf, BlockDevice, Cache, CacheOptions, FileDevice, Knob,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use devices::{flush_counters, throttle_idle, FlushTimed, HddParams, ThrottledDevice};

/// Result type of the benchmark's steps.
type BoxResult<T> = Result<T, Box<dyn StdError>>;

/// One MiB.
const MIB: u64 = 1 << 20;
/// Writes in flight in the sequential baseline: the same as the engine's
/// flusher keeps, so neither side gets a deeper queue.
const SEQ_QUEUE_DEPTH: u64 = lc_engine::SEGMENT_WRITES_IN_FLIGHT as u64;
/// Cache id used for every cache of the benchmark.
const CACHE_ID: u8 = 1;
/// Backing device id used for every write.
const DEVICE_ID: u8 = 1;
/// Spare segments of the random-write cache beyond what the writes fill.
const SPARE_SEGMENTS: u64 = 63;
/// Sectors per 4 KiB line.
const LINE_SECTORS: u64 = (LINE_SIZE / SECTOR_SIZE) as u64;

/// The random-write measurement gives up after this long without progress.
const STALL_LIMIT: Duration = Duration::from_secs(60);

/// Target of the random-write ratio (at least).
const TARGET_WRITE_RATIO: f64 = 0.97;

/// What the run is asked to do, from the environment.
struct Config {
    /// Directory the temporary directory is created in.
    dir: PathBuf,
    /// MiB written by the random-write measurement and its baseline.
    write_mb: u64,
    /// Writer (and reader) threads.
    threads: usize,
    /// Write bandwidth of the throttled cache device of measurements 1b and
    /// 3, in MiB/s; `None`: not throttled (1b skipped).
    throttle_mib_s: Option<u64>,
    /// MiB written by measurement 1b and its baseline.
    throttled_mb: u64,
    /// Reads per side and kind of measurement 2.
    read_ops: u64,
    /// Size of the cache of measurement 3, MiB.
    full_cache_mb: u64,
    /// Size of the backing file (the modelled disk) of measurement 3, MiB.
    full_backing_mb: u64,
    /// Duration of each side of measurement 3.
    full_secs: u64,
    /// The disk model of measurement 3.
    hdd: HddParams,
    /// Where measurement 3 writes its samples.
    csv: Option<PathBuf>,
    /// Sizes of the full caches of measurement 4, MiB.
    resume_sizes: Vec<u64>,
    /// The lcd binary whose peak RSS measurement 4 takes.
    lcd: Option<PathBuf>,
    /// Measurements to run.
    only: Vec<String>,
}

/// Names `LC_BENCH_ONLY` accepts.
const PARTS: [&str; 5] = ["write", "read", "full", "writeback", "resume"];

impl Config {
    fn from_env() -> BoxResult<Config> {
        let dir = std::env::var_os("LC_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let list = |name: &str, default: &str| -> Vec<String> {
            std::env::var(name)
                .unwrap_or_else(|_| default.into())
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let resume_sizes = list("LC_BENCH_RESUME_MB", "1024,16384")
            .iter()
            .map(|s| {
                s.parse::<u64>()
                    .map_err(|e| format!("LC_BENCH_RESUME_MB: {s:?} is not a number: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let only = list("LC_BENCH_ONLY", &PARTS.join(","));
        if let Some(bad) = only.iter().find(|p| !PARTS.contains(&p.as_str())) {
            return Err(format!("LC_BENCH_ONLY: unknown part {bad:?}; parts: {PARTS:?}").into());
        }
        let cfg = Config {
            dir,
            write_mb: env_u64("LC_BENCH_MB", 1024)?,
            threads: usize::try_from(env_u64("LC_BENCH_THREADS", 32)?)?,
            throttle_mib_s: Some(env_u64("LC_BENCH_CACHE_MBPS", 500)?).filter(|&r| r > 0),
            throttled_mb: env_u64("LC_BENCH_THROTTLED_MB", 512)?,
            read_ops: env_u64("LC_BENCH_READ_OPS", 100_000)?,
            full_cache_mb: env_u64("LC_BENCH_FULL_CACHE_MB", 256)?,
            full_backing_mb: env_u64("LC_BENCH_FULL_BACKING_MB", 16384)?,
            full_secs: env_u64("LC_BENCH_FULL_SECS", 90)?,
            hdd: HddParams {
                mib_per_s: env_u64("LC_BENCH_HDD_MBPS", 150)?,
                rpm: env_u64("LC_BENCH_HDD_RPM", 7200)?,
                full_seek_ms: env_u64("LC_BENCH_HDD_SEEK_MS", 15)? as f64,
                min_seek_ms: 0.5,
            },
            csv: std::env::var_os("LC_BENCH_CSV").map(PathBuf::from),
            resume_sizes,
            lcd: std::env::var_os("LC_BENCH_LCD").map(PathBuf::from),
            only,
        };
        if cfg.write_mb == 0
            || cfg.threads == 0
            || cfg.throttled_mb == 0
            || cfg.read_ops == 0
            || cfg.full_cache_mb < 8
            || cfg.full_backing_mb < cfg.full_cache_mb
            || cfg.full_secs == 0
            || cfg.hdd.mib_per_s == 0
            || cfg.hdd.rpm == 0
            || cfg.resume_sizes.iter().any(|&s| s < 2)
        {
            return Err("LC_BENCH_MB, LC_BENCH_THREADS, LC_BENCH_THROTTLED_MB, \
                 LC_BENCH_READ_OPS, LC_BENCH_FULL_SECS, LC_BENCH_HDD_MBPS and \
                 LC_BENCH_HDD_RPM must be >= 1, LC_BENCH_FULL_CACHE_MB >= 8, \
                 LC_BENCH_FULL_BACKING_MB >= LC_BENCH_FULL_CACHE_MB, every \
                 LC_BENCH_RESUME_MB >= 2"
                .into());
        }
        Ok(cfg)
    }

    /// True when measurement `part` is to run.
    fn runs(&self, part: &str) -> bool {
        self.only.iter().any(|p| p == part)
    }
}

/// Reads a positive integer from the environment, or `default` when unset.
fn env_u64(name: &str, default: u64) -> BoxResult<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|e| format!("{name}={v:?} is not a number: {e}").into()),
        Err(_) => Ok(default),
    }
}

/// One timed run: how many bytes (or operations) in how long.
#[derive(Clone, Copy)]
struct Timing {
    amount: u64,
    elapsed: Duration,
}

impl Timing {
    fn secs(self) -> f64 {
        self.elapsed.as_secs_f64()
    }

    /// Throughput in MiB/s, taking `amount` as bytes.
    fn mib_per_s(self) -> f64 {
        self.amount as f64 / MIB as f64 / self.secs()
    }
}

/// CPU time (user + system) this process has used so far, all threads.
fn process_cpu() -> Duration {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage into the pointer we pass.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Runs `f` and also returns the CPU time the process used meanwhile.
fn with_cpu<T>(f: impl FnOnce() -> BoxResult<T>) -> BoxResult<(T, Duration)> {
    let before = process_cpu();
    let r = f()?;
    Ok((r, process_cpu().saturating_sub(before)))
}

/// "N.NN of M CPUs busy": CPU time `cpu` over the wall time of `t`.
fn cpus_busy(cpu: Duration, t: Timing) -> String {
    format!(
        "CPU {:.2} s in {:.2} s: {:.2} of {} CPUs busy",
        cpu.as_secs_f64(),
        t.secs(),
        cpu.as_secs_f64() / t.secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}

/// Mean duration of two timings of the same amount.
/// The median of some timings (by elapsed time); sorts them in place.
fn median(ts: &mut [Timing]) -> Timing {
    ts.sort_by_key(|t| t.elapsed);
    ts[ts.len() / 2]
}

fn mean(a: Timing, b: Timing) -> Timing {
    Timing {
        amount: a.amount,
        elapsed: (a.elapsed + b.elapsed) / 2,
    }
}

/// Opens the cache device file at `path`, its flushes timed by
/// [`FlushTimed`], behind a [`ThrottledDevice`] of `throttle` MiB/s if given.
fn open_cache_device(path: &Path, throttle: Option<u64>) -> BoxResult<Arc<dyn BlockDevice>> {
    let dev: Arc<dyn BlockDevice> = Arc::new(FlushTimed(Arc::new(FileDevice::open(path)?)));
    Ok(match throttle {
        Some(mib_per_s) => Arc::new(ThrottledDevice::new(dev, mib_per_s)),
        None => dev,
    })
}

/// Creates a sparse file of `bytes` (holes until written).
fn create_file(path: &Path, bytes: u64) -> BoxResult<()> {
    File::create(path)?.set_len(bytes)?;
    Ok(())
}

/// Sequential 1 MiB writes of `bytes` from offset 0 of `path` through
/// [`FileDevice`] (behind a [`ThrottledDevice`] of `throttle` MiB/s if
/// given), then a device flush (the baseline of measurements 1 and 1b).
fn sequential_write(path: &Path, bytes: u64, throttle: Option<u64>) -> BoxResult<Timing> {
    let dev = open_cache_device(path, throttle)?;
    let chunks = bytes / MIB;
    let start = Instant::now();
    // SEQ_QUEUE_DEPTH threads write alternate 1 MiB chunks: the file is
    // written front to back with that many writes in flight, as the
    // engine's flusher keeps its segment writes in flight.
    std::thread::scope(|scope| -> BoxResult<()> {
        let workers: Vec<_> = (0..SEQ_QUEUE_DEPTH)
            .map(|t| {
                let dev = dev.clone();
                scope.spawn(move || -> std::io::Result<()> {
                    let mut buf = AlignedBuf::zeroed(SEGMENT_SIZE);
                    buf.fill(0x5A);
                    for k in (t..chunks).step_by(SEQ_QUEUE_DEPTH as usize) {
                        dev.write_at(&buf, k * MIB)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().expect("sequential writer panicked")?;
        }
        Ok(())
    })?;
    dev.flush()?;
    Ok(Timing {
        amount: bytes,
        elapsed: start.elapsed(),
    })
}

/// Formats the file at `path` and resumes a cache on it (its device behind a
/// [`ThrottledDevice`] of `throttle` MiB/s if given) with the backing file
/// attached; write-back stays off.
fn fresh_cache(
    path: &Path,
    throttle: Option<u64>,
    backing: &Arc<dyn BlockDevice>,
) -> BoxResult<Cache> {
    format_cache_device(&FileDevice::open(path)?, true)?;
    let dev = open_cache_device(path, throttle)?;
    let cache = Cache::resume(CACHE_ID, dev, CacheOptions::default())?;
    cache.set_knob(Knob::AllowMigrate, 0)?;
    cache.attach_device(DEVICE_ID, backing.clone())?;
    Ok(cache)
}

/// The backing lines thread `t` of the random-write workload writes, in
/// order: the same for the engine and for the direct baseline.
fn workload_lines(t: u64, backing_lines: u64) -> impl Iterator<Item = u64> {
    let mut rng = StdRng::seed_from_u64(0x1c_5eed + t);
    std::iter::repeat_with(move || rng.gen_range(0..backing_lines))
}

/// Thread `t`'s share of `total` operations spread over `threads` threads.
fn share(total: u64, threads: usize, t: u64) -> u64 {
    total / threads as u64 + u64::from(t < total % threads as u64)
}

/// Measurement 1c's baseline: the random-write workload of `bytes`
/// (`threads` threads, the offsets of [`workload_lines`]) written with 4 KiB
/// writes straight to `dev`, then a flush.
fn direct_random_write(
    dev: &dyn BlockDevice,
    bytes: u64,
    threads: usize,
    backing_lines: u64,
) -> BoxResult<Timing> {
    let lines = bytes / LINE_SIZE as u64;
    let start_line = Barrier::new(threads + 1);
    let start = std::thread::scope(|s| -> BoxResult<Instant> {
        let workers: Vec<_> = (0..threads as u64)
            .map(|t| {
                let start_line = &start_line;
                let n = share(lines, threads, t);
                s.spawn(move || -> std::io::Result<()> {
                    let mut data = AlignedBuf::zeroed(LINE_SIZE);
                    data.fill(t as u8);
                    start_line.wait();
                    for (i, line) in workload_lines(t, backing_lines)
                        .take(n as usize)
                        .enumerate()
                    {
                        data[..8].copy_from_slice(&i.to_le_bytes());
                        dev.write_at(&data, line * LINE_SIZE as u64)?;
                    }
                    Ok(())
                })
            })
            .collect();
        start_line.wait();
        let start = Instant::now();
        for w in workers {
            w.join().map_err(|_| "a writer thread panicked")??;
        }
        Ok(start)
    })?;
    dev.flush()?;
    Ok(Timing {
        amount: bytes,
        elapsed: start.elapsed(),
    })
}

/// Result of the random-write measurement.
struct RandomWrite {
    /// From the start of the writes until `flush_sync()` returned.
    total: Timing,
    /// From the start of the writes until the last one was acknowledged.
    acked: Timing,
    /// Segments the flusher wrote to the cache device.
    segments_written: u64,
}

/// `threads` threads write `bytes` in 4 KiB writes at random line-aligned
/// offsets below `backing_lines` through `cache`, then one `flush_sync()`.
/// A watchdog ends the process (removing `scratch`) if the writes stall.
fn random_write(
    cache: &Cache,
    bytes: u64,
    threads: usize,
    backing_lines: u64,
    scratch: &Path,
) -> BoxResult<RandomWrite> {
    let lines = bytes / LINE_SIZE as u64;
    let start_line = Barrier::new(threads + 1);
    let (start, acked) = std::thread::scope(|s| -> BoxResult<(Instant, Instant)> {
        let (stop_watchdog, stopped) = mpsc::channel::<()>();
        s.spawn(move || watchdog(cache, &stopped, scratch));
        let workers: Vec<_> = (0..threads as u64)
            .map(|t| {
                let start_line = &start_line;
                let n = share(lines, threads, t);
                s.spawn(move || -> lc_engine::Result<()> {
                    let mut data = [0u8; LINE_SIZE];
                    data.fill(t as u8);
                    start_line.wait();
                    for (i, line) in workload_lines(t, backing_lines)
                        .take(n as usize)
                        .enumerate()
                    {
                        data[..8].copy_from_slice(&i.to_le_bytes());
                        cache.write(DEVICE_ID, line * LINE_SECTORS, &data)?;
                    }
                    Ok(())
                })
            })
            .collect();
        start_line.wait();
        let start = Instant::now();
        for w in workers {
            w.join().map_err(|_| "a writer thread panicked")??;
        }
        let acked = Instant::now();
        drop(stop_watchdog);
        Ok((start, acked))
    })?;
    cache.flush_sync()?;
    let done = Instant::now();
    Ok(RandomWrite {
        total: Timing {
            amount: bytes,
            elapsed: done - start,
        },
        acked: Timing {
            amount: bytes,
            elapsed: acked - start,
        },
        segments_written: cache.status().last_durable_segment_id,
    })
}

/// Figures of measurement 1 (or 1b, the same with a throttled cache device).
struct WriteComparison {
    /// Size of the cache device file.
    cache_bytes: u64,
    /// Segments of the cache device.
    nr_segments: u64,
    /// 4 KiB lines the engine writes.
    lines: u64,
    /// Untimed sequential write of the whole file, never throttled.
    warm_up: Timing,
    seq_before: Timing,
    seq_after: Timing,
    /// Seconds the throttled cache device sat idle between writes: during
    /// the two baselines together, during the engine's run.
    seq_idle: f64,
    rw_idle: f64,
    /// Mean of `seq_before` and `seq_after`.
    seq: Timing,
    rw: RandomWrite,
    /// CPU time of the process during `rw`.
    rw_cpu: Duration,
    /// Cache device flushes during `rw` and the seconds they took.
    rw_flushes: (u64, f64),
    /// Engine throughput (writes + `flush_sync`) over `seq`'s.
    ratio: f64,
    /// Whether the cache device was throttled.
    throttled: bool,
}

/// Measurement 1 (or 1b when `throttle` gives a cache device bandwidth in
/// MiB/s): creates the cache file in `scratch`, then times `bytes` of
/// sequential writes to it, `bytes` of random writes by `cfg.threads`
/// threads through a cache on it, and the sequential writes again; every
/// timed write to the file goes through the same throttle. Removes the file.
fn compare_writes(
    cfg: &Config,
    scratch: &Path,
    backing: &Arc<dyn BlockDevice>,
    backing_lines: u64,
    bytes: u64,
    throttle: Option<u64>,
) -> BoxResult<WriteComparison> {
    let cache_path = scratch.join("cache.img");
    let lines = bytes / LINE_SIZE as u64;
    let nr_segments = lines.div_ceil(LINES_PER_SEGMENT as u64) + SPARE_SEGMENTS;
    let cache_bytes = (1 + nr_segments) * MIB;
    create_file(&cache_path, cache_bytes)?;
    // Untimed: allocate every block of the file, so that no measurement
    // pays for the file system's block allocation and all see the same file.
    let warm_up = sequential_write(&cache_path, cache_bytes, None)?;
    let idle0 = throttle_idle();
    let seq_before = sequential_write(&cache_path, bytes, throttle)?;
    let idle1 = throttle_idle();
    let cache = fresh_cache(&cache_path, throttle, backing)?;
    let flushes = flush_counters();
    let (rw, rw_cpu) =
        with_cpu(|| random_write(&cache, bytes, cfg.threads, backing_lines, scratch))?;
    let rw_flushes = (
        flush_counters().0 - flushes.0,
        flush_counters().1 - flushes.1,
    );
    cache.shutdown()?;
    drop(cache);
    let idle2 = throttle_idle();
    let seq_after = sequential_write(&cache_path, bytes, throttle)?;
    let idle3 = throttle_idle();
    std::fs::remove_file(&cache_path)?;
    let seq = mean(seq_before, seq_after);
    Ok(WriteComparison {
        cache_bytes,
        nr_segments,
        lines,
        warm_up,
        seq_before,
        seq_after,
        seq_idle: (idle1 - idle0) + (idle3 - idle2),
        rw_idle: idle2 - idle1,
        seq,
        ratio: rw.total.mib_per_s() / seq.mib_per_s(),
        throttled: throttle.is_some(),
        rw,
        rw_cpu,
        rw_flushes,
    })
}

/// Prints the rows of measurement 1 or 1b.
fn print_write_comparison(c: &WriteComparison, backing_bytes: u64) {
    println!(
        "  cache device {} MiB ({} segments), backing file {} MiB",
        c.cache_bytes / MIB,
        c.nr_segments,
        backing_bytes / MIB
    );
    row_bytes("warm-up: allocate the file (not used)", c.warm_up);
    row_bytes("sequential write, before", c.seq_before);
    row_bytes("sequential write, after", c.seq_after);
    row_bytes("sequential write, mean", c.seq);
    row_bytes("engine: writes acknowledged (in RAM)", c.rw.acked);
    row_bytes("engine: writes + flush_sync", c.rw.total);
    println!("  engine: {}", cpus_busy(c.rw_cpu, c.rw.total));
    println!(
        "  engine: {} cache device flushes took {:.3} s in all ({:.2} ms each); the flusher \
         starts no segment write while it flushes",
        c.rw_flushes.0,
        c.rw_flushes.1,
        c.rw_flushes.1 * 1e3 / c.rw_flushes.0.max(1) as f64
    );
    if c.throttled {
        println!(
            "  modelled SSD idle between writes: engine run {:.3} s, the two baselines {:.3} s",
            c.rw_idle, c.seq_idle
        );
        println!(
            "  modelled SSD busy during the engine run (writes + flush_sync): {:.2} % \
             (target >= 98 %)",
            100.0 * (1.0 - c.rw_idle / c.rw.total.secs())
        );
    }
    println!(
        "  engine: last segment id written {} (the writes fill at most {})",
        c.rw.segments_written,
        c.lines.div_ceil(LINES_PER_SEGMENT as u64)
    );
    println!(
        "  random_write/seq_write = {:.3}, target >= {TARGET_WRITE_RATIO} (limit 255/256 = {:.3})",
        c.ratio,
        255.0 / 256.0
    );
    println!();
}

/// Writes the cache has counted so far (its 8 write counters).
fn writes_counted(cache: &Cache) -> u64 {
    cache.status().stats.counters[8..].iter().sum()
}

/// Until `stop` is dropped: once a second, checks that `cache` counted more
/// writes; after [`STALL_LIMIT`] without progress, reports, removes
/// `scratch` and exits the process (stuck writer threads cannot be joined).
fn watchdog(cache: &Cache, stop: &mpsc::Receiver<()>, scratch: &Path) {
    let mut last = (writes_counted(cache), Instant::now());
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(Duration::from_secs(1)) {
        let now = writes_counted(cache);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() >= STALL_LIMIT {
            let st = cache.status();
            eprintln!(
                "error: no write completed for {} s after {now} writes (current segment {}, \
                 last flushed {}); the engine is stuck, giving up",
                STALL_LIMIT.as_secs(),
                st.current_segment_id,
                st.last_flushed_segment_id
            );
            let _ = std::fs::remove_dir_all(scratch);
            std::process::exit(2);
        }
    }
}

/// File system type and source of the mount holding `dir`, from /proc/mounts.
fn file_system_of(dir: &Path) -> String {
    let Ok(dir) = dir.canonicalize() else {
        return "unknown".into();
    };
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "unknown".into();
    };
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (source, target, fstype) = (f.next()?, f.next()?, f.next()?);
            // /proc/mounts escapes blanks in paths as octal: \040 etc.
            let target = target.replace("\\040", " ").replace("\\011", "\t");
            dir.starts_with(&target)
                .then(|| (target.len(), format!("{fstype} ({source} on {target})")))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".into(), |(_, fs)| fs)
}

/// First line of /proc/cpuinfo naming the CPU model, if any.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Prints a table row: what, amount, seconds, rate.
fn row(what: &str, amount: &str, secs: f64, rate: &str) {
    println!("  {what:<44} {amount:>14} {secs:>9.3} s {rate:>14}");
}

/// Prints a table row of a byte throughput.
fn row_bytes(what: &str, t: Timing) {
    row(
        what,
        &format!("{} MiB", t.amount / MIB),
        t.secs(),
        &format!("{:.1} MiB/s", t.mib_per_s()),
    );
}

/// Prints a table row of a count of operations.
fn row_ops(what: &str, t: Timing) {
    row(
        what,
        &format!("{} ops", t.amount),
        t.secs(),
        &format!("{:.0} /s", t.amount as f64 / t.secs()),
    );
}

/// A figure of the final summary.
struct Figure {
    /// What it is.
    name: String,
    /// Its value.
    value: f64,
    /// (at least?, target), if the issue sets one.
    target: Option<(bool, f64)>,
}

/// The figures of the run, printed together at the end.
#[derive(Default)]
struct Summary(Vec<Figure>);

impl Summary {
    /// Adds a figure with a target: at least `target` when `at_least`, else at most.
    fn target(&mut self, name: impl Into<String>, value: f64, at_least: bool, target: f64) {
        self.0.push(Figure {
            name: name.into(),
            value,
            target: Some((at_least, target)),
        });
    }

    /// Adds a figure the issue sets no target for.
    fn plain(&mut self, name: impl Into<String>, value: f64) {
        self.0.push(Figure {
            name: name.into(),
            value,
            target: None,
        });
    }

    fn print(&self) {
        println!("summary");
        for f in &self.0 {
            let verdict = match f.target {
                Some((at_least, target)) => {
                    let met = if at_least {
                        f.value >= target
                    } else {
                        f.value <= target
                    };
                    let op = if at_least { ">=" } else { "<=" };
                    let status = if met { "met" } else { "NOT met" };
                    format!("target {op} {target}: {status}")
                }
                None => "no target".into(),
            };
            println!("  {} = {:.3} ({verdict})", f.name, f.value);
        }
    }
}

/// The load averages, as /proc/loadavg gives them.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() -> BoxResult<()> {
    if let Some(path) = std::env::var_os(resume::CHILD_ENV) {
        return resume::child(Path::new(&path));
    }
    let cfg = Config::from_env()?;
    let tmp = tempfile::Builder::new()
        .prefix("lc-bench-")
        .tempdir_in(&cfg.dir)?;
    let mut summary = Summary::default();

    println!("lc-engine benchmark");
    println!(
        "  nproc {}, CPU {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );
    println!("  load average at start: {}", loadavg());
    println!("  directory {}", tmp.path().display());
    let fs = file_system_of(tmp.path());
    println!("  file system {fs}");
    if fs.starts_with("tmpfs") || fs.starts_with("ramfs") {
        println!("  warning: this directory is in RAM; set LC_BENCH_DIR to a disk");
    }
    println!(
        "  LC_BENCH_MB={} LC_BENCH_THREADS={} LC_BENCH_CACHE_MBPS={} LC_BENCH_THROTTLED_MB={} \
         LC_BENCH_READ_OPS={}",
        cfg.write_mb,
        cfg.threads,
        cfg.throttle_mib_s.unwrap_or(0),
        cfg.throttled_mb,
        cfg.read_ops,
    );
    println!(
        "  LC_BENCH_FULL_CACHE_MB={} LC_BENCH_FULL_BACKING_MB={} LC_BENCH_FULL_SECS={} \
         LC_BENCH_HDD_MBPS={} LC_BENCH_HDD_RPM={} LC_BENCH_HDD_SEEK_MS={}",
        cfg.full_cache_mb,
        cfg.full_backing_mb,
        cfg.full_secs,
        cfg.hdd.mib_per_s,
        cfg.hdd.rpm,
        cfg.hdd.full_seek_ms
    );
    println!(
        "  LC_BENCH_RESUME_MB={:?} LC_BENCH_LCD={} LC_BENCH_ONLY={}",
        cfg.resume_sizes,
        cfg.lcd
            .as_ref()
            .map_or_else(|| "(unset)".into(), |p| p.display().to_string()),
        cfg.only.join(",")
    );
    println!();

    if cfg.runs("write") || cfg.runs("read") {
        // A backing file written in full (untimed): direct writes and read
        // misses then hit allocated blocks, as on a disk.
        let backing_path = tmp.path().join("backing.img");
        let backing_bytes = 4 * cfg.write_mb * MIB;
        create_file(&backing_path, backing_bytes)?;
        // (written before it is opened for the measurements: every open is
        // exclusive)
        let fill = sequential_write(&backing_path, backing_bytes, None)?;
        let backing_dev = FileDevice::open(&backing_path)?;
        println!(
            "  O_DIRECT used: {}",
            if backing_dev.is_direct() {
                "yes"
            } else {
                "NO (buffered I/O)"
            }
        );
        row_bytes("backing file: write it in full (not used)", fill);
        println!();
        let backing: Arc<dyn BlockDevice> = Arc::new(backing_dev);
        let backing_lines = backing_bytes / LINE_SIZE as u64;
        if cfg.runs("write") {
            writes(&cfg, tmp.path(), &backing, backing_lines, &mut summary)?;
        }
        if cfg.runs("read") {
            reads::run(&cfg, tmp.path(), &backing, &mut summary)?;
        }
        drop(backing);
        std::fs::remove_file(&backing_path)?;
    }
    if cfg.runs("full") {
        full::run(&cfg, tmp.path(), &mut summary)?;
    }
    if cfg.runs("writeback") {
        writeback::run(&cfg, tmp.path(), &mut summary)?;
    }
    if cfg.runs("resume") {
        resume::run(&cfg, tmp.path(), &mut summary)?;
    }
    println!("  load average at end: {}", loadavg());
    println!();
    summary.print();
    tmp.close()?;
    Ok(())
}

/// Measurements 1, 1b and 1c.
fn writes(
    cfg: &Config,
    scratch: &Path,
    backing: &Arc<dyn BlockDevice>,
    backing_lines: u64,
    summary: &mut Summary,
) -> BoxResult<()> {
    let backing_bytes = backing_lines * LINE_SIZE as u64;
    let bytes = cfg.write_mb * MIB;
    let direct_write = || direct_random_write(&**backing, bytes, cfg.threads, backing_lines);
    let (direct_before, cpu_before) = with_cpu(direct_write)?;
    let write_cmp = compare_writes(cfg, scratch, backing, backing_lines, bytes, None)?;
    let (direct_after, cpu_after) = with_cpu(direct_write)?;
    println!(
        "1. random 4 KiB writes ({} threads) vs sequential 1 MiB O_DIRECT writes",
        cfg.threads
    );
    print_write_comparison(&write_cmp, backing_bytes);
    summary.target(
        "1  random_write/seq_write (unthrottled)",
        write_cmp.ratio,
        true,
        TARGET_WRITE_RATIO,
    );

    match cfg.throttle_mib_s {
        Some(mib_per_s) => {
            let c = compare_writes(
                cfg,
                scratch,
                backing,
                backing_lines,
                cfg.throttled_mb * MIB,
                Some(mib_per_s),
            )?;
            println!(
                "1b. random 4 KiB writes ({} threads) vs sequential 1 MiB O_DIRECT writes, \
                 cache device writes throttled to {mib_per_s} MiB/s on both sides (a modelled SSD)",
                cfg.threads
            );
            print_write_comparison(&c, backing_bytes);
            summary.target(
                format!("1b random_write/seq_write (cache device throttled to {mib_per_s} MiB/s)"),
                c.ratio,
                true,
                TARGET_WRITE_RATIO,
            );
            summary.target(
                "1b modelled SSD busy fraction during the engine run",
                1.0 - c.rw_idle / c.rw.total.secs(),
                true,
                0.98,
            );
        }
        None => {
            println!("1b. skipped (LC_BENCH_CACHE_MBPS=0)");
            println!();
        }
    }

    let direct = mean(direct_before, direct_after);
    let speed_up = write_cmp.rw.total.mib_per_s() / direct.mib_per_s();
    println!(
        "1c. the same random 4 KiB writes ({} threads) straight to the backing file (O_DIRECT) \
         vs through lc (measurement 1)",
        cfg.threads
    );
    row_bytes("direct to the backing file, before", direct_before);
    row_bytes("direct to the backing file, after", direct_after);
    row_bytes("direct to the backing file, mean", direct);
    row_bytes("through lc: writes + flush_sync", write_cmp.rw.total);
    println!(
        "  direct: {}",
        cpus_busy((cpu_before + cpu_after) / 2, direct)
    );
    println!("  lc: {}", cpus_busy(write_cmp.rw_cpu, write_cmp.rw.total));
    println!("  lc/direct = {speed_up:.3}");
    println!();
    summary.plain("1c lc/direct, 4 KiB random writes (speed-up)", speed_up);
    Ok(())
}
