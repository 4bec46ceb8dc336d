//! The offline rescue subcommands: `lcd check`, `lcd dump`, `lcd writeback`.
//!
//! They open the cache device exclusively (a block device in use by a
//! running lcd or a mounted file system is refused by the kernel) and use
//! the engine directly; nothing here needs D-Bus or ublk.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use lc_engine::rescue::{inspect, Inspection};
use lc_engine::{BlockDevice, Cache, CacheOptions, FileDevice};
use serde_json::json;

/// Exit status of `lcd check` when a damaged segment was found.
const EXIT_DAMAGED: u8 = 3;

fn open(path: &Path) -> Result<Arc<FileDevice>> {
    Ok(Arc::new(FileDevice::open(path)?))
}

fn uuid(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn inspection_json(path: &Path, r: &Inspection) -> serde_json::Value {
    let sb = &r.superblock;
    json!({
        "cache": path.display().to_string(),
        "format_version": sb.version,
        "uuid": uuid(&sb.uuid),
        "nr_segments": sb.nr_segments,
        "created_unix": sb.created_unix,
        "records": r.records.iter().map(|rec| json!({
            "sequence": rec.sequence,
            "last_migrated_segment_id": rec.last_migrated_segment_id,
            "durable_segment_id": rec.durable_segment_id,
        })).collect::<Vec<_>>(),
        "log": { "first": r.log.0, "last": r.log.1 },
        "bad_segment": r.bad_segment,
        "empty_slots": r.empty_slots,
        "dirty_lines": r.dirty_lines.iter().map(|(d, n)| (d.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "clean": r.is_clean(),
    })
}

/// `lcd check CACHE`.
pub fn check(path: &Path, as_json: bool) -> Result<ExitCode> {
    let dev = open(path)?;
    let r = inspect(&*dev).with_context(|| format!("checking {}", path.display()))?;
    let damaged = r.bad_segment.is_some();
    if as_json {
        let mut v = inspection_json(path, &r);
        v["damaged"] = json!(damaged);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let sb = &r.superblock;
        println!(
            "{}: lc cache, format v{}, uuid {}, {} segments ({})",
            path.display(),
            sb.version,
            uuid(&sb.uuid),
            sb.nr_segments,
            mib(sb.nr_segments << 20)
        );
        let rec = &r.records[0];
        println!(
            "record: sequence {}, last_migrated_segment_id {}",
            rec.sequence, rec.last_migrated_segment_id
        );
        let (first, last) = r.log;
        if last >= first {
            println!(
                "log: segments {first}..={last} ({} segments), every checksum verified",
                last - first + 1
            );
        } else {
            println!("log: empty (everything is written back)");
        }
        if let Some(id) = r.bad_segment {
            println!(
                "damaged: segment {id} fails its checksum; resume ends the log before it \
                 (a torn write at a crash loses only unacknowledged data; on a cache that was \
                 stopped cleanly this means damaged media: check the device)"
            );
        }
        for (d, n) in &r.dirty_lines {
            println!("dirty: device {d}: {n} lines ({})", mib(n * 4096));
        }
        println!(
            "state: {}",
            if r.is_clean() {
                "clean"
            } else {
                "dirty (resume it with lcd, or write it back with lcd writeback)"
            }
        );
    }
    Ok(if damaged {
        ExitCode::from(EXIT_DAMAGED)
    } else {
        ExitCode::SUCCESS
    })
}

/// `lcd dump CACHE`.
pub fn dump(path: &Path, as_json: bool) -> Result<()> {
    let dev = open(path)?;
    let r = inspect(&*dev).with_context(|| format!("reading {}", path.display()))?;
    if as_json {
        let mut v = inspection_json(path, &r);
        v["segments"] = r
            .segments
            .iter()
            .map(|s| {
                json!({
                    "slot": s.slot, "global_id": s.global_id, "lap": s.lap, "length": s.length,
                    "durable_id": s.durable_id, "checksum_ok": s.checksum_ok, "in_log": s.in_log,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let sb = &r.superblock;
    println!("superblock: version {} uuid {} nr_segments {} segment_size {} lines_per_segment {} created_unix {}",
        sb.version, uuid(&sb.uuid), sb.nr_segments, sb.segment_size, sb.lines_per_segment, sb.created_unix);
    for rec in &r.records {
        println!(
            "record: sequence {} last_migrated_segment_id {} durable_segment_id {}",
            rec.sequence, rec.last_migrated_segment_id, rec.durable_segment_id
        );
    }
    println!(
        "{:>8} {:>12} {:>6} {:>6} {:>12} {:>8} {:>6}",
        "slot", "global_id", "lap", "length", "durable_id", "checksum", "in_log"
    );
    for s in &r.segments {
        println!(
            "{:>8} {:>12} {:>6} {:>6} {:>12} {:>8} {:>6}",
            s.slot,
            s.global_id,
            s.lap,
            s.length,
            s.durable_id,
            if s.checksum_ok { "ok" } else { "BAD" },
            if s.in_log { "yes" } else { "no" }
        );
    }
    println!("{} slots hold no segment of this cache", r.empty_slots);
    Ok(())
}

fn parse_backings(specs: &[String]) -> Result<BTreeMap<u8, String>> {
    let mut map = BTreeMap::new();
    for spec in specs {
        let Some((id, path)) = spec.split_once('=') else {
            bail!("--backing {spec:?}: expected ID=PATH, e.g. --backing 1=/dev/sdb");
        };
        let id: u8 = id
            .parse()
            .ok()
            .filter(|&i| i != 0)
            .with_context(|| format!("--backing {spec:?}: the id must be 1..=255"))?;
        if map.insert(id, path.to_string()).is_some() {
            bail!("--backing: device id {id} is given twice");
        }
    }
    Ok(map)
}

/// `lcd writeback CACHE --backing ID=PATH ...`.
pub fn writeback(path: &Path, specs: &[String], as_json: bool) -> Result<()> {
    let backings = parse_backings(specs)?;
    let cache_dev = open(path)?;
    let before = inspect(&*cache_dev).with_context(|| format!("reading {}", path.display()))?;
    // Everything is checked before anything is written.
    let missing: Vec<String> = before
        .dirty_lines
        .keys()
        .filter(|d| !backings.contains_key(d))
        .map(|d| d.to_string())
        .collect();
    if !missing.is_empty() {
        bail!(
            "the cache holds dirty data for device id(s) {}: give a --backing ID=PATH for each \
             (nothing was written)",
            missing.join(", ")
        );
    }
    let mut devices = Vec::new();
    for (&id, p) in &backings {
        let dev = open(Path::new(p)).with_context(|| format!("backing device {id}"))?;
        let need = before.dirty_extent.get(&id).copied().unwrap_or(0);
        if dev.size_bytes() < need {
            bail!(
                "backing device {id} ({p}) has {} bytes but the cache holds its data up to byte \
                 {need}: is it the right device? (nothing was written)",
                dev.size_bytes()
            );
        }
        devices.push((id, dev));
    }
    drop(cache_dev);
    let cache = Cache::resume(1, open(path)?, CacheOptions::default())
        .with_context(|| format!("resuming {}", path.display()))?;
    for (id, dev) in &devices {
        cache.attach_device(*id, dev.clone())?;
    }
    for (id, _) in &devices {
        let mut last = u64::MAX;
        cache.detach_device(*id, |p| {
            if p.done != last {
                last = p.done;
                eprintln!(
                    "lcd: device {id}: written back {} of {} segments",
                    p.done, p.total
                );
            }
        })?;
    }
    cache.shutdown()?;
    drop(cache);
    let after = inspect(&*open(path)?)?;
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "cache": path.display().to_string(),
                "written_back_lines": before.dirty_lines,
                "clean": after.is_clean(),
            }))?
        );
    } else {
        for (d, n) in &before.dirty_lines {
            println!("device {d}: {n} dirty lines written back");
        }
        println!(
            "cache {} is {}",
            path.display(),
            if after.is_clean() {
                "clean"
            } else {
                "STILL DIRTY"
            }
        );
    }
    if !after.is_clean() {
        bail!("write-back finished but the cache still reports dirty data; run lcd check");
    }
    Ok(())
}
