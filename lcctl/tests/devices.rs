//! Device commands of the real lcctl against the real lcd (run with
//! `--frontend none`: devices are attached to their cache but get no
//! block node, as on a host without ublk): attach, list, status, the
//! device knob, detach with and without waiting, and detach writing dirty
//! data back while it shows its progress.

mod common;

use std::sync::Arc;

use common::{sparse, Rig, CACHE_BYTES};
use serde_json::{json, Value};

fn device_ids(rig: &Rig) -> Vec<u64> {
    rig.lcctl(&["--json", "list"]).json()["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_u64().unwrap())
        .collect()
}

#[test]
fn attach_inspect_tune_and_detach_devices() {
    let rig = Rig::start();
    let files = tempfile::tempdir().unwrap();
    let cache = sparse(files.path(), "cache.img", CACHE_BYTES);
    let disk_a = sparse(files.path(), "a.img", 32 << 20);
    let disk_b = sparse(files.path(), "b.img", 16 << 20);
    rig.lcctl(&["format", &cache]).ok();
    rig.lcctl(&["resume", &cache, "--id", "1"]).ok();

    // attach
    let j = rig
        .lcctl(&["--json", "attach", &disk_a, "--cache", "1", "--id", "4"])
        .json();
    assert_eq!(j["id"], 4);
    assert_eq!(j["cache_id"], 1);
    assert_eq!(j["backing"], disk_a.as_str());
    assert_eq!(j["size_bytes"], 32 << 20);
    assert_eq!(j["node"], "");
    assert_eq!(j["nr_dirty_caches"], 0);
    assert_eq!(j["migrate_threshold"], 70);
    assert!(
        j["state"].as_str().unwrap().starts_with("no block device:"),
        "{j}"
    );
    // without --id: the lowest free id; without a node, the text says why
    let out = rig.lcctl(&["attach", &disk_b, "--cache", "1"]);
    assert!(
        out.ok()
            .starts_with("device 1 attached to cache 1; no block device:"),
        "{out:?}"
    );
    assert_eq!(device_ids(&rig), [1, 4]);

    // errors change nothing
    let other = sparse(files.path(), "c.img", 16 << 20);
    rig.lcctl(&["attach", &disk_a, "--cache", "1"])
        .fails(4, "already the backing device of device 4");
    rig.lcctl(&["attach", &other, "--cache", "1", "--id", "4"])
        .fails(4, "");
    rig.lcctl(&["attach", &other, "--cache", "9"])
        .fails(3, "cache 9 is not resumed");
    rig.lcctl(&["attach", "/nonexistent/disk", "--cache", "1"])
        .fails(3, "/nonexistent/disk");
    assert_eq!(rig.lcctl(&["attach", &other, "--cache", "0"]).code, 2);
    rig.lcctl(&["free", "1"]).fails(4, "lcctl detach ID");
    assert_eq!(device_ids(&rig), [1, 4]);

    // list: one line per cache and per device
    let text = rig.lcctl(&["list"]).ok().to_string();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().take(7).collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["cache", "1", "-", cache.as_str(), "-", "-", "0"],
            vec!["device", "1", "1", disk_b.as_str(), "none", "-", "0"],
            vec!["device", "4", "1", disk_a.as_str(), "none", "-", "0"],
        ]
    );
    let j = rig.lcctl(&["--json", "list"]).json();
    assert_eq!(j["devices"][1]["backing"], disk_a.as_str());
    assert_eq!(j["devices"][1]["cache_id"], 1);

    // status shows the cache's devices
    let text = rig.lcctl(&["status", "1"]).ok().to_string();
    let header = text
        .lines()
        .find(|l| l.trim_start().starts_with("DEVICE"))
        .unwrap_or_else(|| panic!("no device table:\n{text}"));
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        [
            "DEVICE",
            "BACKING",
            "FRONTEND",
            "NODE",
            "SIZE",
            "DIRTY",
            "MIGRATE_THRESHOLD",
            "STATE"
        ]
    );
    let row = text
        .lines()
        .find(|l| l.contains(disk_a.as_str()))
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>();
    assert_eq!(
        row[..8],
        ["4", disk_a.as_str(), "none", "-", "32.0", "MiB", "0", "70"]
    );
    let j = rig.lcctl(&["--json", "status", "1"]).json();
    let devs = j["caches"][0]["devices"].as_array().unwrap();
    assert_eq!(devs.len(), 2);
    assert_eq!(devs[1]["id"], 4);

    // the device knob
    assert_eq!(
        rig.lcctl(&["--json", "get", "--device", "4"]).json(),
        json!({"device": 4, "knobs": {"migrate_threshold": 70}})
    );
    assert_eq!(
        rig.lcctl(&["--json", "set", "migrate_threshold", "50", "--device", "4"])
            .json(),
        json!({"device": 4, "knobs": {"migrate_threshold": 50}})
    );
    assert_eq!(
        rig.lcctl(&["get", "migrate_threshold", "--device", "4"])
            .ok()
            .trim(),
        "50"
    );
    rig.lcctl(&["set", "migrate_threshold", "101", "--device", "4"])
        .fails(2, "migrate_threshold must be in 0..=100");
    rig.lcctl(&["set", "migrate_threshold", "300", "--device", "4"])
        .fails(2, "migrate_threshold must be in 0..=100");
    rig.lcctl(&["get", "--device", "9"]).fails(3, "no device 9");
    rig.lcctl(&["set", "migrate_threshold", "5", "--device", "9"])
        .fails(3, "no device 9");
    assert_eq!(
        rig.lcctl(&["get", "--device", "4", "--cache", "1"]).code,
        2,
        "--device and --cache exclude each other"
    );
    assert_eq!(
        rig.lcctl(&["get", "migrate_threshold", "--device", "4"])
            .ok()
            .trim(),
        "50",
        "refused values changed nothing"
    );

    // users other than root read, but do not change
    if common::is_root() {
        rig.lcctl_as_nobody(&["attach", &other, "--cache", "1"])
            .fails(5, "sudo");
        rig.lcctl_as_nobody(&["set", "migrate_threshold", "5", "--device", "4"])
            .fails(5, "sudo");
        rig.lcctl_as_nobody(&["detach", "4"]).fails(5, "sudo");
        assert_eq!(device_ids(&rig), [1, 4]);
        assert_eq!(
            rig.lcctl_as_nobody(&["get", "migrate_threshold", "--device", "4"])
                .ok()
                .trim(),
            "50"
        );
    }

    // detach, waiting and not
    rig.lcctl(&["detach", "9"]).fails(3, "no device 9");
    let out = rig.lcctl(&["detach", "1"]);
    assert_eq!(
        out.ok().trim(),
        "device 1 detached; 0 dirty blocks were written back"
    );
    let j = rig.lcctl(&["--json", "detach", "4", "--no-wait"]).json();
    assert_eq!(j, json!({"device": 4, "dirty_blocks": 0, "waited": false}));
    // it goes away by itself once written back
    let mut gone = false;
    for _ in 0..400 {
        if device_ids(&rig).is_empty() {
            gone = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert!(gone, "device 4 never went away after detach --no-wait");
    assert_eq!(
        rig.lcctl(&["--json", "free", "1"]).json(),
        json!({"freed_cache": 1})
    );
}

const DEVICE: u8 = 7;
const BLOCKS: u64 = 3000;

/// The content written to block `i` of the backing device.
fn block(i: u64) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    for (k, x) in b.iter_mut().enumerate() {
        *x = (i as usize * 31 + k / 512) as u8 | 1;
    }
    b
}

/// Writes BLOCKS blocks for device DEVICE into the cache on `cache`,
/// offline with the engine, and stops it cleanly: the data stays dirty in
/// the cache, the backing device is untouched.
fn write_dirty_data_offline(cache: &str, backing: &str) {
    use lc_engine::{Cache, CacheOptions, FileDevice};
    let dev = FileDevice::open(cache.as_ref()).unwrap();
    lc_engine::format_cache_device(&dev, false).unwrap();
    let c = Cache::resume(1, Arc::new(dev), CacheOptions::default()).unwrap();
    c.attach_device(
        DEVICE,
        Arc::new(FileDevice::open(backing.as_ref()).unwrap()),
    )
    .unwrap();
    for i in 0..BLOCKS {
        // every other block, so write-back has many runs to do
        c.write(DEVICE, i * 2 * 8, &block(i)).unwrap();
    }
    c.flush_sync().unwrap();
    assert_eq!(c.nr_dirty_caches(DEVICE), BLOCKS);
    c.shutdown().unwrap();
}

#[test]
fn detach_writes_dirty_data_back_and_shows_progress() {
    let files = tempfile::tempdir().unwrap();
    let cache = sparse(files.path(), "cache.img", CACHE_BYTES);
    let backing = sparse(files.path(), "disk.img", 32 << 20);
    write_dirty_data_offline(&cache, &backing);
    assert!(
        std::fs::read(&backing).unwrap().iter().all(|&b| b == 0),
        "the data is only in the cache"
    );

    let rig = Rig::start();
    let j = rig.lcctl(&["--json", "resume", &cache, "--id", "1"]).json();
    assert_eq!(j["nr_dirty_caches"], BLOCKS);
    // lcd's migration policy allows write-back of a cache with no busy
    // disks at once; hold it off so the data is still dirty when detach
    // begins: wait for the policy's first decision, make the next one an
    // hour away, and switch write-back off.
    let mut decided = false;
    for _ in 0..400 {
        if rig
            .lcctl(&["get", "allow_migrate", "--cache", "1"])
            .ok()
            .trim()
            == "1"
        {
            decided = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert!(
        decided,
        "lcd's policy never allowed write-back of an idle cache"
    );
    rig.lcctl(&["set", "update_interval", "3600", "--cache", "1"])
        .ok();
    rig.lcctl(&["set", "allow_migrate", "0", "--cache", "1"])
        .ok();

    // lcd has no record of device 7's disk: the id is listed failed and
    // no disk takes it silently; the administrator names its disk on purpose
    rig.lcctl(&["attach", &backing, "--cache", "1", "--id", "7"])
        .fails(4, &format!("lcctl repoint 7 {backing}"));
    let listed = rig.lcctl(&["--json", "list"]).json();
    assert!(
        listed["devices"][0]["state"]
            .as_str()
            .is_some_and(|s| s.contains("no record")),
        "{listed}"
    );
    let j = rig.lcctl(&["--json", "repoint", "7", &backing]).json();
    assert_eq!(j["nr_dirty_caches"], BLOCKS);
    let text = rig.lcctl(&["list"]).ok().to_string();
    assert!(
        text.lines()
            .any(|l| l.starts_with("device") && l.contains(&format!(" {BLOCKS} "))),
        "{text}"
    );
    let text = rig.lcctl(&["status", "1"]).ok().to_string();
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("nr_dirty_caches")
                && l.ends_with(&BLOCKS.to_string())),
        "{text}"
    );

    // detach: progress on stderr, the data on the backing device after
    let out = rig.lcctl(&["detach", "7"]);
    assert_eq!(
        out.ok().trim(),
        format!("device 7 detached; {BLOCKS} dirty blocks were written back")
    );
    assert!(
        out.stderr.starts_with(&format!(
            "lcctl: device 7: writing back {BLOCKS} dirty blocks\n"
        )),
        "{out:?}"
    );
    let disk = std::fs::read(&backing).unwrap();
    for i in 0..BLOCKS {
        let at = (i * 2 * 4096) as usize;
        assert!(
            disk[at..at + 4096] == block(i),
            "block {i} not written back"
        );
        assert!(
            disk[at + 4096..at + 8192].iter().all(|&b| b == 0),
            "block {i}: its neighbour was never written"
        );
    }
    let j: Value = rig.lcctl(&["--json", "list"]).json();
    assert_eq!(j["devices"], json!([]));
    assert_eq!(j["caches"][0]["nr_dirty_caches"], 0);
}

#[test]
fn detach_draws_a_progress_bar_on_a_terminal() {
    let files = tempfile::tempdir().unwrap();
    let cache = sparse(files.path(), "cache.img", CACHE_BYTES);
    let backing = sparse(files.path(), "disk.img", 32 << 20);
    let rig = Rig::start();
    rig.lcctl(&["format", &cache]).ok();
    rig.lcctl(&["resume", &cache, "--id", "1"]).ok();
    rig.lcctl(&["attach", &backing, "--cache", "1", "--id", "2"])
        .ok();
    // script(1) gives lcctl a terminal; the bar is drawn on it
    let cmd = format!(
        "{} --bus {} detach 2",
        env!("CARGO_BIN_EXE_lcctl"),
        rig.address()
    );
    let o = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script (util-linux) must be installed");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("device 2: writing back ["), "{text}");
    assert!(text.contains("device 2 detached"), "{text}");
}

#[test]
fn a_failed_device_with_dirty_data_is_repointed_or_discarded_on_purpose() {
    let files = tempfile::tempdir().unwrap();
    let cache = sparse(files.path(), "cache.img", CACHE_BYTES);
    let disk = sparse(files.path(), "disk.img", 32 << 20);
    write_dirty_data_offline(&cache, &disk);
    // lcd knew device 7 on disk.img, which answers under another name now
    let moved = files.path().join("moved.img").display().to_string();
    std::fs::rename(&disk, &moved).unwrap();
    let mut rig = Rig::bus_only();
    let state = rig.dir().join("state");
    std::fs::create_dir(&state).unwrap();
    let saved = json!({
        "version": 1,
        "caches": [{"id": 1, "path": cache, "knobs": {"allow_migrate": 0}}],
        "devices": [{"id": DEVICE, "cache_id": 1, "backing": disk, "migrate_threshold": 0}],
    });
    std::fs::write(state.join("state.json"), saved.to_string()).unwrap();
    rig.start_lcd();
    let dev = |rig: &Rig| rig.lcctl(&["--json", "list"]).json()["devices"][0].clone();
    assert!(
        dev(&rig)["state"].as_str().unwrap().starts_with("failed:"),
        "{}",
        dev(&rig)
    );
    // forgetting it would strand its data: refused, with the choices named
    let out = rig.lcctl(&["detach", "7"]);
    out.fails(4, "--discard-dirty");
    assert!(out.stderr.contains("lcctl repoint 7"), "{out:?}");
    let out = rig.lcctl(&["detach", "7", "--discard-dirty", "--no-wait"]);
    assert_eq!(out.code, 2, "{out:?}");
    // re-pointed to where the disk is now, then detached with its data
    let j = rig.lcctl(&["--json", "repoint", "7", &moved]).json();
    assert_eq!(
        (j["backing"].as_str(), j["nr_dirty_caches"].as_u64()),
        (Some(moved.as_str()), Some(BLOCKS))
    );
    rig.lcctl(&["repoint", "7"])
        .fails(4, "only a failed device");
    rig.lcctl(&["detach", "7"]).ok();
    let data = std::fs::read(&moved).unwrap();
    assert!(data[..4096] == block(0)[..], "the data went to its disk");

    // a device whose disk is gone for good: its data is given up on purpose
    rig.stop_lcd();
    dirty_again(&cache, &moved);
    let mut saved: Value =
        serde_json::from_slice(&std::fs::read(state.join("state.json")).unwrap()).unwrap();
    saved["devices"] =
        json!([{"id": DEVICE, "cache_id": 1, "backing": moved, "migrate_threshold": 0}]);
    std::fs::write(state.join("state.json"), saved.to_string()).unwrap();
    std::fs::remove_file(&moved).unwrap();
    rig.start_lcd();
    assert!(dev(&rig)["state"].as_str().unwrap().starts_with("failed:"));
    let j = rig
        .lcctl(&["--json", "detach", "7", "--discard-dirty"])
        .json();
    assert_eq!(
        j,
        json!({"device": 7, "forgotten": true, "dirty_blocks_discarded": 1})
    );
    assert!(device_ids(&rig).is_empty());
    let j = rig.lcctl(&["--json", "list"]).json();
    assert_eq!(j["caches"][0]["nr_dirty_caches"], 0, "{j}");
}

/// One more dirty block of device DEVICE in the (formatted) cache on
/// `cache`, written offline.
fn dirty_again(cache: &str, backing: &str) {
    use lc_engine::{Cache, CacheOptions, FileDevice};
    let dev = FileDevice::open(cache.as_ref()).unwrap();
    let c = Cache::resume(1, Arc::new(dev), CacheOptions::default()).unwrap();
    c.attach_device(
        DEVICE,
        Arc::new(FileDevice::open(backing.as_ref()).unwrap()),
    )
    .unwrap();
    c.write(DEVICE, 0, &block(9)).unwrap();
    c.shutdown().unwrap();
}

#[test]
fn attach_chooses_each_devices_frontend_and_list_and_status_show_it() {
    let rig = Rig::start();
    let files = tempfile::tempdir().unwrap();
    let cache = sparse(files.path(), "cache.img", CACHE_BYTES);
    let disk_a = sparse(files.path(), "a.img", 16 << 20);
    let disk_b = sparse(files.path(), "b.img", 16 << 20);
    rig.lcctl(&["format", &cache]).ok();
    rig.lcctl(&["resume", &cache, "--id", "1"]).ok();

    // an NBD export: attach prints the URI to open
    let uri = rig
        .lcctl(&[
            "attach",
            &disk_a,
            "--cache",
            "1",
            "--id",
            "2",
            "--frontend",
            "nbd",
        ])
        .ok()
        .trim()
        .to_string();
    assert!(uri.starts_with("nbd+unix:///?socket="), "{uri}");
    let j = rig
        .lcctl(&["--json", "attach", &disk_b, "--cache", "1", "--id", "3"])
        .json();
    assert_eq!(
        j["frontend"], "none",
        "lcd's default (the rig's --frontend none): {j}"
    );

    // a frontend lcctl does not know is a usage error; nothing is attached
    let bad = rig.lcctl(&["attach", &disk_b, "--cache", "1", "--frontend", "scsi"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(
        bad.stderr.contains("possible values: ublk, nbd, none"),
        "{bad:?}"
    );
    assert_eq!(device_ids(&rig), [2, 3]);

    let j = rig.lcctl(&["--json", "list"]).json();
    let devs = j["devices"].as_array().unwrap();
    assert_eq!(
        (devs[0]["frontend"].as_str(), devs[0]["node"].as_str()),
        (Some("nbd"), Some(uri.as_str()))
    );
    assert_eq!(devs[1]["frontend"], "none");
    let text = rig.lcctl(&["list"]).ok().to_string();
    let row = text.lines().find(|l| l.contains(disk_a.as_str())).unwrap();
    assert_eq!(
        row.split_whitespace().take(6).collect::<Vec<_>>(),
        ["device", "2", "1", disk_a.as_str(), "nbd", uri.as_str()]
    );
    let text = rig.lcctl(&["status", "1"]).ok().to_string();
    let row = text.lines().find(|l| l.contains(disk_a.as_str())).unwrap();
    assert_eq!(row.split_whitespace().nth(2), Some("nbd"), "{text}");
    let j = rig.lcctl(&["--json", "status", "1"]).json();
    assert_eq!(j["caches"][0]["devices"][0]["frontend"], "nbd", "{j}");
}
