//! `org.lc.Lcd1.Device` at `/org/lc/Lcd1/device/<id>`: one object per
//! configured device, a thin view of the registry's device entry. Its one
//! knob, `MigrateThreshold`, needs root to change; `NrDirtyCaches` is read
//! on demand (no change signal) so `lcctl detach` can show progress. The
//! registry decides what a threshold means (0 stops write-back at once).

use std::sync::Arc;

use lc_proto::{DeviceInfo, LcdError};
use zbus::message::Header;
use zbus::{fdo, interface, Connection};

use super::{device_info, error_text, require_root};
use crate::registry::{Registry, RegistryError};

/// One device on the bus.
pub struct DeviceObject {
    /// Device id.
    pub id: u8,
    /// The registry, which holds the device's entry.
    pub registry: Arc<Registry>,
}

impl DeviceObject {
    fn current(&self) -> Result<DeviceInfo, LcdError> {
        let view = self.registry.device(self.id);
        view.map(|v| device_info(v.info()))
            .ok_or_else(|| LcdError::NotFound(format!("device {} was removed", self.id)))
    }
}

fn gone(e: LcdError) -> fdo::Error {
    fdo::Error::UnknownObject(error_text(e))
}

#[interface(name = "org.lc.Lcd1.Device")]
impl DeviceObject {
    async fn info(&self) -> Result<DeviceInfo, LcdError> {
        self.current()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn id(&self) -> u8 {
        self.id
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn cache_id(&self) -> fdo::Result<u8> {
        Ok(self.current().map_err(gone)?.cache_id)
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn dev(&self) -> fdo::Result<String> {
        Ok(self.current().map_err(gone)?.dev)
    }

    #[zbus(property)]
    fn node(&self) -> fdo::Result<String> {
        Ok(self.current().map_err(gone)?.node)
    }

    #[zbus(property)]
    fn state(&self) -> fdo::Result<String> {
        Ok(self.current().map_err(gone)?.state)
    }

    #[zbus(property(emits_changed_signal = "false"))]
    fn nr_dirty_caches(&self) -> fdo::Result<u64> {
        Ok(self.current().map_err(gone)?.nr_dirty_caches)
    }

    #[zbus(property)]
    fn migrate_threshold(&self) -> fdo::Result<u8> {
        Ok(self.current().map_err(gone)?.migrate_threshold)
    }

    #[zbus(property)]
    async fn set_migrate_threshold(
        &self,
        v: u8,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<()> {
        let hdr = hdr.ok_or_else(|| fdo::Error::AccessDenied("no caller".into()))?;
        require_root(conn, &hdr)
            .await
            .map_err(|e| fdo::Error::AccessDenied(error_text(e)))?;
        self.registry
            .set_migrate_threshold(self.id, v)
            .await
            .map_err(|e| match e {
                RegistryError::NotFound(m) => fdo::Error::UnknownObject(m),
                RegistryError::Io(m) => fdo::Error::IOError(m),
                e => fdo::Error::InvalidArgs(e.to_string()),
            })
    }
}
