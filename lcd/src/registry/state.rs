//! The daemon's persistent configuration: which caches it resumes at start,
//! with their knobs, and which devices it re-creates on them. One JSON file in the state directory, replaced
//! atomically (write a temporary file, fsync, rename, fsync the directory),
//! so a crash leaves either the old or the new file, never half of one.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::identity::DeviceIdentity;

/// Version of the state file's layout.
const STATE_VERSION: u32 = 1;

/// Everything lcd remembers across restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Layout version ([`STATE_VERSION`]).
    pub version: u32,
    /// Caches to resume, by id.
    pub caches: Vec<CacheRecord>,
    /// Devices to re-create once their caches are back, by id.
    #[serde(default)]
    pub devices: Vec<DeviceRecord>,
}

/// One device to re-create at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Device id (also the ublk device number).
    pub id: u8,
    /// Cache it is served through.
    pub cache_id: u8,
    /// Path of the backing device, as the administrator gave it.
    pub backing: String,
    /// Its knobs by dm-lc name (`"migrate_threshold": 70`), beside the
    /// other fields: the layout older lcd wrote and reads.
    #[serde(flatten)]
    pub knobs: BTreeMap<String, u64>,
    /// How it is exposed: `ublk`, `nbd` or `none` (absent in state files of
    /// older lcd: lcd's default frontend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontend: Option<String>,
    /// Who the backing device is (absent in state files of older lcd:
    /// recorded at the first successful open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<DeviceIdentity>,
}

/// One cache to resume at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheRecord {
    /// Cache id.
    pub id: u8,
    /// Path of the cache device, as the administrator gave it.
    pub path: String,
    /// Knob values by dm-lc name.
    pub knobs: BTreeMap<String, u64>,
    /// Format uuid of the cache (hex; absent in state files of older lcd:
    /// recorded at the first successful resume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
}

/// Where the state lives.
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// Uses `dir`, creating it if its parent exists. A missing parent is
    /// an error, not something to create: lcd starts before local file
    /// systems are mounted, and a missing `/var/lib` most likely means `/var`
    /// is a file system not mounted yet, where a fresh empty state would hide
    /// the real one.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        if !dir.is_dir() {
            let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
            if let Some(parent) = parent.filter(|p| !p.is_dir()) {
                anyhow::bail!(
                    "the state directory {} cannot be created: {} does not exist. If it is on a \
                     file system that is not mounted yet (lcd.service starts before local file \
                     systems), keep the state on the root file system instead: \
                     `systemctl edit lcd` and add --state-dir (see packaging/README.md, \
                     \"Boot ordering\")",
                    dir.display(),
                    parent.display()
                );
            }
            fs::create_dir(dir)
                .with_context(|| format!("creating the state directory {}", dir.display()))?;
        }
        Ok(StateStore {
            dir: dir.to_path_buf(),
        })
    }

    fn file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The saved state (empty if none was saved yet).
    pub fn load(&self) -> anyhow::Result<State> {
        let path = self.file();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(State {
                    version: STATE_VERSION,
                    ..State::default()
                })
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let state: State = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is damaged: repair it or move it away (lcd then starts empty)",
                path.display()
            )
        })?;
        anyhow::ensure!(
            state.version == STATE_VERSION,
            "{} has layout version {}, this lcd reads {STATE_VERSION}",
            path.display(),
            state.version
        );
        Ok(state)
    }

    /// Replaces the saved state atomically.
    pub fn save(
        &self,
        caches: Vec<CacheRecord>,
        devices: Vec<DeviceRecord>,
    ) -> std::io::Result<()> {
        let state = State {
            version: STATE_VERSION,
            caches,
            devices,
        };
        let tmp = self.dir.join(".state.json.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(&state).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, self.file())?;
        File::open(&self.dir)?.sync_all()
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load_round_trips_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().join("lcd")).unwrap();
        assert!(store.load().unwrap().caches.is_empty());
        let rec = CacheRecord {
            id: 3,
            path: "/dev/x".into(),
            knobs: [("allow_migrate".to_string(), 1)].into(),
            uuid: Some("00ff".into()),
        };
        let dev = DeviceRecord {
            id: 7,
            cache_id: 3,
            backing: "/dev/y".into(),
            knobs: [("migrate_threshold".to_string(), 50)].into(),
            frontend: Some("nbd".into()),
            identity: Some(DeviceIdentity::File { dev: 1, ino: 2 }),
        };
        store.save(vec![rec.clone()], vec![dev.clone()]).unwrap();
        let text = fs::read_to_string(store.file()).unwrap();
        assert!(
            text.contains(r#""migrate_threshold":50"#)
                || text.contains(r#""migrate_threshold": 50"#),
            "device knobs beside the other fields, as older lcd wrote them: {text}"
        );
        let back = store.load().unwrap();
        assert_eq!((back.caches, back.devices), (vec![rec], vec![dev]));
        fs::write(store.file(), b"{ not json").unwrap();
        let err = store.load().unwrap_err();
        assert!(format!("{err:#}").contains("is damaged"), "{err:#}");
    }

    #[test]
    fn a_state_file_of_an_older_lcd_loads_without_identities() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        fs::write(
            store.file(),
            br#"{"version":1,"caches":[{"id":1,"path":"/dev/disk/by-id/c","knobs":{}}],
                "devices":[{"id":2,"cache_id":1,"backing":"/dev/sdb","migrate_threshold":70}]}"#,
        )
        .unwrap();
        let s = store.load().unwrap();
        assert_eq!(
            (s.caches[0].uuid.as_ref(), s.devices[0].identity.as_ref()),
            (None, None)
        );
        assert_eq!(s.caches[0].path, "/dev/disk/by-id/c", "the path as given");
        assert_eq!(s.devices[0].knobs["migrate_threshold"], 70);
        assert_eq!(s.devices[0].frontend, None, "lcd's default then");
    }

    #[test]
    fn a_state_directory_under_a_missing_parent_is_refused_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let var = dir.path().join("var");
        let err = StateStore::open(&var.join("lib").join("lcd"))
            .err()
            .expect("opened under a missing parent");
        assert!(format!("{err:#}").contains("not mounted yet"), "{err:#}");
        assert!(!var.exists(), "nothing created");
        // an existing directory is used as it is
        StateStore::open(dir.path()).unwrap();
    }
}
