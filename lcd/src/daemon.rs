//! The daemon: serves `org.lc.Lcd1.Manager` on the bus and hosts the caches.
//!
//! What works so far: the lc-mgr messages of the Manager (format, per-client
//! cursor, resume, free, clear_stat, list) with named errors and a uid check
//! on every call that changes something; one `org.lc.Lcd1.Cache` object per
//! resumed cache (see `cache_object.rs`); the configuration recorded in the
//! state directory and restored at start (see `state.rs`); systemd readiness
//! once all that is done. Not yet: devices (CreateDevice/RemoveDevice, ublk)
//! and the migration policy loop. Engine calls block, so they run on tokio's
//! blocking pool, never under the daemon's lock. Cursors of clients that
//! left are kept (one small entry per client) until lcd restarts.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use lc_engine::{format_cache_device, Cache, CacheOptions, FileDevice};
use lc_proto::{CacheInfo, LcdError, API_VERSION, BUS_NAME, MANAGER_PATH};
use zbus::message::Header;
use zbus::{interface, Connection, ObjectServer};

use crate::cache_object::CacheObject;
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

struct Entry {
    /// Canonical path of the cache device.
    path: String,
    cache: Arc<Cache>,
}

pub(crate) struct Daemon {
    caches: BTreeMap<u8, Entry>,
    /// Caches the state names that could not be resumed at start, with why.
    failed: BTreeMap<u8, (CacheRecord, String)>,
    /// Each client's cursor, by unique bus name.
    cursors: HashMap<String, u8>,
    store: StateStore,
}

/// The daemon's state, shared by the bus objects.
pub(crate) type Shared = Arc<Mutex<Daemon>>;

impl Daemon {
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
            })
            .collect();
        records.extend(self.failed.values().map(|(r, _)| r.clone()));
        records.sort_by_key(|r| r.id);
        self.store.save(records).map_err(|e| {
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
        E::Open { ref source, .. } if source.raw_os_error() == Some(libc::ENOENT) => {
            LcdError::NotFound(msg)
        }
        E::Open { ref source, .. } if source.raw_os_error() == Some(libc::EBUSY) => {
            LcdError::Busy(msg)
        }
        E::Io { .. } | E::Open { .. } => LcdError::Io(msg),
        E::NotFormatted | E::Corrupt(_) | E::UnsupportedVersion(_) => LcdError::NotFormatted(msg),
        E::HasSignature(_) | E::TooSmall { .. } | E::InvalidArgument(_) | E::OutOfRange { .. } => {
            LcdError::InvalidArgument(msg)
        }
        E::UnknownDevice(_) => LcdError::NotFound(msg),
        E::DeviceExists(_) | E::Detaching(_) => LcdError::Busy(msg),
        E::Stopped => LcdError::Failed(msg),
    }
}

/// The path with symlinks and `..` resolved, so one device has one name
/// (as given when it does not exist: opening it will say so).
fn canonical(path: &str) -> String {
    std::fs::canonicalize(path).map_or_else(|_| path.to_string(), |p| p.display().to_string())
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
        let path = canonical(&path);
        {
            let d = lock(&self.daemon);
            if d.caches.contains_key(&id) {
                return Err(LcdError::Busy(format!(
                    "cache {id} is already resumed; use another id"
                )));
            }
            if let Some((other, _)) = d.caches.iter().find(|(_, e)| e.path == path) {
                return Err(LcdError::Busy(format!("{path} is already cache {other}")));
            }
        }
        let p = path.clone();
        let cache = blocking(move || {
            let dev = FileDevice::open(p.as_ref()).map_err(to_dbus)?;
            Cache::resume(id, Arc::new(dev), CacheOptions::default()).map_err(to_dbus)
        })
        .await?;
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
        let mut d = lock(&self.daemon);
        d.failed.remove(&id);
        d.persist()
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
        let key = canonical(&path);
        if let Some((id, _)) = lock(&self.daemon)
            .caches
            .iter()
            .find(|(_, e)| e.path == key)
        {
            return Err(LcdError::Busy(format!(
                "{path} is cache {id}, which is resumed; free it first"
            )));
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
        if !cache.devices().is_empty() {
            return Err(LcdError::Busy(format!(
                "cache {id} still has devices; remove them first"
            )));
        }
        lock(&self.daemon).caches.remove(&id);
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
        let d = lock(&self.daemon);
        Ok(d.caches
            .iter()
            .map(|(&id, e)| {
                let st = e.cache.status();
                let u = e.cache.uuid();
                CacheInfo {
                    id,
                    path: e.path.clone(),
                    uuid: u.iter().map(|b| format!("{b:02x}")).collect(),
                    nr_segments: st.nr_segments,
                    nr_dirty_caches: st.nr_dirty_caches,
                    state: "running".into(),
                }
            })
            .chain(d.failed.iter().map(|(&id, (rec, why))| CacheInfo {
                id,
                path: rec.path.clone(),
                uuid: String::new(),
                nr_segments: 0,
                nr_dirty_caches: 0,
                state: format!("failed: {why}"),
            }))
            .collect())
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> u32 {
        API_VERSION
    }
}

/// Runs the daemon until SIGTERM or SIGINT, then stops every cache cleanly.
pub fn run(bus: Bus, state_dir: &std::path::Path) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let store = StateStore::open(state_dir)?;
        let saved = store.load()?;
        let daemon: Shared = Arc::new(Mutex::new(Daemon {
            caches: BTreeMap::new(),
            failed: BTreeMap::new(),
            cursors: HashMap::new(),
            store,
        }));
        let manager = Manager {
            daemon: daemon.clone(),
        };
        let builder = match &bus {
            Bus::System => zbus::connection::Builder::system(),
            Bus::Session => zbus::connection::Builder::session(),
            Bus::Address(a) => zbus::connection::Builder::address(a.as_str()),
        };
        let conn = builder
            .serve_at(MANAGER_PATH, manager)
            .serve_at(MANAGER_PATH, zbus::fdo::ObjectManager)
            .build()
            .await
            .with_context(|| format!("connecting to the {bus:?} bus"))?;
        // Every saved cache is back before clients can find lcd by name.
        restore(&daemon, &conn, saved.caches).await;
        conn.request_name(BUS_NAME)
            .await
            .with_context(|| format!("taking the name {BUS_NAME} (is another lcd running?)"))?;
        tracing::info!(?bus, "lcd serves {BUS_NAME}");
        // systemd readiness: every saved cache is back and the name is ours
        if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
            tracing::warn!("cannot notify systemd of readiness: {e}");
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping: flushing and stopping every cache");
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
        anyhow::Ok(())
    })
}

/// Resumes every cache the state names; one that fails is kept, reported
/// as failed by ListCaches, and never stops the others.
async fn restore(daemon: &Shared, conn: &Connection, records: Vec<CacheRecord>) {
    for rec in records {
        let (id, path) = (rec.id, rec.path.clone());
        let resumed = blocking(move || {
            let dev = FileDevice::open(path.as_ref()).map_err(to_dbus)?;
            Cache::resume(id, Arc::new(dev), CacheOptions::default()).map_err(to_dbus)
        })
        .await;
        match resumed {
            Ok(cache) => {
                for (name, &v) in &rec.knobs {
                    if let Err(e) = Knob::from_name(name).and_then(|k| cache.set_knob(k, v)) {
                        tracing::warn!(id, "saved knob {name}={v} not applied: {e}");
                    }
                }
                let cache = Arc::new(cache);
                let obj = CacheObject {
                    cache: cache.clone(),
                    daemon: daemon.clone(),
                };
                if let Err(e) = conn.object_server().at(lc_proto::cache_path(id), obj).await {
                    tracing::error!(id, "cannot publish cache object: {e}");
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
}
