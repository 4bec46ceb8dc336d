//! One configured device as the registry keeps it: where it is in its
//! life, its backing device, its cache and block device, and what is
//! reported and saved of it.
//!
//! A device goes `creating` → `running` (or `no block device: …` when lcd
//! runs with `--frontend none` or ublk cannot be used, data still safe in
//! the cache) → `detaching` → gone. A device whose backing path or cache is
//! missing at start, or whose write-back failed, is `failed: …` and stays
//! listed (and saved) until removed.

use std::collections::BTreeMap;
use std::sync::Arc;

use lc_engine::{Cache, DeviceKnob, DeviceKnobs};

use super::state::DeviceRecord;
use crate::frontend::{Exposed, FrontendKind};
use crate::identity::DeviceIdentity;

/// The knobs a state file saved for device `id`, on the table's defaults;
/// one that cannot be applied (unknown, out of range) is logged and skipped.
pub fn saved_knobs(id: u8, saved: &BTreeMap<String, u64>) -> DeviceKnobs {
    let knobs = DeviceKnobs::default();
    for (name, &v) in saved {
        if let Err(e) = DeviceKnob::from_name(name).and_then(|k| knobs.set(k, v)) {
            tracing::warn!(id, "saved knob {name}={v} not applied: {e}");
        }
    }
    knobs
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
    /// Its knobs (`migrate_threshold`: the write-back policy threshold).
    pub knobs: DeviceKnobs,
    /// How it is exposed.
    pub frontend: FrontendKind,
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
    /// How it is exposed (chosen at attach, kept across restarts).
    pub frontend: FrontendKind,
    /// The block device, while there is one.
    pub block: Option<Box<dyn Exposed>>,
    /// Size of the backing device in bytes (0 if never opened).
    pub size_bytes: u64,
    /// Its knobs, kept here too so that they outlive an attachment (set
    /// before the device is attached, read after the engine let go of it).
    pub knobs: DeviceKnobs,
    /// Where it is in its life.
    pub state: DeviceState,
    /// Whether the state file records it: not while CreateDevice brings it
    /// up, nor for an id whose dirty data a cache holds without any record
    /// of its disk (`devices::list_unrecorded`).
    pub saved: bool,
}

impl DeviceEntry {
    /// A device of cache `cache_id` on `backing`, not attached, not
    /// exposed and not saved, with the table's default knobs, to be
    /// exposed through `frontend`; `resumed_cache` is its cache if that runs.
    pub fn new(
        cache_id: u8,
        backing: String,
        frontend: FrontendKind,
        resumed_cache: Option<Arc<Cache>>,
        state: DeviceState,
    ) -> DeviceEntry {
        DeviceEntry {
            cache_id,
            backing,
            frontend,
            identity: None,
            cache: None,
            resumed_cache,
            block: None,
            size_bytes: 0,
            knobs: DeviceKnobs::default(),
            state,
            saved: false,
        }
    }

    /// A device as the state file records it, coming back (`Creating`);
    /// one saved without a frontend (by an older lcd), or with one this lcd
    /// does not know, gets `default_frontend`.
    pub fn from_record(
        id: u8,
        rec: &DeviceRecord,
        default_frontend: FrontendKind,
        resumed_cache: Option<Arc<Cache>>,
    ) -> DeviceEntry {
        let frontend = match rec.frontend.as_deref().map(FrontendKind::from_name) {
            None => default_frontend,
            Some(Ok(kind)) => kind,
            Some(Err(why)) => {
                tracing::warn!(
                    id,
                    "saved frontend not used ({why}): {default_frontend} instead"
                );
                default_frontend
            }
        };
        DeviceEntry {
            identity: rec.identity.clone(),
            knobs: saved_knobs(id, &rec.knobs),
            saved: true,
            ..DeviceEntry::new(
                rec.cache_id,
                rec.backing.clone(),
                frontend,
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

    /// Sets one of the device's knobs: in the entry itself, so that the
    /// value read back stays the one set when the engine lets go of the
    /// device (a detach that finishes between the write and the read), and
    /// in its cache while attached. Refuses a value out of the table's
    /// range and changes nothing then.
    pub fn set_knob(
        &mut self,
        id: u8,
        knob: DeviceKnob,
        value: u64,
    ) -> Result<(), lc_engine::Error> {
        self.knobs.set(knob, value)?;
        if let Some(c) = &self.cache {
            // the range was checked above: the one failure left is that the
            // engine let go of the device meanwhile, and the entry keeps it
            let _ = c.set_device_knob(id, knob, value);
        }
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
            knobs: self.knobs.clone(),
            frontend: self.frontend,
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
            knobs: info
                .knobs
                .values()
                .into_iter()
                .map(|(name, v)| (name.to_string(), v))
                .collect(),
            frontend: Some(self.frontend.name().to_string()),
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
    knobs: DeviceKnobs,
    frontend: FrontendKind,
    state: String,
    cache: Option<Arc<Cache>>,
    resumed_cache: Option<Arc<Cache>>,
}

impl DeviceView {
    /// The device's info, its live figures (dirty lines, knobs) asked of
    /// the engine for this device alone.
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
            knobs: engine.map_or(self.knobs, |d| d.knobs),
            frontend: self.frontend,
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

    const THRESHOLD: DeviceKnob = DeviceKnob::MigrateThreshold;

    fn entry_on(cache: &Arc<Cache>) -> DeviceEntry {
        let knobs = DeviceKnobs::default();
        knobs.set(THRESHOLD, 33).expect("in range");
        DeviceEntry {
            cache: Some(cache.clone()),
            knobs,
            saved: true,
            ..DeviceEntry::new(
                cache.id(),
                "/dev/b".into(),
                FrontendKind::None,
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
        e.set_knob(1, THRESHOLD, 49).expect("in range");
        assert_eq!(e.info(1).knobs.get(THRESHOLD), 49);
        assert_eq!(
            cache.device_knob(1, THRESHOLD).unwrap(),
            49,
            "in the engine"
        );
        cache.detach_device(1, |_| {}).expect("detach");
        assert_eq!(
            e.info(1).knobs.get(THRESHOLD),
            49,
            "read back after the detach"
        );
        assert_eq!(e.record(1).knobs["migrate_threshold"], 49, "recorded");
        // a set once the engine let go of the device is kept by the entry
        e.set_knob(1, THRESHOLD, 48).expect("in range");
        assert_eq!(e.record(1).knobs["migrate_threshold"], 48);
        cache.shutdown().expect("shutdown");
    }

    #[test]
    fn a_knob_out_of_range_is_refused_attached_or_not() {
        let cache = running_cache();
        let mut e = entry_on(&cache);
        for s in &DeviceKnob::ALL {
            assert!(e.set_knob(1, s.knob, s.max + 1).is_err(), "{}", s.name);
        }
        assert_eq!(
            e.info(1).knobs.get(THRESHOLD),
            70,
            "the engine's default, unchanged"
        );
        e.cache = None;
        assert!(e.set_knob(1, THRESHOLD, 101).is_err());
        assert_eq!(e.knobs.get(THRESHOLD), 33, "unchanged");
        e.set_knob(1, THRESHOLD, 0).expect("0 is in range");
        assert_eq!(e.info(1).knobs.get(THRESHOLD), 0);
        cache.shutdown().expect("shutdown");
    }

    #[test]
    fn saved_knobs_come_back_and_bad_ones_are_skipped() {
        let saved: BTreeMap<String, u64> = [
            ("migrate_threshold".to_string(), 12),
            ("no_such_knob".to_string(), 1),
        ]
        .into();
        assert_eq!(saved_knobs(1, &saved).get(THRESHOLD), 12);
        let bad: BTreeMap<String, u64> = [("migrate_threshold".to_string(), 700)].into();
        assert_eq!(
            saved_knobs(1, &bad).get(THRESHOLD),
            THRESHOLD.spec().default,
            "out of range: the default"
        );
    }
}
