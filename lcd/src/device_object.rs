//! `org.lc.Lcd1.Device` at `/org/lc/Lcd1/device/<id>`: one object per
//! configured device, a thin view of the daemon's device entry. Its one
//! knob, `MigrateThreshold`, needs root to change; `NrDirtyCaches` is read
//! on demand (no change signal) so `lcctl detach` can show progress.

use lc_engine::Knob;
use lc_proto::{DeviceInfo, LcdError};
use zbus::message::Header;
use zbus::{fdo, interface, Connection};

use crate::daemon::{error_text, lock, require_root, to_dbus, Shared};

/// One device on the bus.
pub struct DeviceObject {
    /// Device id.
    pub id: u8,
    /// The daemon, which holds the device's entry.
    pub daemon: Shared,
}

impl DeviceObject {
    fn current(&self) -> Result<DeviceInfo, LcdError> {
        let view = lock(&self.daemon)
            .devices
            .get(&self.id)
            .map(|e| e.view(self.id));
        view.map(|v| v.info())
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
        let (stop_now, cache_id) = {
            let mut d = lock(&self.daemon);
            let e = d.devices.get_mut(&self.id).ok_or_else(|| {
                fdo::Error::UnknownObject(format!("device {} was removed", self.id))
            })?;
            e.set_migrate_threshold(self.id, v)
                .map_err(|e| fdo::Error::InvalidArgs(error_text(to_dbus(e))))?;
            tracing::info!(device = self.id, migrate_threshold = v, "knob set");
            // 0 means never, whatever the disk's load: write-back stops now,
            // not at the policy's next look (up to update_interval away)
            let stop_now = e
                .cache
                .clone()
                .filter(|c| v == 0 && c.knob(Knob::AllowMigrate) != 0);
            let cache_id = e.cache_id;
            d.persist()
                .map_err(|e| fdo::Error::IOError(error_text(e)))?;
            (stop_now, cache_id)
        };
        if let Some(cache) = stop_now {
            if cache.set_knob(Knob::AllowMigrate, 0).is_ok() {
                crate::policy::announce(conn, cache_id).await;
            }
        }
        Ok(())
    }
}
