//! lc-proto: the contract between `lcd` and `lcctl`.
//!
//! The D-Bus names (fixed by the product design), the named errors, the
//! serde types both sides exchange and the `#[proxy]` traits clients use.
//! Nothing else is shared between the daemon and the client.

use serde::{Deserialize, Serialize};

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
/// refuses a daemon whose version it does not know.
pub const API_VERSION: u32 = 1;

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
    /// API version of the daemon ([`API_VERSION`]).
    #[zbus(property)]
    fn version(&self) -> zbus::Result<u32>;
}

#[cfg(test)]
mod tests {
    #[test]
    fn paths() {
        assert_eq!(super::cache_path(3), "/org/lc/Lcd1/cache/3");
        assert_eq!(super::device_path(255), "/org/lc/Lcd1/device/255");
    }
}
