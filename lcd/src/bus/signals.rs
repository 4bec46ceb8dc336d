//! What the bus tells its clients of the registry's changes: objects
//! published and removed, and `PropertiesChanged` for a device's `State`
//! and a cache's `AllowMigrate`.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use lc_engine::Cache;
use zbus::Connection;

use super::cache::CacheObject;
use super::device::DeviceObject;
use crate::registry::{Announcer, Change, Registry};

/// The registry's [`Announcer`] on a bus connection.
pub struct BusAnnouncer {
    conn: Connection,
    registry: Arc<Registry>,
}

impl BusAnnouncer {
    /// Announces on `conn` the changes of `registry`.
    pub fn new(conn: Connection, registry: Arc<Registry>) -> BusAnnouncer {
        BusAnnouncer { conn, registry }
    }
}

impl Announcer for BusAnnouncer {
    fn announce(&self, change: Change) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let server = self.conn.object_server();
            match change {
                Change::CacheAdded(id, cache) => {
                    publish_cache(&self.conn, &self.registry, id, cache).await
                }
                Change::CacheRemoved(id) => {
                    let _ = server
                        .remove::<CacheObject, _>(lc_proto::cache_path(id))
                        .await;
                }
                Change::DeviceAdded(id) => publish_device(&self.conn, &self.registry, id).await,
                Change::DeviceRemoved(id) => {
                    let _ = server
                        .remove::<DeviceObject, _>(lc_proto::device_path(id))
                        .await;
                }
                Change::DeviceState(id) => {
                    if let Ok(iface) = server
                        .interface::<_, DeviceObject>(lc_proto::device_path(id))
                        .await
                    {
                        let _ = iface
                            .get()
                            .await
                            .state_changed(iface.signal_emitter())
                            .await;
                    }
                }
                Change::AllowMigrate(id) => {
                    if let Ok(iface) = server
                        .interface::<_, CacheObject>(lc_proto::cache_path(id))
                        .await
                    {
                        let _ = iface
                            .get()
                            .await
                            .allow_migrate_changed(iface.signal_emitter())
                            .await;
                    }
                }
            }
        })
    }
}

/// Publishes the object of cache `id`.
pub async fn publish_cache(conn: &Connection, registry: &Arc<Registry>, id: u8, cache: Arc<Cache>) {
    let obj = CacheObject {
        cache,
        registry: registry.clone(),
    };
    if let Err(e) = conn.object_server().at(lc_proto::cache_path(id), obj).await {
        tracing::error!(id, "cannot publish cache object: {e}");
    }
}

/// Publishes the object of device `id`.
pub async fn publish_device(conn: &Connection, registry: &Arc<Registry>, id: u8) {
    let obj = DeviceObject {
        id,
        registry: registry.clone(),
    };
    if let Err(e) = conn
        .object_server()
        .at(lc_proto::device_path(id), obj)
        .await
    {
        tracing::error!(id, "cannot publish device object: {e}");
    }
}
