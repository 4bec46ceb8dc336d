//! lc's fuzz harnesses. The fuzz targets in `fuzz_targets/` are thin
//! wrappers around these functions; see README.md.

#[cfg(feature = "dbus")]
pub mod dbus;
pub mod engine;
pub mod nbd;
