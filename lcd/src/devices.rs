//! Devices: a backing device attached to a cache and exposed as a block
//! device. `CreateDevice`, `RemoveDevice` and the restore at start live
//! here; the Manager and the device objects call into this module.
//!
//! A device goes `creating` → `running` (or `no block device: …` when lcd
//! runs with `--frontend none` or ublk cannot be used, data still safe in
//! the cache) → `detaching` → gone. A device whose backing path or cache is
//! missing at start, or whose write-back failed, is `failed: …` and stays
//! listed (and saved) until removed; the daemon keeps serving the rest.

use std::sync::Arc;

use lc_engine::{BlockDevice, Cache, FileDevice};
use lc_proto::{DeviceInfo, LcdError};
use zbus::{Connection, ObjectServer};

use crate::daemon::{blocking, canonical, error_text, lock, to_dbus, Shared};
use crate::device_object::DeviceObject;
use crate::state::DeviceRecord;
use crate::ublk::{self, UblkDevice};

/// How devices are exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frontend {
    /// As `/dev/ublkb<id>` (production).
    Ublk,
    /// Not at all: attached to their cache only (tests; draining a cache on
    /// a kernel without ublk).
    None,
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
    fn describe(&self) -> String {
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
    /// Canonical backing path.
    pub backing: String,
    /// The cache, while the device is attached to it.
    pub cache: Option<Arc<Cache>>,
    /// The block device, while there is one.
    pub ublk: Option<UblkDevice>,
    /// Size of the backing device in bytes (0 if never opened).
    pub size_bytes: u64,
    /// Threshold to record while the device is not attached.
    pub migrate_threshold: u8,
    /// Where it is in its life.
    pub state: DeviceState,
}

impl DeviceEntry {
    /// What ListDevices and `Info()` report.
    pub fn info(&self, id: u8) -> DeviceInfo {
        let engine = self
            .cache
            .as_ref()
            .and_then(|c| c.devices().into_iter().find(|d| d.device_id == id));
        DeviceInfo {
            id,
            cache_id: self.cache_id,
            backing: self.backing.clone(),
            dev: engine.as_ref().map_or_else(String::new, |d| d.dev.clone()),
            size_bytes: self.size_bytes,
            node: self
                .ublk
                .as_ref()
                .map_or_else(String::new, |u| u.node.clone()),
            nr_dirty_caches: engine.as_ref().map_or(0, |d| d.nr_dirty_caches),
            migrate_threshold: engine
                .as_ref()
                .map_or(self.migrate_threshold, |d| d.migrate_threshold),
            state: self.state.describe(),
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
        }
    }
}

/// Opens the backing device, attaches it to `cache` and exposes it.
/// Returns the block device (if any) and the state to show. On error the
/// device is attached to nothing.
fn bring_up(
    frontend: Frontend,
    run_dir: &std::path::Path,
    cache: &Arc<Cache>,
    id: u8,
    backing: &str,
    threshold: Option<u8>,
    from_restore: bool,
) -> Result<(u64, Option<UblkDevice>, DeviceState), LcdError> {
    let dev = FileDevice::open(backing.as_ref()).map_err(to_dbus)?;
    let size = dev.size_bytes();
    if frontend == Frontend::Ublk && !from_restore {
        if let Some(state) = ublk::existing_state(id) {
            return Err(LcdError::Busy(format!(
                "ublk device {id} already exists (state {state}) and is not lc's; \
                 choose another device id"
            )));
        }
    }
    cache.attach_device(id, Arc::new(dev)).map_err(to_dbus)?;
    if let Some(t) = threshold {
        let _ = cache.set_migrate_threshold(id, t);
    }
    match frontend {
        Frontend::None => Ok((
            size,
            None,
            DeviceState::NoBlockDevice("lcd runs with --frontend none".into()),
        )),
        Frontend::Ublk => {
            if let Some(why) = ublk::unavailable_reason() {
                return Ok((size, None, DeviceState::NoBlockDevice(why)));
            }
            // a restarted lcd takes back a device the kernel kept for it
            // (if lcd's record in run_dir says it is lc's)
            match UblkDevice::start(cache.clone(), id, size, run_dir) {
                Ok(u) => Ok((size, Some(u), DeviceState::Running)),
                Err(why) => {
                    if from_restore {
                        // data stays reachable through the cache; say why
                        return Ok((size, None, DeviceState::NoBlockDevice(why)));
                    }
                    let _ = cache.detach_device(id, |_| {});
                    Err(LcdError::Failed(why))
                }
            }
        }
    }
}

/// `CreateDevice(device_id, backing_path, cache_id)`.
pub async fn create(
    daemon: &Shared,
    server: &ObjectServer,
    device_id: u8,
    backing_path: String,
    cache_id: u8,
) -> Result<DeviceInfo, LcdError> {
    if cache_id == 0 {
        return Err(LcdError::InvalidArgument("cache ids are 1..=255".into()));
    }
    let backing = canonical(&backing_path);
    let (id, cache, frontend, run_dir) = {
        let mut d = lock(daemon);
        if d.frontend == Frontend::Ublk {
            if let Some(why) = ublk::unavailable_reason() {
                return Err(LcdError::Failed(format!(
                    "cannot expose a block device: {why}"
                )));
            }
        }
        let cache = d
            .caches
            .get(&cache_id)
            .ok_or_else(|| {
                LcdError::NotFound(format!(
                    "cache {cache_id} is not resumed; resume it first (lcctl resume PATH --id {cache_id})"
                ))
            })?
            .cache
            .clone();
        let id = if device_id == 0 {
            (1..=255u8)
                .find(|i| !d.devices.contains_key(i))
                .ok_or_else(|| LcdError::Busy("all 255 device ids are in use".into()))?
        } else {
            device_id
        };
        if d.devices.contains_key(&id) {
            return Err(LcdError::Busy(format!(
                "device {id} exists; choose another id or remove it first"
            )));
        }
        if let Some(other) = d.device_on(&backing) {
            return Err(LcdError::Busy(format!(
                "{backing} is already the backing device of device {other}"
            )));
        }
        if let Some(other) = d.cache_on(&backing) {
            return Err(LcdError::Busy(format!(
                "{backing} is the cache device of cache {other}; a backing device must be another device"
            )));
        }
        d.devices.insert(
            id,
            DeviceEntry {
                cache_id,
                backing: backing.clone(),
                cache: None,
                ublk: None,
                size_bytes: 0,
                migrate_threshold: 70,
                state: DeviceState::Creating,
            },
        );
        (id, cache, d.frontend, d.run_dir.clone())
    };
    let (c, b) = (cache.clone(), backing.clone());
    let up = blocking(move || bring_up(frontend, &run_dir, &c, id, &b, None, false)).await;
    let (size, ublk, state) = match up {
        Ok(x) => x,
        Err(e) => {
            lock(daemon).devices.remove(&id);
            return Err(e);
        }
    };
    let info = {
        let mut d = lock(daemon);
        let e = d.devices.get_mut(&id).expect("reserved above");
        e.cache = Some(cache);
        e.ublk = ublk;
        e.size_bytes = size;
        e.state = state;
        e.info(id)
    };
    server
        .at(
            lc_proto::device_path(id),
            DeviceObject {
                id,
                daemon: daemon.clone(),
            },
        )
        .await
        .map_err(LcdError::ZBus)?;
    tracing::info!(id, cache_id, %backing, node = %info.node, "created device");
    lock(daemon).persist()?;
    Ok(info)
}

/// `RemoveDevice`: stops the block device, writes the device's data back,
/// detaches it and forgets it. With `wait` false, returns once begun.
pub async fn remove(
    daemon: &Shared,
    conn: &Connection,
    id: u8,
    wait: bool,
) -> Result<(), LcdError> {
    let taken = {
        let mut d = lock(daemon);
        let e = d.devices.get_mut(&id).ok_or_else(|| {
            LcdError::NotFound(format!("there is no device {id} (lcctl list shows them)"))
        })?;
        match e.state {
            DeviceState::Creating => {
                return Err(LcdError::Busy(format!("device {id} is being created")))
            }
            DeviceState::Detaching => {
                return Err(LcdError::Busy(format!(
                    "device {id} is already being removed; wait for it"
                )))
            }
            _ => {}
        }
        match e.cache.clone() {
            Some(cache) => {
                let before = std::mem::replace(&mut e.state, DeviceState::Detaching);
                Some((cache, e.ublk.take(), before))
            }
            None => {
                // never attached (failed at start): nothing to write back
                d.devices.remove(&id);
                None
            }
        }
    };
    let Some((cache, ublk, before)) = taken else {
        let _ = conn
            .object_server()
            .remove::<DeviceObject, _>(lc_proto::device_path(id))
            .await;
        tracing::info!(id, "forgot a device that was not attached");
        return lock(daemon).persist();
    };
    announce_state(conn, id).await;
    let daemon2 = daemon.clone();
    let conn2 = conn.clone();
    let work = async move {
        // First the write-back with the block device still served: if the
        // backing (or cache) device fails, the detach fails and the device
        // stays as it was, its data in the cache.
        let c = cache.clone();
        let pre =
            blocking(move || c.write_back_device(id, log_progress(id)).map_err(to_dbus)).await;
        if let Err(e) = pre {
            let why = error_text(e);
            tracing::error!(id, "detach failed, device kept: {why}");
            if let Some(e) = lock(&daemon2).devices.get_mut(&id) {
                e.ublk = ublk;
                e.state = before;
            }
            announce_state(&conn2, id).await;
            return Err(LcdError::Io(format!(
                "cannot detach device {id}: {why}; the device stays attached and usable, its \
                 dirty data in the cache: fix the device, then detach again"
            )));
        }
        let c = cache.clone();
        let res = blocking(move || {
            if let Some(u) = ublk {
                u.stop();
            }
            c.detach_device(id, log_progress(id)).map_err(to_dbus)
        })
        .await;
        match res {
            Ok(()) => {
                lock(&daemon2).devices.remove(&id);
                let _ = conn2
                    .object_server()
                    .remove::<DeviceObject, _>(lc_proto::device_path(id))
                    .await;
                tracing::info!(id, "removed device: its data is on the backing device");
                lock(&daemon2).persist()
            }
            Err(e) => {
                let why = error_text(e);
                tracing::error!(id, "write-back of device failed: {why}");
                if let Some(e) = lock(&daemon2).devices.get_mut(&id) {
                    e.state = DeviceState::Failed(format!(
                        "write-back failed: {why}; the dirty data is still in the cache: \
                         fix the backing device and remove the device again"
                    ));
                }
                announce_state(&conn2, id).await;
                let _ = lock(&daemon2).persist();
                Err(LcdError::Io(format!(
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

/// Emits PropertiesChanged for a device's `State`.
pub async fn announce_state(conn: &Connection, id: u8) {
    if let Ok(iface) = conn
        .object_server()
        .interface::<_, DeviceObject>(lc_proto::device_path(id))
        .await
    {
        let _ = iface
            .get()
            .await
            .state_changed(iface.signal_emitter())
            .await;
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

/// Re-creates the saved devices (after their caches are back; their objects
/// are published once lcd is on the bus). One that cannot be brought up is
/// listed as failed; the others go on.
pub async fn restore(daemon: &Shared, records: Vec<DeviceRecord>) {
    let (frontend, run_dir) = {
        let d = lock(daemon);
        (d.frontend, d.run_dir.clone())
    };
    if frontend == Frontend::Ublk && ublk::unavailable_reason().is_none() {
        let keep: Vec<u8> = records.iter().map(|r| r.id).collect();
        let r = run_dir.clone();
        let _ = blocking(move || {
            ublk::sweep_orphans(&keep, &r);
            Ok(())
        })
        .await;
    }
    for rec in records {
        let id = rec.id;
        let cache = lock(daemon)
            .caches
            .get(&rec.cache_id)
            .map(|e| e.cache.clone());
        let mut entry = DeviceEntry {
            cache_id: rec.cache_id,
            backing: rec.backing.clone(),
            cache: None,
            ublk: None,
            size_bytes: 0,
            migrate_threshold: rec.migrate_threshold,
            state: DeviceState::Creating,
        };
        match cache {
            None => {
                entry.state = DeviceState::Failed(format!(
                    "its cache {} is not running; resume the cache, then remove and re-create the device",
                    rec.cache_id
                ))
            }
            Some(cache) => {
                let (c, b, r) = (cache.clone(), rec.backing.clone(), run_dir.clone());
                let t = rec.migrate_threshold;
                match blocking(move || bring_up(frontend, &r, &c, id, &b, Some(t), true)).await {
                    Ok((size, u, state)) => {
                        entry.cache = Some(cache);
                        entry.size_bytes = size;
                        entry.ublk = u;
                        entry.state = state;
                    }
                    Err(e) => entry.state = DeviceState::Failed(error_text(e)),
                }
            }
        }
        match &entry.state {
            DeviceState::Failed(why) => tracing::error!(id, "cannot bring back device: {why}"),
            s => tracing::info!(id, state = %s.describe(), "device back from the saved state"),
        }
        lock(daemon).devices.insert(id, entry);
    }
}

/// Stops every block device (at daemon stop); the caches keep the data.
pub fn stop_all(daemon: &Shared) {
    let devices: Vec<(u8, UblkDevice)> = lock(daemon)
        .devices
        .iter_mut()
        .filter_map(|(&id, e)| e.ublk.take().map(|u| (id, u)))
        .collect();
    for (id, u) in devices {
        u.stop();
        tracing::info!(id, "block device removed");
    }
}
