//! Throughput, index-RAM and resume benchmark of the lc engine.
//!
//! Run with
//!
//! ```text
//! cargo bench -p lc-engine --bench engine
//! ```
//!
//! One run measures four ratios, each from two measurements taken in that
//! same run on the same file system, and prints the raw figures with them:
//!
//! 1. **random write / sequential write**: 4 KiB writes at random 4 KiB-aligned
//!    offsets of a (sparse, never written) backing file, issued by
//!    `LC_BENCH_THREADS` threads (default 32, i.e. 32 writes in flight) on one
//!    [`Cache`], `LC_BENCH_MB` MiB in all (default 1024), ended by
//!    `flush_sync()`; the cache device is large enough that no write-back is
//!    needed (`allow_migrate` stays 0). The baseline writes as many bytes with
//!    sequential 1 MiB `O_DIRECT` writes through [`FileDevice`] to the same
//!    file, two in flight (the engine's flusher also keeps two segment writes
//!    in flight), then flushes; it runs before and after the engine and the
//!    mean is used. Target >= 0.97; the format's limit is 255/256 (one header block
//!    per 255 data lines).
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
//!    so there ratio 1 measures the CPU (0.42 to 0.78 depending on
//!    `LC_BENCH_THREADS`), whereas dm-lc's reference figure (0.97 of the
//!    SSD's sequential bandwidth) was device-bound. The throttle is a model
//!    of an SSD's write bandwidth, not a real SSD: no command latency, write
//!    cache or garbage collection; reads, flushes and discards pass through.
//!    It is applied identically to both sides of the ratio (both keep two
//!    1 MiB writes in flight), and it never completes a write earlier
//!    than the bandwidth allows, so it cannot make the engine look faster
//!    than the device.
//! 2. **index RAM per cache line** of a full cache (every line holds a
//!    distinct backing line): `status().index_ram_bytes / nr_caches`.
//!    Target <= 16 bytes.
//! 3. **resume / header read**: time of [`Cache::resume`] on that full cache
//!    of `LC_BENCH_RESUME_MB` MiB (default 1024) after a clean shutdown,
//!    divided by the time to read just the 4 KiB header of every segment with
//!    one thread; five alternating rounds of each, medians compared.
//!    Target <= 1.2.
//!
//! Files live in a temporary directory created in `LC_BENCH_DIR` (default
//! [`std::env::temp_dir`]) and removed at the end. Choose a directory on the
//! disk you want to measure: on tmpfs the "disk" is RAM (and before Linux 6.6
//! `O_DIRECT` is refused there, so the files are opened buffered), and the
//! figures say little about a cache device. The run needs about
//! `LC_BENCH_MB + 64` MiB, then `LC_BENCH_THROTTLED_MB + 64` MiB, then
//! `LC_BENCH_RESUME_MB + 1` MiB, of free space.
//!
//! This is a measurement, not a test: it asserts nothing about timings. If
//! the random writes make no progress for a minute, it reports that and
//! exits with status 2.

use std::error::Error as StdError;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Barrier, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lc_engine::format::{LINES_PER_SEGMENT, LINE_SIZE, SECTOR_SIZE, SEGMENT_SIZE};
use lc_engine::{
    format_cache_device, AlignedBuf, BlockDevice, Cache, CacheOptions, FileDevice, Knob,
    RecoveryReport,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type BoxResult<T> = Result<T, Box<dyn StdError>>;

const MIB: u64 = 1 << 20;
/// Rounds of measurement 3 (header read, then resume, alternately).
const RESUME_ROUNDS: usize = 5;
/// Writes in flight in the sequential baseline: the same as the engine's
/// flusher keeps (two segment writes), so neither side gets a deeper queue.
const SEQ_QUEUE_DEPTH: u64 = 2;
/// Cache id used for every cache of the benchmark.
const CACHE_ID: u8 = 1;
/// Backing device id used for every write.
const DEVICE_ID: u8 = 1;
/// Spare segments of the random-write cache beyond what the writes fill.
const SPARE_SEGMENTS: u64 = 63;

/// The random-write measurement gives up after this long without progress.
const STALL_LIMIT: Duration = Duration::from_secs(60);

/// Target of the random-write ratio (at least).
const TARGET_WRITE_RATIO: f64 = 0.97;
/// Target of the index RAM per cache line, in bytes (at most).
const TARGET_RAM_PER_LINE: f64 = 16.0;
/// Target of the resume ratio (at most).
const TARGET_RESUME_RATIO: f64 = 1.2;

/// What the run is asked to do, from the environment.
struct Config {
    /// Directory the temporary directory is created in.
    dir: PathBuf,
    /// MiB written by the random-write measurement and its baseline.
    write_mb: u64,
    /// Size of the full cache that is resumed, in MiB of segments.
    resume_mb: u64,
    /// Writer threads of the random-write measurement.
    threads: usize,
    /// Write bandwidth of the throttled cache device of measurement 1b, in
    /// MiB/s; `None` skips 1b.
    throttle_mib_s: Option<u64>,
    /// MiB written by measurement 1b and its baseline.
    throttled_mb: u64,
}

impl Config {
    fn from_env() -> BoxResult<Config> {
        let dir = std::env::var_os("LC_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let cfg = Config {
            dir,
            write_mb: env_u64("LC_BENCH_MB", 1024)?,
            resume_mb: env_u64("LC_BENCH_RESUME_MB", 1024)?,
            threads: usize::try_from(env_u64("LC_BENCH_THREADS", 32)?)?,
            throttle_mib_s: Some(env_u64("LC_BENCH_CACHE_MBPS", 500)?).filter(|&r| r > 0),
            throttled_mb: env_u64("LC_BENCH_THROTTLED_MB", 512)?,
        };
        if cfg.write_mb == 0 || cfg.resume_mb < 2 || cfg.threads == 0 || cfg.throttled_mb == 0 {
            return Err(
                "LC_BENCH_MB, LC_BENCH_THREADS and LC_BENCH_THROTTLED_MB must be >= 1, \
                 LC_BENCH_RESUME_MB >= 2"
                    .into(),
            );
        }
        Ok(cfg)
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

/// A cache device with a limited write bandwidth: a model of an SSD that
/// writes `rate` bytes per second, wrapped around a faster device.
///
/// The device is one queue: each write of n bytes reserves the next n / rate
/// seconds of it, starting when the previous reservation ends (or now, if the
/// device is idle), is done on the inner device, and then returns no earlier
/// than the end of its reservation. A write thus never completes before the
/// modelled bandwidth allows (nor before the inner device completes it).
/// Reads, flushes and discards pass through untimed.
struct ThrottledDevice {
    inner: Arc<dyn BlockDevice>,
    /// Bytes per second.
    rate: f64,
    /// End of the last reservation: when the modelled device is free again.
    next_free: Mutex<Instant>,
}

impl ThrottledDevice {
    /// Wraps `inner`, limiting its writes to `mib_per_s` MiB/s.
    fn new(inner: Arc<dyn BlockDevice>, mib_per_s: u64) -> Self {
        ThrottledDevice {
            inner,
            rate: (mib_per_s * MIB) as f64,
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// Runs `write` of `bytes` bytes and returns once both it is done and
    /// the modelled device has had the time to transfer those bytes.
    fn paced(&self, bytes: usize, write: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let busy = Duration::from_secs_f64(bytes as f64 / self.rate);
        let done_at = {
            // an Instant cannot be left half-updated: a poisoned lock is fine
            let mut next_free = self
                .next_free
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *next_free = (*next_free).max(Instant::now()) + busy;
            *next_free
        };
        let res = write();
        let now = Instant::now();
        if done_at > now {
            std::thread::sleep(done_at - now);
        }
        res
    }
}

impl BlockDevice for ThrottledDevice {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.paced(buf.len(), || self.inner.write_at(buf, offset))
    }

    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        let bytes = bufs.iter().map(|b| b.len()).sum();
        self.paced(bytes, || self.inner.write_vectored_at(bufs, offset))
    }

    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.discard(offset, len)
    }

    fn describe(&self) -> String {
        format!(
            "{} (writes throttled to {} MiB/s)",
            self.inner.describe(),
            self.rate / MIB as f64
        )
    }
}

/// Opens the cache device file at `path`, behind a [`ThrottledDevice`] of
/// `throttle` MiB/s if given.
fn open_cache_device(path: &Path, throttle: Option<u64>) -> BoxResult<Arc<dyn BlockDevice>> {
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(path)?);
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

/// Reads the 4 KiB header of each of the `nr_segments` segments of the cache
/// device at `path`, one after the other (the baseline of measurement 3).
fn read_headers(path: &Path, nr_segments: u64) -> BoxResult<Timing> {
    let dev = FileDevice::open(path)?;
    let mut buf = AlignedBuf::zeroed(LINE_SIZE);
    let start = Instant::now();
    for k in 0..nr_segments {
        dev.read_at(&mut buf, (1 + k) * MIB)?;
    }
    Ok(Timing {
        amount: nr_segments,
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
                // each thread does its share of the writes
                let n = lines / threads as u64 + u64::from(t < lines % threads as u64);
                s.spawn(move || -> lc_engine::Result<()> {
                    let mut rng = StdRng::seed_from_u64(0x1c_5eed + t);
                    let mut data = [0u8; LINE_SIZE];
                    data.fill(t as u8);
                    start_line.wait();
                    for i in 0..n {
                        data[..8].copy_from_slice(&i.to_le_bytes());
                        let line = rng.gen_range(0..backing_lines);
                        let sector = line * (LINE_SIZE / SECTOR_SIZE) as u64;
                        cache.write(DEVICE_ID, sector, &data)?;
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
    /// Mean of `seq_before` and `seq_after`.
    seq: Timing,
    rw: RandomWrite,
    /// Engine throughput (writes + `flush_sync`) over `seq`'s.
    ratio: f64,
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
    let seq_before = sequential_write(&cache_path, bytes, throttle)?;
    let cache = fresh_cache(&cache_path, throttle, backing)?;
    let rw = random_write(&cache, bytes, cfg.threads, backing_lines, scratch)?;
    cache.shutdown()?;
    drop(cache);
    let seq_after = sequential_write(&cache_path, bytes, throttle)?;
    std::fs::remove_file(&cache_path)?;
    let seq = mean(seq_before, seq_after);
    Ok(WriteComparison {
        cache_bytes,
        nr_segments,
        lines,
        warm_up,
        seq_before,
        seq_after,
        seq,
        ratio: rw.total.mib_per_s() / seq.mib_per_s(),
        rw,
    })
}

/// Prints the rows of measurement 1 or 1b.
fn print_write_comparison(c: &WriteComparison, backing_bytes: u64) {
    println!(
        "  cache device {} MiB ({} segments), backing file {} MiB (sparse)",
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

/// Fills `cache` so that every cache line holds a distinct backing line:
/// backing lines `0..nr_caches`, written in order, 255 lines per call.
fn fill_cache(cache: &Cache) -> BoxResult<Timing> {
    let nr_caches = cache.status().nr_caches;
    let chunk_lines = LINES_PER_SEGMENT as u64;
    let mut data = vec![0xC3u8; chunk_lines as usize * LINE_SIZE];
    let start = Instant::now();
    let mut line = 0;
    while line < nr_caches {
        let n = chunk_lines.min(nr_caches - line);
        data[..8].copy_from_slice(&line.to_le_bytes());
        let sector = line * (LINE_SIZE / SECTOR_SIZE) as u64;
        cache.write(DEVICE_ID, sector, &data[..n as usize * LINE_SIZE])?;
        line += n;
    }
    cache.flush_sync()?;
    Ok(Timing {
        amount: nr_caches * LINE_SIZE as u64,
        elapsed: start.elapsed(),
    })
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

/// Prints a table row of a header read.
fn row_headers(what: &str, t: Timing) {
    row(
        what,
        &format!("{} headers", t.amount),
        t.secs(),
        &format!("{:.1} µs each", t.secs() * 1e6 / t.amount as f64),
    );
}

/// The final verdict line of one ratio.
fn verdict(name: &str, value: f64, at_least: bool, target: f64) {
    let met = if at_least {
        value >= target
    } else {
        value <= target
    };
    let op = if at_least { ">=" } else { "<=" };
    let status = if met { "met" } else { "NOT met" };
    println!("ratio {name} = {value:.3} (target {op} {target}: {status})");
}

fn main() -> BoxResult<()> {
    let cfg = Config::from_env()?;
    let tmp = tempfile::Builder::new()
        .prefix("lc-bench-")
        .tempdir_in(&cfg.dir)?;
    let backing_path = tmp.path().join("backing.img");
    let resume_path = tmp.path().join("resume.img");

    // A sparse backing file, never written: write-back stays off.
    let backing_bytes = 4 * cfg.write_mb.max(cfg.resume_mb) * MIB;
    create_file(&backing_path, backing_bytes)?;
    let backing_dev = FileDevice::open(&backing_path)?;
    let direct = backing_dev.is_direct();
    let backing: Arc<dyn BlockDevice> = Arc::new(backing_dev);
    let backing_lines = backing_bytes / LINE_SIZE as u64;

    println!("lc-engine benchmark");
    println!(
        "  nproc {}, CPU {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );
    println!("  directory {}", tmp.path().display());
    let fs = file_system_of(tmp.path());
    println!("  file system {fs}");
    if fs.starts_with("tmpfs") || fs.starts_with("ramfs") {
        println!("  warning: this directory is in RAM; set LC_BENCH_DIR to a disk");
    }
    println!(
        "  O_DIRECT used: {}",
        if direct { "yes" } else { "NO (buffered I/O)" }
    );
    println!(
        "  LC_BENCH_MB={} LC_BENCH_RESUME_MB={} LC_BENCH_THREADS={} LC_BENCH_CACHE_MBPS={} \
         LC_BENCH_THROTTLED_MB={}",
        cfg.write_mb,
        cfg.resume_mb,
        cfg.threads,
        cfg.throttle_mib_s.unwrap_or(0),
        cfg.throttled_mb
    );
    println!();

    // --- 1. random writes through the engine vs sequential writes ---------
    let write_cmp = compare_writes(
        &cfg,
        tmp.path(),
        &backing,
        backing_lines,
        cfg.write_mb * MIB,
        None,
    )?;
    println!(
        "1. random 4 KiB writes ({} threads) vs sequential 1 MiB O_DIRECT writes",
        cfg.threads
    );
    print_write_comparison(&write_cmp, backing_bytes);

    // --- 1b. the same, with the cache device throttled on both sides -------
    let throttled_cmp = match cfg.throttle_mib_s {
        Some(mib_per_s) => {
            let c = compare_writes(
                &cfg,
                tmp.path(),
                &backing,
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
            Some((mib_per_s, c.ratio))
        }
        None => {
            println!("1b. skipped (LC_BENCH_CACHE_MBPS=0)");
            println!();
            None
        }
    };

    // --- 2. index RAM of a full cache --------------------------------------
    create_file(&resume_path, (1 + cfg.resume_mb) * MIB)?;
    let cache = fresh_cache(&resume_path, None, &backing)?;
    let fill = fill_cache(&cache)?;
    let status = cache.status();
    let ram_per_line = status.index_ram_bytes as f64 / status.nr_caches as f64;
    cache.shutdown()?;
    drop(cache);

    println!("2. index RAM of a full cache");
    row_bytes("fill: distinct lines, in order, + flush_sync", fill);
    println!(
        "  nr_segments {}, nr_caches {}, lines in use (dirty) {}",
        status.nr_segments, status.nr_caches, status.nr_dirty_caches
    );
    println!(
        "  index_ram_bytes {} ({:.3} bytes per cache line), static_ram_bytes {}",
        status.index_ram_bytes, ram_per_line, status.static_ram_bytes
    );
    println!();

    // --- 3. resume of the full cache vs reading its headers ----------------
    // Alternating rounds, medians of each side: the disk's latency drifts
    // between runs more than the difference being measured.
    let mut header_times = Vec::new();
    let mut resume_times = Vec::new();
    let mut report = RecoveryReport::default();
    for _ in 0..RESUME_ROUNDS {
        header_times.push(read_headers(&resume_path, status.nr_segments)?);
        let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(&resume_path)?);
        let start = Instant::now();
        let (cache, r) = Cache::resume_with_report(CACHE_ID, dev, CacheOptions::default())?;
        resume_times.push(Timing {
            amount: status.nr_segments,
            elapsed: start.elapsed(),
        });
        report = r;
        cache.shutdown()?;
        drop(cache);
    }
    let headers = median(&mut header_times.clone());
    let resume = median(&mut resume_times.clone());
    let resume_ratio = resume.secs() / headers.secs();

    println!(
        "3. resume of the full cache vs reading every segment header ({RESUME_ROUNDS} alternating rounds, medians)"
    );
    for (i, (h, r)) in header_times.iter().zip(&resume_times).enumerate() {
        println!(
            "  round {}: header read {:.1} µs each, Cache::resume {:.1} µs each",
            i + 1,
            h.secs() * 1e6 / h.amount as f64,
            r.secs() * 1e6 / r.amount as f64
        );
    }
    row_headers("header read, median", headers);
    row_headers("Cache::resume, median", resume);
    let RecoveryReport {
        replayed_segments,
        verified_segments,
        rejected_segments,
        zeroed_headers,
        ..
    } = report;
    println!(
        "  resume: {replayed_segments} segments replayed, {verified_segments} verified by full \
         checksum, {rejected_segments} rejected, {zeroed_headers} headers zeroed"
    );
    println!();

    verdict(
        "random_write/seq_write (unthrottled, CPU-bound here)",
        write_cmp.ratio,
        true,
        TARGET_WRITE_RATIO,
    );
    if let Some((mib_per_s, ratio)) = throttled_cmp {
        verdict(
            &format!("random_write/seq_write (cache device throttled to {mib_per_s} MiB/s)"),
            ratio,
            true,
            TARGET_WRITE_RATIO,
        );
    }
    verdict(
        "index_ram_bytes/nr_caches",
        ram_per_line,
        false,
        TARGET_RAM_PER_LINE,
    );
    verdict(
        "resume/header_read",
        resume_ratio,
        false,
        TARGET_RESUME_RATIO,
    );
    tmp.close()?;
    Ok(())
}
