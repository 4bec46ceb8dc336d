//! The bus layer: lcd's D-Bus API over the registry. It only authorises
//! (uid 0 for every call that changes something), converts (the
//! registry's types and errors to lc-proto's) and announces (objects
//! published and removed, `PropertiesChanged`); the rules are the
//! registry's.
//!
//! - `manager.rs`: `org.lc.Lcd1.Manager` at `/org/lc/Lcd1`, with each
//!   client's cache cursor (dropped when the bus says the client has gone,
//!   `NameOwnerChanged`, so scripts that run lcctl in a loop do not make
//!   lcd grow).
//! - `cache.rs`: `org.lc.Lcd1.Cache` at `/org/lc/Lcd1/cache/<id>`.
//! - `device.rs`: `org.lc.Lcd1.Device` at `/org/lc/Lcd1/device/<id>`.
//! - `signals.rs`: the registry's [`Announcer`] on the bus.

use std::sync::Arc;

use anyhow::Context;
use lc_engine::DeviceKnob;
use lc_proto::{CacheInfo, DeviceInfo, LcdError, BUS_NAME, MANAGER_PATH};
use zbus::message::Header;
use zbus::Connection;

use crate::registry::{Announcer, CacheSummary, DeviceSummary, Registry, RegistryError};

pub mod cache;
pub mod device;
pub mod manager;
pub mod signals;

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

/// The named D-Bus error of a registry error (same kind, same message).
pub fn to_dbus(e: RegistryError) -> LcdError {
    match e {
        RegistryError::NotFound(m) => LcdError::NotFound(m),
        RegistryError::Busy(m) => LcdError::Busy(m),
        RegistryError::InvalidArgument(m) => LcdError::InvalidArgument(m),
        RegistryError::NotFormatted(m) => LcdError::NotFormatted(m),
        RegistryError::Io(m) => LcdError::Io(m),
        RegistryError::Failed(m) => LcdError::Failed(m),
    }
}

/// The message of a named error, without its name.
pub fn error_text(e: LcdError) -> String {
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

/// A cache as ListCaches sends it.
fn cache_info(c: CacheSummary) -> CacheInfo {
    CacheInfo {
        id: c.id,
        path: c.path,
        uuid: c.uuid,
        nr_segments: c.nr_segments,
        nr_dirty_caches: c.nr_dirty_caches,
        state: c.state,
    }
}

/// A device as ListDevices and `Info()` send it.
fn device_info(d: DeviceSummary) -> DeviceInfo {
    DeviceInfo {
        id: d.id,
        cache_id: d.cache_id,
        backing: d.backing,
        dev: d.dev,
        size_bytes: d.size_bytes,
        node: d.node,
        nr_dirty_caches: d.nr_dirty_caches,
        migrate_threshold: d.knobs.get(DeviceKnob::MigrateThreshold) as u8,
        state: d.state,
        frontend: d.frontend.name().to_string(),
    }
}

/// Refuses callers other than root (in addition to the bus policy).
pub async fn require_root(conn: &Connection, hdr: &Header<'_>) -> Result<(), LcdError> {
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

/// Connects to the bus (waiting until it is there), publishes the Manager
/// and every cache and device object, then takes lcd's name and starts
/// the migration policy. The returned connection serves until it is
/// dropped.
pub async fn serve(registry: &Arc<Registry>, bus: &Bus) -> anyhow::Result<Connection> {
    let cursors = manager::Cursors::default();
    let conn = connect(registry, &cursors, bus).await;
    // Subscribed before any client can find lcd, so no departure is missed.
    let departures = zbus::fdo::DBusProxy::new(&conn)
        .await
        .context("talking to the bus daemon")?
        .receive_name_owner_changed()
        .await
        .context("subscribing to NameOwnerChanged")?;
    tokio::spawn(manager::forget_departed_clients(cursors, departures));
    registry.announce_to(
        Arc::new(signals::BusAnnouncer::new(conn.clone(), registry.clone())) as Arc<dyn Announcer>,
    );
    // Every cache and device is published before clients can find lcd by name.
    publish(registry, &conn).await;
    conn.request_name(BUS_NAME)
        .await
        .with_context(|| format!("taking the name {BUS_NAME} (is another lcd running?)"))?;
    tracing::info!(?bus, "lcd serves {BUS_NAME}");
    tokio::spawn(crate::registry::policy::run(registry.clone()));
    Ok(conn)
}

/// A connection to `bus` serving the Manager, tried every second until the
/// bus is there (early in boot lcd starts long before the system bus).
async fn connect(registry: &Arc<Registry>, cursors: &manager::Cursors, bus: &Bus) -> Connection {
    let mut said = String::new();
    loop {
        let builder = match bus {
            Bus::System => zbus::connection::Builder::system(),
            Bus::Session => zbus::connection::Builder::session(),
            Bus::Address(a) => zbus::connection::Builder::address(a.as_str()),
        };
        let manager = manager::Manager::new(registry.clone(), cursors.clone());
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

/// Publishes an object for every resumed cache and every listed device.
async fn publish(registry: &Arc<Registry>, conn: &Connection) {
    for (id, cache) in registry.caches() {
        signals::publish_cache(conn, registry, id, cache).await;
    }
    for id in registry.device_ids() {
        signals::publish_device(conn, registry, id).await;
    }
}

/// A knob's D-Bus value type (as lc-knobs' table names it) to and from the
/// engine's u64.
pub(crate) trait KnobValue: Sized {
    /// The engine's value as the property's type.
    fn from_knob(v: u64) -> Self;
    /// The property's value as the engine's.
    fn to_knob(self) -> u64;
}

impl KnobValue for u64 {
    fn from_knob(v: u64) -> Self {
        v
    }
    fn to_knob(self) -> u64 {
        self
    }
}

impl KnobValue for bool {
    fn from_knob(v: u64) -> Self {
        v != 0
    }
    fn to_knob(self) -> u64 {
        self as u64
    }
}

impl KnobValue for u8 {
    fn from_knob(v: u64) -> Self {
        // the table's ranges of a `u8` knob end at or below 255
        v.min(u8::MAX as u64) as u8
    }
    fn to_knob(self) -> u64 {
        self as u64
    }
}
