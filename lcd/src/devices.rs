//! Devices: a backing device attached to a cache and exposed as a block
//! device. `CreateDevice`, `RemoveDevice` and the restore at start live
//! here; the Manager and the device objects call into this module.
//!
//! A device goes `creating` → `running` (or `no block device: …` when lcd
//! runs with `--frontend none` or ublk cannot be used, data still safe in
//! the cache) → `detaching` → gone. A device whose backing path or cache is
//! missing at start, or whose write-back failed, is `failed: …` and stays
//! listed (and saved) until removed; the daemon keeps serving the rest.
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

use lc_engine::{BlockDevice, Cache, FileDevice};
use lc_proto::{DeviceInfo, LcdError};
use zbus::{Connection, ObjectServer};

use crate::daemon::{blocking, error_text, lock, to_dbus, Shared};
use crate::device_object::DeviceObject;
use crate::frontend::{BlockFrontend, Exposed, NotExposed};
use crate::identity::DeviceIdentity;
use crate::state::DeviceRecord;

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
    /// of its disk ([`list_unrecorded`]).
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
            migrate_threshold: 70,
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
    fn in_use(&self) -> bool {
        self.cache.is_some()
            || self.state == DeviceState::Creating
            || self.state == DeviceState::Detaching
    }

    /// Listed only because its cache holds dirty data of the id, with no
    /// record of its disk ([`list_unrecorded`]).
    pub fn unrecorded(&self) -> bool {
        !self.saved && self.backing.is_empty() && self.cache.is_none()
    }

    fn set_up(&mut self, up: BroughtUp) {
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
        match &self.cache {
            Some(c) => c.set_migrate_threshold(id, percent)?,
            None if percent > 100 => {
                return Err(lc_engine::Error::InvalidArgument(format!(
                    "migrate_threshold must be in 0..=100, got {percent}"
                )))
            }
            None => {}
        }
        self.migrate_threshold = percent;
        Ok(())
    }

    /// What ListDevices and `Info()` report.
    pub fn info(&self, id: u8) -> DeviceInfo {
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
    pub fn info(self) -> DeviceInfo {
        let id = self.id;
        let engine = self.cache.as_ref().and_then(|c| c.recent_device_status(id));
        DeviceInfo {
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

/// What [`bring_up`] brought up.
struct BroughtUp {
    size: u64,
    block: Option<Box<dyn Exposed>>,
    state: DeviceState,
    identity: DeviceIdentity,
}

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
    threshold: Option<u8>,
    from_restore: bool,
) -> Result<BroughtUp, LcdError> {
    let dev = FileDevice::open(backing.as_ref()).map_err(to_dbus)?;
    let size = dev.size_bytes();
    let identity = DeviceIdentity::of(&dev);
    if let Some(why) = expected.and_then(|e| e.mismatch(&identity)) {
        return Err(LcdError::Failed(format!(
            "{backing} is not the backing device recorded for device {id}: {why}. Nothing was \
             written to it. If the disk moved, re-point the device to its new path \
             (lcctl repoint {id} PATH); if this is the disk you want now, re-point it here \
             on purpose (lcctl repoint {id} {backing})"
        )));
    }
    if !from_restore {
        frontend.check_id_free(id).map_err(LcdError::Busy)?;
    }
    cache.attach_device(id, Arc::new(dev)).map_err(to_dbus)?;
    if let Some(t) = threshold {
        let _ = cache.set_migrate_threshold(id, t);
    }
    let (block, state) = match frontend.expose(cache, id, size) {
        Ok(b) => (Some(b), DeviceState::Running),
        Err(NotExposed::NotOffered(why)) => (None, DeviceState::NoBlockDevice(why)),
        // data stays reachable through the cache; say why
        Err(NotExposed::Failed(why)) if from_restore => (None, DeviceState::NoBlockDevice(why)),
        Err(NotExposed::Failed(why)) => {
            let _ = cache.detach_device(id, |_| {});
            return Err(LcdError::Failed(why));
        }
    };
    Ok(BroughtUp {
        size,
        block,
        state,
        identity,
    })
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
    let backing = backing_path;
    let (id, cache, frontend) = {
        let mut d = lock(daemon);
        if let Some(why) = d.frontend.refuses_new_devices() {
            return Err(LcdError::Failed(why));
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
            // not an id whose discarded data is still in the log either
            (1..=255u8)
                .find(|i| !d.devices.contains_key(i) && cache.device_lines_gone_for_good(*i))
                .ok_or_else(|| LcdError::Busy("all 255 device ids are in use".into()))?
        } else {
            device_id
        };
        if let Some(e) = d.devices.get(&id) {
            if e.unrecorded() {
                return Err(LcdError::Busy(format!(
                    "cache {} holds dirty data of device {id}, whose disk lcd has no record \
                     of: if {backing} is that disk, say so (lcctl repoint {id} {backing}); \
                     to give that data up: lcctl detach {id} --discard-dirty",
                    e.cache_id
                )));
            }
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
            DeviceEntry::new(
                cache_id,
                backing.clone(),
                Some(cache.clone()),
                DeviceState::Creating,
            ),
        );
        (id, cache, d.frontend.clone())
    };
    let (c, b) = (cache.clone(), backing.clone());
    let up = blocking(move || bring_up(&*frontend, &c, id, &b, None, None, false)).await;
    let up = match up {
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
        e.set_up(up);
        e.saved = true;
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
                Some((cache, e.block.take(), before))
            }
            None => {
                // not attached: forgotten only if the cache holds nothing of it
                let cache_id = e.cache_id;
                if let Some(why) = unattached_dirty_data(&d, id, cache_id) {
                    return Err(LcdError::Busy(why));
                }
                d.devices.remove(&id);
                None
            }
        }
    };
    let Some((cache, block, before)) = taken else {
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
                e.block = block;
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
            if let Some(b) = block {
                b.stop();
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

/// Why device `id` (not attached, of cache `cache_id`) cannot be forgotten
/// without losing data: its cache holds dirty lines of it, or its cache is
/// not running, so nobody can tell.
fn unattached_dirty_data(d: &crate::daemon::Daemon, id: u8, cache_id: u8) -> Option<String> {
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
        None if d.failed_cache(cache_id) => Some(format!(
            "device {id}'s cache {cache_id} is not running, so lcd cannot tell whether it holds \
             dirty data of the device: bring the cache back first (lcctl repoint-cache \
             {cache_id} PATH), or free the cache (lcctl free {cache_id}: its data is then \
             never resumed by lcd)"
        )),
        None => None,
    }
}

/// `ForgetDevice(id, discard_dirty)`: forgets a device that is not attached
/// (its disk is gone). Its dirty lines in the cache are dropped when
/// `discard_dirty` is set; without it this is `RemoveDevice` of a device
/// that is not attached.
pub async fn forget(
    daemon: &Shared,
    conn: &Connection,
    id: u8,
    discard_dirty: bool,
) -> Result<(), LcdError> {
    let (cache, before) = {
        let mut d = lock(daemon);
        let e = d.devices.get(&id).ok_or_else(|| {
            LcdError::NotFound(format!("there is no device {id} (lcctl list shows them)"))
        })?;
        if e.in_use() {
            return Err(LcdError::InvalidArgument(format!(
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
            (Some(why), _) => return Err(LcdError::Busy(why)),
        }
    };
    if let (Some(cache), Some(before)) = (cache, before) {
        announce_state(conn, id).await;
        let dropped = blocking(move || {
            cache
                .discard_device_lines(id, log_progress(id))
                .map_err(to_dbus)
        })
        .await;
        match dropped {
            Ok(n) => tracing::warn!(
                id,
                lines = n,
                "discarded the dirty data of a device that is not attached, as asked"
            ),
            Err(e) => {
                if let Some(e) = lock(daemon).devices.get_mut(&id) {
                    e.state = before;
                }
                announce_state(conn, id).await;
                return Err(LcdError::Io(format!(
                    "discarding device {id}'s dirty data did not finish: {}; the device stays \
                     listed: fix what the error names and try again",
                    error_text(e)
                )));
            }
        }
        lock(daemon).devices.remove(&id);
    }
    let _ = conn
        .object_server()
        .remove::<DeviceObject, _>(lc_proto::device_path(id))
        .await;
    tracing::info!(id, "forgot a device that was not attached");
    lock(daemon).persist()
}

/// `RepointDevice(id, path)`: brings back a device that is not attached.
/// With an empty `path`, from its recorded path, checking the recorded
/// identity (after the disk came back, or its cache was re-pointed); with a
/// path, from that path, recording it and the identity found there as the
/// device's, on purpose.
pub async fn repoint(
    daemon: &Shared,
    conn: &Connection,
    id: u8,
    path: String,
) -> Result<DeviceInfo, LcdError> {
    let (cache, backing, expected, threshold, frontend) = {
        let mut d = lock(daemon);
        let e = d.devices.get(&id).ok_or_else(|| {
            LcdError::NotFound(format!("there is no device {id} (lcctl list shows them)"))
        })?;
        if e.in_use() {
            return Err(LcdError::Busy(format!(
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
                LcdError::NotFound(format!(
                    "device {id}'s cache {cache_id} is not running: bring it back first \
                 (lcctl repoint-cache {cache_id} PATH)"
                ))
            })?;
        let (backing, expected) = if path.is_empty() {
            if e.backing.is_empty() {
                return Err(LcdError::InvalidArgument(format!(
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
                return Err(LcdError::Busy(format!(
                    "{backing} is already the backing device of device {other}"
                )));
            }
            tracing::warn!(id, other, %backing, "re-pointing to a path another failed device recorded");
        }
        if let Some(other) = d.cache_on(&backing) {
            return Err(LcdError::Busy(format!(
                "{backing} is the cache device of cache {other}; a backing device must be another device"
            )));
        }
        let e = d.devices.get_mut(&id).expect("looked up above");
        let threshold = e.migrate_threshold;
        e.state = DeviceState::Creating;
        (cache, backing, expected, threshold, d.frontend.clone())
    };
    let (c, b) = (cache.clone(), backing.clone());
    let up = blocking(move || {
        bring_up(
            &*frontend,
            &c,
            id,
            &b,
            expected.as_ref(),
            Some(threshold),
            false,
        )
    })
    .await;
    let result = {
        let mut d = lock(daemon);
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
                let why = error_text(err);
                e.state = DeviceState::Failed(why.clone());
                Err(LcdError::Failed(why))
            }
        }
    };
    let info = match result {
        Ok(info) => info,
        Err(e) => {
            announce_state(conn, id).await;
            return Err(e);
        }
    };
    announce_state(conn, id).await;
    tracing::warn!(id, %backing, explicit = !path.is_empty(), "re-pointed device");
    lock(daemon).persist()?;
    Ok(info)
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
    let frontend = lock(daemon).frontend.clone();
    let keep: Vec<u8> = records.iter().map(|r| r.id).collect();
    let f = frontend.clone();
    let _ = blocking(move || {
        f.before_restore(&keep);
        Ok(())
    })
    .await;
    let mut learnt = false;
    for rec in records {
        let id = rec.id;
        let cache = lock(daemon)
            .caches
            .get(&rec.cache_id)
            .map(|e| e.cache.clone());
        let mut entry = DeviceEntry::from_record(&rec, cache.clone());
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
                let (t, expected) = (rec.migrate_threshold, rec.identity.clone());
                let up =
                    blocking(move || bring_up(&*f, &c, id, &b, expected.as_ref(), Some(t), true))
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
    if learnt {
        if let Err(e) = lock(daemon).persist() {
            tracing::warn!("{}", error_text(e));
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
pub fn list_unrecorded(d: &mut crate::daemon::Daemon, cache_id: u8) -> Vec<u8> {
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

/// Stops every block device (at daemon stop); the caches keep the data.
pub fn stop_all(daemon: &Shared) {
    let devices: Vec<(u8, Box<dyn Exposed>)> = lock(daemon)
        .devices
        .iter_mut()
        .filter_map(|(&id, e)| e.block.take().map(|b| (id, b)))
        .collect();
    for (id, u) in devices {
        u.stop();
        tracing::info!(id, "block device removed");
    }
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
