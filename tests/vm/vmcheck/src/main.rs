//! vmcheck: the guest-side workload of the crash and power-cut scenarios.
//!
//! `vmcheck write` writes version-stamped 4 KiB blocks to a block device in
//! rounds: every block written in round `r` carries version `r`. After each
//! round it calls fsync on the device (a FLUSH), and only once that returned
//! it records, on a separate log device, that every block of the round is
//! acknowledged at version `r`. `vmcheck verify` reads every block back and
//! checks that each 512 B sector holds a well-formed stamp of the right block
//! with a version at least the acknowledged one. A device that loses a
//! flushed write, or returns garbage, fails the check.
//!
//! The log holds two copies of the version table (rounds alternate between
//! them), each with a checksum, so a write torn by a power cut leaves the
//! other copy valid; the newest valid copy wins. Every claim in an older copy
//! is weaker than the truth, so using it is safe.
//!
//! Sector layout (512 B): magic (8) | block (8) | version (8) | sector index
//! (8) | filler derived from those | FNV-1a 64 of bytes 0..504 (8).
//! All-zero sectors read as version 0 (never written).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::process::ExitCode;
use std::time::Instant;

const BLOCK: usize = 4096;
const SECTOR: usize = 512;
const SECTORS: usize = BLOCK / SECTOR;
const O_DIRECT: i32 = 0o40000;
const BLOCK_MAGIC: &[u8; 8] = b"LCVMBLK1";
const LOG_MAGIC: &[u8; 8] = b"LCVMLOG1";

fn usage() -> &'static str {
    "usage:
  vmcheck write  --dev DEV --log LOG --blocks N [--seed S] [--batch B] [--max-run K]
                 [--rounds R] [--mark TEXT] [--report R]
      write rounds of version-stamped blocks to the first N blocks of DEV,
      fsync DEV after each round, then record the round's versions in LOG.
      Continues after the newest round found in LOG. --rounds 0 (default):
      until killed. --mark TEXT: print TEXT once the first round is recorded.
  vmcheck verify --dev DEV --log LOG --blocks N [--expect-log] [--older-log]
      check every sector of the first N blocks of DEV against LOG.
      --older-log: LOG is a copy taken earlier, the writer went on after it
      (no upper bound on versions).
  vmcheck log-round --log LOG --blocks N
      print the newest acknowledged round in LOG (0: none).
exit status: 0 ok, 1 verification failed, 2 error, 3 fsync of DEV failed, 64 usage"
}

struct Args {
    cmd: String,
    dev: Option<String>,
    log: Option<String>,
    blocks: u64,
    seed: u64,
    batch: u64,
    max_run: u64,
    rounds: u64,
    mark: Option<String>,
    report: u64,
    expect_log: bool,
    older_log: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let cmd = it.next().ok_or("missing command")?;
    let mut a = Args {
        cmd,
        dev: None,
        log: None,
        blocks: 0,
        seed: 1,
        batch: 32,
        max_run: 16,
        rounds: 0,
        mark: None,
        report: 50,
        expect_log: false,
        older_log: false,
    };
    while let Some(k) = it.next() {
        let mut val = || it.next().ok_or(format!("{k} needs a value"));
        let num = |s: String| s.parse::<u64>().map_err(|_| format!("{k}: not a number: {s}"));
        match k.as_str() {
            "--dev" => a.dev = Some(val()?),
            "--log" => a.log = Some(val()?),
            "--blocks" => a.blocks = num(val()?)?,
            "--seed" => a.seed = num(val()?)?,
            "--batch" => a.batch = num(val()?)?,
            "--max-run" => a.max_run = num(val()?)?,
            "--rounds" => a.rounds = num(val()?)?,
            "--report" => a.report = num(val()?)?,
            "--mark" => a.mark = Some(val()?),
            "--expect-log" => a.expect_log = true,
            "--older-log" => a.older_log = true,
            "-h" | "--help" => return Err(String::new()),
            _ => return Err(format!("unknown argument {k}")),
        }
    }
    if a.blocks == 0 {
        return Err("--blocks N (N > 0) is required".into());
    }
    if a.batch == 0 || a.max_run == 0 {
        return Err("--batch and --max-run must be > 0".into());
    }
    Ok(a)
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fnv1a(chunks: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for c in chunks {
        for &b in *c {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// A zeroed buffer of `len` bytes aligned to 4 KiB (for O_DIRECT).
struct Aligned {
    buf: Vec<u8>,
    off: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let buf = vec![0u8; len + BLOCK];
        let off = buf.as_ptr().align_offset(BLOCK);
        Aligned { buf, off, len }
    }
    fn get(&self) -> &[u8] {
        &self.buf[self.off..self.off + self.len]
    }
    fn get_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

fn stamp_sector(out: &mut [u8], block: u64, version: u64, sector: u64) {
    out[0..8].copy_from_slice(BLOCK_MAGIC);
    out[8..16].copy_from_slice(&block.to_le_bytes());
    out[16..24].copy_from_slice(&version.to_le_bytes());
    out[24..32].copy_from_slice(&sector.to_le_bytes());
    let mut st = block ^ version.rotate_left(21) ^ sector.rotate_left(42);
    for chunk in out[32..504].chunks_mut(8) {
        let v = splitmix(&mut st).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    let sum = fnv1a(&[&out[0..504]]);
    out[504..512].copy_from_slice(&sum.to_le_bytes());
}

enum SectorState {
    Zero,
    Stamp(u64),
    Bad(String),
}

fn read_sector(s: &[u8], block: u64, sector: u64) -> SectorState {
    if s.iter().all(|&b| b == 0) {
        return SectorState::Zero;
    }
    if &s[0..8] != BLOCK_MAGIC {
        return SectorState::Bad("no vmcheck stamp (garbage or foreign data)".into());
    }
    if fnv1a(&[&s[0..504]]) != u64_at(s, 504) {
        return SectorState::Bad("stamp checksum mismatch (torn or corrupted sector)".into());
    }
    let (b, v, sec) = (u64_at(s, 8), u64_at(s, 16), u64_at(s, 24));
    if b != block || sec != sector {
        return SectorState::Bad(format!(
            "stamp of block {b} sector {sec} found here (misdirected write or read)"
        ));
    }
    let mut want = [0u8; SECTOR];
    stamp_sector(&mut want, b, v, sec);
    if want[..] != s[..] {
        return SectorState::Bad("filler does not match the stamp".into());
    }
    SectorState::Stamp(v)
}

struct Log {
    file: File,
    blocks: u64,
    copy_size: u64,
}

struct LogState {
    round: u64,
    seed: u64,
    table: Vec<u64>,
    valid: bool,
}

impl Log {
    fn open(path: &str, blocks: u64, write: bool) -> Result<Log, String> {
        let direct = OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(O_DIRECT)
            .open(path);
        let file = match direct {
            Ok(f) => f,
            // a copy of the log on a tmpfs (no O_DIRECT there) is read as is
            Err(e) if !write && e.raw_os_error() == Some(22) => File::open(path)
                .map_err(|e| format!("open log {path}: {e}"))?,
            Err(e) => return Err(format!("open log {path}: {e}")),
        };
        let table = blocks * 8;
        let copy_size = (BLOCK as u64 + table).div_ceil(BLOCK as u64) * BLOCK as u64;
        Ok(Log {
            file,
            blocks,
            copy_size,
        })
    }

    fn read(&self) -> Result<LogState, String> {
        let mut best = LogState {
            round: 0,
            seed: 0,
            table: vec![0; self.blocks as usize],
            valid: false,
        };
        for copy in 0..2u64 {
            let mut buf = Aligned::new(self.copy_size as usize);
            self.file
                .read_exact_at(buf.get_mut(), copy * self.copy_size)
                .map_err(|e| format!("read log copy {copy}: {e} (is the log device big enough?)"))?;
            let b = buf.get();
            if &b[0..8] != LOG_MAGIC || u64_at(b, 16) != self.blocks {
                continue;
            }
            let tbl = &b[BLOCK..BLOCK + self.blocks as usize * 8];
            if fnv1a(&[&b[0..32], tbl]) != u64_at(b, 32) {
                eprintln!("vmcheck: log copy {copy} fails its checksum (torn write); using the other");
                continue;
            }
            let round = u64_at(b, 8);
            if !best.valid || round > best.round {
                best = LogState {
                    round,
                    seed: u64_at(b, 24),
                    table: tbl.chunks(8).map(|c| u64_at(c, 0)).collect(),
                    valid: true,
                };
            }
        }
        Ok(best)
    }

    fn write(&self, round: u64, seed: u64, table: &[u64]) -> Result<(), String> {
        let mut buf = Aligned::new(self.copy_size as usize);
        let b = buf.get_mut();
        b[0..8].copy_from_slice(LOG_MAGIC);
        b[8..16].copy_from_slice(&round.to_le_bytes());
        b[16..24].copy_from_slice(&self.blocks.to_le_bytes());
        b[24..32].copy_from_slice(&seed.to_le_bytes());
        for (i, v) in table.iter().enumerate() {
            b[BLOCK + i * 8..BLOCK + i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        let sum = fnv1a(&[&b[0..32], &b[BLOCK..BLOCK + table.len() * 8]]);
        b[32..40].copy_from_slice(&sum.to_le_bytes());
        self.file
            .write_all_at(buf.get(), (round % 2) * self.copy_size)
            .map_err(|e| format!("write log: {e}"))?;
        self.file
            .sync_data()
            .map_err(|e| format!("fsync log: {e}"))
    }
}

fn open_dev(path: &str, write: bool) -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(O_DIRECT)
        .open(path)
        .map_err(|e| format!("open {path}: {e}"))
}

fn write_cmd(a: &Args) -> Result<(), String> {
    let dev_path = a.dev.as_deref().ok_or("--dev is required")?;
    let log = Log::open(a.log.as_deref().ok_or("--log is required")?, a.blocks, true)?;
    let dev = open_dev(dev_path, true)?;
    let st = log.read()?;
    let mut table = st.table;
    let seed = if st.valid { st.seed } else { a.seed };
    // Round last+1 may have been in flight when the previous run stopped;
    // skipping it keeps every version this run writes strictly newer.
    let first = if st.valid { st.round + 2 } else { 1 };
    eprintln!(
        "vmcheck write: {} blocks of {dev_path}, log round {} ({}), starting at round {first}",
        a.blocks,
        st.round,
        if st.valid { "resumed" } else { "fresh log" }
    );
    let max_run = a.max_run.min(a.blocks);
    let mut buf = Aligned::new(max_run as usize * BLOCK);
    let started = Instant::now();
    let mut bytes: u64 = 0;
    let mut round = first;
    loop {
        let mut rng = seed ^ round.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let mut written = Vec::new();
        for _ in 0..a.batch {
            let run = 1 + splitmix(&mut rng) % max_run;
            let start = splitmix(&mut rng) % (a.blocks - run + 1);
            let b = buf.get_mut();
            for i in 0..run {
                for s in 0..SECTORS {
                    let off = i as usize * BLOCK + s * SECTOR;
                    stamp_sector(&mut b[off..off + SECTOR], start + i, round, s as u64);
                }
            }
            let len = run as usize * BLOCK;
            dev.write_all_at(&buf.get()[..len], start * BLOCK as u64)
                .map_err(|e| format!("round {round}: write blocks {start}+{run}: {e}"))?;
            bytes += len as u64;
            written.push((start, run));
        }
        dev.sync_all()
            .map_err(|e| format!("round {round}: fsync {dev_path}: {e}"))?;
        for (start, run) in written {
            for blk in start..start + run {
                table[blk as usize] = round;
            }
        }
        log.write(round, seed, &table)?;
        if round == first {
            if let Some(m) = &a.mark {
                println!("{m}");
                let _ = std::io::stdout().flush();
            }
        }
        if a.report > 0 && (round - first + 1) % a.report == 0 {
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "vmcheck write: round {round} acknowledged; {:.1} MiB in {secs:.1} s ({:.1} MiB/s)",
                bytes as f64 / 1048576.0,
                bytes as f64 / 1048576.0 / secs
            );
        }
        if a.rounds > 0 && round + 1 - first >= a.rounds {
            eprintln!("vmcheck write: {} rounds done, last {round}", a.rounds);
            return Ok(());
        }
        round += 1;
    }
}

fn verify_cmd(a: &Args) -> Result<bool, String> {
    let dev_path = a.dev.as_deref().ok_or("--dev is required")?;
    let log = Log::open(a.log.as_deref().ok_or("--log is required")?, a.blocks, false)?;
    let dev = open_dev(dev_path, false)?;
    let st = log.read()?;
    if !st.valid && a.expect_log {
        eprintln!("vmcheck verify: FAIL: expected a valid log of acknowledged versions, found none");
        return Ok(false);
    }
    let chunk_blocks: u64 = 256;
    let mut buf = Aligned::new(chunk_blocks as usize * BLOCK);
    let (mut at_logged, mut newer, mut never) = (0u64, 0u64, 0u64);
    let mut failures: Vec<String> = Vec::new();
    let mut nfail = 0u64;
    let mut blk = 0u64;
    while blk < a.blocks {
        let n = chunk_blocks.min(a.blocks - blk);
        let len = n as usize * BLOCK;
        dev.read_exact_at(&mut buf.get_mut()[..len], blk * BLOCK as u64)
            .map_err(|e| format!("read blocks {blk}+{n} of {dev_path}: {e}"))?;
        for i in 0..n {
            let b = blk + i;
            let want = st.table[b as usize];
            let mut max_seen = 0;
            let mut bad = None;
            for s in 0..SECTORS {
                let off = i as usize * BLOCK + s * SECTOR;
                let sec = &buf.get()[off..off + SECTOR];
                let v = match read_sector(sec, b, s as u64) {
                    SectorState::Zero => 0,
                    SectorState::Stamp(v) => v,
                    SectorState::Bad(why) => {
                        bad = Some(format!("block {b} sector {s}: {why}; acknowledged version {want}"));
                        break;
                    }
                };
                if v < want {
                    bad = Some(format!(
                        "block {b} sector {s}: read version {v}, but version {want} was acknowledged \
                         by a completed fsync (a flushed write was lost)"
                    ));
                    break;
                }
                // A writer starts at last + 2, so a round in flight at a cut
                // is at most last + 2.
                if st.valid && !a.older_log && v > st.round + 2 {
                    bad = Some(format!(
                        "block {b} sector {s}: read version {v}, newer than any round that \
                         can have been written (last acknowledged {})",
                        st.round
                    ));
                    break;
                }
                max_seen = max_seen.max(v);
            }
            match bad {
                Some(m) => {
                    nfail += 1;
                    if failures.len() < 20 {
                        failures.push(m);
                    }
                }
                None if max_seen == 0 => never += 1,
                None if max_seen == want => at_logged += 1,
                None => newer += 1,
            }
        }
        blk += n;
    }
    for f in &failures {
        eprintln!("vmcheck verify: {f}");
    }
    eprintln!(
        "vmcheck verify: {} blocks of {dev_path} against log round {}: {at_logged} at the \
         acknowledged version, {newer} newer (unacknowledged writes that landed), {never} never \
         written, {nfail} bad",
        a.blocks, st.round
    );
    Ok(nfail == 0)
}

fn main() -> ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("vmcheck: {e}");
            }
            eprintln!("{}", usage());
            return ExitCode::from(64);
        }
    };
    let r = match a.cmd.as_str() {
        "write" => write_cmd(&a).map(|()| true),
        "verify" => verify_cmd(&a),
        "log-round" => (|| {
            let log = Log::open(a.log.as_deref().ok_or("--log is required")?, a.blocks, false)?;
            println!("{}", log.read()?.round);
            Ok(true)
        })(),
        other => {
            eprintln!("vmcheck: unknown command {other}\n{}", usage());
            return ExitCode::from(64);
        }
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("vmcheck {}: {e}", a.cmd);
            // 3: the device reported a failed flush (fsync), 2: anything else
            ExitCode::from(if e.contains(": fsync ") { 3 } else { 2 })
        }
    }
}
