//! `org.lc.Lcd1.Cache` at `/org/lc/Lcd1/cache/<id>`: one object per resumed
//! cache, a thin layer over the engine's `Cache`. Knobs are properties
//! (their setters need root and validate through the engine); fast-moving
//! counters come from `Status()`, not properties, so the bus is not flooded.
//! The knob properties call [`CacheObject::set`], which asks the registry
//! to set and record the knob.

use std::sync::Arc;

use lc_engine::{Cache, Knob};
use lc_proto::{CacheStatus, ErrorCounts, LcdError};
use zbus::message::Header;
use zbus::{fdo, interface, Connection};

use super::{error_text, require_root, to_dbus, KnobValue};
use crate::registry::error::blocking;
use crate::registry::{Registry, RegistryError};

/// One resumed cache on the bus.
pub struct CacheObject {
    /// The engine's cache.
    pub cache: Arc<Cache>,
    /// The registry, which records knob changes.
    pub registry: Arc<Registry>,
}

impl CacheObject {
    /// Sets `knob` to `value` for a root caller and records it.
    async fn set(
        &self,
        knob: Knob,
        value: u64,
        hdr: Option<Header<'_>>,
        conn: &Connection,
    ) -> fdo::Result<()> {
        let hdr = hdr.ok_or_else(|| fdo::Error::AccessDenied("no caller".into()))?;
        require_root(conn, &hdr)
            .await
            .map_err(|e| fdo::Error::AccessDenied(error_text(e)))?;
        self.registry
            .set_knob(&self.cache, knob, value)
            .await
            .map_err(|e| match e {
                RegistryError::Io(m) => fdo::Error::IOError(m),
                e => fdo::Error::InvalidArgs(e.to_string()),
            })
    }
}

/// Makes the interface: the methods and read-only properties below, and a
/// knob property (getter and root-only setter, validated by the engine) per
/// entry of lc-knobs' cache table. The whole impl is written inside the
/// macro, as the interface macro must see every method at once.
macro_rules! cache_interface {
    ([] $($variant:ident ($name:ident, $setter:ident, $property:literal, $ty:ident)
        = $default:literal in $min:literal ..= $max:literal, $unit:literal, $help:literal;)*) => {
        #[interface(name = "org.lc.Lcd1.Cache")]
        impl CacheObject {
            async fn status(&self) -> Result<CacheStatus, LcdError> {
                let s = self.cache.recent_status();
                let e = &s.stats;
                Ok(CacheStatus {
                    id: s.cache_id,
                    device: s.device,
                    nr_segments: s.nr_segments,
                    nr_caches: s.nr_caches,
                    static_ram_bytes: s.static_ram_bytes,
                    index_ram_bytes: s.index_ram_bytes,
                    current_segment_id: s.current_segment_id,
                    cursor: s.cursor,
                    last_flushed_segment_id: s.last_flushed_segment_id,
                    last_durable_segment_id: s.last_durable_segment_id,
                    last_migrated_segment_id: s.last_migrated_segment_id,
                    nr_dirty_caches: s.nr_dirty_caches,
                    counters: e.counters.to_vec(),
                    errors: ErrorCounts {
                        cache_read: e.cache_read_errors,
                        cache_write: e.cache_write_errors,
                        backing_read: e.backing_read_errors,
                        backing_write: e.backing_write_errors,
                        migration_retries: e.migration_retries,
                    },
                    health: s.health.describe(),
                })
            }

            async fn commit_super_block(
                &self,
                #[zbus(header)] hdr: Header<'_>,
                #[zbus(connection)] conn: &Connection,
            ) -> Result<(), LcdError> {
                require_root(conn, &hdr).await?;
                let cache = self.cache.clone();
                blocking(move || Ok(cache.commit_super_block()?))
                    .await
                    .map_err(to_dbus)
            }

            async fn flush_current_buffer(
                &self,
                #[zbus(header)] hdr: Header<'_>,
                #[zbus(connection)] conn: &Connection,
            ) -> Result<(), LcdError> {
                require_root(conn, &hdr).await?;
                self.cache.flush_current_buffer();
                Ok(())
            }

            async fn clear_stat(
                &self,
                #[zbus(header)] hdr: Header<'_>,
                #[zbus(connection)] conn: &Connection,
            ) -> Result<(), LcdError> {
                require_root(conn, &hdr).await?;
                self.cache.clear_stat();
                Ok(())
            }

            #[zbus(property(emits_changed_signal = "const"))]
            fn id(&self) -> u8 {
                self.cache.id()
            }

        $(
            #[doc = $help]
            #[zbus(property)]
            fn $name(&self) -> $ty {
                KnobValue::from_knob(self.cache.knob(Knob::$variant))
            }

            #[zbus(property)]
            async fn $setter(
                &self,
                v: $ty,
                #[zbus(header)] hdr: Option<Header<'_>>,
                #[zbus(connection)] conn: &Connection,
            ) -> fdo::Result<()> {
                self.set(Knob::$variant, v.to_knob(), hdr, conn).await
            }
        )*

            #[zbus(property(emits_changed_signal = "false"))]
            fn last_flushed_segment_id(&self) -> u64 {
                self.cache.recent_status().last_flushed_segment_id
            }

            #[zbus(property(emits_changed_signal = "false"))]
            fn last_migrated_segment_id(&self) -> u64 {
                self.cache.recent_status().last_migrated_segment_id
            }
        }
    };
}

lc_proto::knobs::cache_knobs!(cache_interface);
