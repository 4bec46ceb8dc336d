//! One configured device as the registry keeps it: where it is in its
//! life, its backing device, its cache and block device, and what is
//! reported and saved of it.
//!
//! A device goes `creating` → `running` (or `no block device: …` when lcd
//! runs with `--frontend none` or ublk cannot be used, data still safe in
//! the cache) → `detaching` → gone. A device whose backing path or cache is
//! missing at start, or whose write-back failed, is `failed: …` and stays
//! listed (and saved) until removed.

use std::sync::Arc;

use lc_engine::Cache;

use super::state::DeviceRecord;
use crate::frontend::Exposed;
use crate::identity::DeviceIdentity;

/// The write-back threshold of a device that has none yet (the engine's
/// default).
pub const DEFAULT_MIGRATE_THRESHOLD: u8 = 70;

/// Refuses a write-back threshold above 100 percent. The engine refuses
/// the same for an attached device; the registry asks first, so that a
/// device that is not attached is held to the same rule.
pub fn check_migrate_threshold(percent: u8) -> Result<(), lc_engine::Error> {
    if percent > 100 {
        return Err(lc_engine::Error::InvalidArgument(format!(
            "migrate_threshold must be in 0..=100, got {percent}"
        )));
    }
    Ok(())
}

/// What ListDevices and a device's `Info()` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSummary {
    /// Device id.
    pub id: u8,
    /// Cache it is served through.
    pub cache_id: u8,
    /// Backing path, as the administrator gave it.
    pub backing: String,
    /// The engine's name of the backing device (empty when not attached).
    pub dev: String,
    /// Size of the backing device in bytes (0 if never opened).
    pub size_bytes: u64,
    /// Its block node (empty without one).
    pub node: String,
    /// Dirty 4 KiB lines of it in its cache.
    pub nr_dirty_caches: u64,
    /// Write-back policy threshold, percent.
    pub migrate_threshold: u8,
    /// Where it is in its life, as a person reads it.
    pub state: String,
}

/// Where a device is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceState {
    /// CreateDevice is in progress.
    Creating,
    /// Served as a block device.
    Running,
    /// Attached to its cache but not exposed, and why.
    NoBlockDevice(String),
    /// RemoveDevice is writing its data back.
    Detaching,
    /// Not attached, or its write-back failed; why.
    Failed(String),
}

impl DeviceState {
    /// The state as ListDevices shows it.
    pub fn describe(&self) -> String {
        match self {
            DeviceState::Creating => "creating".into(),
            DeviceState::Running => "running".into(),
            DeviceState::NoBlockDevice(why) => format!("no block device: {why}"),
            DeviceState::Detaching => "detaching".into(),
            DeviceState::Failed(why) => format!("failed: {why}"),
        }
    }
}

/// One configured device.
pub struct DeviceEntry {
    /// Cache it is served through.
    pub cache_id: u8,
    /// Backing path, as the administrator gave it.
    pub backing: String,
    /// Who the backing device is (`None`: not known yet, an old state file
    /// whose device was never opened since).
    pub identity: Option<DeviceIdentity>,
    /// The cache, while the device is attached to it.
    pub cache: Option<Arc<Cache>>,
    /// Its cache while that runs, attached or not (a failed device's dirty
    /// lines are counted there).
    pub resumed_cache: Option<Arc<Cache>>,
    /// The block device, while there is one.
    pub block: Option<Box<dyn Exposed>>,
    /// Size of the backing device in bytes (0 if never opened).
    pub size_bytes: u64,
    /// Threshold to record while the device is not attached.
    pub migrate_threshold: u8,
    /// Where it is in its life.
    pub state: DeviceState,
    /// Whether the state file records it: not while CreateDevice brings it
    /// up, nor for an id whose dirty data a cache holds without any record
    /// of its disk (`devices::list_unrecorded`).
    pub saved: bool,
}

impl DeviceEntry {
    /// A device of cache `cache_id` on `backing`, not attached, not
    /// exposed and not saved, with the engine's default threshold (70);
    /// `resumed_cache` is its cache if that runs.
    pub fn new(
        cache_id: u8,
        backing: String,
        resumed_cache: Option<Arc<Cache>>,
        state: DeviceState,
    ) -> DeviceEntry {
        DeviceEntry {
            cache_id,
            backing,
            identity: None,
            cache: None,
            resumed_cache,
            block: None,
            size_bytes: 0,
            migrate_threshold: DEFAULT_MIGRATE_THRESHOLD,
            state,
            saved: false,
        }
    }

    /// A device as the state file records it, coming back (`Creating`).
    pub fn from_record(rec: &DeviceRecord, resumed_cache: Option<Arc<Cache>>) -> DeviceEntry {
        DeviceEntry {
            identity: rec.identity.clone(),
            migrate_threshold: rec.migrate_threshold,
            saved: true,
            ..DeviceEntry::new(
                rec.cache_id,
                rec.backing.clone(),
                resumed_cache,
                DeviceState::Creating,
            )
        }
    }

    /// Attached to its cache, or being created or detached: not a device
    /// that may be forgotten or re-pointed.
    pub fn in_use(&self) -> bool {
        self.cache.is_some()
            || self.state == DeviceState::Creating
            || self.state == DeviceState::Detaching
    }

    /// Listed only because its cache holds dirty data of the id, with no
    /// record of its disk (`devices::list_unrecorded`).
    pub fn unrecorded(&self) -> bool {
        !self.saved && self.backing.is_empty() && self.cache.is_none()
    }

    /// Takes what [`BroughtUp`] brought up.
    pub fn set_up(&mut self, up: BroughtUp) {
        self.block = up.block;
        self.size_bytes = up.size;
        self.state = up.state;
        self.identity = Some(up.identity);
    }

    /// Sets the device's write-back threshold: in its cache while attached,
    /// and always in the entry itself, so that the value read back stays
    /// the one set when the engine lets go of the device (a detach that
    /// finishes between the write and the read). Refuses a value above 100
    /// and changes nothing then.
    pub fn set_migrate_threshold(&mut self, id: u8, percent: u8) -> Result<(), lc_engine::Error> {
        check_migrate_threshold(percent)?;
        if let Some(c) = &self.cache {
            c.set_migrate_threshold(id, percent)?;
        }
        self.migrate_threshold = percent;
        Ok(())
    }

    /// What ListDevices and `Info()` report.
    pub fn info(&self, id: u8) -> DeviceSummary {
        self.view(id).info()
    }

    /// A copy of what [`DeviceEntry::info`] needs, taken under the daemon's
    /// lock so that the engine is asked outside it (read-only calls never
    /// hold the daemon's lock while they wait for a cache's lock).
    pub fn view(&self, id: u8) -> DeviceView {
        DeviceView {
            id,
            cache_id: self.cache_id,
            backing: self.backing.clone(),
            size_bytes: self.size_bytes,
            node: self
                .block
                .as_ref()
                .map_or_else(String::new, |b| b.node().to_string()),
            migrate_threshold: self.migrate_threshold,
            state: self.state.describe(),
            cache: self.cache.clone(),
            resumed_cache: self.resumed_cache.clone(),
        }
    }

    /// What the state file records.
    pub fn record(&self, id: u8) -> DeviceRecord {
        let info = self.info(id);
        DeviceRecord {
            id,
            cache_id: self.cache_id,
            backing: self.backing.clone(),
            migrate_threshold: info.migrate_threshold,
            identity: self.identity.clone(),
        }
    }
}

/// A device as [`DeviceEntry::view`] copied it.
pub struct DeviceView {
    id: u8,
    cache_id: u8,
    backing: String,
    size_bytes: u64,
    node: String,
    migrate_threshold: u8,
    state: String,
    cache: Option<Arc<Cache>>,
    resumed_cache: Option<Arc<Cache>>,
}

impl DeviceView {
    /// The device's info, its live figures (dirty lines, threshold) asked
    /// of the engine for this device alone.
    pub fn info(self) -> DeviceSummary {
        let id = self.id;
        let engine = self.cache.as_ref().and_then(|c| c.recent_device_status(id));
        DeviceSummary {
            id,
            cache_id: self.cache_id,
            backing: self.backing,
            dev: engine.as_ref().map_or_else(String::new, |d| d.dev.clone()),
            size_bytes: self.size_bytes,
            node: self.node,
            nr_dirty_caches: engine.as_ref().map_or_else(
                || {
                    self.resumed_cache
                        .as_ref()
                        .map_or(0, |c| c.recent_nr_dirty(id))
                },
                |d| d.nr_dirty_caches,
            ),
            migrate_threshold: engine
                .as_ref()
                .map_or(self.migrate_threshold, |d| d.migrate_threshold),
            state: self.state,
        }
    }
}

/// What bringing a device up brought up.
pub struct BroughtUp {
    /// Size of the backing device in bytes.
    pub size: u64,
    /// The block device, if the frontend exposed one.
    pub block: Option<Box<dyn Exposed>>,
    /// Running, or why it has no block device.
    pub state: DeviceState,
    /// Who the backing device is.
    pub identity: DeviceIdentity,
}

#[cfg(test)]
mod tests {
    use super::*;
    use lc_engine::sim::{PowerDomain, SimDisk};
    use lc_engine::{format_cache_device, CacheOptions};

    fn entry_on(cache: &Arc<Cache>) -> DeviceEntry {
        DeviceEntry {
            cache: Some(cache.clone()),
            migrate_threshold: 33,
            saved: true,
            ..DeviceEntry::new(
                cache.id(),
                "/dev/b".into(),
                Some(cache.clone()),
                DeviceState::Running,
            )
        }
    }

    fn running_cache() -> Arc<Cache> {
        let domain = PowerDomain::new();
        let cdev = SimDisk::new(domain.clone(), 8 << 20);
        format_cache_device(&*cdev, false).expect("format");
        let cache =
            Arc::new(Cache::resume(1, cdev, CacheOptions { pool_segments: 4 }).expect("resume"));
        cache
            .attach_device(1, SimDisk::new(domain, 4 << 20))
            .expect("attach");
        cache
    }

    #[test]
    fn a_threshold_set_reads_back_after_the_engine_lets_go_of_the_device() {
        // The dbus fuzzer's find: set while a detach ran, read after the
        // engine had dropped the device but before the entry was removed.
        let cache = running_cache();
        let mut e = entry_on(&cache);
        e.set_migrate_threshold(1, 49).expect("in range");
        assert_eq!(e.info(1).migrate_threshold, 49);
        cache.detach_device(1, |_| {}).expect("detach");
        assert_eq!(
            e.info(1).migrate_threshold,
            49,
            "read back after the detach"
        );
        assert_eq!(e.record(1).migrate_threshold, 49, "recorded");
        cache.shutdown().expect("shutdown");
    }

    #[test]
    fn a_threshold_above_100_is_refused_attached_or_not() {
        let cache = running_cache();
        let mut e = entry_on(&cache);
        assert!(e.set_migrate_threshold(1, 101).is_err());
        assert_eq!(
            e.info(1).migrate_threshold,
            70,
            "the engine's default, unchanged"
        );
        e.cache = None;
        assert!(e.set_migrate_threshold(1, 101).is_err());
        assert_eq!(e.migrate_threshold, 33, "unchanged");
        e.set_migrate_threshold(1, 0).expect("0 is in range");
        assert_eq!(e.info(1).migrate_threshold, 0);
        cache.shutdown().expect("shutdown");
    }
}
