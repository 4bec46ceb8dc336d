//! What lcd's bus tests (`dbus.rs`, `identity.rs`) share: the rig of
//! lc-testbus for this package's lcd binary, sparse files, and dirty data
//! left in a cache offline.

#![allow(dead_code)]

pub mod nbd;

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

/// Opens `path` for the engine. Another test thread that starts a process
/// (lcd, busctl, dbus-daemon) shares a copy of this process's descriptors
/// between its fork and its exec, and with them the engine's lock of a
/// file this test has just closed: the open then fails with EBUSY for that
/// moment. Waits it out (up to 5 s) instead of failing the test; lcd
/// itself starts no processes.
fn open_device(path: &str) -> lc_engine::FileDevice {
    let mut tries = 0;
    loop {
        match lc_engine::FileDevice::open(path.as_ref()) {
            Ok(d) => return d,
            Err(lc_engine::Error::Open { source, .. })
                if tries < 250 && source.raw_os_error() == Some(libc::EBUSY) =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("opening {path}: {}", lc_engine::error::describe(&e)),
        }
    }
}

/// Writes `blocks` (4 KiB block index, fill byte) as dirty data of device
/// `device_id` into the cache on `cache`, offline through the engine, and
/// stops the cache cleanly with the data still dirty (write-back off).
pub fn leave_dirty_data(cache: &str, backing: &str, device_id: u8, blocks: &[(u64, u8)]) {
    use lc_engine::{Cache, CacheOptions, Knob};
    use std::sync::Arc;
    let c = Cache::resume(1, Arc::new(open_device(cache)), CacheOptions::default()).unwrap();
    c.set_knob(Knob::AllowMigrate, 0).unwrap();
    c.attach_device(device_id, Arc::new(open_device(backing)))
        .unwrap();
    for &(block, fill) in blocks {
        c.write(device_id, block * 8, &[fill; 4096]).unwrap();
    }
    c.flush_sync().unwrap();
    c.shutdown().unwrap();
}
