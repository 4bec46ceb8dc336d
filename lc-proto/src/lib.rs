//! lc-proto: the contract between `lcd` and `lcctl`.
//!
//! The D-Bus names below are fixed by the product design; the proxies and the
//! serde types of the API arrive with the daemon.

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

/// Object path of cache `id`.
pub fn cache_path(id: u8) -> String {
    format!("{MANAGER_PATH}/cache/{id}")
}

/// Object path of device `id`.
pub fn device_path(id: u8) -> String {
    format!("{MANAGER_PATH}/device/{id}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn paths() {
        assert_eq!(super::cache_path(3), "/org/lc/Lcd1/cache/3");
        assert_eq!(super::device_path(255), "/org/lc/Lcd1/device/255");
    }
}
