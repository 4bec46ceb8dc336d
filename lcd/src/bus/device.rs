//! `org.lc.Lcd1.Device` at `/org/lc/Lcd1/device/<id>`: one object per
//! configured device, a thin view of the registry's device entry. Its knobs
//! are properties made from lc-knobs' device table (`MigrateThreshold`);
//! setting one needs root and the registry validates and records it (and
//! decides what a value means: a threshold of 0 stops write-back at once).
//! `NrDirtyCaches` is read on demand (no change signal) so `lcctl detach`
//! can show progress.

use std::sync::Arc;

use lc_engine::DeviceKnob;
use lc_proto::{DeviceInfo, LcdError};
use zbus::message::Header;
use zbus::{fdo, interface, Connection};

use super::{device_info, error_text, require_root, KnobValue};
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

impl DeviceObject {
    fn knob(&self, knob: DeviceKnob) -> fdo::Result<u64> {
        let view = self.registry.device(self.id);
        view.map(|v| v.info().knobs.get(knob))
            .ok_or_else(|| fdo::Error::UnknownObject(format!("device {} was removed", self.id)))
    }

    /// Sets `knob` to `value` for a root caller and records it.
    async fn set(
        &self,
        knob: DeviceKnob,
        value: u64,
        hdr: Option<Header<'_>>,
        conn: &Connection,
    ) -> fdo::Result<()> {
        let hdr = hdr.ok_or_else(|| fdo::Error::AccessDenied("no caller".into()))?;
        require_root(conn, &hdr)
            .await
            .map_err(|e| fdo::Error::AccessDenied(error_text(e)))?;
        self.registry
            .set_device_knob(self.id, knob, value)
            .await
            .map_err(|e| match e {
                RegistryError::NotFound(m) => fdo::Error::UnknownObject(m),
                RegistryError::Io(m) => fdo::Error::IOError(m),
                e => fdo::Error::InvalidArgs(e.to_string()),
            })
    }
}

fn gone(e: LcdError) -> fdo::Error {
    fdo::Error::UnknownObject(error_text(e))
}

/// Makes the interface: the method and read-only properties below, and a
/// knob property (getter and root-only setter) per entry of lc-knobs'
/// device table, written inside the macro as the interface macro must see
/// every method at once.
macro_rules! device_interface {
    ([] $($variant:ident ($name:ident, $setter:ident, $property:literal, $ty:ident)
        = $default:literal in $min:literal ..= $max:literal, $unit:literal, $help:literal;)*) => {
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

            #[zbus(property(emits_changed_signal = "const"))]
            fn frontend(&self) -> fdo::Result<String> {
                Ok(self.current().map_err(gone)?.frontend)
            }

            #[zbus(property(emits_changed_signal = "false"))]
            fn nr_dirty_caches(&self) -> fdo::Result<u64> {
                Ok(self.current().map_err(gone)?.nr_dirty_caches)
            }

        $(
            #[doc = $help]
            #[zbus(property)]
            fn $name(&self) -> fdo::Result<$ty> {
                self.knob(DeviceKnob::$variant).map(KnobValue::from_knob)
            }

            #[zbus(property)]
            async fn $setter(
                &self,
                v: $ty,
                #[zbus(header)] hdr: Option<Header<'_>>,
                #[zbus(connection)] conn: &Connection,
            ) -> fdo::Result<()> {
                self.set(DeviceKnob::$variant, v.to_knob(), hdr, conn).await
            }
        )*
        }
    };
}

lc_proto::knobs::device_knobs!(device_interface);
