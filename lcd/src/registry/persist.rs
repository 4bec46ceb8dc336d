//! Writing the saved state off the async executor, in order.
//!
//! Every change to the configuration takes a snapshot of the records while
//! it holds the registry's lock, so snapshots are numbered in the order of
//! the changes. The snapshot is written on tokio's blocking pool (the
//! store's write-temp, fsync, rename, fsync-dir, never on the executor and
//! never under the registry's lock), one write at a time; a snapshot older
//! than one already written is not written again (the newer one holds its
//! change too). The change's caller hears back only once a snapshot that
//! holds its change is durable, so a D-Bus call that changed the
//! configuration replies only after the change would survive a crash.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::error::{blocking, RegistryError};
use super::state::{CacheRecord, DeviceRecord, StateStore};

/// The state store and the order of the snapshots written to it.
pub struct Persister {
    store: Arc<StateStore>,
    /// Number of the last snapshot taken.
    taken: AtomicU64,
    /// Number of the last snapshot written (the lock is held while writing).
    written: Arc<Mutex<u64>>,
}

/// A snapshot of the records, to be written.
#[must_use = "a snapshot is saved only when written"]
pub struct Snapshot {
    number: u64,
    caches: Vec<CacheRecord>,
    devices: Vec<DeviceRecord>,
    store: Arc<StateStore>,
    written: Arc<Mutex<u64>>,
}

impl Persister {
    /// Saves into `store`.
    pub fn new(store: StateStore) -> Persister {
        Persister {
            store: Arc::new(store),
            taken: AtomicU64::new(0),
            written: Arc::new(Mutex::new(0)),
        }
    }

    /// The store written to.
    #[cfg(test)]
    pub fn store(&self) -> &StateStore {
        &self.store
    }

    /// Numbers a snapshot of these records; the caller holds the registry's
    /// lock, under which the records were read.
    pub fn snapshot(&self, caches: Vec<CacheRecord>, devices: Vec<DeviceRecord>) -> Snapshot {
        Snapshot {
            number: self.taken.fetch_add(1, Ordering::SeqCst) + 1,
            caches,
            devices,
            store: self.store.clone(),
            written: self.written.clone(),
        }
    }
}

impl Snapshot {
    /// Writes the snapshot (unless a newer one was written already) on the
    /// blocking pool and returns once it is durable.
    pub async fn write(self) -> Result<(), RegistryError> {
        blocking(move || {
            let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
            if *written >= self.number {
                return Ok(());
            }
            self.store.save(self.caches, self.devices).map_err(|e| {
                RegistryError::Io(format!(
                    "saving the configuration in {} failed: {e}; the change is live but will \
                     not survive a restart",
                    self.store.dir().display()
                ))
            })?;
            *written = self.number;
            Ok(())
        })
        .await
    }
}
