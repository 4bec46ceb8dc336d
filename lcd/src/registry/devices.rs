//! The registry's rules for devices: create, remove (writing back first),
//! forget, re-point, the device knobs, the restore at start, and
//! the ids whose dirty data a cache holds without a record of their disk.
//!
//! Each device keeps the backing path the administrator gave and the
//! backing device's identity (`identity.rs`). A device brought back at start
//! whose path now leads to another disk is `failed` and nothing is written
//! to it; `RepointDevice` brings a failed device back, checking the recorded
//! identity or, given a path, recording that path and its identity on
//! purpose. A device that is not attached but whose cache still holds dirty
//! lines of it is never forgotten silently: `RemoveDevice` refuses, and
//! `ForgetDevice` with `discard_dirty` drops those lines from the cache
//! first (so they can never be written to a disk that takes the id later).

use std::sync::Arc;

use lc_engine::{BlockDevice, Cache, DeviceKnob, DeviceKnobs, FileDevice, Knob};

use super::device::{BroughtUp, DeviceEntry, DeviceState, DeviceSummary};
use super::error::blocking;
use super::paths::absolute;
use super::state::DeviceRecord;
use super::{Change, Registry, RegistryError, Roster};
use crate::frontend::{BlockFrontend, FrontendKind, NotExposed};
use crate::identity::DeviceIdentity;

/// Opens the backing device, checks it is the device `expected` records
/// (when given), attaches it to `cache` and exposes it through `frontend`.
/// On error the device is attached to nothing and nothing was written to
/// it. Brought back at start (`from_restore`), a device whose block device
/// cannot be started stays attached, its data reachable through the cache.
fn bring_up(
    frontend: &dyn BlockFrontend,
    cache: &Arc<Cache>,
    id: u8,
    backing: &str,
    expected: Option<&DeviceIdentity>,
    knobs: Option<DeviceKnobs>,
    from_restore: bool,
) -> Result<BroughtUp, RegistryError> {
    let dev = FileDevice::open(backing.as_ref()).map_err(RegistryError::from)?;
    let size = dev.size_bytes();
    let identity = DeviceIdentity::of(&dev);
    if let Some(why) = expected.and_then(|e| e.mismatch(&identity)) {
        return Err(RegistryError::Failed(format!(
            "{backing} is not the backing device recorded for device {id}: {why}. Nothing was \
             written to it. If the disk moved, re-point the device to its new path \
             (lcctl repoint {id} PATH); if this is the disk you want now, re-point it here \
             on purpose (lcctl repoint {id} {backing})"
        )));
    }
    if !from_restore {
        frontend.check_id_free(id).map_err(RegistryError::Busy)?;
    }
    cache
        .attach_device(id, Arc::new(dev))
        .map_err(RegistryError::from)?;
    if let Some(knobs) = &knobs {
        for s in &DeviceKnob::ALL {
            // in range (a DeviceKnobs holds no other), and just attached
            let _ = cache.set_device_knob(id, s.knob, knobs.get(s.knob));
        }
    }
    let (block, state) = match frontend.expose(cache, id, size) {
        Ok(b) => (Some(b), DeviceState::Running),
        Err(NotExposed::NotOffered(why)) => (None, DeviceState::NoBlockDevice(why)),
        // data stays reachable through the cache; say why
        Err(NotExposed::Failed(why)) if from_restore => (None, DeviceState::NoBlockDevice(why)),
        Err(NotExposed::Failed(why)) => {
            let _ = cache.detach_device(id, |_| {});
            return Err(RegistryError::Failed(why));
        }
    };
    Ok(BroughtUp {
        size,
        block,
        state,
        identity,
    })
}

/// Why device `id` (not attached, of cache `cache_id`) cannot be forgotten
/// without losing data: its cache holds dirty lines of it, or its cache is
/// not running, so nobody can tell.
fn unattached_dirty_data(d: &Roster, id: u8, cache_id: u8) -> Option<String> {
    match d.caches.get(&cache_id) {
        Some(c) => {
            let n = c.cache.nr_dirty_caches(id);
            if n > 0 {
                return Some(format!(
                    "device {id} is not attached but cache {cache_id} still holds {n} dirty 4 KiB \
                     lines of it that were never written back: bring its disk back \
                     (lcctl repoint {id} [PATH]) and detach it then, or give them up with \
                     lcctl detach {id} --discard-dirty (that data is lost)"
                ));
            }
            (!c.cache.device_lines_gone_for_good(id)).then(|| {
                format!(
                    "device {id}'s dirty data was discarded, but that is final only once \
                     write-back has passed it: run lcctl detach {id} --discard-dirty again"
                )
            })
        }
        None if d.failed.contains_key(&cache_id) => Some(format!(
            "device {id}'s cache {cache_id} is not running, so lcd cannot tell whether it holds \
             dirty data of the device: bring the cache back first (lcctl repoint-cache \
             {cache_id} PATH), or free the cache (lcctl free {cache_id}: its data is then \
             never resumed by lcd)"
        )),
        None => None,
    }
}

/// A write-back progress callback that logs every step of device `id`'s
/// write-back.
fn log_progress(id: u8) -> impl FnMut(lc_engine::DrainProgress) {
    let mut last = 0;
    move |p| {
        if p.done != last {
            last = p.done;
            tracing::info!(id, done = p.done, total = p.total, "writing back");
        }
    }
}

/// Lists, as failed devices, the ids whose dirty data cache `cache_id`
/// holds but that lcd has no device of (its state file was lost, or the
/// cache disk comes from another machine): nobody can tell which disk that
/// data belongs to, so no disk may silently take the id. The administrator
/// attaches the right disk on purpose (`RepointDevice(id, path)`) or gives
/// the data up (`ForgetDevice(id, true)`). They are not saved: the next
/// start lists them again from the cache. Returns the ids listed.
pub(super) fn list_unrecorded(d: &mut Roster, cache_id: u8, frontend: FrontendKind) -> Vec<u8> {
    let Some(cache) = d.caches.get(&cache_id).map(|e| e.cache.clone()) else {
        return Vec::new();
    };
    let mut listed = Vec::new();
    for id in cache.dirty_device_ids() {
        match d.devices.get(&id) {
            Some(e) if e.cache_id == cache_id => continue,
            Some(e) => {
                tracing::error!(
                    id,
                    cache_id,
                    other = e.cache_id,
                    "cache {cache_id} holds dirty data of device id {id}, which is a device of \
                     cache {} here; that data cannot be written back until device {id} is \
                     forgotten and re-pointed to cache {cache_id}'s disk",
                    e.cache_id
                );
                continue;
            }
            None => {}
        }
        let n = cache.nr_dirty_caches(id);
        tracing::warn!(
            id,
            cache_id,
            lines = n,
            "the cache holds dirty data of a device lcd has no record of: listed as failed"
        );
        d.devices.insert(
            id,
            DeviceEntry::new(
                cache_id,
                String::new(),
                frontend,
                Some(cache.clone()),
                DeviceState::Failed(format!(
                    "cache {cache_id} holds {n} dirty 4 KiB lines of device {id}, but lcd has no \
                         record of its disk (the state file was lost, or the cache comes from \
                         another machine), so no disk takes the id silently: attach the disk that \
                         data belongs to on purpose (lcctl repoint {id} PATH), or give the data up \
                         (lcctl detach {id} --discard-dirty; it is lost)"
                )),
            ),
        );
        listed.push(id);
    }
    listed
}

impl Registry {
    /// `CreateDevice(device_id, backing_path, cache_id)`.
    pub async fn create_device(
        &self,
        device_id: u8,
        backing_path: String,
        cache_id: u8,
        frontend: Option<FrontendKind>,
    ) -> Result<DeviceSummary, RegistryError> {
        let kind = frontend.unwrap_or(self.frontends.default_kind());
        absolute(&backing_path)?;
        if cache_id == 0 {
            return Err(RegistryError::InvalidArgument(
                "cache ids are 1..=255".into(),
            ));
        }
        let backing = backing_path;
        let (id, cache, frontend) = {
            let mut d = self.lock();
            if let Some(why) = self.frontends.get(kind).refuses_new_devices() {
                return Err(RegistryError::Failed(format!(
                    "{why}; or attach it with another frontend (lcctl attach --frontend nbd)"
                )));
            }
            let cache = d
            .caches
            .get(&cache_id)
            .ok_or_else(|| {
                RegistryError::NotFound(format!(
                    "cache {cache_id} is not resumed; resume it first (lcctl resume PATH --id {cache_id})"
                ))
            })?
            .cache
            .clone();
            let id = if device_id == 0 {
                // not an id whose discarded data is still in the log either
                (1..=255u8)
                    .find(|i| !d.devices.contains_key(i) && cache.device_lines_gone_for_good(*i))
                    .ok_or_else(|| RegistryError::Busy("all 255 device ids are in use".into()))?
            } else {
                device_id
            };
            if let Some(e) = d.devices.get(&id) {
                if e.unrecorded() {
                    return Err(RegistryError::Busy(format!(
                        "cache {} holds dirty data of device {id}, whose disk lcd has no record \
                     of: if {backing} is that disk, say so (lcctl repoint {id} {backing}); \
                     to give that data up: lcctl detach {id} --discard-dirty",
                        e.cache_id
                    )));
                }
                return Err(RegistryError::Busy(format!(
                    "device {id} exists; choose another id or remove it first"
                )));
            }
            if let Some(other) = d.device_on(&backing) {
                return Err(RegistryError::Busy(format!(
                    "{backing} is already the backing device of device {other}"
                )));
            }
            if let Some(other) = d.cache_on(&backing) {
                return Err(RegistryError::Busy(format!(
                "{backing} is the cache device of cache {other}; a backing device must be another device"
            )));
            }
            d.devices.insert(
                id,
                DeviceEntry::new(
                    cache_id,
                    backing.clone(),
                    kind,
                    Some(cache.clone()),
                    DeviceState::Creating,
                ),
            );
            (id, cache, self.frontends.get(kind).clone())
        };
        let (c, b) = (cache.clone(), backing.clone());
        let up = blocking(move || bring_up(&*frontend, &c, id, &b, None, None, false)).await;
        let up = match up {
            Ok(x) => x,
            Err(e) => {
                self.lock().devices.remove(&id);
                return Err(e);
            }
        };
        let info = {
            let mut d = self.lock();
            let e = d.devices.get_mut(&id).expect("reserved above");
            e.cache = Some(cache);
            e.set_up(up);
            e.saved = true;
            e.info(id)
        };
        self.announce(Change::DeviceAdded(id)).await;
        tracing::info!(id, cache_id, %backing, frontend = %kind, node = %info.node, "created device");
        self.persist().await?;
        Ok(info)
    }

    /// `RemoveDevice`: stops the block device, writes the device's data back,
    /// detaches it and forgets it. With `wait` false, returns once begun.
    pub async fn remove_device(self: &Arc<Self>, id: u8, wait: bool) -> Result<(), RegistryError> {
        let taken = {
            let mut d = self.lock();
            let e = d.devices.get_mut(&id).ok_or_else(|| {
                RegistryError::NotFound(format!("there is no device {id} (lcctl list shows them)"))
            })?;
            match e.state {
                DeviceState::Creating => {
                    return Err(RegistryError::Busy(format!("device {id} is being created")))
                }
                DeviceState::Detaching => {
                    return Err(RegistryError::Busy(format!(
                        "device {id} is already being removed; wait for it"
                    )))
                }
                _ => {}
            }
            match e.cache.clone() {
                Some(cache) => {
                    let before = std::mem::replace(&mut e.state, DeviceState::Detaching);
                    Some((cache, e.block.take(), before))
                }
                None => {
                    // not attached: forgotten only if the cache holds nothing of it
                    let cache_id = e.cache_id;
                    if let Some(why) = unattached_dirty_data(&d, id, cache_id) {
                        return Err(RegistryError::Busy(why));
                    }
                    d.devices.remove(&id);
                    None
                }
            }
        };
        let Some((cache, block, before)) = taken else {
            self.announce(Change::DeviceRemoved(id)).await;
            tracing::info!(id, "forgot a device that was not attached");
            return self.persist().await;
        };
        self.announce(Change::DeviceState(id)).await;
        let registry = self.clone();
        let work = async move {
            // First the write-back with the block device still served: if the
            // backing (or cache) device fails, the detach fails and the device
            // stays as it was, its data in the cache.
            let c = cache.clone();
            let pre = blocking(move || {
                c.write_back_device(id, log_progress(id))
                    .map_err(RegistryError::from)
            })
            .await;
            if let Err(e) = pre {
                let why = e.to_string();
                tracing::error!(id, "detach failed, device kept: {why}");
                if let Some(e) = registry.lock().devices.get_mut(&id) {
                    e.block = block;
                    e.state = before;
                }
                registry.announce(Change::DeviceState(id)).await;
                return Err(RegistryError::Io(format!(
                    "cannot detach device {id}: {why}; the device stays attached and usable, its \
                 dirty data in the cache: fix the device, then detach again"
                )));
            }
            let c = cache.clone();
            let res = blocking(move || {
                if let Some(b) = block {
                    b.stop();
                }
                c.detach_device(id, log_progress(id))
                    .map_err(RegistryError::from)
            })
            .await;
            match res {
                Ok(()) => {
                    registry.lock().devices.remove(&id);
                    registry.announce(Change::DeviceRemoved(id)).await;
                    tracing::info!(id, "removed device: its data is on the backing device");
                    registry.persist().await
                }
                Err(e) => {
                    let why = e.to_string();
                    tracing::error!(id, "write-back of device failed: {why}");
                    if let Some(e) = registry.lock().devices.get_mut(&id) {
                        e.state = DeviceState::Failed(format!(
                            "write-back failed: {why}; the dirty data is still in the cache: \
                         fix the backing device and remove the device again"
                        ));
                    }
                    registry.announce(Change::DeviceState(id)).await;
                    let _ = registry.persist().await;
                    Err(RegistryError::Io(format!(
                    "write-back of device {id} failed: {why}; its dirty data is still in the cache: fix the backing device and try again"
                )))
                }
            }
        };
        if wait {
            work.await
        } else {
            tokio::spawn(work);
            Ok(())
        }
    }

    /// `ForgetDevice(id, discard_dirty)`: forgets a device that is not attached
    /// (its disk is gone). Its dirty lines in the cache are dropped when
    /// `discard_dirty` is set; without it this is `RemoveDevice` of a device
    /// that is not attached.
    pub async fn forget_device(&self, id: u8, discard_dirty: bool) -> Result<(), RegistryError> {
        let (cache, before) = {
            let mut d = self.lock();
            let e = d.devices.get(&id).ok_or_else(|| {
                RegistryError::NotFound(format!("there is no device {id} (lcctl list shows them)"))
            })?;
            if e.in_use() {
                return Err(RegistryError::InvalidArgument(format!(
                    "device {id} is {}: only a device that is not attached can be forgotten; \
                 detach it (lcctl detach {id}), which writes its data back",
                    e.state.describe()
                )));
            }
            let cache_id = e.cache_id;
            let why = unattached_dirty_data(&d, id, cache_id);
            let cache = d.caches.get(&cache_id).map(|c| c.cache.clone());
            match (why, cache) {
                (None, _) => {
                    d.devices.remove(&id);
                    (None, None)
                }
                (Some(why), Some(cache)) if discard_dirty => {
                    let e = d.devices.get_mut(&id).expect("looked up above");
                    let before = std::mem::replace(&mut e.state, DeviceState::Detaching);
                    let _ = why;
                    (Some(cache), Some(before))
                }
                (Some(why), _) => return Err(RegistryError::Busy(why)),
            }
        };
        if let (Some(cache), Some(before)) = (cache, before) {
            self.announce(Change::DeviceState(id)).await;
            let dropped = blocking(move || {
                cache
                    .discard_device_lines(id, log_progress(id))
                    .map_err(RegistryError::from)
            })
            .await;
            match dropped {
                Ok(n) => tracing::warn!(
                    id,
                    lines = n,
                    "discarded the dirty data of a device that is not attached, as asked"
                ),
                Err(e) => {
                    if let Some(e) = self.lock().devices.get_mut(&id) {
                        e.state = before;
                    }
                    self.announce(Change::DeviceState(id)).await;
                    return Err(RegistryError::Io(format!(
                        "discarding device {id}'s dirty data did not finish: {e}; the device stays \
                         listed: fix what the error names and try again"
                    )));
                }
            }
            self.lock().devices.remove(&id);
        }
        self.announce(Change::DeviceRemoved(id)).await;
        tracing::info!(id, "forgot a device that was not attached");
        self.persist().await
    }

    /// `RepointDevice(id, path)`: brings back a device that is not attached.
    /// With an empty `path`, from its recorded path, checking the recorded
    /// identity (after the disk came back, or its cache was re-pointed); with a
    /// path, from that path, recording it and the identity found there as the
    /// device's, on purpose.
    pub async fn repoint_device(
        &self,
        id: u8,
        path: String,
    ) -> Result<DeviceSummary, RegistryError> {
        if !path.is_empty() {
            absolute(&path)?;
        }
        let (cache, backing, expected, knobs, frontend) = {
            let mut d = self.lock();
            let e = d.devices.get(&id).ok_or_else(|| {
                RegistryError::NotFound(format!("there is no device {id} (lcctl list shows them)"))
            })?;
            if e.in_use() {
                return Err(RegistryError::Busy(format!(
                    "device {id} is {}; only a failed device can be re-pointed: detach it first \
                 (lcctl detach {id})",
                    e.state.describe()
                )));
            }
            let cache_id = e.cache_id;
            let cache = d
                .caches
                .get(&cache_id)
                .map(|c| c.cache.clone())
                .ok_or_else(|| {
                    RegistryError::NotFound(format!(
                        "device {id}'s cache {cache_id} is not running: bring it back first \
                 (lcctl repoint-cache {cache_id} PATH)"
                    ))
                })?;
            let (backing, expected) = if path.is_empty() {
                if e.backing.is_empty() {
                    return Err(RegistryError::InvalidArgument(format!(
                        "device {id} has no recorded path (lcd has no record of its disk): give \
                     the path of the disk its dirty data belongs to (lcctl repoint {id} PATH)"
                    )));
                }
                (e.backing.clone(), e.identity.clone())
            } else {
                (path.clone(), None)
            };
            // another attached device on this path is refused (its exclusive
            // open would refuse it anyway); one that is not attached only
            // recorded the path, which may now lead elsewhere: the administrator
            // says where this device's disk is
            if let Some(other) = d.device_on(&backing).filter(|&o| o != id) {
                if d.devices.get(&other).is_some_and(|o| o.cache.is_some()) {
                    return Err(RegistryError::Busy(format!(
                        "{backing} is already the backing device of device {other}"
                    )));
                }
                tracing::warn!(id, other, %backing, "re-pointing to a path another failed device recorded");
            }
            if let Some(other) = d.cache_on(&backing) {
                return Err(RegistryError::Busy(format!(
                "{backing} is the cache device of cache {other}; a backing device must be another device"
            )));
            }
            let e = d.devices.get_mut(&id).expect("looked up above");
            let knobs = e.knobs.clone();
            e.state = DeviceState::Creating;
            let frontend = self.frontends.get(e.frontend).clone();
            (cache, backing, expected, knobs, frontend)
        };
        let (c, b) = (cache.clone(), backing.clone());
        let up = blocking(move || {
            bring_up(
                &*frontend,
                &c,
                id,
                &b,
                expected.as_ref(),
                Some(knobs),
                false,
            )
        })
        .await;
        let result = {
            let mut d = self.lock();
            let e = d.devices.get_mut(&id).expect("kept while Creating");
            match up {
                Ok(up) => {
                    e.backing = backing.clone();
                    e.cache = Some(cache);
                    e.set_up(up);
                    e.saved = true;
                    Ok(e.info(id))
                }
                Err(err) => {
                    let why = err.to_string();
                    e.state = DeviceState::Failed(why.clone());
                    Err(RegistryError::Failed(why))
                }
            }
        };
        let info = match result {
            Ok(info) => info,
            Err(e) => {
                self.announce(Change::DeviceState(id)).await;
                return Err(e);
            }
        };
        self.announce(Change::DeviceState(id)).await;
        tracing::warn!(id, %backing, explicit = !path.is_empty(), "re-pointed device");
        self.persist().await?;
        Ok(info)
    }

    /// Re-creates the saved devices (after their caches are back; their objects
    /// are published once lcd is on the bus). One that cannot be brought up is
    /// listed as failed; the others go on.
    pub(super) async fn restore_devices(&self, records: Vec<DeviceRecord>) -> bool {
        let keep: Vec<u8> = records.iter().map(|r| r.id).collect();
        let frontends = self.frontends.clone();
        let _ = blocking(move || {
            frontends.before_restore(&keep);
            Ok(())
        })
        .await;
        let mut learnt = false;
        for rec in records {
            let id = rec.id;
            let cache = self
                .lock()
                .caches
                .get(&rec.cache_id)
                .map(|e| e.cache.clone());
            let default = self.frontends.default_kind();
            let mut entry = DeviceEntry::from_record(id, &rec, default, cache.clone());
            let frontend = self.frontends.get(entry.frontend).clone();
            match cache {
                None => {
                    entry.state = DeviceState::Failed(format!(
                    "its cache {} is not running; bring the cache back (lcctl repoint-cache {} \
                     PATH), then the device (lcctl repoint {id})",
                    rec.cache_id, rec.cache_id
                ))
                }
                Some(cache) => {
                    let (c, b, f) = (cache.clone(), rec.backing.clone(), frontend.clone());
                    let (k, expected) = (entry.knobs.clone(), rec.identity.clone());
                    let up = blocking(move || {
                        bring_up(&*f, &c, id, &b, expected.as_ref(), Some(k), true)
                    })
                    .await;
                    match up {
                        Ok(up) => {
                            if rec.identity.is_none() {
                                tracing::info!(
                                    id,
                                    backing = %rec.backing,
                                    identity = ?up.identity,
                                    "the saved state had no identity for this backing device \
                                     (written by an older lcd): recorded the one found now"
                                );
                                learnt = true;
                            }
                            entry.cache = Some(cache);
                            entry.set_up(up);
                        }
                        Err(e) => entry.state = DeviceState::Failed(e.to_string()),
                    }
                }
            }
            match &entry.state {
                DeviceState::Failed(why) => tracing::error!(id, "cannot bring back device: {why}"),
                s => tracing::info!(id, state = %s.describe(), "device back from the saved state"),
            }
            self.lock().devices.insert(id, entry);
        }
        learnt
    }

    /// Sets knob `knob` of device `id` (in the table's range) and records
    /// it. A `migrate_threshold` of 0 means never, whatever the disk's load:
    /// write-back of its cache stops now, not at the policy's next look (up
    /// to `update_interval` away).
    pub async fn set_device_knob(
        &self,
        id: u8,
        knob: DeviceKnob,
        value: u64,
    ) -> Result<(), RegistryError> {
        let (stop_now, cache_id, saved) = {
            let mut r = self.lock();
            let e = r
                .devices
                .get_mut(&id)
                .ok_or_else(|| RegistryError::NotFound(format!("device {id} was removed")))?;
            e.set_knob(id, knob, value)
                .map_err(|e| RegistryError::InvalidArgument(e.to_string()))?;
            tracing::info!(device = id, knob = knob.spec().name, value, "knob set");
            let stop_now = e.cache.clone().filter(|c| {
                knob == DeviceKnob::MigrateThreshold
                    && value == 0
                    && c.knob(Knob::AllowMigrate) != 0
            });
            let cache_id = e.cache_id;
            (stop_now, cache_id, self.snapshot(&r))
        };
        saved.write().await?;
        if let Some(cache) = stop_now {
            if cache.set_knob(Knob::AllowMigrate, 0).is_ok() {
                self.announce(Change::AllowMigrate(cache_id)).await;
            }
        }
        Ok(())
    }
}
