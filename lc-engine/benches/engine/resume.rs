//! Measurement 4: full caches of several sizes — index RAM per line, resume
//! ÷ header read, peak RSS of a process holding the resumed cache.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lc_engine::format::{
    lap_of, segment_offset, Metablock, SegmentHeader, LINES_PER_SEGMENT, LINE_SIZE,
};
use lc_engine::{
    format_cache_device, AlignedBuf, BlockDevice, Cache, CacheOptions, FileDevice, RecoveryReport,
    RESUME_HEADER_READERS,
};

use crate::{
    create_file, median, row, with_cpu, BoxResult, Config, Summary, Timing, CACHE_ID, DEVICE_ID,
    LINE_SECTORS, MIB,
};

/// Set (to a cache device path) in the child process that resumes a cache
/// and reports its memory use.
pub const CHILD_ENV: &str = "LC_BENCH_CHILD_RESUME";
/// Fewest rounds of the resume ratio (header read, then resume, alternately).
const MIN_ROUNDS: usize = 9;
/// Fewest rounds when one header read takes longer than [`LONG_ROUND_SECONDS`]
/// (a cache of a TiB or more).
const MIN_LONG_ROUNDS: usize = 3;
/// See [`MIN_LONG_ROUNDS`].
const LONG_ROUND_SECONDS: f64 = 20.0;
/// Most rounds; small caches get more rounds, up to about
/// [`ROUNDS_SECONDS`] of header reads, as their single rounds are noisier.
const MAX_ROUNDS: usize = 51;
/// See [`MAX_ROUNDS`].
const ROUNDS_SECONDS: f64 = 3.0;
/// Target of the index RAM per cache line, in bytes (at most).
const TARGET_RAM_PER_LINE: f64 = 16.0;
/// Target of the resume ratio (at most), caches below [`HUGE_CACHE_MB`].
const TARGET_RESUME_RATIO: f64 = 1.1;
/// Target of the resume ratio (at most) of a cache of [`HUGE_CACHE_MB`] or more,
/// whose index no longer fits the CPU caches at all.
const TARGET_HUGE_RESUME_RATIO: f64 = 2.0;
/// 1 TiB, in MiB.
const HUGE_CACHE_MB: u64 = 1 << 20;

/// Makes the sparse file at `path` a full cache of `mb` MiB of segments:
/// formatted, then every segment header written as the engine writes it
/// (ids 1..=nr_segments, each vouching for the one before, 255 dirty lines,
/// every line a distinct backing line); the data blocks stay holes, which
/// read as the zeros the checksums are computed over (sealed from the
/// crc32c of one zero line, so a TiB takes seconds, not a TiB of checksum).
/// Returns the number of segments.
fn make_full_cache(path: &Path, mb: u64) -> BoxResult<u64> {
    create_file(path, (1 + mb) * MIB)?;
    let dev = FileDevice::open(path)?;
    let sb = format_cache_device(&dev, true)?;
    let nr = sb.nr_segments;
    let zero_line_crc = crc32c::crc32c(&[0u8; LINE_SIZE]);
    let mut block = AlignedBuf::zeroed(LINE_SIZE);
    for slot in 0..nr {
        let id = slot + 1;
        let lap = lap_of(id, nr);
        let header = SegmentHeader {
            global_id: id,
            durable_id: id - 1,
            lap,
            length: LINES_PER_SEGMENT as u32,
            uuid: sb.uuid,
            checksum: 0,
            metablocks: (0..LINES_PER_SEGMENT as u64)
                .map(|i| Metablock {
                    sector: (slot * LINES_PER_SEGMENT as u64 + i) * LINE_SECTORS,
                    device_id: DEVICE_ID,
                    dirty_bits: 0xFF,
                    lap,
                })
                .collect(),
        };
        header.write_to(&mut block);
        SegmentHeader::seal_lines(
            &mut block,
            std::iter::repeat_n(zero_line_crc, LINES_PER_SEGMENT),
        );
        dev.write_at(&block, segment_offset(slot))?;
    }
    dev.flush()?;
    Ok(nr)
}

/// Reads the 4 KiB header of each of the `nr_segments` segments of the cache
/// device at `path`, one after the other (the baseline of the resume ratio).
fn read_headers(path: &Path, nr_segments: u64) -> BoxResult<Timing> {
    let dev = FileDevice::open(path)?;
    let mut buf = AlignedBuf::zeroed(LINE_SIZE);
    let start = Instant::now();
    for k in 0..nr_segments {
        dev.read_at(&mut buf, segment_offset(k))?;
    }
    Ok(Timing {
        amount: nr_segments,
        elapsed: start.elapsed(),
    })
}

/// Reads the same headers as [`read_headers`] with `threads` threads at once
/// (thread `t` reads every `threads`-th header from `t`): how fast the
/// device delivers headers to a resume that keeps that many reads in flight.
fn read_headers_parallel(path: &Path, nr_segments: u64, threads: u64) -> BoxResult<Timing> {
    let dev = FileDevice::open(path)?;
    let start = Instant::now();
    std::thread::scope(|scope| -> BoxResult<()> {
        let readers: Vec<_> = (0..threads)
            .map(|t| {
                let dev = &dev;
                scope.spawn(move || -> std::io::Result<()> {
                    let mut buf = AlignedBuf::zeroed(LINE_SIZE);
                    for k in (t..nr_segments).step_by(threads as usize) {
                        dev.read_at(&mut buf, segment_offset(k))?;
                    }
                    Ok(())
                })
            })
            .collect();
        for r in readers {
            r.join().map_err(|_| "a header reader panicked")??;
        }
        Ok(())
    })?;
    Ok(Timing {
        amount: nr_segments,
        elapsed: start.elapsed(),
    })
}

/// A `Vm*` field of /proc/<pid>/status, in KiB.
fn vm_kib(pid: &str, field: &str) -> BoxResult<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no {field} in /proc/{pid}/status").into())
}

/// The child process: resumes the cache at `path`, prints its memory use
/// on one line, stops the cache.
pub fn child(path: &Path) -> BoxResult<()> {
    let before = vm_kib("self", "VmHWM")?;
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(path)?);
    let cache = Cache::resume(CACHE_ID, dev, CacheOptions::default())?;
    let st = cache.status();
    println!(
        "child before_kib={before} hwm_kib={} rss_kib={} index_ram_bytes={} static_ram_bytes={}",
        vm_kib("self", "VmHWM")?,
        vm_kib("self", "VmRSS")?,
        st.index_ram_bytes,
        st.static_ram_bytes
    );
    cache.shutdown()?;
    Ok(())
}

/// Memory of a process before and after it resumed a cache, KiB.
struct Rss {
    before: u64,
    hwm: u64,
    rss: u64,
}

/// Runs this binary as [`child`] on `path`.
fn child_rss(path: &Path) -> BoxResult<Rss> {
    let out = Command::new(std::env::current_exe()?)
        .env(CHILD_ENV, path)
        .stderr(Stdio::inherit())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("the child process failed ({}): {text}", out.status).into());
    }
    let field = |name: &str| -> BoxResult<u64> {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("child output lacks {name}: {text}").into())
    };
    Ok(Rss {
        before: field("before_kib")?,
        hwm: field("hwm_kib")?,
        rss: field("rss_kib")?,
    })
}

/// Starts a private dbus-daemon and `lcd` on it (`--frontend none`, see
/// lc-testbus), has lcd resume the cache at `path` with `ResumeCacheAs`
/// (through busctl), and reads lcd's memory use from /proc. Returns it and
/// how long the call took.
fn lcd_rss(lcd: &Path, path: &Path, scratch: &Path) -> BoxResult<(Rss, Duration)> {
    let dir = tempfile::Builder::new()
        .prefix("lcd-")
        .tempdir_in(scratch)?;
    let mut rig = lc_testbus::Rig::builder(lcd)
        .dir(dir.path())
        .frontend("none")
        .start();
    rig.wait_ready();
    let pid = rig.lcd_pid().to_string();
    let before = vm_kib(&pid, "VmHWM")?;
    let start = Instant::now();
    let path_arg = path.display().to_string();
    let out = rig
        .busctl()
        .args([
            "--timeout=600",
            "call",
            "org.lc.Lcd1",
            "/org/lc/Lcd1",
            "org.lc.Lcd1.Manager",
            "ResumeCacheAs",
            "ys",
            "1",
            &path_arg,
        ])
        .output()?;
    let took = start.elapsed();
    if !out.status.success() {
        return Err(format!(
            "ResumeCacheAs failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    let rss = Rss {
        before,
        hwm: vm_kib(&pid, "VmHWM")?,
        rss: vm_kib(&pid, "VmRSS")?,
    };
    // a clean stop (SIGTERM), so that lcd stops the cache as it would
    rig.terminate();
    drop(rig);
    Ok((rss, took))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Measurement 4 for every size.
pub fn run(cfg: &Config, scratch: &Path, summary: &mut Summary) -> BoxResult<()> {
    for &mb in &cfg.resume_sizes {
        let path = scratch.join(format!("resume-{mb}.img"));
        let made = Instant::now();
        let nr = make_full_cache(&path, mb)?;
        let made = made.elapsed();

        // Alternating rounds, medians of each side: the disk's latency
        // drifts between runs more than the difference being measured.
        let mut header_times = Vec::new();
        let mut resume_times = Vec::new();
        let mut header_cpu = Vec::new();
        let mut resume_cpu = Vec::new();
        let mut report = RecoveryReport::default();
        let mut status = None;
        let mut rounds = MIN_ROUNDS;
        while header_times.len() < rounds {
            let (h, cpu) = with_cpu(|| read_headers(&path, nr))?;
            header_times.push(h);
            header_cpu.push(cpu);
            if header_times.len() == 1 {
                let fewest = if h.secs() > LONG_ROUND_SECONDS {
                    MIN_LONG_ROUNDS
                } else {
                    MIN_ROUNDS
                };
                rounds = ((ROUNDS_SECONDS / h.secs()) as usize).clamp(fewest, MAX_ROUNDS);
            }
            let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(&path)?);
            let start = Instant::now();
            let ((cache, r), cpu) = with_cpu(|| {
                Ok(Cache::resume_with_report(
                    CACHE_ID,
                    dev,
                    CacheOptions::default(),
                )?)
            })?;
            resume_times.push(Timing {
                amount: nr,
                elapsed: start.elapsed(),
            });
            resume_cpu.push(cpu);
            report = r;
            status.get_or_insert_with(|| cache.status());
            cache.shutdown()?;
            drop(cache);
        }
        let status = status.expect("at least one round");
        let parallel = read_headers_parallel(&path, nr, RESUME_HEADER_READERS as u64)?;
        let headers = median(&mut header_times.clone());
        let resume = median(&mut resume_times.clone());
        let resume_ratio = resume.secs() / headers.secs();
        let ram_per_line = status.index_ram_bytes as f64 / status.nr_caches as f64;
        let child = child_rss(&path)?;
        let lcd = match &cfg.lcd {
            Some(lcd) => Some(lcd_rss(lcd, &path, scratch)?),
            None => None,
        };
        std::fs::remove_file(&path)?;

        println!(
            "4. full {mb} MiB cache ({nr} segments, {} lines, made sparse in {:.1} s)",
            status.nr_caches,
            made.as_secs_f64()
        );
        println!(
            "  after resume: lines dirty {}, index_ram_bytes {} ({ram_per_line:.3} bytes per \
             cache line), static_ram_bytes {} (index, per-segment arrays and the {} MiB RAM \
             segment pool, allocated as writes need it)",
            status.nr_dirty_caches,
            status.index_ram_bytes,
            status.static_ram_bytes,
            CacheOptions::default().pool_segments
        );
        for (i, (h, r)) in header_times.iter().zip(&resume_times).enumerate().take(9) {
            println!(
                "  round {}: header read {:.1} µs each, Cache::resume {:.1} µs each",
                i + 1,
                h.secs() * 1e6 / h.amount as f64,
                r.secs() * 1e6 / r.amount as f64
            );
        }
        if header_times.len() > 9 {
            println!("  ... {} rounds in all", header_times.len());
        }
        let mut paired: Vec<f64> = header_times
            .iter()
            .zip(&resume_times)
            .map(|(h, r)| r.secs() / h.secs())
            .collect();
        paired.sort_by(f64::total_cmp);
        let cpu_median = |v: &mut Vec<Duration>| {
            v.sort();
            v[v.len() / 2].as_secs_f64() * 1e6 / nr as f64
        };
        println!(
            "  median CPU time per segment: header read {:.1} µs, Cache::resume {:.1} µs \
             (both threads); median of the per-round ratios {:.3}",
            cpu_median(&mut header_cpu),
            cpu_median(&mut resume_cpu),
            paired[paired.len() / 2]
        );
        let row_headers = |what: &str, t: Timing| {
            row(
                what,
                &format!("{} headers", t.amount),
                t.secs(),
                &format!("{:.1} µs each", t.secs() * 1e6 / t.amount as f64),
            )
        };
        row_headers("header read, median", headers);
        row_headers("Cache::resume, median", resume);
        row_headers(
            &format!("header read, {RESUME_HEADER_READERS} threads (once)"),
            parallel,
        );
        println!(
            "  resume: {} segments replayed, {} verified by full checksum, {} rejected, {} \
             headers zeroed; resume/header_read = {resume_ratio:.3}",
            report.replayed_segments,
            report.verified_segments,
            report.rejected_segments,
            report.zeroed_headers
        );
        println!(
            "  peak RSS, this binary as a child resuming the cache (engine only): {:.1} MiB \
             (VmHWM {:.1} MiB before the resume, VmRSS after {:.1} MiB)",
            mib(child.hwm),
            mib(child.before),
            mib(child.rss)
        );
        match &lcd {
            Some((r, took)) => println!(
                "  peak RSS, lcd resuming it through ResumeCacheAs on a private bus: {:.1} MiB \
                 (VmHWM {:.1} MiB before, VmRSS after {:.1} MiB; the call took {:.3} s)",
                mib(r.hwm),
                mib(r.before),
                mib(r.rss),
                took.as_secs_f64()
            ),
            None => println!("  lcd: not measured (set LC_BENCH_LCD to an lcd binary)"),
        }
        println!();
        summary.target(
            format!("4  index_ram_bytes/nr_caches, full {mb} MiB cache"),
            ram_per_line,
            false,
            TARGET_RAM_PER_LINE,
        );
        summary.target(
            format!("4  resume/header_read, full {mb} MiB cache"),
            resume_ratio,
            false,
            if mb >= HUGE_CACHE_MB {
                TARGET_HUGE_RESUME_RATIO
            } else {
                TARGET_RESUME_RATIO
            },
        );
        summary.plain(
            format!("4  peak RSS MiB, engine-only child, full {mb} MiB cache"),
            mib(child.hwm),
        );
        if let Some((r, _)) = &lcd {
            summary.plain(
                format!("4  peak RSS MiB, lcd, full {mb} MiB cache"),
                mib(r.hwm),
            );
        }
    }
    Ok(())
}
