//! The registry: the caches and devices lcd hosts, the saved state, and
//! the daemon's rules. It knows nothing of D-Bus (the bus layer calls it
//! and announces what it reports through [`Announcer`]) nor of ublk (a
//! device's block device comes from a [`BlockFrontend`]).
//!
//! - Caches (`caches.rs`): format, resume (never one cache under two ids,
//!   never a disk other than the one recorded), free, re-point a cache that
//!   failed to come back, knobs, and the restore at start.
//! - Devices (`devices.rs`, one device in `device.rs`): create, remove
//!   (writing back first), forget, re-point, the write-back threshold
//!   (0 stops write-back at once), the restore at start, and the ids whose
//!   dirty data a cache holds without any record of their disk.
//! - The saved state (`state.rs`) is written by `persist.rs` off the async
//!   executor, in the order of the changes; a call that changed the
//!   configuration returns only once the change is durable.
//! - The migration policy (`policy.rs`) sets each cache's `allow_migrate`
//!   from its backing devices' load.
//!
//! Engine calls block, so they run on tokio's blocking pool, never under
//! the registry's lock; read-only calls copy what they need under the lock
//! and ask the engines outside it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use futures_util::future::BoxFuture;
use lc_engine::{Cache, Knob};

use crate::frontend::Frontends;

mod caches;
pub mod device;
mod devices;
pub mod error;
pub mod paths;
mod persist;
pub mod policy;
pub mod state;

pub use caches::CacheSummary;
use device::DeviceEntry;
pub use device::{DeviceSummary, DeviceView};
pub use error::RegistryError;

use persist::{Persister, Snapshot};
use state::{CacheRecord, State, StateStore};

/// Something the bus should tell its clients about.
#[derive(Clone)]
pub enum Change {
    /// Cache `id` runs now (publish its object).
    CacheAdded(u8, Arc<Cache>),
    /// Cache `id` is gone.
    CacheRemoved(u8),
    /// Device `id` is listed now.
    DeviceAdded(u8),
    /// Device `id` is gone.
    DeviceRemoved(u8),
    /// Device `id`'s state changed.
    DeviceState(u8),
    /// Cache `id`'s `allow_migrate` changed.
    AllowMigrate(u8),
}

/// Where the registry reports its [`Change`]s (the bus layer, once lcd is
/// on the bus; before that, nobody can be told and nothing is).
pub trait Announcer: Send + Sync {
    /// Tells the clients of `change`; done when they have been told.
    fn announce(&self, change: Change) -> BoxFuture<'_, ()>;
}

/// One resumed cache.
struct CacheEntry {
    /// Path of the cache device, as the administrator gave it.
    path: String,
    /// The engine's cache.
    cache: Arc<Cache>,
}

/// The caches and devices, under the registry's lock.
struct Roster {
    /// Resumed caches, by id.
    caches: BTreeMap<u8, CacheEntry>,
    /// Configured devices, by id.
    devices: BTreeMap<u8, DeviceEntry>,
    /// Caches the state names that could not be resumed at start, with why.
    failed: BTreeMap<u8, (CacheRecord, String)>,
}

/// The caches and devices lcd hosts, and its rules for them.
pub struct Registry {
    roster: Mutex<Roster>,
    frontends: Frontends,
    persister: Persister,
    announcer: OnceLock<Arc<dyn Announcer>>,
}

impl Roster {
    /// The uuids recorded for caches other than `id`: those running and
    /// those that failed to come back.
    fn uuids_of_other_caches(&self, id: u8) -> Vec<(u8, String)> {
        let running = self
            .caches
            .iter()
            .map(|(&i, e)| (i, paths::uuid_hex(&e.cache.uuid())));
        let failed = self
            .failed
            .iter()
            .filter_map(|(&i, (rec, _))| rec.uuid.clone().map(|u| (i, u)));
        running.chain(failed).filter(|(i, _)| *i != id).collect()
    }

    /// The resumed cache whose cache device `path` is.
    fn cache_on(&self, path: &str) -> Option<u8> {
        self.caches
            .iter()
            .find(|(_, e)| paths::same_device(&e.path, path))
            .map(|(&id, _)| id)
    }

    /// The device whose backing device `path` is.
    fn device_on(&self, path: &str) -> Option<u8> {
        self.devices
            .iter()
            .find(|(_, e)| paths::same_device(&e.backing, path))
            .map(|(&id, _)| id)
    }

    /// What the state file records: the running caches with their knobs,
    /// those that failed to come back, and the saved devices.
    fn records(&self) -> (Vec<CacheRecord>, Vec<state::DeviceRecord>) {
        let mut caches: Vec<CacheRecord> = self
            .caches
            .iter()
            .map(|(&id, e)| CacheRecord {
                id,
                path: e.path.clone(),
                knobs: Knob::ALL
                    .iter()
                    .map(|k| (k.name.to_string(), e.cache.knob(k.knob)))
                    .collect(),
                uuid: Some(paths::uuid_hex(&e.cache.uuid())),
            })
            .collect();
        caches.extend(self.failed.values().map(|(r, _)| r.clone()));
        caches.sort_by_key(|r| r.id);
        let devices = self
            .devices
            .iter()
            .filter(|(_, e)| e.saved)
            .map(|(&id, e)| e.record(id))
            .collect();
        (caches, devices)
    }
}

impl Registry {
    /// An empty registry saving into `store`, exposing each device through
    /// the one of `frontends` it asks for.
    pub fn new(store: StateStore, frontends: Frontends) -> Arc<Registry> {
        Arc::new(Registry {
            roster: Mutex::new(Roster {
                caches: BTreeMap::new(),
                devices: BTreeMap::new(),
                failed: BTreeMap::new(),
            }),
            frontends,
            persister: Persister::new(store),
            announcer: OnceLock::new(),
        })
    }

    /// From now on, changes are announced to `announcer` (set once).
    pub fn announce_to(&self, announcer: Arc<dyn Announcer>) {
        let _ = self.announcer.set(announcer);
    }

    /// Tells the announcer, if there is one yet.
    async fn announce(&self, change: Change) {
        if let Some(a) = self.announcer.get() {
            a.announce(change).await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Roster> {
        self.roster.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A snapshot of the records, taken under the lock the caller holds.
    fn snapshot(&self, roster: &Roster) -> Snapshot {
        let (caches, devices) = roster.records();
        self.persister.snapshot(caches, devices)
    }

    /// Records the configuration (caches, knobs, devices) in the state
    /// directory; returns once it is durable.
    pub async fn persist(&self) -> Result<(), RegistryError> {
        let snapshot = self.snapshot(&self.lock());
        snapshot.write().await
    }

    /// What the Manager's `BlockFrontend` property says.
    pub fn frontend_description(&self) -> String {
        self.frontends.describe()
    }

    /// Brings back what `saved` names: every cache, then every device,
    /// then lists the ids whose dirty data a cache holds without a record.
    /// What cannot come back is listed as failed; nothing stops the rest.
    pub async fn restore(&self, saved: State) {
        let learnt_caches = self.restore_caches(saved.caches).await;
        let learnt_devices = self.restore_devices(saved.devices).await;
        {
            let mut r = self.lock();
            let ids: Vec<u8> = r.caches.keys().copied().collect();
            for id in ids {
                devices::list_unrecorded(&mut r, id, self.frontends.default_kind());
            }
        }
        if learnt_caches || learnt_devices {
            if let Err(e) = self.persist().await {
                tracing::warn!("{e}");
            }
        }
    }

    /// Every resumed cache, by id.
    pub fn caches(&self) -> Vec<(u8, Arc<Cache>)> {
        self.lock()
            .caches
            .iter()
            .map(|(&id, e)| (id, e.cache.clone()))
            .collect()
    }

    /// The ids of every listed device.
    pub fn device_ids(&self) -> Vec<u8> {
        self.lock().devices.keys().copied().collect()
    }

    /// The resumed cache `id`.
    pub fn running_cache(&self, id: u8) -> Result<Arc<Cache>, RegistryError> {
        self.lock()
            .caches
            .get(&id)
            .map(|e| e.cache.clone())
            .ok_or_else(|| {
                RegistryError::NotFound(format!("cache {id} is not resumed; resume it first"))
            })
    }

    /// A copy of device `id` to report (asked of the engine outside the
    /// registry's lock), if it is listed.
    pub fn device(&self, id: u8) -> Option<DeviceView> {
        self.lock().devices.get(&id).map(|e| e.view(id))
    }

    /// What ListDevices reports.
    pub fn list_devices(&self) -> Vec<DeviceSummary> {
        let views: Vec<DeviceView> = {
            let r = self.lock();
            r.devices.iter().map(|(&id, e)| e.view(id)).collect()
        };
        views.into_iter().map(DeviceView::info).collect()
    }

    /// The clean stop: removes the block devices, then flushes and stops
    /// every cache.
    pub async fn stop(&self) {
        let blocks: Vec<_> = self
            .lock()
            .devices
            .iter_mut()
            .filter_map(|(&id, e)| e.block.take().map(|b| (id, b)))
            .collect();
        let caches: Vec<(u8, Arc<Cache>)> = std::mem::take(&mut self.lock().caches)
            .into_iter()
            .map(|(id, e)| (id, e.cache))
            .collect();
        let stopped = error::blocking(move || {
            for (id, b) in blocks {
                b.stop();
                tracing::info!(id, "block device removed");
            }
            for (id, c) in caches {
                if let Err(e) = c.shutdown() {
                    tracing::error!(
                        id,
                        "clean stop of cache failed: {}",
                        lc_engine::error::describe(&e)
                    );
                }
            }
            Ok(())
        })
        .await;
        if let Err(e) = stopped {
            tracing::error!("clean stop: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
