//! The ublk frontend: exposes one lc device as `/dev/ublkb<id>`.
//!
//! Each device gets a ublk device whose number is the lc device id, sized as
//! its backing device, with 512 B logical / 4 KiB physical blocks, a
//! volatile write cache with FUA, and discard. libublk runs one thread per
//! queue (as many queues as CPUs unless `--queues` says otherwise) with its
//! own io_uring; a queue thread never waits for room in the cache.
//!
//! Cut as rublk and libublk-rs cut a target: [`control`] adds, recovers and
//! deletes ublk devices and keeps lcd's records of them in the run
//! directory (which ublk devices are lc's, decided by those records only);
//! [`queue`] is the queue thread with its io_uring and its tag tasks;
//! [`requests`] maps each request onto the engine (on the queue thread or a
//! worker) and hands results back to the queue thread; [`data_path`] says
//! how a request's data moves: copied by the driver, or zero copy where the
//! kernel has `UBLK_F_AUTO_BUF_REG` (Linux 6.16 and later). [`UblkFrontend`] is
//! the [`BlockFrontend`] the registry sees.
//!
//! Devices are created with `UBLK_F_USER_RECOVERY` (and `_REISSUE` where
//! the kernel has it): when lcd dies, the kernel keeps the device quiesced
//! and a restarted lcd takes it back with [`UblkDevice::start`] in
//! recovery mode.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lc_engine::Cache;

use super::{BlockFrontend, Exposed, NotExposed};

pub mod control;
pub mod data_path;
pub mod queue;
pub mod requests;

pub use control::UblkDevice;

/// The control node a kernel with ublk provides.
pub const CONTROL_NODE: &str = "/dev/ublk-control";
/// How long device creation or recovery may take before lcd gives up on it.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Target name given to libublk (shown by ublk tools; lcd trusts its own
/// records, not this name, to tell its devices apart).
pub const TARGET_NAME: &str = "lc";
/// The directory where libublk 0.4.8 keeps a JSON file per device,
/// `NNNN.json` (fixed in libublk).
pub const UBLKSRVD: &str = "/run/ublksrvd";
/// Requests in flight per queue.
const QUEUE_DEPTH: u16 = 64;
/// Largest request, in bytes: each tag has a buffer this big, so lcd's
/// memory grows with queues × depth × this (1 MiB buffers at depth 128 broke
/// the soak scenario's RSS bound with 3 devices; larger requests need
/// buffers that are not per tag: USER_COPY or AUTO_BUF_REG).
const IO_BUF_BYTES: u32 = 256 << 10;

/// Queues a new device gets: `configured` (`--queues`), or one per CPU
/// when that is 0.
fn nr_queues(configured: u16) -> u16 {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(64) as u16),
        n => n,
    }
}
/// Largest discard, in sectors (the engine walks discards line by line).
const MAX_DISCARD_SECTORS: u32 = 8192;
/// Worker threads per device: they serve the writes that may wait for room,
/// discards, and reads of a device without a file descriptor.
const WORKERS: usize = 4;

/// Why devices cannot be exposed here, or `None` when ublk is usable.
pub fn unavailable_reason() -> Option<String> {
    if Path::new(CONTROL_NODE).exists() {
        None
    } else {
        Some(format!(
            "{CONTROL_NODE} is missing: this kernel has no ublk driver loaded; \
             load it with `modprobe ublk_drv` (Linux 6.0 or later, built with CONFIG_BLK_DEV_UBLK)"
        ))
    }
}

/// Path of the block node of ublk device `id`.
pub fn node_path(id: u8) -> String {
    format!("/dev/ublkb{id}")
}

/// The ublk frontend of this lcd: where its records go and how many
/// queues a new device gets.
pub struct UblkFrontend {
    run_dir: PathBuf,
    queues: u16,
}

impl UblkFrontend {
    /// The ublk frontend keeping its records in `run_dir`, giving new
    /// devices `queues` queues (0: one per CPU). Makes libublk's directory
    /// lcd's; when ublk cannot be used here, says why in the log (devices
    /// that ask for ublk are then attached to their cache only).
    pub fn new(run_dir: PathBuf, queues: u16) -> UblkFrontend {
        match unavailable_reason().or_else(|| control::prepare().err()) {
            Some(why) => tracing::warn!("devices cannot be exposed through ublk: {why}"),
            None => control::log_kernel_features(),
        }
        UblkFrontend { run_dir, queues }
    }
}

impl BlockFrontend for UblkFrontend {
    fn describe(&self) -> String {
        match unavailable_reason() {
            None => "ublk".into(),
            Some(why) => format!("none: {why}"),
        }
    }

    fn refuses_new_devices(&self) -> Option<String> {
        unavailable_reason().map(|why| format!("cannot expose a block device: {why}"))
    }

    fn check_id_free(&self, id: u8) -> Result<(), String> {
        match control::existing_state(id) {
            Some(state) => Err(format!(
                "ublk device {id} already exists (state {state}) and is not lc's; \
                 choose another device id"
            )),
            None => Ok(()),
        }
    }

    fn before_restore(&self, saved: &[u8]) {
        if unavailable_reason().is_none() {
            control::sweep_orphans(saved, &self.run_dir);
        }
    }

    fn expose(
        &self,
        cache: &Arc<Cache>,
        id: u8,
        size_bytes: u64,
    ) -> Result<Box<dyn Exposed>, NotExposed> {
        if let Some(why) = unavailable_reason() {
            return Err(NotExposed::NotOffered(why));
        }
        // a restarted lcd takes back a device the kernel kept for it (if
        // lcd's record in the run directory says it is lc's)
        UblkDevice::start(
            cache.clone(),
            id,
            size_bytes,
            &self.run_dir,
            nr_queues(self.queues),
        )
        .map(|u| Box::new(u) as Box<dyn Exposed>)
        .map_err(NotExposed::Failed)
    }
}

impl Exposed for UblkDevice {
    fn node(&self) -> &str {
        &self.node
    }

    fn stop(self: Box<Self>) {
        UblkDevice::stop(*self)
    }
}
