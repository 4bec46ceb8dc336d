//! `org.lc.Lcd1.Manager` at `/org/lc/Lcd1`: the lc-mgr messages (format,
//! per-client cursor, resume, free, clear_stat, list) and the device
//! calls, each checking the caller (root for changes) and handing the
//! work to the registry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lc_proto::{CacheInfo, DeviceInfo, LcdError, API_VERSION};
use zbus::message::Header;
use zbus::{interface, Connection};

use super::{cache_info, device_info, require_root, to_dbus};
use crate::frontend::FrontendKind;
use crate::registry::Registry;

/// Each client's cache cursor, by unique bus name.
#[derive(Clone, Default)]
pub struct Cursors(Arc<Mutex<HashMap<String, u8>>>);

impl Cursors {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u8>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The Manager object.
pub struct Manager {
    registry: Arc<Registry>,
    cursors: Cursors,
}

impl Manager {
    /// The Manager of `registry`, keeping clients' cursors in `cursors`.
    pub fn new(registry: Arc<Registry>, cursors: Cursors) -> Manager {
        Manager { registry, cursors }
    }

    fn cursor(&self, hdr: &Header<'_>) -> Result<u8, LcdError> {
        let who = sender(hdr)?;
        self.cursors.lock().get(&who).copied().ok_or_else(|| {
            LcdError::InvalidArgument(
                "no cache selected: call SwitchTo(id) first (lcctl switch-to ID)".into(),
            )
        })
    }
}

fn sender(hdr: &Header<'_>) -> Result<String, LcdError> {
    hdr.sender()
        .map(|s| s.to_string())
        .ok_or_else(|| LcdError::AccessDenied("the call has no sender".into()))
}

fn no_cache_zero(id: u8) -> Result<(), LcdError> {
    if id == 0 {
        return Err(LcdError::InvalidArgument("cache ids are 1..=255".into()));
    }
    Ok(())
}

#[interface(name = "org.lc.Lcd1.Manager")]
impl Manager {
    async fn format_cache_device(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        path: String,
        force: bool,
    ) -> Result<(), LcdError> {
        require_root(conn, &hdr).await?;
        self.registry
            .format_cache_device(path, force)
            .await
            .map_err(to_dbus)
    }

    async fn switch_to(&self, #[zbus(header)] hdr: Header<'_>, id: u8) -> Result<(), LcdError> {
        no_cache_zero(id)?;
        let who = sender(&hdr)?;
        self.cursors.lock().insert(who, id);
        Ok(())
    }

    async fn resume_cache(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        path: String,
    ) -> Result<(), LcdError> {
        require_root(conn, &hdr).await?;
        let id = self.cursor(&hdr)?;
        self.registry.resume_cache(id, path).await.map_err(to_dbus)
    }

    /// `ResumeCache` with the id given instead of the cursor's (for scripts
    /// whose every call is a new client, such as busctl).
    async fn resume_cache_as(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        id: u8,
        path: String,
    ) -> Result<(), LcdError> {
        require_root(conn, &hdr).await?;
        no_cache_zero(id)?;
        self.registry.resume_cache(id, path).await.map_err(to_dbus)
    }

    async fn free_cache(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), LcdError> {
        require_root(conn, &hdr).await?;
        let id = self.cursor(&hdr)?;
        self.registry.free_cache(id).await.map_err(to_dbus)
    }

    async fn clear_stat(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), LcdError> {
        require_root(conn, &hdr).await?;
        let id = self.cursor(&hdr)?;
        self.registry
            .running_cache(id)
            .map_err(to_dbus)?
            .clear_stat();
        Ok(())
    }

    async fn list_caches(&self) -> Result<Vec<CacheInfo>, LcdError> {
        Ok(self
            .registry
            .list_caches()
            .into_iter()
            .map(cache_info)
            .collect())
    }

    async fn create_device(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        device_id: u8,
        backing_path: String,
        cache_id: u8,
    ) -> Result<DeviceInfo, LcdError> {
        self.create_device_with_frontend(
            hdr,
            conn,
            device_id,
            backing_path,
            cache_id,
            String::new(),
        )
        .await
    }

    async fn create_device_with_frontend(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        device_id: u8,
        backing_path: String,
        cache_id: u8,
        frontend: String,
    ) -> Result<DeviceInfo, LcdError> {
        require_root(conn, &hdr).await?;
        let kind = match frontend.as_str() {
            "" => None,
            name => Some(FrontendKind::from_name(name).map_err(LcdError::InvalidArgument)?),
        };
        self.registry
            .create_device(device_id, backing_path, cache_id, kind)
            .await
            .map(device_info)
            .map_err(to_dbus)
    }

    async fn remove_device(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        device_id: u8,
    ) -> Result<(), LcdError> {
        require_root(conn, &hdr).await?;
        self.registry
            .remove_device(device_id, true)
            .await
            .map_err(to_dbus)
    }

    async fn begin_remove_device(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        device_id: u8,
    ) -> Result<(), LcdError> {
        require_root(conn, &hdr).await?;
        self.registry
            .remove_device(device_id, false)
            .await
            .map_err(to_dbus)
    }

    /// Forgets a device that is not attached; `discard_dirty` drops the
    /// dirty data its cache still holds of it (lost for good).
    async fn forget_device(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        device_id: u8,
        discard_dirty: bool,
    ) -> Result<(), LcdError> {
        require_root(conn, &hdr).await?;
        self.registry
            .forget_device(device_id, discard_dirty)
            .await
            .map_err(to_dbus)
    }

    /// Brings back a failed device: from its recorded path and identity
    /// (`backing_path` empty), or from `backing_path`, recorded on purpose.
    async fn repoint_device(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        device_id: u8,
        backing_path: String,
    ) -> Result<DeviceInfo, LcdError> {
        require_root(conn, &hdr).await?;
        self.registry
            .repoint_device(device_id, backing_path)
            .await
            .map(device_info)
            .map_err(to_dbus)
    }

    /// Brings back a cache that failed at start from `path`, recording that
    /// path and the uuid found there as the cache's, on purpose.
    async fn repoint_cache(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        cache_id: u8,
        path: String,
    ) -> Result<(), LcdError> {
        require_root(conn, &hdr).await?;
        self.registry
            .repoint_cache(cache_id, path)
            .await
            .map_err(to_dbus)
    }

    async fn list_devices(&self) -> Result<Vec<DeviceInfo>, LcdError> {
        Ok(self
            .registry
            .list_devices()
            .into_iter()
            .map(device_info)
            .collect())
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn block_frontend(&self) -> String {
        self.registry.frontend_description()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> u32 {
        API_VERSION
    }
}

/// Drops the cursor of each client that leaves the bus (a unique name that
/// loses its owner is never given out again).
pub async fn forget_departed_clients(
    cursors: Cursors,
    mut changes: zbus::fdo::NameOwnerChangedStream,
) {
    use futures_util::StreamExt;
    while let Some(signal) = changes.next().await {
        let Ok(args) = signal.args() else { continue };
        if args.new_owner().is_some() || !args.name().starts_with(':') {
            continue;
        }
        if cursors.lock().remove(args.name().as_str()).is_some() {
            tracing::debug!(client = %args.name(), "dropped the cache cursor of a client that left the bus");
        }
    }
}
