//! The registry driven directly, with no bus: `--frontend none`, caches
//! and backing devices in files of a temporary directory.

use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use lc_engine::{format_cache_device, DeviceKnob, FileDevice, Knob};

use super::device::{DeviceEntry, DeviceState};
use super::state::StateStore;
use super::*;
use crate::frontend::{FrontendKind, Frontends, NoFrontend};

/// An [`Announcer`] that writes down what it is told.
#[derive(Default)]
struct Heard(Mutex<Vec<String>>);

impl Heard {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl Announcer for Heard {
    fn announce(&self, change: Change) -> BoxFuture<'_, ()> {
        let said = match change {
            Change::CacheAdded(id, _) => format!("cache {id} added"),
            Change::CacheRemoved(id) => format!("cache {id} removed"),
            Change::DeviceAdded(id) => format!("device {id} added"),
            Change::DeviceRemoved(id) => format!("device {id} removed"),
            Change::DeviceState(id) => format!("device {id} state"),
            Change::AllowMigrate(id) => format!("cache {id} allow_migrate"),
        };
        self.0.lock().unwrap().push(said);
        Box::pin(async {})
    }
}

/// A state directory, a formatted cache file and a backing file.
struct Disks {
    dir: tempfile::TempDir,
    cache: String,
    backing: String,
}

fn disks() -> Disks {
    let dir = tempfile::tempdir().unwrap();
    let (cache, backing) = (dir.path().join("cache"), dir.path().join("backing"));
    std::fs::File::create(&cache)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    format_cache_device(&FileDevice::open(&cache).unwrap(), false).unwrap();
    Disks {
        cache: cache.to_str().unwrap().into(),
        backing: backing.to_str().unwrap().into(),
        dir,
    }
}

impl Disks {
    fn state_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }

    /// A registry on this state directory, its saved state restored.
    async fn registry(&self) -> (Arc<Registry>, Arc<Heard>) {
        let store = StateStore::open(&self.state_dir()).unwrap();
        let saved = store.load().unwrap();
        let registry = Registry::new(store, Frontends::only(Arc::new(NoFrontend)));
        registry.restore(saved).await;
        let heard = Arc::new(Heard::default());
        registry.announce_to(heard.clone());
        (registry, heard)
    }
}

fn entry(backing: &str, state: DeviceState, saved: bool) -> DeviceEntry {
    DeviceEntry {
        saved,
        ..DeviceEntry::new(1, backing.into(), FrontendKind::None, None, state)
    }
}

#[tokio::test]
async fn the_state_file_keeps_a_device_being_re_pointed_and_no_unsaved_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let registry = Registry::new(store, Frontends::only(Arc::new(NoFrontend)));
    {
        let mut r = registry.lock();
        // re-pointing: recorded, coming up again
        r.devices
            .insert(2, entry("/dev/disk/by-id/b", DeviceState::Creating, true));
        // CreateDevice bringing it up: not recorded yet
        r.devices
            .insert(3, entry("/dev/disk/by-id/c", DeviceState::Creating, false));
        // dirty data without a record: listed, never saved
        r.devices
            .insert(4, entry("", DeviceState::Failed("no record".into()), false));
    }
    registry.persist().await.unwrap();
    let saved = StateStore::open(dir.path()).unwrap().load().unwrap();
    let ids: Vec<u8> = saved.devices.iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![2]);
}

#[tokio::test]
async fn a_cache_and_device_configured_come_back_at_the_next_start() {
    let d = disks();
    {
        let (registry, heard) = d.registry().await;
        registry.resume_cache(1, d.cache.clone()).await.unwrap();
        let cache = registry.running_cache(1).unwrap();
        registry
            .set_knob(&cache, Knob::UpdateInterval, 7)
            .await
            .unwrap();
        let dev = registry
            .create_device(0, d.backing.clone(), 1, None)
            .await
            .unwrap();
        assert_eq!(dev.id, 1, "the first free id");
        assert_eq!(dev.state, "no block device: its frontend is none (lcd --frontend none, or lcctl attach --frontend none)");
        assert_eq!(heard.take(), ["cache 1 added", "device 1 added"]);
        registry.stop().await;
    }
    let (registry, _) = d.registry().await;
    let caches = registry.list_caches();
    assert_eq!(caches.len(), 1);
    assert_eq!((caches[0].id, caches[0].state.as_str()), (1, "running"));
    let cache = registry.running_cache(1).unwrap();
    assert_eq!(cache.knob(Knob::UpdateInterval), 7, "the knob was saved");
    let devices = registry.list_devices();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].backing, d.backing);
    assert_eq!(
        devices[0].state,
        "no block device: its frontend is none (lcd --frontend none, or lcctl attach --frontend none)"
    );
    registry.stop().await;
}

#[tokio::test]
async fn a_threshold_of_0_stops_write_back_at_once_and_says_so() {
    const THRESHOLD: DeviceKnob = DeviceKnob::MigrateThreshold;
    let d = disks();
    let (registry, heard) = d.registry().await;
    registry.resume_cache(1, d.cache.clone()).await.unwrap();
    registry
        .create_device(3, d.backing.clone(), 1, None)
        .await
        .unwrap();
    let cache = registry.running_cache(1).unwrap();
    registry
        .set_knob(&cache, Knob::AllowMigrate, 1)
        .await
        .unwrap();
    heard.take();
    registry.set_device_knob(3, THRESHOLD, 50).await.unwrap();
    assert_eq!(
        cache.knob(Knob::AllowMigrate),
        1,
        "50 leaves it to the policy"
    );
    assert!(heard.take().is_empty());
    registry.set_device_knob(3, THRESHOLD, 0).await.unwrap();
    assert_eq!(cache.knob(Knob::AllowMigrate), 0, "0 stops write-back now");
    assert_eq!(heard.take(), ["cache 1 allow_migrate"]);
    let e = registry
        .set_device_knob(3, THRESHOLD, 101)
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::InvalidArgument(_)), "{e:?}");
    assert_eq!(
        registry.list_devices()[0].knobs.get(THRESHOLD),
        0,
        "unchanged"
    );
    let saved = StateStore::open(&d.state_dir()).unwrap().load().unwrap();
    assert_eq!(saved.devices[0].knobs["migrate_threshold"], 0, "recorded");
    registry.stop().await;
}

#[tokio::test]
async fn removing_a_device_writes_it_back_and_forgets_it() {
    let d = disks();
    let (registry, heard) = d.registry().await;
    registry.resume_cache(1, d.cache.clone()).await.unwrap();
    registry
        .create_device(2, d.backing.clone(), 1, None)
        .await
        .unwrap();
    let cache = registry.running_cache(1).unwrap();
    let data = vec![0xa5u8; 4096];
    cache.write(2, 8, &data).unwrap();
    assert_eq!(cache.nr_dirty_caches(2), 1);
    heard.take();
    let e = registry.free_cache(1).await.unwrap_err();
    assert!(
        matches!(e, RegistryError::Busy(_)),
        "a cache serving a device stays: {e:?}"
    );
    registry.remove_device(2, true).await.unwrap();
    assert_eq!(heard.take(), ["device 2 state", "device 2 removed"]);
    assert!(registry.list_devices().is_empty());
    let back = std::fs::read(&d.backing).unwrap();
    assert_eq!(
        &back[4096..8192],
        &data[..],
        "the dirty line is on the backing device"
    );
    let saved = StateStore::open(&d.state_dir()).unwrap().load().unwrap();
    assert!(saved.devices.is_empty(), "forgotten in the state file too");
    registry.free_cache(1).await.unwrap();
    assert_eq!(heard.take(), ["cache 1 removed"]);
    let saved = StateStore::open(&d.state_dir()).unwrap().load().unwrap();
    assert!(saved.caches.is_empty());
}

#[tokio::test]
async fn a_cache_whose_disk_is_missing_is_listed_as_failed_and_can_be_freed() {
    let d = disks();
    {
        let (registry, _) = d.registry().await;
        registry.resume_cache(1, d.cache.clone()).await.unwrap();
        registry.stop().await;
    }
    std::fs::rename(&d.cache, d.dir.path().join("moved")).unwrap();
    let (registry, _) = d.registry().await;
    let caches = registry.list_caches();
    assert!(caches[0].state.starts_with("failed: "), "{:?}", caches[0]);
    let e = registry
        .resume_cache(2, "relative/path".into())
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::InvalidArgument(_)), "{e:?}");
    registry.free_cache(1).await.unwrap();
    assert!(registry.list_caches().is_empty());
    let saved = StateStore::open(&d.state_dir()).unwrap().load().unwrap();
    assert!(saved.caches.is_empty(), "forgotten for good");
}

#[tokio::test]
async fn an_older_snapshot_written_late_does_not_undo_a_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let persister = persist::Persister::new(StateStore::open(dir.path()).unwrap());
    let record = |id| state::CacheRecord {
        id,
        path: format!("/dev/c{id}"),
        knobs: Default::default(),
        uuid: None,
    };
    let older = persister.snapshot(vec![record(1)], Vec::new());
    let newer = persister.snapshot(vec![record(1), record(2)], Vec::new());
    newer.write().await.unwrap();
    older.write().await.unwrap();
    let saved = persister.store().load().unwrap();
    let ids: Vec<u8> = saved.caches.iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![1, 2], "the newer snapshot stays");
}
