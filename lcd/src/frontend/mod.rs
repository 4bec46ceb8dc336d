//! Frontends: how a device reaches its users as a block device.
//!
//! The registry knows a device's block frontend only through
//! [`BlockFrontend`]: whether new devices may be exposed, whether a device
//! number is free, exposing a device attached to its cache, and stopping
//! the block device again ([`Exposed`]). Three frontends exist: [`ublk`]
//! (`/dev/ublkb<id>`, production), [`nbd`] (an NBD export per device on a
//! root-only Unix socket: kernels without ublk, VMs, NBD tools) and
//! [`NoFrontend`] (`none`: devices are attached to their cache only;
//! tests, draining a cache). Each device has its own ([`FrontendKind`]),
//! chosen when it is attached; [`Frontends`] holds one of each and the
//! default. Nothing here knows D-Bus or the registry.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use lc_engine::Cache;

pub mod nbd;
pub mod ublk;

/// Which frontend exposes a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontendKind {
    /// As `/dev/ublkb<id>` (production).
    Ublk,
    /// As an NBD export on `<run-dir>/nbd/<id>.sock`.
    Nbd,
    /// Not at all: attached to its cache only (tests; draining a cache).
    None,
}

impl FrontendKind {
    /// Every kind, as `lcctl attach --frontend` and the state file name them.
    pub const ALL: [FrontendKind; 3] = [FrontendKind::Ublk, FrontendKind::Nbd, FrontendKind::None];

    /// The name users give and see: `ublk`, `nbd`, `none`.
    pub fn name(self) -> &'static str {
        match self {
            FrontendKind::Ublk => "ublk",
            FrontendKind::Nbd => "nbd",
            FrontendKind::None => "none",
        }
    }

    /// The kind named `name`; an error that lists the names otherwise.
    pub fn from_name(name: &str) -> Result<FrontendKind, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| format!("unknown frontend {name:?}: give ublk, nbd or none"))
    }
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One frontend of each kind, and the kind a device gets when its attach
/// names none.
#[derive(Clone)]
pub struct Frontends {
    ublk: Arc<dyn BlockFrontend>,
    nbd: Arc<dyn BlockFrontend>,
    none: Arc<dyn BlockFrontend>,
    default: FrontendKind,
}

impl Frontends {
    /// The real frontends (ublk with `queues` per device, NBD exports under
    /// `run_dir` and over TCP as `nbd_tcp` says), devices getting `default`
    /// unless they ask for another; `None` as the default means ublk where
    /// this kernel offers it, else NBD. Fails if NBD over TCP cannot be
    /// served as configured.
    pub fn new(
        run_dir: &Path,
        queues: u16,
        default: Option<FrontendKind>,
        nbd_tcp: Option<&nbd::NbdTcpConfig>,
    ) -> Result<Frontends, String> {
        let ublk: Arc<dyn BlockFrontend> =
            Arc::new(ublk::UblkFrontend::new(run_dir.to_path_buf(), queues));
        let default = default.unwrap_or(if ublk.refuses_new_devices().is_none() {
            FrontendKind::Ublk
        } else {
            FrontendKind::Nbd
        });
        Ok(Frontends {
            ublk,
            nbd: Arc::new(nbd::NbdFrontend::new(run_dir, nbd_tcp)?),
            none: Arc::new(NoFrontend),
            default,
        })
    }

    /// Only `frontend`, as the default and for any kind asked for (the
    /// registry's tests).
    #[cfg(test)]
    pub fn only(frontend: Arc<dyn BlockFrontend>) -> Frontends {
        Frontends {
            ublk: frontend.clone(),
            nbd: frontend.clone(),
            none: frontend,
            default: FrontendKind::None,
        }
    }

    /// The frontend of `kind`.
    pub fn get(&self, kind: FrontendKind) -> &Arc<dyn BlockFrontend> {
        match kind {
            FrontendKind::Ublk => &self.ublk,
            FrontendKind::Nbd => &self.nbd,
            FrontendKind::None => &self.none,
        }
    }

    /// The kind a device gets when its attach names none.
    pub fn default_kind(&self) -> FrontendKind {
        self.default
    }

    /// Before the saved devices come back: each frontend removes block
    /// devices an earlier lcd left for ids not in `saved`.
    pub fn before_restore(&self, saved: &[u8]) {
        for kind in FrontendKind::ALL {
            self.get(kind).before_restore(saved);
        }
    }

    /// What the Manager's `BlockFrontend` property says: the default, and
    /// why ublk is not offered where it is not.
    pub fn describe(&self) -> String {
        let default = self.get(self.default).describe();
        match (self.default, self.ublk.refuses_new_devices()) {
            (FrontendKind::Ublk, _) | (_, None) => default,
            (_, Some(why)) => format!("{default} (ublk: {why})"),
        }
    }
}

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

/// Frontend `none`: devices are attached to their cache but not exposed.
pub struct NoFrontend;

impl BlockFrontend for NoFrontend {
    fn describe(&self) -> String {
        "none: devices are attached to their cache but not exposed as block devices".into()
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
            "its frontend is none (lcd --frontend none, or lcctl attach --frontend none)".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontend_names_are_lc_protos_and_come_back() {
        let names: Vec<&str> = FrontendKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(
            names,
            lc_proto::FRONTENDS,
            "the names of the D-Bus contract"
        );
        for k in FrontendKind::ALL {
            assert_eq!(FrontendKind::from_name(k.name()), Ok(k));
        }
        assert!(FrontendKind::from_name("scsi").is_err());
    }
}
