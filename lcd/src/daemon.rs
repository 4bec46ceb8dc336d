//! The daemon: serves `org.lc.Lcd1.Manager` on the bus and hosts the caches.
//!
//! The Manager carries the lc-mgr messages (format, per-client cursor,
//! resume, free, clear_stat, list) and the device calls (see `devices.rs`),
//! with named errors and a uid check on every call that changes something.
//! Each resumed cache is an `org.lc.Lcd1.Cache` object (`cache_object.rs`),
//! each device an `org.lc.Lcd1.Device` object (`device_object.rs`) served
//! as `/dev/ublkb<id>` (`frontend/ublk/`). The configuration is recorded in the
//! state directory and restored at start (`state.rs`); systemd hears
//! READY=1 once all of it is back. Engine calls block, so they run on
//! tokio's blocking pool, never under the daemon's lock. The migration
//! policy (`policy.rs`) sets each cache's `allow_migrate`. A client's
//! cursor is dropped when the bus says the client has gone
//! (`NameOwnerChanged`), so scripts that run lcctl in a loop do not make lcd
//! grow.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use lc_engine::{format_cache_device, Cache, CacheOptions, FileDevice};
use lc_proto::{CacheInfo, DeviceInfo, LcdError, API_VERSION, BUS_NAME, MANAGER_PATH};
use zbus::message::Header;
use zbus::{interface, Connection, ObjectServer};

use crate::cache_object::CacheObject;
use crate::devices::{self, DeviceEntry};
use crate::frontend::BlockFrontend;
use crate::state::{CacheRecord, StateStore};
use lc_engine::Knob;

/// Which bus to serve on.
#[derive(Debug, Clone)]
pub enum Bus {
    /// The system bus (production).
    System,
    /// The session bus of the calling user.
    Session,
    /// A bus at this address (tests).
    Address(String),
}

/// One resumed cache.
pub(crate) struct Entry {
    /// Path of the cache device, as the administrator gave it.
    pub(crate) path: String,
    pub(crate) cache: Arc<Cache>,
}

pub(crate) struct Daemon {
    pub(crate) caches: BTreeMap<u8, Entry>,
    /// Configured devices, by id.
    pub(crate) devices: BTreeMap<u8, DeviceEntry>,
    /// How devices are exposed.
    pub(crate) frontend: Arc<dyn BlockFrontend>,
    /// Caches the state names that could not be resumed at start, with why.
    failed: BTreeMap<u8, (CacheRecord, String)>,
    /// Each client's cursor, by unique bus name.
    cursors: HashMap<String, u8>,
    store: StateStore,
}

/// The daemon's state, shared by the bus objects.
pub(crate) type Shared = Arc<Mutex<Daemon>>;

impl Daemon {
    /// The uuids recorded for caches other than `id`: those running and
    /// those that failed to come back.
    pub(crate) fn uuids_of_other_caches(&self, id: u8) -> Vec<(u8, String)> {
        let running = self
            .caches
            .iter()
            .map(|(&i, e)| (i, uuid_hex(&e.cache.uuid())));
        let failed = self
            .failed
            .iter()
            .filter_map(|(&i, (rec, _))| rec.uuid.clone().map(|u| (i, u)));
        running.chain(failed).filter(|(i, _)| *i != id).collect()
    }

    /// Whether cache `id` is named by the saved state but failed to come back.
    pub(crate) fn failed_cache(&self, id: u8) -> bool {
        self.failed.contains_key(&id)
    }

    /// The resumed cache whose cache device `path` is.
    pub(crate) fn cache_on(&self, path: &str) -> Option<u8> {
        self.caches
            .iter()
            .find(|(_, e)| same_device(&e.path, path))
            .map(|(&id, _)| id)
    }

    /// The device whose backing device `path` is.
    pub(crate) fn device_on(&self, path: &str) -> Option<u8> {
        self.devices
            .iter()
            .find(|(_, e)| same_device(&e.backing, path))
            .map(|(&id, _)| id)
    }

    /// Records the configuration (caches, knobs) in the state directory.
    pub(crate) fn persist(&self) -> Result<(), LcdError> {
        let mut records: Vec<CacheRecord> = self
            .caches
            .iter()
            .map(|(&id, e)| CacheRecord {
                id,
                path: e.path.clone(),
                knobs: Knob::ALL
                    .iter()
                    .map(|k| (k.name.to_string(), e.cache.knob(k.knob)))
                    .collect(),
                uuid: Some(uuid_hex(&e.cache.uuid())),
            })
            .collect();
        records.extend(self.failed.values().map(|(r, _)| r.clone()));
        records.sort_by_key(|r| r.id);
        let devices = self
            .devices
            .iter()
            .filter(|(_, e)| e.saved)
            .map(|(&id, e)| e.record(id))
            .collect();
        self.store.save(records, devices).map_err(|e| {
            LcdError::Io(format!(
                "saving the configuration in {} failed: {e}; the change is live but will not survive a restart",
                self.store.dir().display()
            ))
        })
    }
}

/// `org.lc.Lcd1.Manager` at `/org/lc/Lcd1`.
struct Manager {
    daemon: Shared,
}

pub(crate) fn lock(d: &Mutex<Daemon>) -> std::sync::MutexGuard<'_, Daemon> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

/// Translates an engine error into the named D-Bus error a client sees.
pub(crate) fn to_dbus(e: lc_engine::Error) -> LcdError {
    use lc_engine::Error as E;
    let msg = e.to_string();
    match e {
        E::Open { ref source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) =>
        {
            LcdError::NotFound(msg)
        }
        // a path that cannot name a device, not an I/O error
        E::Open { ref source, .. }
            if matches!(
                source.raw_os_error(),
                Some(libc::ELOOP | libc::ENAMETOOLONG)
            ) =>
        {
            LcdError::InvalidArgument(msg)
        }
        E::Open {
            ref path,
            ref source,
        } if source.raw_os_error() == Some(libc::EBUSY) => LcdError::Busy(format!(
            "{path} is in use by the kernel or another program (mounted, swap, part of a RAID, \
             LVM volume, a cache or device of this or another lcd, `lcd writeback` or \
             `lcd check`): unmount or release it first"
        )),
        E::Io { .. } | E::Open { .. } => LcdError::Io(msg),
        E::NotFormatted | E::Corrupt(_) | E::UnsupportedVersion(_) => LcdError::NotFormatted(msg),
        E::HasSignature(_)
        | E::TooSmall { .. }
        | E::TooLarge { .. }
        | E::InvalidArgument(_)
        | E::OutOfRange { .. }
        | E::BackingTooSmall { .. } => LcdError::InvalidArgument(msg),
        E::DirtyBeyondEnd { .. } => LcdError::Io(msg),
        E::UnknownDevice(_) => LcdError::NotFound(msg),
        E::DeviceExists(_)
        | E::Detaching(_)
        | E::MissingDevice(_)
        | E::DiscardUnfinished { .. } => LcdError::Busy(msg),
        E::Stopped => LcdError::Failed(msg),
    }
}

/// A cache uuid as ListCaches and the state file show it.
pub(crate) fn uuid_hex(u: &[u8; 16]) -> String {
    u.iter().map(|b| format!("{b:02x}")).collect()
}

/// Opens the cache device on `path` and resumes it as cache `id`; with
/// `expected_uuid`, only if its superblock has that uuid (nothing is
/// written to another cache or disk found at the path).
/// `others` are the uuids recorded for other caches (running or failed to
/// come back): a disk holding one of those is refused, so that one cache
/// never comes back under two ids.
fn open_and_resume(
    id: u8,
    path: &str,
    expected_uuid: Option<&str>,
    others: &[(u8, String)],
) -> Result<Cache, LcdError> {
    let dev = FileDevice::open(path.as_ref()).map_err(to_dbus)?;
    if !others.is_empty() {
        if let Ok(sb) = lc_engine::read_superblock(&dev) {
            let found = uuid_hex(&sb.uuid);
            if let Some((other, _)) = others.iter().find(|(_, u)| *u == found) {
                return Err(LcdError::Busy(format!(
                    "{path} holds cache {other} (uuid {found}), not a cache that may become                      cache {id}; nothing was written to it. If cache {other}'s disk moved                      here, re-point cache {other} to it (lcctl repoint-cache {other} {path});                      to use it as cache {id}, free cache {other} first (lcctl free {other})"
                )));
            }
        }
    }
    if let Some(want) = expected_uuid {
        let found = lc_engine::read_superblock(&dev).map(|sb| uuid_hex(&sb.uuid));
        if found.as_deref().ok() != Some(want) {
            let found = match found {
                Ok(u) => format!("the lc cache with uuid {u}"),
                Err(e) => format!("no lc cache ({e})"),
            };
            return Err(LcdError::Failed(format!(
                "{path} is not the cache device recorded for cache {id}: it holds {found}, \
                 cache {id} has uuid {want}. Nothing was written to it. If the disk moved, \
                 re-point the cache to its new path (lcctl repoint-cache {id} PATH; `lcd check \
                 PATH` shows a disk's uuid); to take the cache at this path as cache {id} on \
                 purpose, re-point it here (lcctl repoint-cache {id} {path})"
            )));
        }
    }
    Cache::resume(id, Arc::new(dev), CacheOptions::default()).map_err(to_dbus)
}

/// Refuses a path that is not absolute: lcd does not run in the caller's
/// working directory, so a relative path would name another file.
fn absolute(path: &str) -> Result<(), LcdError> {
    if path.starts_with('/') {
        return Ok(());
    }
    Err(LcdError::InvalidArgument(format!(
        "{path:?} is not an absolute path; lcd cannot know the caller's working directory: \
         give the full path (lcctl does)"
    )))
}

/// Whether two paths name the same device: the same path, or
/// another name of it (a hard link of a file; another node of a block
/// device).
pub(crate) fn same_device(a: &str, b: &str) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if a == b {
        return true;
    }
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => {
            (x.dev(), x.ino()) == (y.dev(), y.ino())
                || (x.file_type().is_block_device()
                    && y.file_type().is_block_device()
                    && x.rdev() == y.rdev())
        }
        _ => false,
    }
}

/// The message of a named error, without its name.
pub(crate) fn error_text(e: LcdError) -> String {
    match e {
        LcdError::ZBus(e) => e.to_string(),
        LcdError::NotFound(m)
        | LcdError::Busy(m)
        | LcdError::InvalidArgument(m)
        | LcdError::NotFormatted(m)
        | LcdError::AccessDenied(m)
        | LcdError::Io(m)
        | LcdError::Failed(m) => m,
    }
}

/// Runs blocking engine work off the async executor.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LcdError> + Send + 'static,
) -> Result<T, LcdError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LcdError::Failed(format!("internal error: {e}")))?
}

fn sender(hdr: &Header<'_>) -> Result<String, LcdError> {
    hdr.sender()
        .map(|s| s.to_string())
        .ok_or_else(|| LcdError::AccessDenied("the call has no sender".into()))
}

/// Refuses callers other than root (in addition to the bus policy).
pub(crate) async fn require_root(conn: &Connection, hdr: &Header<'_>) -> Result<(), LcdError> {
    let name = hdr
        .sender()
        .ok_or_else(|| LcdError::AccessDenied("the call has no sender".into()))?
        .to_owned();
    let dbus = zbus::fdo::DBusProxy::new(conn)
        .await
        .map_err(LcdError::ZBus)?;
    let uid = dbus
        .get_connection_unix_user(name.into())
        .await
        .map_err(|e| LcdError::AccessDenied(format!("cannot tell who is calling: {e}")))?;
    if uid != 0 {
        return Err(LcdError::AccessDenied(format!(
            "uid {uid} may only read; changes need root (run the command with sudo)"
        )));
    }
    Ok(())
}

impl Manager {
    fn cursor(&self, hdr: &Header<'_>) -> Result<u8, LcdError> {
        let who = sender(hdr)?;
        lock(&self.daemon)
            .cursors
            .get(&who)
            .copied()
            .ok_or_else(|| {
                LcdError::InvalidArgument(
                    "no cache selected: call SwitchTo(id) first (lcctl switch-to ID)".into(),
                )
            })
    }

    fn cache_at_cursor(&self, hdr: &Header<'_>) -> Result<(u8, Arc<Cache>), LcdError> {
        let id = self.cursor(hdr)?;
        let d = lock(&self.daemon);
        let e = d.caches.get(&id).ok_or_else(|| {
            LcdError::NotFound(format!("cache {id} is not resumed; resume it first"))
        })?;
        Ok((id, e.cache.clone()))
    }

    /// Resumes the cache on `path` as cache `id`.
    async fn resume(&self, server: &ObjectServer, id: u8, path: String) -> Result<(), LcdError> {
        absolute(&path)?;
        {
            let d = lock(&self.daemon);
            if d.caches.contains_key(&id) {
                return Err(LcdError::Busy(format!(
                    "cache {id} is already resumed; use another id"
                )));
            }
            if let Some(other) = d.cache_on(&path) {
                return Err(LcdError::Busy(format!("{path} is already cache {other}")));
            }
            // a device that is not attached only recorded the path, which
            // may lead elsewhere now (the disks moved)
            let attached = d
                .device_on(&path)
                .filter(|o| d.devices.get(o).is_some_and(|e| e.cache.is_some()));
            if let Some(other) = attached {
                return Err(LcdError::Busy(format!(
                    "{path} is the backing device of device {other}; a cache device must be another device"
                )));
            }
        }
        let others = lock(&self.daemon).uuids_of_other_caches(id);
        let p = path.clone();
        let cache = blocking(move || open_and_resume(id, &p, None, &others)).await?;
        let cache = Arc::new(cache);
        let lost_race = {
            let mut d = lock(&self.daemon);
            let taken = d.caches.contains_key(&id);
            if !taken {
                d.caches.insert(
                    id,
                    Entry {
                        path: path.clone(),
                        cache: cache.clone(),
                    },
                );
            }
            taken
        };
        if lost_race {
            // another client resumed this id meanwhile; ours stops again
            let _ = blocking(move || cache.shutdown().map_err(to_dbus)).await;
            return Err(LcdError::Busy(format!(
                "cache {id} was resumed meanwhile by another client"
            )));
        }
        server
            .at(
                lc_proto::cache_path(id),
                CacheObject {
                    cache,
                    daemon: self.daemon.clone(),
                },
            )
            .await
            .map_err(LcdError::ZBus)?;
        tracing::info!(id, %path, "resumed cache");
        let listed = {
            let mut d = lock(&self.daemon);
            d.failed.remove(&id);
            d.persist()?;
            devices::list_unrecorded(&mut d, id)
        };
        for dev in listed {
            let obj = crate::device_object::DeviceObject {
                id: dev,
                daemon: self.daemon.clone(),
            };
            server
                .at(lc_proto::device_path(dev), obj)
                .await
                .map_err(LcdError::ZBus)?;
        }
        Ok(())
    }

    /// Puts the knobs `rec` saved back on cache `id`.
    fn apply_knobs(&self, id: u8, knobs: &BTreeMap<String, u64>) {
        let Some(cache) = lock(&self.daemon).caches.get(&id).map(|e| e.cache.clone()) else {
            return;
        };
        for (name, &v) in knobs {
            if let Err(e) = Knob::from_name(name).and_then(|k| cache.set_knob(k, v)) {
                tracing::warn!(id, "saved knob {name}={v} not applied: {e}");
            }
        }
    }
}

#[interface(name = "org.lc.Lcd1.Manager")]
impl Manager {
    async fn format_cache_device(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        path: String,
        force: bool,
    ) -> Result<(), LcdError> {
        require_root(conn, &hdr).await?;
        absolute(&path)?;
        let key = path.clone();
        {
            // for a clear message; the exclusive open below is what refuses
            // a device in use (by whatever name it was opened)
            let d = lock(&self.daemon);
            if let Some(id) = d.cache_on(&key) {
                return Err(LcdError::Busy(format!(
                    "{path} is cache {id}, which is resumed; free it first"
                )));
            }
            if let Some(id) = d.device_on(&key) {
                return Err(LcdError::Busy(format!(
                    "{path} is the backing device of device {id}; detach it first (lcctl detach {id})"
                )));
            }
        }
        blocking(move || {
            let dev = FileDevice::open(path.as_ref()).map_err(to_dbus)?;
            format_cache_device(&dev, force).map_err(to_dbus)?;
            tracing::info!(%path, force, "formatted a cache device");
            Ok(())
        })
        .await
    }

    async fn switch_to(&self, #[zbus(header)] hdr: Header<'_>, id: u8) -> Result<(), LcdError> {
        if id == 0 {
            return Err(LcdError::InvalidArgument("cache ids are 1..=255".into()));
        }
        let who = sender(&hdr)?;
        lock(&self.daemon).cursors.insert(who, id);
        Ok(())
    }

    async fn resume_cache(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(object_server)] server: &ObjectServer,
        path: String,
    ) -> Result<(), LcdError> {
        require_root(conn, &hdr).await?;
        let id = self.cursor(&hdr)?;
        self.resume(server, id, path).await
    }

    /// `ResumeCache` with the id given instead of the cursor's (for scripts
    /// whose every call is a new client, such as busctl).
    async fn resume_cache_as(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(object_server)] server: &ObjectServer,
        id: u8,
        path: String,
    ) -> Result<(), LcdError> {
        require_root(conn, &hdr).await?;
        if id == 0 {
            return Err(LcdError::InvalidArgument("cache ids are 1..=255".into()));
        }
        self.resume(server, id, path).await
    }

    async fn free_cache(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<(), LcdError> {
        require_root(conn, &hdr).await?;
        let id = self.cursor(&hdr)?;
        {
            let mut d = lock(&self.daemon);
            if d.failed.remove(&id).is_some() {
                tracing::info!(id, "forgot a cache that failed to resume");
                return d.persist();
            }
        }
        let (id, cache) = self.cache_at_cursor(&hdr)?;
        // ids the cache holds data of without a record are listed only
        // while it runs (devices::list_unrecorded): they go with it
        let (mut unrecorded, mut users) = (Vec::new(), Vec::new());
        for (&dev, e) in lock(&self.daemon).devices.iter() {
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
            return Err(LcdError::Busy(format!(
                "cache {id} still serves device(s) {}; remove them first (lcctl detach ID)",
                users.join(", ")
            )));
        }
        {
            let mut d = lock(&self.daemon);
            d.caches.remove(&id);
            for dev in &unrecorded {
                d.devices.remove(dev);
            }
        }
        for dev in unrecorded {
            let _ = server
                .remove::<crate::device_object::DeviceObject, _>(lc_proto::device_path(dev))
                .await;
        }
        let _ = server
            .remove::<CacheObject, _>(lc_proto::cache_path(id))
            .await;
        blocking(move || cache.shutdown().map_err(to_dbus)).await?;
        tracing::info!(id, "freed cache");
        lock(&self.daemon).persist()
    }

    async fn clear_stat(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), LcdError> {
        require_root(conn, &hdr).await?;
        self.cache_at_cursor(&hdr)?.1.clear_stat();
        Ok(())
    }

    async fn list_caches(&self) -> Result<Vec<CacheInfo>, LcdError> {
        // copied under the daemon's lock; the engines are asked outside it
        type Running = Vec<(u8, String, Arc<Cache>)>;
        let (running, failed): (Running, Vec<CacheInfo>) = {
            let d = lock(&self.daemon);
            (
                d.caches
                    .iter()
                    .map(|(&id, e)| (id, e.path.clone(), e.cache.clone()))
                    .collect(),
                d.failed
                    .iter()
                    .map(|(&id, (rec, why))| CacheInfo {
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
        Ok(running
            .into_iter()
            .map(|(id, path, cache)| {
                let st = cache.recent_status();
                CacheInfo {
                    id,
                    path,
                    uuid: uuid_hex(&cache.uuid()),
                    nr_segments: st.nr_segments,
                    nr_dirty_caches: st.nr_dirty_caches,
                    state: "running".into(),
                }
            })
            .chain(failed)
            .collect())
    }

    async fn create_device(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(object_server)] server: &ObjectServer,
        device_id: u8,
        backing_path: String,
        cache_id: u8,
    ) -> Result<DeviceInfo, LcdError> {
        require_root(conn, &hdr).await?;
        absolute(&backing_path)?;
        devices::create(&self.daemon, server, device_id, backing_path, cache_id).await
    }

    async fn remove_device(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        device_id: u8,
    ) -> Result<(), LcdError> {
        require_root(conn, &hdr).await?;
        devices::remove(&self.daemon, conn, device_id, true).await
    }

    async fn begin_remove_device(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        device_id: u8,
    ) -> Result<(), LcdError> {
        require_root(conn, &hdr).await?;
        devices::remove(&self.daemon, conn, device_id, false).await
    }

    /// Forgets a device that is not attached; `discard_dirty` drops the
    /// dirty data its cache still holds of it (lost for good).
    async fn forget_device(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        device_id: u8,
        discard_dirty: bool,
    ) -> Result<(), LcdError> {
        require_root(conn, &hdr).await?;
        devices::forget(&self.daemon, conn, device_id, discard_dirty).await
    }

    /// Brings back a failed device: from its recorded path and identity
    /// (`backing_path` empty), or from `backing_path`, recorded on purpose.
    async fn repoint_device(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        device_id: u8,
        backing_path: String,
    ) -> Result<DeviceInfo, LcdError> {
        require_root(conn, &hdr).await?;
        if !backing_path.is_empty() {
            absolute(&backing_path)?;
        }
        devices::repoint(&self.daemon, conn, device_id, backing_path).await
    }

    /// Brings back a cache that failed at start from `path`, recording that
    /// path and the uuid found there as the cache's, on purpose.
    async fn repoint_cache(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(object_server)] server: &ObjectServer,
        cache_id: u8,
        path: String,
    ) -> Result<(), LcdError> {
        require_root(conn, &hdr).await?;
        let rec = {
            let d = lock(&self.daemon);
            match d.failed.get(&cache_id) {
                Some((rec, _)) => rec.clone(),
                None if d.caches.contains_key(&cache_id) => {
                    return Err(LcdError::Busy(format!(
                        "cache {cache_id} is running; only a cache that failed to come back can \
                         be re-pointed (free it first: lcctl free {cache_id})"
                    )))
                }
                None => {
                    return Err(LcdError::NotFound(format!(
                        "there is no cache {cache_id} to re-point (lcctl list shows them); \
                         resume a cache with lcctl resume PATH --id {cache_id}"
                    )))
                }
            }
        };
        self.resume(server, cache_id, path.clone()).await?;
        self.apply_knobs(cache_id, &rec.knobs);
        let cache = {
            let mut d = lock(&self.daemon);
            let cache = d.caches.get(&cache_id).map(|e| e.cache.clone());
            // its failed devices count their dirty lines there from now on
            for e in d.devices.values_mut().filter(|e| e.cache_id == cache_id) {
                e.resumed_cache = cache.clone();
            }
            cache.map(|c| c.uuid())
        };
        tracing::warn!(
            id = cache_id,
            %path,
            uuid = %cache.map(|u| uuid_hex(&u)).unwrap_or_default(),
            "re-pointed cache"
        );
        lock(&self.daemon).persist()
    }

    async fn list_devices(&self) -> Result<Vec<DeviceInfo>, LcdError> {
        let views: Vec<_> = {
            let d = lock(&self.daemon);
            d.devices.iter().map(|(&id, e)| e.view(id)).collect()
        };
        Ok(views.into_iter().map(|v| v.info()).collect())
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn block_frontend(&self) -> String {
        let frontend = lock(&self.daemon).frontend.clone();
        frontend.describe()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> u32 {
        API_VERSION
    }
}

/// Gives lcd a mount namespace of its own (mounts still propagate in, none
/// propagate out), so a file system mounted on one of its own block
/// devices is never in lcd's namespace and cannot hold it at exit. Must run
/// while the process has one thread.
fn private_mount_namespace() {
    // SAFETY: unshare and mount take no pointers but the static strings
    // below; both results are checked.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            tracing::warn!(
                "cannot get a mount namespace of lcd's own ({}); run lcd as root, \
                 or under systemd with PrivateMounts=yes",
                std::io::Error::last_os_error()
            );
            return;
        }
        if libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ) != 0
        {
            tracing::warn!(
                "cannot make lcd's mounts private: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Which frontend exposes the devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontendKind {
    /// As `/dev/ublkb<id>` (production).
    Ublk,
    /// Not at all: attached to their cache only (tests; draining a cache on
    /// a kernel without ublk).
    None,
}

/// How lcd runs: where it serves, keeps its state and exposes devices.
#[derive(Debug, Clone)]
pub struct Options {
    /// The bus to serve on.
    pub bus: Bus,
    /// Where caches, devices and knobs are recorded.
    pub state_dir: std::path::PathBuf,
    /// How devices are exposed.
    pub frontend: FrontendKind,
    /// Where the udev markers of lc's block devices go.
    pub run_dir: std::path::PathBuf,
    /// Queues of each new ublk device (0: one per CPU).
    pub queues: u16,
    /// How long to wait at start for saved devices that do not exist yet.
    pub wait_for_devices: std::time::Duration,
}

/// Runs the daemon until SIGTERM or SIGINT, then removes its block devices
/// and stops every cache cleanly.
///
/// Start-up works without D-Bus, so that lcd can start early in boot
/// (before `local-fs-pre.target`, long before the system bus): saved caches
/// are resumed and saved devices re-created first, then systemd hears
/// READY=1, then lcd connects to the bus (waiting for it to appear),
/// publishes its objects and takes its name.
pub fn run(opts: Options) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let frontend: Arc<dyn BlockFrontend> = match opts.frontend {
        FrontendKind::Ublk => {
            private_mount_namespace();
            // and before libublk touches /run/ublksrvd, lcd makes it its own
            Arc::new(crate::frontend::ublk::UblkFrontend::new(
                opts.run_dir.clone(),
                opts.queues,
            ))
        }
        FrontendKind::None => Arc::new(crate::frontend::NoFrontend),
    };
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let store = StateStore::open(&opts.state_dir)?;
        let saved = store.load()?;
        let daemon: Shared = Arc::new(Mutex::new(Daemon {
            caches: BTreeMap::new(),
            devices: BTreeMap::new(),
            frontend,
            failed: BTreeMap::new(),
            cursors: HashMap::new(),
            store,
        }));
        let paths = saved
            .caches
            .iter()
            .map(|c| c.path.clone())
            .chain(saved.devices.iter().map(|d| d.backing.clone()))
            .collect();
        tokio::select! {
            () = wait_for_paths(paths, opts.wait_for_devices) => {}
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
        restore(&daemon, saved.caches).await;
        devices::restore(&daemon, saved.devices).await;
        {
            let mut d = lock(&daemon);
            let ids: Vec<u8> = d.caches.keys().copied().collect();
            for id in ids {
                devices::list_unrecorded(&mut d, id);
            }
        }
        // systemd readiness: every saved cache and device is back
        if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
            tracing::warn!("cannot notify systemd of readiness: {e}");
        }
        let serving = tokio::select! {
            served = serve(&daemon, &opts.bus) => Some(served?),
            _ = term.recv() => None,
            _ = int.recv() => None,
        };
        if let Some(_conn) = serving {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        stop(daemon).await
    })
}

/// Connects to the bus (waiting until it is there), publishes the Manager
/// and every cache and device object, then takes lcd's name. The returned
/// connection serves until it is dropped.
async fn serve(daemon: &Shared, bus: &Bus) -> anyhow::Result<Connection> {
    let conn = connect(daemon, bus).await;
    // Subscribed before any client can find lcd, so no departure is missed.
    let departures = zbus::fdo::DBusProxy::new(&conn)
        .await
        .context("talking to the bus daemon")?
        .receive_name_owner_changed()
        .await
        .context("subscribing to NameOwnerChanged")?;
    tokio::spawn(forget_departed_clients(daemon.clone(), departures));
    // Every cache and device is published before clients can find lcd by name.
    publish(daemon, &conn).await;
    conn.request_name(BUS_NAME)
        .await
        .with_context(|| format!("taking the name {BUS_NAME} (is another lcd running?)"))?;
    tracing::info!(?bus, "lcd serves {BUS_NAME}");
    tokio::spawn(crate::policy::run(daemon.clone(), conn.clone()));
    Ok(conn)
}

/// A connection to `bus` serving the Manager, tried every second until the
/// bus is there (early in boot lcd starts long before the system bus).
async fn connect(daemon: &Shared, bus: &Bus) -> Connection {
    let mut said = String::new();
    loop {
        let builder = match bus {
            Bus::System => zbus::connection::Builder::system(),
            Bus::Session => zbus::connection::Builder::session(),
            Bus::Address(a) => zbus::connection::Builder::address(a.as_str()),
        };
        let manager = Manager {
            daemon: daemon.clone(),
        };
        let result = builder
            .serve_at(MANAGER_PATH, manager)
            .serve_at(MANAGER_PATH, zbus::fdo::ObjectManager)
            .build()
            .await;
        match result {
            Ok(conn) => {
                if !said.is_empty() {
                    tracing::info!(?bus, "connected to the bus");
                }
                return conn;
            }
            Err(e) => {
                let why = e.to_string();
                if why != said {
                    tracing::info!(
                        ?bus,
                        "waiting for the bus ({why}); caches and devices are served meanwhile"
                    );
                    said = why;
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Publishes an object for every resumed cache and every configured device.
async fn publish(daemon: &Shared, conn: &Connection) {
    let (caches, devices): (Vec<(u8, Arc<Cache>)>, Vec<u8>) = {
        let d = lock(daemon);
        (
            d.caches
                .iter()
                .map(|(&id, e)| (id, e.cache.clone()))
                .collect(),
            d.devices.keys().copied().collect(),
        )
    };
    for (id, cache) in caches {
        let obj = CacheObject {
            cache,
            daemon: daemon.clone(),
        };
        if let Err(e) = conn.object_server().at(lc_proto::cache_path(id), obj).await {
            tracing::error!(id, "cannot publish cache object: {e}");
        }
    }
    for id in devices {
        let obj = crate::device_object::DeviceObject {
            id,
            daemon: daemon.clone(),
        };
        if let Err(e) = conn
            .object_server()
            .at(lc_proto::device_path(id), obj)
            .await
        {
            tracing::error!(id, "cannot publish device object: {e}");
        }
    }
}

/// Waits until every path exists or `timeout` has passed (disks still
/// appearing during boot); what is still missing then is brought back as
/// failed.
async fn wait_for_paths(paths: Vec<String>, timeout: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut waited = false;
    loop {
        let missing: Vec<&str> = paths
            .iter()
            .filter(|p| !std::path::Path::new(p).exists())
            .map(String::as_str)
            .collect();
        if missing.is_empty() {
            if waited {
                tracing::info!("every saved cache and backing device is there");
            }
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            if waited {
                tracing::warn!(
                    "still missing after {} s: {}; they are listed as failed",
                    timeout.as_secs(),
                    missing.join(", ")
                );
            }
            return;
        }
        if !waited {
            tracing::info!(
                "waiting up to {} s for {} (--wait-for-devices)",
                timeout.as_secs(),
                missing.join(", ")
            );
            waited = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The clean stop: removes the block devices, then flushes and stops every
/// cache.
async fn stop(daemon: Shared) -> anyhow::Result<()> {
    tracing::info!("stopping: removing block devices, flushing and stopping every cache");
    let d2 = daemon.clone();
    tokio::task::spawn_blocking(move || devices::stop_all(&d2)).await?;
    let caches: Vec<(u8, Arc<Cache>)> = std::mem::take(&mut lock(&daemon).caches)
        .into_iter()
        .map(|(id, e)| (id, e.cache))
        .collect();
    tokio::task::spawn_blocking(move || {
        for (id, c) in caches {
            if let Err(e) = c.shutdown() {
                tracing::error!(id, "clean stop of cache failed: {e}");
            }
        }
    })
    .await?;
    Ok(())
}

/// Drops the cursor of each client that leaves the bus (a unique name that
/// loses its owner is never given out again).
async fn forget_departed_clients(daemon: Shared, mut changes: zbus::fdo::NameOwnerChangedStream) {
    use futures_util::StreamExt;
    while let Some(signal) = changes.next().await {
        let Ok(args) = signal.args() else { continue };
        if args.new_owner().is_some() || !args.name().starts_with(':') {
            continue;
        }
        if lock(&daemon).cursors.remove(args.name().as_str()).is_some() {
            tracing::debug!(client = %args.name(), "dropped the cache cursor of a client that left the bus");
        }
    }
}

/// Resumes every cache the state names; one that fails is kept, reported
/// as failed by ListCaches, and never stops the others.
async fn restore(daemon: &Shared, records: Vec<CacheRecord>) {
    let mut learnt = false;
    for rec in records {
        let (id, path, uuid) = (rec.id, rec.path.clone(), rec.uuid.clone());
        let resumed = blocking(move || open_and_resume(id, &path, uuid.as_deref(), &[])).await;
        match resumed {
            Ok(cache) => {
                for (name, &v) in &rec.knobs {
                    if let Err(e) = Knob::from_name(name).and_then(|k| cache.set_knob(k, v)) {
                        tracing::warn!(id, "saved knob {name}={v} not applied: {e}");
                    }
                }
                let cache = Arc::new(cache);
                if rec.uuid.is_none() {
                    tracing::info!(
                        id,
                        path = %rec.path,
                        uuid = %uuid_hex(&cache.uuid()),
                        "the saved state had no uuid for this cache (written by an older lcd): \
                         recorded the one found now"
                    );
                    learnt = true;
                }
                tracing::info!(id, path = %rec.path, "resumed cache from the saved state");
                lock(daemon).caches.insert(
                    id,
                    Entry {
                        path: rec.path,
                        cache,
                    },
                );
            }
            Err(e) => {
                let why = error_text(e);
                tracing::error!(id, path = %rec.path, "cannot resume cache: {why}");
                lock(daemon).failed.insert(id, (rec, why));
            }
        }
    }
    if learnt {
        if let Err(e) = lock(daemon).persist() {
            tracing::warn!("{}", error_text(e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::DeviceState;

    fn entry(backing: &str, state: DeviceState, saved: bool) -> DeviceEntry {
        DeviceEntry {
            cache_id: 1,
            backing: backing.into(),
            identity: None,
            cache: None,
            resumed_cache: None,
            block: None,
            size_bytes: 0,
            migrate_threshold: 70,
            state,
            saved,
        }
    }

    #[test]
    fn the_state_file_keeps_a_device_being_re_pointed_and_no_unsaved_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let mut d = Daemon {
            caches: BTreeMap::new(),
            devices: BTreeMap::new(),
            frontend: Arc::new(crate::frontend::NoFrontend),
            failed: BTreeMap::new(),
            cursors: HashMap::new(),
            store,
        };
        // re-pointing: recorded, coming up again
        d.devices
            .insert(2, entry("/dev/disk/by-id/b", DeviceState::Creating, true));
        // CreateDevice bringing it up: not recorded yet
        d.devices
            .insert(3, entry("/dev/disk/by-id/c", DeviceState::Creating, false));
        // dirty data without a record: listed, never saved
        d.devices
            .insert(4, entry("", DeviceState::Failed("no record".into()), false));
        d.persist().unwrap();
        let saved = d.store.load().unwrap();
        let ids: Vec<u8> = saved.devices.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![2]);
    }
}
