//! Frontends: how a device reaches its users as a block device.
//!
//! The registry knows a device's block frontend only through
//! [`BlockFrontend`]: whether new devices may be exposed, whether a device
//! number is free, exposing a device attached to its cache, and stopping
//! the block device again ([`Exposed`]). Three frontends exist: [`ublk`]
//! (`/dev/ublkb<id>`, production), [`nbd`] (an NBD export per device on a
//! root-only Unix socket: kernels without ublk, VMs, NBD tools) and
//! [`NoFrontend`] (`--frontend none`: devices are attached to their cache
//! only; tests, draining a cache). Nothing here knows D-Bus or the registry.

use std::sync::Arc;

use lc_engine::Cache;

pub mod nbd;
pub mod ublk;

/// A block device a frontend serves for one lc device, until stopped.
pub trait Exposed: Send {
    /// What users open: the block node, e.g. `/dev/ublkb3`, or the NBD
    /// URI, e.g. `nbd+unix:///?socket=/run/lc/nbd/3.sock`.
    fn node(&self) -> &str;
    /// Stops serving (in-flight requests finish first) and removes the
    /// block device. The engine's data is untouched.
    fn stop(self: Box<Self>);
}

/// Why a frontend did not expose a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotExposed {
    /// This frontend does not expose block devices here (`--frontend none`,
    /// a kernel without ublk): the device stays attached to its cache,
    /// its data safe; why.
    NotOffered(String),
    /// Exposing it failed; why.
    Failed(String),
}

/// The boundary between the registry and a block frontend.
pub trait BlockFrontend: Send + Sync {
    /// What the Manager's `BlockFrontend` property says: the frontend's
    /// name, or `none: why`.
    fn describe(&self) -> String;
    /// Why a new device cannot be created now (its block device could not
    /// be exposed), or `None`.
    fn refuses_new_devices(&self) -> Option<String>;
    /// Refuses device id `id` when the block device number it would get
    /// is taken by something that is not lc's.
    fn check_id_free(&self, id: u8) -> Result<(), String>;
    /// Before the saved devices come back at start: removes block devices
    /// an earlier lcd left for ids not in `saved`.
    fn before_restore(&self, saved: &[u8]);
    /// Exposes device `id` of `cache` (attached there), `size_bytes` large;
    /// a block device an lcd before this one left for it is taken back.
    fn expose(
        &self,
        cache: &Arc<Cache>,
        id: u8,
        size_bytes: u64,
    ) -> Result<Box<dyn Exposed>, NotExposed>;
}

/// `--frontend none`: devices are attached to their cache but not exposed.
pub struct NoFrontend;

impl BlockFrontend for NoFrontend {
    fn describe(&self) -> String {
        "none: lcd runs with --frontend none; devices are attached to their cache but not \
         exposed as block devices"
            .into()
    }

    fn refuses_new_devices(&self) -> Option<String> {
        None
    }

    fn check_id_free(&self, _id: u8) -> Result<(), String> {
        Ok(())
    }

    fn before_restore(&self, _saved: &[u8]) {}

    fn expose(
        &self,
        _cache: &Arc<Cache>,
        _id: u8,
        _size_bytes: u64,
    ) -> Result<Box<dyn Exposed>, NotExposed> {
        Err(NotExposed::NotOffered(
            "lcd runs with --frontend none".into(),
        ))
    }
}
