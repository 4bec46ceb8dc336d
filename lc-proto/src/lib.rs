//! lc-proto: the contract between `lcd` and `lcctl`.
//!
//! The D-Bus names (fixed by the product design), the named errors, the
//! serde types both sides exchange, the `#[proxy]` traits clients use and
//! the knob table ([`knobs`], lc-knobs re-exported: the knob properties of
//! the proxies below are generated from it, and [`knob_value`] /
//! [`set_knob_value`] read and write any knob of it by name). Nothing else
//! is shared between the daemon and the client.

use serde::{Deserialize, Serialize};

pub use lc_knobs as knobs;
use lc_knobs::{DbusType, KnobSpec, Owner};

/// Well-known bus name of the daemon.
pub const BUS_NAME: &str = "org.lc.Lcd1";
/// Object path of the manager.
pub const MANAGER_PATH: &str = "/org/lc/Lcd1";
/// Manager interface.
pub const MANAGER_INTERFACE: &str = "org.lc.Lcd1.Manager";
/// Cache interface (objects at `/org/lc/Lcd1/cache/<id>`).
pub const CACHE_INTERFACE: &str = "org.lc.Lcd1.Cache";
/// Device interface (objects at `/org/lc/Lcd1/device/<id>`).
pub const DEVICE_INTERFACE: &str = "org.lc.Lcd1.Device";
/// Prefix of the daemon's named errors.
pub const ERROR_PREFIX: &str = "org.lc.Lcd1.Error";
/// Version of the API the Manager's `Version` property reports; a client
/// refuses a daemon whose version it does not know. Version 2: `Status()`
/// reports its error counters as a named struct ([`ErrorCounts`]). Version
/// 3: each device has its own frontend ([`DeviceInfo::frontend`], the
/// device's `Frontend` property, `CreateDeviceWithFrontend`).
pub const API_VERSION: u32 = 3;

/// The frontends a device can be exposed through, as
/// `CreateDeviceWithFrontend` and [`DeviceInfo::frontend`] name them:
/// `ublk` (`/dev/ublkbN`), `nbd` (an NBD export on a root-only Unix socket),
/// `none` (attached to its cache only).
pub const FRONTENDS: [&str; 3] = ["ublk", "nbd", "none"];

/// Object path of cache `id`.
pub fn cache_path(id: u8) -> String {
    format!("{MANAGER_PATH}/cache/{id}")
}

/// Object path of device `id`.
pub fn device_path(id: u8) -> String {
    format!("{MANAGER_PATH}/device/{id}")
}

/// The daemon's named D-Bus errors (`org.lc.Lcd1.Error.<Variant>`); each
/// message says what to do.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.lc.Lcd1.Error")]
pub enum LcdError {
    /// A transport or protocol error (not sent by the daemon).
    #[zbus(error)]
    ZBus(zbus::Error),
    /// No such cache, device or path.
    NotFound(String),
    /// The object or path is in use.
    Busy(String),
    /// An argument is out of range or malformed.
    InvalidArgument(String),
    /// The device holds no (valid) lc cache.
    NotFormatted(String),
    /// The caller may not change anything (only root may).
    AccessDenied(String),
    /// An I/O error on a device.
    Io(String),
    /// Anything else that went wrong.
    Failed(String),
}

/// A resumed cache, as `ListCaches` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, zbus::Type)]
pub struct CacheInfo {
    /// Cache id, 1..=255.
    pub id: u8,
    /// Path of the cache device.
    pub path: String,
    /// Format uuid.
    pub uuid: String,
    /// Segments on the cache device.
    pub nr_segments: u64,
    /// Dirty 4 KiB lines over all devices.
    pub nr_dirty_caches: u64,
    /// `running`, or `failed: <why>` for a cache the saved state names that
    /// could not be resumed at start (FreeCache forgets it).
    pub state: String,
}

/// `org.lc.Lcd1.Manager`: dm-lc's lc-mgr messages. `SwitchTo` sets the
/// calling client's own cursor; `ResumeCache`, `FreeCache` and `ClearStat`
/// act on the cache that cursor names.
#[zbus::proxy(
    interface = "org.lc.Lcd1.Manager",
    default_service = "org.lc.Lcd1",
    default_path = "/org/lc/Lcd1"
)]
pub trait Manager {
    /// Writes a fresh lc superblock to `path` (refused if it holds data unless `force`).
    fn format_cache_device(&self, path: &str, force: bool) -> Result<(), LcdError>;
    /// Sets this client's cursor to cache `id` (1..=255).
    fn switch_to(&self, id: u8) -> Result<(), LcdError>;
    /// Resumes the cache on `path` (crash recovery included) as the cursor's id.
    fn resume_cache(&self, path: &str) -> Result<(), LcdError>;
    /// `ResumeCache` as cache `id`, ignoring the cursor (for scripts).
    fn resume_cache_as(&self, id: u8, path: &str) -> Result<(), LcdError>;
    /// Stops the cursor's cache cleanly (its devices must be removed first).
    fn free_cache(&self) -> Result<(), LcdError>;
    /// Zeroes the cursor's cache's I/O counters.
    fn clear_stat(&self) -> Result<(), LcdError>;
    /// The resumed caches.
    fn list_caches(&self) -> Result<Vec<CacheInfo>, LcdError>;
    /// Attaches `backing_path` as device `device_id` (0: the lowest free id)
    /// of cache `cache_id` and exposes it as a ublk block device.
    fn create_device(
        &self,
        device_id: u8,
        backing_path: &str,
        cache_id: u8,
    ) -> Result<DeviceInfo, LcdError>;
    /// `CreateDevice`, exposing the device through `frontend` (one of
    /// [`FRONTENDS`]; empty: lcd's default) instead of lcd's default.
    fn create_device_with_frontend(
        &self,
        device_id: u8,
        backing_path: &str,
        cache_id: u8,
        frontend: &str,
    ) -> Result<DeviceInfo, LcdError>;
    /// Writes every dirty block of the device back (its block device still
    /// served), then removes the block device and detaches it; returns when
    /// all that is done.
    fn remove_device(&self, device_id: u8) -> Result<(), LcdError>;
    /// `RemoveDevice` that returns once the write-back has begun; the device
    /// object shows state `detaching` and goes away when it is done.
    fn begin_remove_device(&self, device_id: u8) -> Result<(), LcdError>;
    /// The devices.
    fn list_devices(&self) -> Result<Vec<DeviceInfo>, LcdError>;
    /// Forgets a device that is not attached (its disk is gone). Refused
    /// (`Busy`) while its cache holds dirty data of it, unless
    /// `discard_dirty`: then that data is dropped from the cache for good
    /// first.
    fn forget_device(&self, device_id: u8, discard_dirty: bool) -> Result<(), LcdError>;
    /// Brings back a failed device: with `backing_path` empty, from its
    /// recorded path, which must still lead to the recorded disk; with a
    /// path, from that path, whose disk is recorded as the device's from now
    /// on (on purpose: the administrator says it is the right one).
    fn repoint_device(&self, device_id: u8, backing_path: &str) -> Result<DeviceInfo, LcdError>;
    /// Brings back a cache that failed at start from `path`, recording that
    /// path and the uuid found there as the cache's.
    fn repoint_cache(&self, cache_id: u8, path: &str) -> Result<(), LcdError>;
    /// `ublk`, or why devices cannot be exposed as block devices here
    /// (e.g. `none: /dev/ublk-control is missing; ...`).
    #[zbus(property)]
    fn block_frontend(&self) -> zbus::Result<String>;
    /// API version of the daemon ([`API_VERSION`]).
    #[zbus(property)]
    fn version(&self) -> zbus::Result<u32>;
}

/// One device: a backing device served through a cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, zbus::Type)]
pub struct DeviceInfo {
    /// Device id, 1..=255 (unique over all caches).
    pub id: u8,
    /// Cache it is served through.
    pub cache_id: u8,
    /// Path of the backing device, as configured.
    pub backing: String,
    /// Backing device identity (path, major:minor) as the engine sees it.
    pub dev: String,
    /// Size in bytes (that of the backing device).
    pub size_bytes: u64,
    /// What users open: the block node (`/dev/ublkbN`) or the NBD URI
    /// (`nbd+unix:///?socket=…`), empty when there is none.
    pub node: String,
    /// Dirty 4 KiB lines of this device in the cache.
    pub nr_dirty_caches: u64,
    /// Write-back policy threshold, percent.
    pub migrate_threshold: u8,
    /// `running`, `detaching`, `no block device: <why>` (attached to the
    /// cache, data safe, but not exposed), or `failed: <why>`.
    pub state: String,
    /// How it is exposed: one of [`FRONTENDS`].
    pub frontend: String,
}

/// `Status()` of a cache: what dm-lc's lc-mgr printed, and more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, zbus::Type)]
pub struct CacheStatus {
    /// Cache id.
    pub id: u8,
    /// Cache device (path, major:minor).
    pub device: String,
    /// Segments on the cache device.
    pub nr_segments: u64,
    /// 4 KiB cache lines on the cache device.
    pub nr_caches: u64,
    /// RAM held for the index and the segment buffers, in bytes.
    pub static_ram_bytes: u64,
    /// Of that, the index alone.
    pub index_ram_bytes: u64,
    /// Segment being filled (0: none).
    pub current_segment_id: u64,
    /// Lines used in it (dm-lc's cursor).
    pub cursor: u64,
    /// Highest segment id written to the cache device.
    pub last_flushed_segment_id: u64,
    /// Highest segment id written and flushed.
    pub last_durable_segment_id: u64,
    /// Highest segment id written back.
    pub last_migrated_segment_id: u64,
    /// Dirty lines over all devices.
    pub nr_dirty_caches: u64,
    /// The 16 counters, index = write<<3 | hit<<2 | on_buffer<<1 | fullsize.
    pub counters: Vec<u64>,
    /// The error counters.
    pub errors: ErrorCounts,
    /// `healthy`, or `failing: <what> (<n> since <UTC time>, last: <error>): <what
    /// it means and what to do>; …` while a kind of device I/O keeps failing
    /// (it ends with the next success of that kind).
    pub health: String,
}

/// The error counters of a cache's `Status()`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, zbus::Type)]
pub struct ErrorCounts {
    /// Failed reads of the cache device.
    pub cache_read: u64,
    /// Failed writes (and flushes) of the cache device.
    pub cache_write: u64,
    /// Failed reads of backing devices.
    pub backing_read: u64,
    /// Failed writes (and flushes) of backing devices.
    pub backing_write: u64,
    /// Write-back attempts that were retried.
    pub migration_retries: u64,
}

/// `org.lc.Lcd1.Cache`'s proxy, with a knob property per cache entry of
/// the table (the proxy macro must see every method of the trait, and the
/// `self` of its generated bodies takes its hygiene from the signatures:
/// the whole trait is therefore written inside this macro).
macro_rules! cache_proxy {
    ([] $($variant:ident ($name:ident, $setter:ident, $property:literal, $ty:ident)
        = $default:literal in $min:literal ..= $max:literal, $unit:literal, $help:literal;)*) => {
        /// `org.lc.Lcd1.Cache` at `/org/lc/Lcd1/cache/<id>`: dm-lc's per-cache
        /// sysfs knobs as properties (changes need root; a getter and a setter
        /// per entry of [`knobs::CACHE_KNOBS`]) and its actions.
        #[zbus::proxy(interface = "org.lc.Lcd1.Cache", default_service = "org.lc.Lcd1")]
        pub trait Cache {
            /// Everything lc-mgr's status printed.
            fn status(&self) -> Result<CacheStatus, LcdError>;
            /// Writes the superblock record now.
            fn commit_super_block(&self) -> Result<(), LcdError>;
            /// Seals the partial current segment and writes it.
            fn flush_current_buffer(&self) -> Result<(), LcdError>;
            /// Zeroes the 16 counters.
            fn clear_stat(&self) -> Result<(), LcdError>;
            /// Cache id.
            #[zbus(property)]
            fn id(&self) -> zbus::Result<u8>;
            /// Highest segment id written to the cache device.
            #[zbus(property(emits_changed_signal = "false"))]
            fn last_flushed_segment_id(&self) -> zbus::Result<u64>;
            /// Highest segment id written back.
            #[zbus(property(emits_changed_signal = "false"))]
            fn last_migrated_segment_id(&self) -> zbus::Result<u64>;
            $(
                #[doc = $help]
                #[zbus(property)]
                fn $name(&self) -> zbus::Result<$ty>;
                #[doc = concat!("Sets ", stringify!($name), ".")]
                #[zbus(property)]
                fn $setter(&self, v: $ty) -> zbus::Result<()>;
            )*
        }
    };
}

lc_knobs::cache_knobs!(cache_proxy);

/// `org.lc.Lcd1.Device`'s proxy, with a knob property per device entry of
/// the table.
macro_rules! device_proxy {
    ([] $($variant:ident ($name:ident, $setter:ident, $property:literal, $ty:ident)
        = $default:literal in $min:literal ..= $max:literal, $unit:literal, $help:literal;)*) => {
        /// `org.lc.Lcd1.Device` at `/org/lc/Lcd1/device/<id>`; its knob
        /// properties are the entries of [`knobs::DEVICE_KNOBS`].
        #[zbus::proxy(interface = "org.lc.Lcd1.Device", default_service = "org.lc.Lcd1")]
        pub trait Device {
            /// Everything about the device at once.
            fn info(&self) -> Result<DeviceInfo, LcdError>;
            /// Device id.
            #[zbus(property)]
            fn id(&self) -> zbus::Result<u8>;
            /// Cache it is served through.
            #[zbus(property)]
            fn cache_id(&self) -> zbus::Result<u8>;
            /// Backing device identity (path, major:minor).
            #[zbus(property)]
            fn dev(&self) -> zbus::Result<String>;
            /// Block device node (`/dev/ublkbN`), empty when there is none.
            #[zbus(property)]
            fn node(&self) -> zbus::Result<String>;
            /// Dirty lines of this device (read it; no change signal).
            #[zbus(property(emits_changed_signal = "false"))]
            fn nr_dirty_caches(&self) -> zbus::Result<u64>;
            /// `running`, `detaching`, `no block device: <why>` or `failed: <why>`.
            #[zbus(property)]
            fn state(&self) -> zbus::Result<String>;
            /// How it is exposed: one of [`FRONTENDS`].
            #[zbus(property)]
            fn frontend(&self) -> zbus::Result<String>;
            $(
                #[doc = $help]
                #[zbus(property)]
                fn $name(&self) -> zbus::Result<$ty>;
                #[doc = concat!("Sets ", stringify!($name), ".")]
                #[zbus(property)]
                fn $setter(&self, v: $ty) -> zbus::Result<()>;
            )*
        }
    };
}

lc_knobs::device_knobs!(device_proxy);

/// The interface and object path that hold `knob` of cache or device `id`.
fn knob_object(knob: &KnobSpec, id: u8) -> (&'static str, String) {
    match knob.owner {
        Owner::Cache => (CACHE_INTERFACE, cache_path(id)),
        Owner::Device => (DEVICE_INTERFACE, device_path(id)),
    }
}

/// Reads any knob of the table from cache or device `id` (as its owner
/// says), a switch as 0 or 1.
pub async fn knob_value(conn: &zbus::Connection, knob: &KnobSpec, id: u8) -> zbus::Result<u64> {
    let (interface, path) = knob_object(knob, id);
    let props = zbus::fdo::PropertiesProxy::builder(conn)
        .destination(BUS_NAME)
        .path(path)
        .build()
        .await?;
    let name = zbus::names::InterfaceName::try_from(interface)?;
    let v = props.get(name, knob.property).await?;
    let wrong = || {
        zbus::Error::Failure(format!(
            "lcd sent {} as {:?}, not {:?}",
            knob.property,
            v.value_signature(),
            knob.dbus_type
        ))
    };
    Ok(match knob.dbus_type {
        DbusType::U64 => u64::try_from(&v).map_err(|_| wrong())?,
        DbusType::U8 => u8::try_from(&v).map_err(|_| wrong())?.into(),
        DbusType::Bool => bool::try_from(&v).map_err(|_| wrong())?.into(),
    })
}

/// Why a knob could not be set.
#[derive(Debug)]
pub enum SetKnobError {
    /// The value does not fit the property's D-Bus type (a device knob
    /// is a byte): refused before anything is sent.
    DoesNotFit,
    /// The bus call failed (lcd refused the value, or the bus broke).
    Bus(zbus::Error),
}

/// Sets any knob of the table on cache or device `id`; lcd checks the range.
pub async fn set_knob_value(
    conn: &zbus::Connection,
    knob: &KnobSpec,
    id: u8,
    value: u64,
) -> Result<(), SetKnobError> {
    let v: zbus::Variant<'_> = match knob.dbus_type {
        DbusType::U64 => value.into(),
        DbusType::U8 => u8::try_from(value)
            .map_err(|_| SetKnobError::DoesNotFit)?
            .into(),
        DbusType::Bool => (value != 0).into(),
    };
    let (interface, path) = knob_object(knob, id);
    let bus = SetKnobError::Bus;
    let props = zbus::fdo::PropertiesProxy::builder(conn)
        .destination(BUS_NAME)
        .path(path)
        .build()
        .await
        .map_err(bus)?;
    let name = zbus::names::InterfaceName::try_from(interface).map_err(bus)?;
    props
        .set(name, knob.property, &v)
        .await
        .map_err(|e| bus(e.into()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn paths() {
        assert_eq!(super::cache_path(3), "/org/lc/Lcd1/cache/3");
        assert_eq!(super::device_path(255), "/org/lc/Lcd1/device/255");
    }
}
