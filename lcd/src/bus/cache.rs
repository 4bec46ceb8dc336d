//! `org.lc.Lcd1.Cache` at `/org/lc/Lcd1/cache/<id>`: one object per resumed
//! cache, a thin layer over the engine's `Cache`. Knobs are properties
//! (their setters need root and validate through the engine); fast-moving
//! counters come from `Status()`, not properties, so the bus is not flooded.
//! The knob properties call [`CacheObject::set`], which asks the registry
//! to set and record the knob.

use std::sync::Arc;

use lc_engine::{Cache, Knob};
use lc_proto::{CacheStatus, LcdError};
use zbus::message::Header;
use zbus::{fdo, interface, Connection};

use super::{error_text, require_root, to_dbus};
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
            errors: vec![
                e.cache_read_errors,
                e.cache_write_errors,
                e.backing_read_errors,
                e.backing_write_errors,
                e.migration_retries,
            ],
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

    #[zbus(property)]
    fn commit_super_block_interval(&self) -> u64 {
        self.cache.knob(Knob::CommitSuperBlockInterval)
    }

    #[zbus(property)]
    async fn set_commit_super_block_interval(
        &self,
        v: u64,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<()> {
        self.set(Knob::CommitSuperBlockInterval, v, hdr, conn).await
    }

    #[zbus(property)]
    fn nr_max_batched_migration(&self) -> u64 {
        self.cache.knob(Knob::NrMaxBatchedMigration)
    }

    #[zbus(property)]
    async fn set_nr_max_batched_migration(
        &self,
        v: u64,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<()> {
        self.set(Knob::NrMaxBatchedMigration, v, hdr, conn).await
    }

    #[zbus(property)]
    fn allow_migrate(&self) -> bool {
        self.cache.knob(Knob::AllowMigrate) != 0
    }

    #[zbus(property)]
    async fn set_allow_migrate(
        &self,
        v: bool,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<()> {
        self.set(Knob::AllowMigrate, v as u64, hdr, conn).await
    }

    #[zbus(property)]
    fn force_migrate(&self) -> bool {
        self.cache.knob(Knob::ForceMigrate) != 0
    }

    #[zbus(property)]
    async fn set_force_migrate(
        &self,
        v: bool,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<()> {
        self.set(Knob::ForceMigrate, v as u64, hdr, conn).await
    }

    #[zbus(property)]
    fn update_interval(&self) -> u64 {
        self.cache.knob(Knob::UpdateInterval)
    }

    #[zbus(property)]
    async fn set_update_interval(
        &self,
        v: u64,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<()> {
        self.set(Knob::UpdateInterval, v, hdr, conn).await
    }

    #[zbus(property)]
    fn flush_current_buffer_interval(&self) -> u64 {
        self.cache.knob(Knob::FlushCurrentBufferInterval)
    }

    #[zbus(property)]
    async fn set_flush_current_buffer_interval(
        &self,
        v: u64,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<()> {
        self.set(Knob::FlushCurrentBufferInterval, v, hdr, conn)
            .await
    }

    #[zbus(property)]
    fn barrier_deadline_ms(&self) -> u64 {
        self.cache.knob(Knob::BarrierDeadlineMs)
    }

    #[zbus(property)]
    async fn set_barrier_deadline_ms(
        &self,
        v: u64,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<()> {
        self.set(Knob::BarrierDeadlineMs, v, hdr, conn).await
    }

    #[zbus(property)]
    fn write_back_queue_depth(&self) -> u64 {
        self.cache.knob(Knob::WriteBackQueueDepth)
    }

    #[zbus(property)]
    async fn set_write_back_queue_depth(
        &self,
        v: u64,
        #[zbus(header)] hdr: Option<Header<'_>>,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<()> {
        self.set(Knob::WriteBackQueueDepth, v, hdr, conn).await
    }

    #[zbus(property(emits_changed_signal = "false"))]
    fn last_flushed_segment_id(&self) -> u64 {
        self.cache.recent_status().last_flushed_segment_id
    }

    #[zbus(property(emits_changed_signal = "false"))]
    fn last_migrated_segment_id(&self) -> u64 {
        self.cache.recent_status().last_migrated_segment_id
    }
}
