//! What lcd's bus tests (`dbus.rs`, `identity.rs`) share: the rig of
//! lc-testbus for this package's lcd binary, sparse files, and dirty data
//! left in a cache offline.

#![allow(dead_code)]

use std::path::Path;

use lc_testbus::{Rig, RigBuilder};

/// A rig for the lcd binary these tests were built with.
pub fn lcd() -> RigBuilder {
    Rig::builder(env!("CARGO_BIN_EXE_lcd"))
}

/// A sparse file of `size` bytes at `path`; returns the path as a string.
pub fn file(path: &Path, size: u64) -> String {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
    path.display().to_string()
}

/// Writes `blocks` (4 KiB block index, fill byte) as dirty data of device
/// `device_id` into the cache on `cache`, offline through the engine, and
/// stops the cache cleanly with the data still dirty (write-back off).
pub fn leave_dirty_data(cache: &str, backing: &str, device_id: u8, blocks: &[(u64, u8)]) {
    use lc_engine::{Cache, CacheOptions, FileDevice, Knob};
    use std::sync::Arc;
    let c = Cache::resume(
        1,
        Arc::new(FileDevice::open(cache.as_ref()).unwrap()),
        CacheOptions::default(),
    )
    .unwrap();
    c.set_knob(Knob::AllowMigrate, 0).unwrap();
    c.attach_device(
        device_id,
        Arc::new(FileDevice::open(backing.as_ref()).unwrap()),
    )
    .unwrap();
    for &(block, fill) in blocks {
        c.write(device_id, block * 8, &[fill; 4096]).unwrap();
    }
    c.flush_sync().unwrap();
    c.shutdown().unwrap();
}
