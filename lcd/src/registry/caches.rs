//! The registry's rules for caches: format, resume, free, re-point, knobs
//! and the restore at start.

use std::collections::BTreeMap;
use std::sync::Arc;

use lc_engine::{format_cache_device, Cache, CacheOptions, FileDevice, Knob};

use super::error::blocking;
use super::paths::{absolute, uuid_hex};
use super::state::CacheRecord;
use super::{devices, CacheEntry, Change, Registry, RegistryError};

/// What ListCaches reports of one cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSummary {
    /// Cache id.
    pub id: u8,
    /// Path of the cache device, as the administrator gave it.
    pub path: String,
    /// Format uuid (hex; empty when not known).
    pub uuid: String,
    /// Segments of the cache (0 when not running).
    pub nr_segments: u64,
    /// Dirty 4 KiB lines (0 when not running).
    pub nr_dirty_caches: u64,
    /// `running` or `failed: why`.
    pub state: String,
}

/// Opens the cache device on `path` and resumes it as cache `id`; with
/// `expected_uuid`, only if its superblock has that uuid (nothing is
/// written to another cache or disk found at the path).
/// `others` are the uuids recorded for other caches (running or failed to
/// come back): a disk holding one of those is refused, so that one cache
/// never comes back under two ids. Runs on the blocking pool.
async fn open_and_resume(
    id: u8,
    path: String,
    expected_uuid: Option<String>,
    others: Vec<(u8, String)>,
) -> Result<Arc<Cache>, RegistryError> {
    blocking(move || {
        let dev = FileDevice::open(path.as_ref())?;
        if !others.is_empty() {
            if let Ok(sb) = lc_engine::read_superblock(&dev) {
                let found = uuid_hex(&sb.uuid);
                if let Some((other, _)) = others.iter().find(|(_, u)| *u == found) {
                    return Err(RegistryError::Busy(format!(
                        "{path} holds cache {other} (uuid {found}), not a cache that may become                      cache {id}; nothing was written to it. If cache {other}'s disk moved                      here, re-point cache {other} to it (lcctl repoint-cache {other} {path});                      to use it as cache {id}, free cache {other} first (lcctl free {other})"
                    )));
                }
            }
        }
        if let Some(want) = expected_uuid {
            let found = lc_engine::read_superblock(&dev).map(|sb| uuid_hex(&sb.uuid));
            if found.as_deref().ok() != Some(want.as_str()) {
                let found = match found {
                    Ok(u) => format!("the lc cache with uuid {u}"),
                    Err(e) => format!("no lc cache ({})", lc_engine::error::describe(&e)),
                };
                return Err(RegistryError::Failed(format!(
                    "{path} is not the cache device recorded for cache {id}: it holds {found}, \
                     cache {id} has uuid {want}. Nothing was written to it. If the disk moved, \
                     re-point the cache to its new path (lcctl repoint-cache {id} PATH; `lcd \
                     check PATH` shows a disk's uuid); to take the cache at this path as cache \
                     {id} on purpose, re-point it here (lcctl repoint-cache {id} {path})"
                )));
            }
        }
        Ok(Arc::new(Cache::resume(
            id,
            Arc::new(dev),
            CacheOptions::default(),
        )?))
    })
    .await
}

/// Puts the knobs a state file saved back on cache `id`; one that cannot
/// be applied is logged and skipped.
fn apply_saved_knobs(id: u8, cache: &Cache, knobs: &BTreeMap<String, u64>) {
    for (name, &v) in knobs {
        if let Err(e) = Knob::from_name(name).and_then(|k| cache.set_knob(k, v)) {
            tracing::warn!(id, "saved knob {name}={v} not applied: {e}");
        }
    }
}

impl Registry {
    /// Resumes every cache the state names; one that fails is kept,
    /// reported as failed by ListCaches, and never stops the others.
    /// Returns whether a uuid was learnt (the state needs saving).
    pub(super) async fn restore_caches(&self, records: Vec<CacheRecord>) -> bool {
        let mut learnt = false;
        for rec in records {
            let (id, path, uuid) = (rec.id, rec.path.clone(), rec.uuid.clone());
            match open_and_resume(id, path, uuid, Vec::new()).await {
                Ok(cache) => {
                    apply_saved_knobs(id, &cache, &rec.knobs);
                    if rec.uuid.is_none() {
                        tracing::info!(
                            id,
                            path = %rec.path,
                            uuid = %uuid_hex(&cache.uuid()),
                            "the saved state had no uuid for this cache (written by an older \
                             lcd): recorded the one found now"
                        );
                        learnt = true;
                    }
                    tracing::info!(id, path = %rec.path, "resumed cache from the saved state");
                    self.lock().caches.insert(
                        id,
                        CacheEntry {
                            path: rec.path,
                            cache,
                        },
                    );
                }
                Err(e) => {
                    let why = e.to_string();
                    tracing::error!(id, path = %rec.path, "cannot resume cache: {why}");
                    self.lock().failed.insert(id, (rec, why));
                }
            }
        }
        learnt
    }

    /// `FormatCacheDevice(path, force)`: refuses a device lcd uses.
    pub async fn format_cache_device(
        &self,
        path: String,
        force: bool,
    ) -> Result<(), RegistryError> {
        absolute(&path)?;
        {
            // for a clear message; the exclusive open below is what refuses
            // a device in use (by whatever name it was opened)
            let r = self.lock();
            if let Some(id) = r.cache_on(&path) {
                return Err(RegistryError::Busy(format!(
                    "{path} is cache {id}, which is resumed; free it first"
                )));
            }
            if let Some(id) = r.device_on(&path) {
                return Err(RegistryError::Busy(format!(
                    "{path} is the backing device of device {id}; detach it first (lcctl detach {id})"
                )));
            }
        }
        blocking(move || {
            let dev = FileDevice::open(path.as_ref())?;
            format_cache_device(&dev, force)?;
            tracing::info!(%path, force, "formatted a cache device");
            Ok(())
        })
        .await
    }

    /// Resumes the cache on `path` as cache `id`, then lists the ids whose
    /// dirty data it holds without a record of their disk.
    pub async fn resume_cache(&self, id: u8, path: String) -> Result<(), RegistryError> {
        absolute(&path)?;
        let others = {
            let r = self.lock();
            if r.caches.contains_key(&id) {
                return Err(RegistryError::Busy(format!(
                    "cache {id} is already resumed; use another id"
                )));
            }
            if let Some(other) = r.cache_on(&path) {
                return Err(RegistryError::Busy(format!(
                    "{path} is already cache {other}"
                )));
            }
            // a device that is not attached only recorded the path, which
            // may lead elsewhere now (the disks moved)
            let attached = r
                .device_on(&path)
                .filter(|o| r.devices.get(o).is_some_and(|e| e.cache.is_some()));
            if let Some(other) = attached {
                return Err(RegistryError::Busy(format!(
                    "{path} is the backing device of device {other}; a cache device must be another device"
                )));
            }
            r.uuids_of_other_caches(id)
        };
        let cache = open_and_resume(id, path.clone(), None, others).await?;
        let lost_race = {
            let mut r = self.lock();
            let taken = r.caches.contains_key(&id);
            if !taken {
                r.caches.insert(
                    id,
                    CacheEntry {
                        path: path.clone(),
                        cache: cache.clone(),
                    },
                );
            }
            taken
        };
        if lost_race {
            // another client resumed this id meanwhile; ours stops again
            let _ = blocking(move || Ok(cache.shutdown()?)).await;
            return Err(RegistryError::Busy(format!(
                "cache {id} was resumed meanwhile by another client"
            )));
        }
        self.announce(Change::CacheAdded(id, cache)).await;
        tracing::info!(id, %path, "resumed cache");
        let saved = {
            let mut r = self.lock();
            r.failed.remove(&id);
            self.snapshot(&r)
        };
        saved.write().await?;
        let listed = devices::list_unrecorded(&mut self.lock(), id, self.frontends.default_kind());
        for dev in listed {
            self.announce(Change::DeviceAdded(dev)).await;
        }
        Ok(())
    }

    /// `FreeCache`: forgets a cache that failed to come back, or stops a
    /// running one that serves no device.
    pub async fn free_cache(&self, id: u8) -> Result<(), RegistryError> {
        let forgotten = {
            let mut r = self.lock();
            r.failed.remove(&id).map(|_| self.snapshot(&r))
        };
        if let Some(saved) = forgotten {
            tracing::info!(id, "forgot a cache that failed to resume");
            return saved.write().await;
        }
        let cache = self.running_cache(id)?;
        // ids the cache holds data of without a record are listed only
        // while it runs (list_unrecorded): they go with it
        let (mut unrecorded, mut users) = (Vec::new(), Vec::new());
        for (&dev, e) in self.lock().devices.iter() {
            if e.cache_id == id {
                if e.unrecorded() {
                    unrecorded.push(dev);
                } else {
                    users.push(dev);
                }
            }
        }
        if !users.is_empty() || !cache.devices().is_empty() {
            let users: Vec<String> = users.iter().map(u8::to_string).collect();
            return Err(RegistryError::Busy(format!(
                "cache {id} still serves device(s) {}; remove them first (lcctl detach ID)",
                users.join(", ")
            )));
        }
        {
            let mut r = self.lock();
            r.caches.remove(&id);
            for dev in &unrecorded {
                r.devices.remove(dev);
            }
        }
        for dev in unrecorded {
            self.announce(Change::DeviceRemoved(dev)).await;
        }
        self.announce(Change::CacheRemoved(id)).await;
        blocking(move || Ok(cache.shutdown()?)).await?;
        tracing::info!(id, "freed cache");
        self.persist().await
    }

    /// `RepointCache(id, path)`: brings back a cache that failed at start
    /// from `path`, recording that path and the uuid found there as the
    /// cache's, on purpose.
    pub async fn repoint_cache(&self, cache_id: u8, path: String) -> Result<(), RegistryError> {
        let rec = {
            let r = self.lock();
            match r.failed.get(&cache_id) {
                Some((rec, _)) => rec.clone(),
                None if r.caches.contains_key(&cache_id) => {
                    return Err(RegistryError::Busy(format!(
                        "cache {cache_id} is running; only a cache that failed to come back can \
                         be re-pointed (free it first: lcctl free {cache_id})"
                    )))
                }
                None => {
                    return Err(RegistryError::NotFound(format!(
                        "there is no cache {cache_id} to re-point (lcctl list shows them); \
                         resume a cache with lcctl resume PATH --id {cache_id}"
                    )))
                }
            }
        };
        self.resume_cache(cache_id, path.clone()).await?;
        let cache = self.running_cache(cache_id).ok();
        if let Some(c) = &cache {
            apply_saved_knobs(cache_id, c, &rec.knobs);
        }
        {
            // its failed devices count their dirty lines there from now on
            let mut r = self.lock();
            for e in r.devices.values_mut().filter(|e| e.cache_id == cache_id) {
                e.resumed_cache = cache.clone();
            }
        }
        let cache = cache.map(|c| c.uuid());
        tracing::warn!(
            id = cache_id,
            %path,
            uuid = %cache.map(|u| uuid_hex(&u)).unwrap_or_default(),
            "re-pointed cache"
        );
        self.persist().await
    }

    /// Sets a knob of `cache` through the engine (which checks its range)
    /// and records it.
    pub async fn set_knob(
        &self,
        cache: &Cache,
        knob: Knob,
        value: u64,
    ) -> Result<(), RegistryError> {
        cache
            .set_knob(knob, value)
            .map_err(|e| RegistryError::InvalidArgument(e.to_string()))?;
        tracing::info!(
            cache = cache.id(),
            knob = knob.spec().name,
            value,
            "knob set"
        );
        self.persist().await
    }

    /// What ListCaches reports: the running caches, then those that failed
    /// to come back.
    pub fn list_caches(&self) -> Vec<CacheSummary> {
        // copied under the registry's lock; the engines are asked outside it
        type Running = Vec<(u8, String, Arc<Cache>)>;
        let (running, failed): (Running, Vec<CacheSummary>) = {
            let r = self.lock();
            (
                r.caches
                    .iter()
                    .map(|(&id, e)| (id, e.path.clone(), e.cache.clone()))
                    .collect(),
                r.failed
                    .iter()
                    .map(|(&id, (rec, why))| CacheSummary {
                        id,
                        path: rec.path.clone(),
                        uuid: rec.uuid.clone().unwrap_or_default(),
                        nr_segments: 0,
                        nr_dirty_caches: 0,
                        state: format!("failed: {why}"),
                    })
                    .collect(),
            )
        };
        running
            .into_iter()
            .map(|(id, path, cache)| {
                let st = cache.recent_status();
                CacheSummary {
                    id,
                    path,
                    uuid: uuid_hex(&cache.uuid()),
                    nr_segments: st.nr_segments,
                    nr_dirty_caches: st.nr_dirty_caches,
                    state: "running".into(),
                }
            })
            .chain(failed)
            .collect()
    }
}
