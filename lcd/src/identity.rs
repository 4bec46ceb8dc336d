//! Who a backing device is, so that lcd never attaches (or writes back)
//! to another disk that took its name.
//!
//! Kernel names (`/dev/sdb`) change when disks enumerate in another order;
//! lcd keeps the path the administrator gave (often a `/dev/disk/by-id`
//! link) and, beside it, an identity learnt from the open file descriptor:
//! for a regular file its file system and inode; for a block device its size
//! and the stable names the kernel and udev give it (WWN/wwid, serial,
//! device-mapper uuid, loop backing file, `/dev/disk/by-id` and
//! `/dev/disk/by-partuuid` links). At restore, and when a device is
//! re-pointed, the identity found is compared with the one recorded; a
//! mismatch leaves the device failed and nothing is written to it.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use lc_engine::FileDevice;
use serde::{Deserialize, Serialize};

/// The identity of a backing device, as recorded in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DeviceIdentity {
    /// A block device.
    Block {
        /// Its size in bytes.
        size_bytes: u64,
        /// Stable names (`wwid:…`, `serial:…`, `by-id/…`, …); may be empty
        /// where the kernel and udev give it none.
        names: Vec<String>,
    },
    /// A regular file.
    File {
        /// Device of the file system holding it (`st_dev`).
        dev: u64,
        /// Its inode number.
        ino: u64,
    },
}

impl DeviceIdentity {
    /// The identity of the device open in `dev`.
    pub fn of(dev: &FileDevice) -> DeviceIdentity {
        let id = dev.identity();
        match id.rdev {
            None => DeviceIdentity::File {
                dev: id.dev,
                ino: id.ino,
            },
            Some(rdev) => DeviceIdentity::Block {
                size_bytes: lc_engine::BlockDevice::size_bytes(dev),
                names: stable_names(rdev),
            },
        }
    }

    /// Why `found` is not the device recorded as `self`, in words that say
    /// what changed and what was expected; `None` when it is.
    pub fn mismatch(&self, found: &DeviceIdentity) -> Option<String> {
        match (self, found) {
            (DeviceIdentity::File { dev, ino }, DeviceIdentity::File { dev: d2, ino: i2 }) => {
                ((dev, ino) != (d2, i2)).then(|| {
                    format!(
                        "the file is another one: recorded inode {ino} on device {}:{}, found \
                         inode {i2} on device {}:{}",
                        libc::major(*dev),
                        libc::minor(*dev),
                        libc::major(*d2),
                        libc::minor(*d2)
                    )
                })
            }
            (
                DeviceIdentity::Block { size_bytes, names },
                DeviceIdentity::Block {
                    size_bytes: s2,
                    names: n2,
                },
            ) => {
                if size_bytes != s2 {
                    return Some(format!(
                        "the disk has another size: recorded {size_bytes} bytes, found {s2} bytes"
                    ));
                }
                // names may be missing (udev not done yet); when both sides
                // have some, one must be shared
                let shared = names.iter().any(|n| n2.contains(n));
                (!names.is_empty() && !n2.is_empty() && !shared).then(|| {
                    format!(
                        "the disk is another one: recorded {}, found {}",
                        names.join(", "),
                        n2.join(", ")
                    )
                })
            }
            (DeviceIdentity::File { .. }, DeviceIdentity::Block { .. }) => {
                Some("a regular file was recorded, the path is now a block device".into())
            }
            (DeviceIdentity::Block { .. }, DeviceIdentity::File { .. }) => {
                Some("a block device was recorded, the path is now a regular file".into())
            }
        }
    }
}

/// The stable names of block device `rdev` that the kernel (sysfs) and
/// udev (`/dev/disk/by-*` links) give it, sorted.
fn stable_names(rdev: u64) -> Vec<String> {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let mut names = Vec::new();
    if let Ok(sys) = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")) {
        let partition = read_trimmed(&sys.join("partition"));
        match (&partition, sys.parent()) {
            (Some(n), Some(parent)) => names.extend(
                sysfs_names(parent)
                    .into_iter()
                    .map(|s| format!("{s}/part{n}")),
            ),
            _ => names.extend(sysfs_names(&sys)),
        }
    }
    for dir in ["/dev/disk/by-id", "/dev/disk/by-partuuid"] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let same = std::fs::metadata(e.path())
                .is_ok_and(|m| m.file_type().is_block_device() && m.rdev() == rdev);
            if same {
                let short = dir.trim_start_matches("/dev/disk/");
                names.push(format!("{short}/{}", e.file_name().to_string_lossy()));
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

/// Names a whole disk's sysfs directory gives it.
fn sysfs_names(sys: &Path) -> Vec<String> {
    [
        ("wwid", "wwid"),
        ("device/wwid", "wwid"),
        ("serial", "serial"),
        ("device/serial", "serial"),
        ("dm/uuid", "dm-uuid"),
        ("md/uuid", "md-uuid"),
        ("loop/backing_file", "loop"),
    ]
    .iter()
    .filter_map(|(file, label)| read_trimmed(&sys.join(file)).map(|v| format!("{label}:{v}")))
    .collect()
}

fn read_trimmed(p: &Path) -> Option<String> {
    let s = std::fs::read_to_string(p).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(size: u64, names: &[&str]) -> DeviceIdentity {
        DeviceIdentity::Block {
            size_bytes: size,
            names: names.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_block_device_is_the_same_when_size_and_one_stable_name_agree() {
        let rec = block(1 << 30, &["wwid:naa.5000", "by-id/wwn-0x5000"]);
        assert_eq!(rec.mismatch(&rec), None);
        assert_eq!(rec.mismatch(&block(1 << 30, &["wwid:naa.5000"])), None);
        // no names known now (udev not done): size decides
        assert_eq!(rec.mismatch(&block(1 << 30, &[])), None);
        let other = rec.mismatch(&block(1 << 30, &["wwid:naa.6000"])).unwrap();
        assert!(
            other.contains("another one") && other.contains("naa.5000"),
            "{other}"
        );
        let size = rec.mismatch(&block(2 << 30, &["wwid:naa.5000"])).unwrap();
        assert!(size.contains("another size"), "{size}");
        let file = DeviceIdentity::File { dev: 1, ino: 2 };
        assert!(rec.mismatch(&file).is_some() && file.mismatch(&rec).is_some());
    }

    #[test]
    fn a_file_is_the_same_by_inode_and_the_record_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for p in [&a, &b] {
            std::fs::File::create(p).unwrap().set_len(1 << 20).unwrap();
        }
        let ia = DeviceIdentity::of(&FileDevice::open(&a).unwrap());
        let ib = DeviceIdentity::of(&FileDevice::open(&b).unwrap());
        assert_eq!(ia.mismatch(&ia), None);
        let why = ia.mismatch(&ib).unwrap();
        assert!(why.contains("another one"), "{why}");
        let json = serde_json::to_string(&ia).unwrap();
        assert!(json.contains("\"kind\":\"file\""), "{json}");
        assert_eq!(serde_json::from_str::<DeviceIdentity>(&json).unwrap(), ia);
    }
}
