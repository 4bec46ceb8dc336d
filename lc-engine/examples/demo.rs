//! A file-backed demo of the lc engine: formats a cache file, puts it in
//! front of a backing file, writes random 4 KiB blocks, flushes, restarts the
//! cache from its on-disk log, verifies every block, writes everything back
//! and checks the backing file.
//!
//! Run: `cargo run --release -p lc-engine --example demo [DIR]`
//! (default DIR: `/var/tmp/lc-demo`; the two image files stay there).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use lc_engine::{
    format_cache_device, BlockDevice, Cache, CacheOptions, CacheStatus, FileDevice, Knob,
};
use rand::{Rng, SeedableRng};

const MIB: u64 = 1 << 20;

fn print_status(s: &CacheStatus) {
    println!("  cache {} on {}", s.cache_id, s.device);
    println!("  {:<32} {}", "nr_segments", s.nr_segments);
    println!("  {:<32} {}", "nr_caches (4 KiB lines)", s.nr_caches);
    println!(
        "  {:<32} {:.1} MiB",
        "static RAM",
        s.static_ram_bytes as f64 / MIB as f64
    );
    println!(
        "  {:<32} {:.1} B/line",
        "index RAM",
        s.index_ram_bytes as f64 / s.nr_caches as f64
    );
    println!(
        "  {:<32} {} (cursor {})",
        "current segment id", s.current_segment_id, s.cursor
    );
    println!(
        "  {:<32} {}",
        "last_flushed_segment_id", s.last_flushed_segment_id
    );
    println!(
        "  {:<32} {}",
        "last_migrated_segment_id", s.last_migrated_segment_id
    );
    println!("  {:<32} {}", "nr_dirty_caches", s.nr_dirty_caches);
    for (name, v) in &s.knobs {
        println!("  {name:<32} {v}");
    }
    let c = &s.stats;
    println!("  counters (write? hit? on_buffer? fullsize?):");
    for i in 0..16 {
        let yn = |bit: usize| if i & (1 << bit) != 0 { "y" } else { "n" };
        print!(
            "    w:{} h:{} b:{} f:{} = {:<8}",
            yn(3),
            yn(2),
            yn(1),
            yn(0),
            c.counters[i]
        );
        if i % 2 == 1 {
            println!();
        }
    }
}

fn open(p: &Path) -> anyhow::Result<Arc<FileDevice>> {
    Ok(Arc::new(FileDevice::open(p)?))
}

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "/var/tmp/lc-demo".into()),
    );
    std::fs::create_dir_all(&dir)?;
    let cache_path = dir.join("cache.img");
    let backing_path = dir.join("backing.img");
    for (p, size) in [(&cache_path, 129 * MIB), (&backing_path, 1024 * MIB)] {
        let f = std::fs::File::create(p)?;
        f.set_len(size)?;
    }
    println!("lc engine demo in {}", dir.display());
    let cdev = open(&cache_path)?;
    println!(
        "cache file {} ({} MiB, O_DIRECT: {}), backing file {} (1 GiB)",
        cache_path.display(),
        cdev.size_bytes() / MIB,
        cdev.is_direct(),
        backing_path.display()
    );
    format_cache_device(&*cdev, true)?;
    let cache = Cache::resume(1, cdev, CacheOptions::default())?;
    cache.attach_device(1, open(&backing_path)?)?;

    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut written: HashMap<u64, u8> = HashMap::new();
    let lines = 1024 * MIB / 4096;
    let count = 20_000;
    let t = Instant::now();
    for i in 0..count {
        let line = rng.gen_range(0..lines);
        let fill = (i % 251) as u8 + 1;
        cache.write(1, line * 8, &[fill; 4096])?;
        written.insert(line, fill);
    }
    cache.flush_sync()?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "wrote {count} random 4 KiB blocks and flushed in {secs:.2} s ({:.0} MiB/s)",
        count as f64 * 4096.0 / MIB as f64 / secs
    );
    print_status(&cache.status());

    cache.shutdown()?;
    drop(cache);
    let (cache, report) =
        Cache::resume_with_report(1, open(&cache_path)?, CacheOptions::default())?;
    println!("resumed from the cache file: {report:?}");
    cache.attach_device(1, open(&backing_path)?)?;
    let mut buf = vec![0u8; 4096];
    for (&line, &fill) in &written {
        cache.read(1, line * 8, &mut buf)?;
        anyhow::ensure!(
            buf.iter().all(|&b| b == fill),
            "line {line} reads back wrong after resume"
        );
    }
    println!(
        "all {} distinct blocks read back after resume",
        written.len()
    );

    cache.set_knob(Knob::AllowMigrate, 1)?;
    let t = Instant::now();
    cache.migrate_all()?;
    println!(
        "wrote everything back in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    cache.shutdown()?;
    drop(cache);
    let backing = open(&backing_path)?;
    for (&line, &fill) in &written {
        backing.read_at(&mut buf, line * 4096)?;
        anyhow::ensure!(
            buf.iter().all(|&b| b == fill),
            "line {line} wrong on the backing file"
        );
    }
    println!("backing file verified: every block holds its last write");
    println!(
        "note: this part drove the engine directly; lcd serves the same engine as /dev/ublkbN where the kernel has ublk, else as an NBD export (scripts/demo's part 2)"
    );
    Ok(())
}
