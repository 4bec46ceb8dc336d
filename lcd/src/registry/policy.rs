//! The migration policy (dm-lc left it to a userland helper; lcd is that
//! helper): every `update_interval` seconds a cache may write back only
//! while each of its backing devices is less than `migrate_threshold`
//! percent busy (100 means always, 0 never). `force_migrate` and a full
//! cache override the policy inside the engine.
//!
//! Busy time comes from the kernel's accounting of the disk under the
//! backing device (`/sys/dev/block/MAJ:MIN/stat`, field `io_ticks`): the
//! device itself for a block device, the disk holding the file for a file.
//! A device whose disk cannot be measured counts as idle.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lc_engine::{Cache, DeviceKnob, Knob};

use super::{Change, Registry};

/// Milliseconds the disk under `path` has spent doing I/O since boot.
fn io_ticks_ms(path: &str) -> Option<u64> {
    let meta = std::fs::metadata(path).ok()?;
    let dev = if meta.file_type().is_block_device() {
        meta.rdev()
    } else {
        meta.dev()
    };
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let stat = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/stat")).ok()?;
    stat.split_whitespace().nth(9)?.parse().ok()
}

/// Busy percentage over an interval from two `io_ticks` readings.
pub fn utilisation(before_ms: u64, after_ms: u64, elapsed: Duration) -> u8 {
    let elapsed_ms = elapsed.as_millis().max(1) as u64;
    (after_ms.saturating_sub(before_ms).saturating_mul(100) / elapsed_ms).min(100) as u8
}

/// Whether write-back may run, given each device's (utilisation, threshold).
pub fn allow(devices: &[(u8, u8)]) -> bool {
    devices
        .iter()
        .all(|&(util, threshold)| threshold >= 100 || util < threshold)
}

struct Watch {
    last: Instant,
    ticks: HashMap<u8, u64>,
}

/// Runs the policy for every cache until the process ends; each change of
/// a cache's `allow_migrate` is announced.
pub async fn run(registry: Arc<Registry>) {
    let mut watches: HashMap<u8, Watch> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        // (cache id, cache, [(device id, backing, threshold)])
        type Plan = Vec<(u8, Arc<Cache>, Vec<(u8, String, u8)>)>;
        let plan: Plan = {
            let d = registry.lock();
            d.caches
                .iter()
                .map(|(&cid, e)| {
                    let devs = d
                        .devices
                        .iter()
                        .filter(|(_, de)| de.cache_id == cid && de.cache.is_some())
                        .map(|(&id, de)| {
                            let threshold = de.info(id).knobs.get(DeviceKnob::MigrateThreshold);
                            (id, de.backing.clone(), threshold as u8)
                        })
                        .collect();
                    (cid, e.cache.clone(), devs)
                })
                .collect()
        };
        watches.retain(|id, _| plan.iter().any(|(c, _, _)| c == id));
        for (cid, cache, devs) in plan {
            let now = Instant::now();
            let interval = Duration::from_secs(cache.knob(Knob::UpdateInterval));
            let w = watches.entry(cid).or_insert_with(|| Watch {
                last: now - interval,
                ticks: HashMap::new(),
            });
            if now.duration_since(w.last) < interval {
                continue;
            }
            let elapsed = now.duration_since(w.last);
            w.last = now;
            let mut seen = Vec::new();
            let mut ticks = HashMap::new();
            for (id, backing, threshold) in devs {
                let util = match (io_ticks_ms(&backing), w.ticks.get(&id)) {
                    (Some(t), Some(&before)) => {
                        ticks.insert(id, t);
                        utilisation(before, t, elapsed)
                    }
                    (Some(t), None) => {
                        ticks.insert(id, t);
                        0
                    }
                    (None, _) => 0,
                };
                seen.push((util, threshold));
            }
            w.ticks = ticks;
            let want = allow(&seen);
            if (cache.knob(Knob::AllowMigrate) != 0) != want
                && cache.set_knob(Knob::AllowMigrate, want as u64).is_ok()
            {
                tracing::debug!(cache = cid, allow_migrate = want, "migration policy");
                registry.announce(Change::AllowMigrate(cid)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utilisation_is_busy_time_over_elapsed_time() {
        assert_eq!(utilisation(1000, 1500, Duration::from_secs(1)), 50);
        assert_eq!(
            utilisation(1000, 3000, Duration::from_secs(1)),
            100,
            "capped"
        );
        assert_eq!(
            utilisation(5, 1, Duration::from_secs(1)),
            0,
            "counter reset"
        );
    }

    #[test]
    fn every_device_must_be_below_its_threshold() {
        assert!(allow(&[]));
        assert!(allow(&[(10, 70), (69, 70)]));
        assert!(!allow(&[(10, 70), (70, 70)]));
        assert!(allow(&[(100, 100)]), "100 means always");
        assert!(!allow(&[(0, 0)]), "0 means never");
    }

    #[test]
    fn paths_not_on_a_disk_cannot_be_measured() {
        // counted as idle by the loop
        assert_eq!(io_ticks_ms("/proc/self/stat"), None);
        assert_eq!(io_ticks_ms("/nonexistent"), None);
    }
}
