//! Identity of caches and backing devices through the real `lcd` on a
//! private bus: a device whose disk is gone keeps its dirty data bound to
//! it, a disk that is not the recorded one is never written, one file is
//! never two caches, and the administrator re-points on purpose.

mod common;

use std::path::Path;
use std::process::Command;

use common::{file, leave_dirty_data};
use lc_proto::{DeviceInfo, LcdError};
use lc_testbus::Rig;

/// lcd (`--frontend none`, not waiting for missing devices) on a private
/// bus, keeping its state in `state`.
fn start(state: &Path) -> Rig {
    common::lcd()
        .state_dir(state)
        .frontend("none")
        .args(["--wait-for-devices", "0"])
        .start()
}

/// A state directory naming cache 1 on `cache` and device 3 on `backing`
/// (an lcd that created them, then stopped), the cache holding dirty data
/// of device 3 in blocks 0 and 7.
async fn configured(state: &Path, cache: &str, backing: &str) {
    let rig = start(state);
    let (_c, m) = rig.client().await;
    m.format_cache_device(cache, false).await.unwrap();
    m.resume_cache_as(1, cache).await.unwrap();
    m.create_device(3, backing, 1).await.unwrap();
    m.remove_device(3).await.unwrap();
    drop(m);
    rig.stop();
    leave_dirty_data(cache, backing, 3, &[(0, 0xa1), (7, 0xb2)]);
    // the saved state names device 3 again (as the lcd that wrote the data)
    let saved = state.join("state.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&saved).unwrap()).unwrap();
    v["devices"] = serde_json::json!([
        {"id": 3, "cache_id": 1, "backing": backing, "migrate_threshold": 70}
    ]);
    std::fs::write(&saved, serde_json::to_vec(&v).unwrap()).unwrap();
}

fn name(e: &LcdError) -> String {
    format!("{e:?}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_device_with_dirty_data_is_not_forgotten_or_reused_silently() {
    // the scenario of issue 15, defect 2, through D-Bus
    let keep = tempfile::tempdir().unwrap();
    let state = keep.path().join("state");
    let cache = file(&keep.path().join("cache.img"), 16 << 20);
    let a = file(&keep.path().join("a.img"), 4 << 20);
    let b = file(&keep.path().join("b.img"), 4 << 20);
    configured(&state, &cache, &a).await;
    std::fs::rename(&a, keep.path().join("a.away")).unwrap(); // A missing at restart
    let rig = start(&state);
    let (_c, m) = rig.client().await;
    let devs = m.list_devices().await.unwrap();
    assert!(devs[0].state.starts_with("failed:"), "{devs:?}");
    let e = m.remove_device(3).await.unwrap_err();
    assert!(
        name(&e).starts_with("Busy") && name(&e).contains("--discard-dirty"),
        "forgetting a device whose dirty data is still in the cache: {e:?}"
    );
    let e = m.create_device(3, &b, 1).await.unwrap_err();
    assert!(name(&e).starts_with("Busy"), "{e:?}");
    assert_eq!(m.list_devices().await.unwrap().len(), 1, "still listed");
    // forgetting without discarding is the same refusal
    let e = m.forget_device(3, false).await.unwrap_err();
    assert!(name(&e).starts_with("Busy"), "{e:?}");
    // an attached device is detached, not forgotten
    let c = file(&keep.path().join("c.img"), 4 << 20);
    m.create_device(4, &c, 1).await.unwrap();
    let e = m.forget_device(4, true).await.unwrap_err();
    assert!(name(&e).starts_with("InvalidArgument"), "{e:?}");
    // on purpose: the dirty data is dropped from the cache, then the id is free
    m.forget_device(3, true).await.unwrap();
    let info = m.create_device(3, &b, 1).await.unwrap();
    assert_eq!(info.nr_dirty_caches, 0, "{info:?}");
    m.remove_device(3).await.unwrap();
    assert!(
        std::fs::read(&b).unwrap().iter().all(|&x| x == 0),
        "A's data never reached B"
    );
    drop(m);
    rig.stop();
    // and it stays dropped after a restart
    let rig = start(&state);
    let (_c, m) = rig.client().await;
    let info = m.create_device(3, &b, 1).await.unwrap();
    assert_eq!(info.nr_dirty_caches, 0, "{info:?}");
}

/// A cache with dirty data of device 3 and a state directory that records
/// the cache but no device (the state file was lost and the cache resumed
/// again, or the cache came from another machine).
async fn unrecorded(state: &Path, cache: &str, backing: &str) {
    configured(state, cache, backing).await;
    let saved = state.join("state.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&saved).unwrap()).unwrap();
    v["devices"] = serde_json::json!([]);
    std::fs::write(&saved, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn dirty_data_of_an_id_lcd_has_no_record_of_is_listed_and_no_disk_takes_it_silently() {
    let keep = tempfile::tempdir().unwrap();
    let state = keep.path().join("state");
    let cache = file(&keep.path().join("cache.img"), 16 << 20);
    let a = file(&keep.path().join("a.img"), 4 << 20);
    let b = file(&keep.path().join("b.img"), 4 << 20);
    unrecorded(&state, &cache, &a).await;
    for round in ["at start", "after a resume"] {
        let rig = start(&state);
        let (_c, m) = rig.client().await;
        if round == "after a resume" {
            // the same, through ResumeCacheAs of a cache lcd does not know
            m.switch_to(1).await.unwrap();
            m.free_cache().await.unwrap();
            assert!(m.list_devices().await.unwrap().is_empty());
            m.resume_cache_as(1, &cache).await.unwrap();
        }
        let devs = m.list_devices().await.unwrap();
        assert_eq!(devs.len(), 1, "{round}: {devs:?}");
        assert_eq!(devs[0].id, 3);
        assert!(
            devs[0].state.starts_with("failed:")
                && devs[0].state.contains("no record")
                && devs[0].state.contains("lcctl repoint 3 PATH"),
            "{round}: {devs:?}"
        );
        assert_eq!(devs[0].nr_dirty_caches, 2, "{round}");
        // another disk cannot take id 3, by its id or as the lowest free id
        let e = m.create_device(3, &b, 1).await.unwrap_err();
        assert!(name(&e).starts_with("Busy"), "{round}: {e:?}");
        let e = m.repoint_device(3, "").await.unwrap_err();
        assert!(
            name(&e).starts_with("InvalidArgument") && name(&e).contains("no recorded path"),
            "{round}: {e:?}"
        );
        let lowest = m.create_device(0, &b, 1).await.unwrap();
        assert_eq!(lowest.id, 1, "{round}");
        m.remove_device(1).await.unwrap();
        assert!(
            std::fs::read(&b).unwrap().iter().all(|&x| x == 0),
            "{round}: nothing of device 3 reached b"
        );
        drop(m);
        rig.stop();
        let saved = std::fs::read_to_string(state.join("state.json")).unwrap();
        assert!(!saved.contains("\"id\":3"), "{round}: not saved: {saved}");
    }
    // on purpose: a is that disk; the data goes there and the id is recorded
    let rig = start(&state);
    let (_c, m) = rig.client().await;
    let info = m.repoint_device(3, &a).await.unwrap();
    assert_eq!(
        (info.backing.as_str(), info.nr_dirty_caches),
        (a.as_str(), 2)
    );
    drop(m);
    rig.stop();
    let rig = start(&state);
    let (_c, m) = rig.client().await;
    let devs = m.list_devices().await.unwrap();
    assert_eq!(
        (devs.len(), devs[0].backing.as_str()),
        (1, a.as_str()),
        "{devs:?}"
    );
    assert!(!devs[0].state.starts_with("failed"), "{devs:?}");
    m.remove_device(3).await.unwrap();
    let data = std::fs::read(&a).unwrap();
    assert!(
        data[..4096].iter().all(|&x| x == 0xa1),
        "written back onto a"
    );
    assert!(data[7 * 4096..8 * 4096].iter().all(|&x| x == 0xb2));
}

#[tokio::test(flavor = "multi_thread")]
async fn dirty_data_of_an_unrecorded_id_is_given_up_on_purpose() {
    let keep = tempfile::tempdir().unwrap();
    let state = keep.path().join("state");
    let cache = file(&keep.path().join("cache.img"), 16 << 20);
    let a = file(&keep.path().join("a.img"), 4 << 20);
    let b = file(&keep.path().join("b.img"), 4 << 20);
    unrecorded(&state, &cache, &a).await;
    let rig = start(&state);
    let (_c, m) = rig.client().await;
    let e = m.forget_device(3, false).await.unwrap_err();
    assert!(name(&e).starts_with("Busy"), "{e:?}");
    m.forget_device(3, true).await.unwrap();
    assert!(m.list_devices().await.unwrap().is_empty());
    let info = m.create_device(3, &b, 1).await.unwrap();
    assert_eq!(info.nr_dirty_caches, 0, "{info:?}");
    m.remove_device(3).await.unwrap();
    drop(m);
    rig.stop();
    let rig = start(&state);
    let (_c, m) = rig.client().await;
    assert!(m.list_devices().await.unwrap().is_empty(), "gone for good");
    assert!(std::fs::read(&a).unwrap().iter().all(|&x| x == 0));
    assert!(std::fs::read(&b).unwrap().iter().all(|&x| x == 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn backing_files_whose_paths_swapped_are_failed_untouched_then_re_pointed() {
    let keep = tempfile::tempdir().unwrap();
    let state = keep.path().join("state");
    let cache = file(&keep.path().join("cache.img"), 16 << 20);
    let a = file(&keep.path().join("a.img"), 4 << 20);
    let b = file(&keep.path().join("b.img"), 4 << 20);
    {
        let rig = start(&state);
        let (_c, m) = rig.client().await;
        m.format_cache_device(&cache, false).await.unwrap();
        m.resume_cache_as(1, &cache).await.unwrap();
        m.create_device(3, &a, 1).await.unwrap();
        m.create_device(5, &b, 1).await.unwrap();
        drop(m);
        rig.stop();
    }
    leave_dirty_data(&cache, &a, 3, &[(2, 0x33)]);
    // between two runs the two paths now name each other's file
    let tmp = keep.path().join("swap.tmp");
    std::fs::rename(&a, &tmp).unwrap();
    std::fs::rename(&b, &a).unwrap();
    std::fs::rename(&tmp, &b).unwrap();
    let before = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let rig = start(&state);
    let (_c, m) = rig.client().await;
    let devs = m.list_devices().await.unwrap();
    for d in &devs {
        assert!(
            d.state.starts_with("failed: ")
                && d.state.contains("not the backing device recorded")
                && d.state.contains("lcctl repoint"),
            "{d:?}"
        );
    }
    assert_eq!(devs.len(), 2);
    // a re-point without a path checks the record again: still the wrong file
    let e = m.repoint_device(3, "").await.unwrap_err();
    assert!(name(&e).starts_with("Failed"), "{e:?}");
    assert!(
        (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap()) == before,
        "nothing written to either file"
    );
    // the administrator re-points each device to where its file is now
    let info = m.repoint_device(3, &b).await.unwrap();
    assert_eq!(
        (info.backing.as_str(), info.nr_dirty_caches),
        (b.as_str(), 1)
    );
    let e = m.repoint_device(3, &b).await.unwrap_err();
    assert!(name(&e).starts_with("Busy"), "a running device: {e:?}");
    let e = m.repoint_device(5, &b).await.unwrap_err();
    assert!(name(&e).starts_with("Busy"), "b is device 3's now: {e:?}");
    m.repoint_device(5, &a).await.unwrap();
    drop(m);
    rig.stop();
    // the new paths and identities were saved
    let rig = start(&state);
    let (_c, m) = rig.client().await;
    let devs = m.list_devices().await.unwrap();
    assert!(
        devs.iter().all(|d| !d.state.starts_with("failed")),
        "{devs:?}"
    );
    m.remove_device(3).await.unwrap();
    let data = std::fs::read(&b).unwrap();
    assert!(
        data[2 * 4096..3 * 4096].iter().all(|&x| x == 0x33),
        "device 3's data went to its file"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_path_that_leads_to_another_cache_is_failed_untouched_then_re_pointed() {
    let keep = tempfile::tempdir().unwrap();
    let state = keep.path().join("state");
    let c1 = file(&keep.path().join("c1.img"), 8 << 20);
    let c2 = file(&keep.path().join("c2.img"), 8 << 20);
    {
        let rig = start(&state);
        let (_c, m) = rig.client().await;
        m.format_cache_device(&c1, false).await.unwrap();
        m.format_cache_device(&c2, false).await.unwrap();
        m.resume_cache_as(1, &c1).await.unwrap();
        m.resume_cache_as(2, &c2).await.unwrap();
        drop(m);
        rig.stop();
    }
    let tmp = keep.path().join("swap.tmp");
    std::fs::rename(&c1, &tmp).unwrap();
    std::fs::rename(&c2, &c1).unwrap();
    std::fs::rename(&tmp, &c2).unwrap();
    let before = (std::fs::read(&c1).unwrap(), std::fs::read(&c2).unwrap());
    let rig = start(&state);
    let (_c, m) = rig.client().await;
    let caches = m.list_caches().await.unwrap();
    assert_eq!(caches.len(), 2);
    for c in &caches {
        assert!(
            c.state.contains("not the cache device recorded") && c.state.contains("repoint-cache"),
            "{c:?}"
        );
    }
    assert!(
        (std::fs::read(&c1).unwrap(), std::fs::read(&c2).unwrap()) == before,
        "nothing written to either cache"
    );
    let e = m.repoint_cache(3, &c1).await.unwrap_err();
    assert!(name(&e).starts_with("NotFound"), "{e:?}");
    // c1 now holds cache 2's disk: not cache 1's, nor a new cache's, even
    // on purpose, while cache 2 is recorded with that uuid
    let e = m.repoint_cache(1, &c1).await.unwrap_err();
    assert!(
        name(&e).starts_with("Busy") && name(&e).contains("cache 2"),
        "{e:?}"
    );
    let e = m.resume_cache_as(5, &c1).await.unwrap_err();
    assert!(
        name(&e).starts_with("Busy") && name(&e).contains("cache 2"),
        "{e:?}"
    );
    assert!(
        (std::fs::read(&c1).unwrap(), std::fs::read(&c2).unwrap()) == before,
        "nothing written by the refused re-points"
    );
    m.repoint_cache(1, &c2).await.unwrap();
    m.repoint_cache(2, &c1).await.unwrap();
    let e = m.repoint_cache(2, &c1).await.unwrap_err();
    assert!(name(&e).starts_with("Busy"), "{e:?}");
    drop(m);
    rig.stop();
    let rig = start(&state);
    let (_c, m) = rig.client().await;
    let caches = m.list_caches().await.unwrap();
    assert!(caches.iter().all(|c| c.state == "running"), "{caches:?}");
    assert_eq!(caches[0].path, c2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_old_state_file_gets_identities_at_the_first_open() {
    let keep = tempfile::tempdir().unwrap();
    let state = keep.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let cache = file(&keep.path().join("cache.img"), 8 << 20);
    let a = file(&keep.path().join("a.img"), 4 << 20);
    {
        use lc_engine::{format_cache_device, FileDevice};
        format_cache_device(&FileDevice::open(cache.as_ref()).unwrap(), false).unwrap();
    }
    // as an lcd before identities wrote it
    let old = serde_json::json!({
        "version": 1,
        "caches": [{"id": 1, "path": cache, "knobs": {}}],
        "devices": [{"id": 2, "cache_id": 1, "backing": a, "migrate_threshold": 70}],
    });
    std::fs::write(state.join("state.json"), old.to_string()).unwrap();
    let rig = start(&state);
    let (_c, m) = rig.client().await;
    assert!(m.list_devices().await.unwrap()[0]
        .state
        .starts_with("no block device"));
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("state.json")).unwrap()).unwrap();
    assert_eq!(
        saved["caches"][0]["uuid"].as_str().map(str::len),
        Some(32),
        "{saved}"
    );
    assert_eq!(saved["devices"][0]["identity"]["kind"], "file", "{saved}");
    assert_eq!(saved["devices"][0]["backing"], a, "the path as given");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_cache_file_is_never_two_caches_nor_formatted_while_resumed() {
    let keep = tempfile::tempdir().unwrap();
    let rig = start(&keep.path().join("state"));
    let (_c, m) = rig.client().await;
    let cache = file(&keep.path().join("cache.img"), 8 << 20);
    m.format_cache_device(&cache, false).await.unwrap();
    // two concurrent resumes of one file under two ids (issue 15 defect 8),
    // also by another name of it
    let hard = keep.path().join("hard.img");
    std::fs::hard_link(&cache, &hard).unwrap();
    let hard = hard.display().to_string();
    for round in 0..10u8 {
        let (id1, id2) = (10 + 2 * round, 11 + 2 * round);
        let (r1, r2) = tokio::join!(
            m.resume_cache_as(id1, &cache),
            m.resume_cache_as(id2, &hard)
        );
        let ok = [&r1, &r2].iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "round {round}: {r1:?} {r2:?}");
        for r in [r1, r2] {
            if let Err(e) = r {
                assert!(name(&e).starts_with("Busy"), "{e:?}");
            }
        }
        let caches = m.list_caches().await.unwrap();
        assert_eq!(caches.len(), 1, "{caches:?}");
        m.switch_to(caches[0].id).await.unwrap();
        m.free_cache().await.unwrap();
    }
    m.resume_cache_as(1, &cache).await.unwrap();
    let sb = std::fs::read(&cache).unwrap()[..4096].to_vec();
    // format of the resumed file, by any name, while a symlink keeps
    // switching between it and a free file: never the resumed one
    let free = file(&keep.path().join("free.img"), 8 << 20);
    let link = keep.path().join("link.img");
    std::os::unix::fs::symlink(&free, &link).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, dir) = (stop.clone(), keep.path().to_path_buf());
        let (free, cache) = (free.clone(), cache.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let tmp = dir.join("link.tmp");
                let _ = std::fs::remove_file(&tmp);
                let to = if n % 2 == 0 { &cache } else { &free };
                std::os::unix::fs::symlink(to, &tmp).unwrap();
                std::fs::rename(&tmp, dir.join("link.img")).unwrap();
                n += 1;
            }
        })
    };
    let link = link.display().to_string();
    let (mut formatted, mut busy) = (0, 0);
    for _ in 0..60 {
        match m.format_cache_device(&link, true).await {
            Ok(()) => formatted += 1,
            Err(e) if name(&e).starts_with("Busy") => busy += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().unwrap();
    assert!(formatted + busy == 60);
    for p in [&cache, &hard] {
        let e = m.format_cache_device(p, true).await.unwrap_err();
        assert!(name(&e).starts_with("Busy"), "{e:?}");
    }
    assert!(
        std::fs::read(&cache).unwrap()[..4096] == sb[..],
        "the resumed cache's superblock is untouched"
    );
    // lcd writeback and lcd check on the resumed file are refused too
    let backing = format!("1={free}");
    for args in [
        vec!["check", cache.as_str()],
        vec!["writeback", cache.as_str(), "--backing", backing.as_str()],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_lcd"))
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
        assert!(
            !o.status.success() && err.contains("busy"),
            "{args:?}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn attach_refuses_a_backing_device_smaller_than_its_ids_dirty_data() {
    let keep = tempfile::tempdir().unwrap();
    let rig = start(&keep.path().join("state"));
    let (_c, m) = rig.client().await;
    let cache = file(&keep.path().join("cache.img"), 16 << 20);
    let big = file(&keep.path().join("big.img"), 8 << 20);
    let small = file(&keep.path().join("small.img"), 1 << 20);
    m.format_cache_device(&cache, false).await.unwrap();
    // dirty data of device 6 up to 6 MiB, from an earlier life
    leave_dirty_data(&cache, &big, 6, &[(1535, 0x66)]);
    m.resume_cache_as(1, &cache).await.unwrap();
    // lcd has no record of device 6: listed failed, no disk takes it silently
    let e: LcdError = m.create_device(6, &small, 1).await.unwrap_err();
    assert!(name(&e).starts_with("Busy"), "{e:?}");
    // and on purpose, a disk too small for its data is refused
    let e: LcdError = m.repoint_device(6, &small).await.unwrap_err();
    assert!(name(&e).contains("up to sector 12288"), "{e:?}");
    let listed: Vec<DeviceInfo> = m.list_devices().await.unwrap();
    assert!(
        listed.len() == 1 && listed[0].state.contains("up to sector 12288"),
        "{listed:?}"
    );
    assert!(
        std::fs::read(&small).unwrap().iter().all(|&x| x == 0),
        "nothing written"
    );
}

/// A loop device over a file, detached on drop.
struct Loop(String);

impl Loop {
    /// `losetup DEV FILE` when `dev` is given, else the first free device.
    fn attach(dev: Option<&str>, file: &str) -> Option<Loop> {
        let mut c = Command::new("losetup");
        match dev {
            Some(d) => c.args([d, file]),
            None => c.args(["-f", "--show", file]),
        };
        let o = c.output().ok()?;
        if !o.status.success() {
            return None;
        }
        let name = match dev {
            Some(d) => d.to_string(),
            None => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        };
        Some(Loop(name))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_disks_whose_kernel_names_swapped_are_failed_untouched_then_re_pointed() {
    // the host's stand-in for disks that enumerate in another order at
    // boot: two loop devices of one size whose kernel names swap
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    });
    let keep = tempfile::tempdir().unwrap();
    let fa = file(&keep.path().join("disk-a.img"), 4 << 20);
    let fb = file(&keep.path().join("disk-b.img"), 4 << 20);
    let (Some(la), Some(lb)) = (
        root.then(|| Loop::attach(None, &fa)).flatten(),
        root.then(|| Loop::attach(None, &fb)).flatten(),
    ) else {
        eprintln!("skipped: needs root and two free loop devices (losetup)");
        return;
    };
    let state = keep.path().join("state");
    let cache = file(&keep.path().join("cache.img"), 16 << 20);
    {
        let rig = start(&state);
        let (_c, m) = rig.client().await;
        m.format_cache_device(&cache, false).await.unwrap();
        m.resume_cache_as(1, &cache).await.unwrap();
        m.create_device(3, &la.0, 1).await.unwrap();
        m.create_device(5, &lb.0, 1).await.unwrap();
        drop(m);
        rig.stop();
    }
    let saved = std::fs::read_to_string(state.join("state.json")).unwrap();
    assert!(
        saved.contains("loop:") && saved.contains("disk-a.img"),
        "{saved}"
    );
    leave_dirty_data(&cache, &la.0, 3, &[(2, 0x33)]);
    // the next boot: the kernel names now lead to each other's disk
    let (na, nb) = (la.0.clone(), lb.0.clone());
    drop((la, lb));
    let (Some(la), Some(lb)) = (Loop::attach(Some(&na), &fb), Loop::attach(Some(&nb), &fa)) else {
        panic!("could not re-attach the loop devices");
    };
    let before = (std::fs::read(&fa).unwrap(), std::fs::read(&fb).unwrap());
    let rig = start(&state);
    let (_c, m) = rig.client().await;
    for d in m.list_devices().await.unwrap() {
        assert!(
            d.state.starts_with("failed: ") && d.state.contains("the disk is another one"),
            "{d:?}"
        );
    }
    assert!(
        (std::fs::read(&fa).unwrap(), std::fs::read(&fb).unwrap()) == before,
        "neither disk written"
    );
    // device 3's disk (disk-a) is now the other kernel name
    let info = m.repoint_device(3, &lb.0).await.unwrap();
    assert_eq!(info.nr_dirty_caches, 1, "{info:?}");
    m.remove_device(3).await.unwrap();
    let a = std::fs::read(&fa).unwrap();
    assert!(
        a[2 * 4096..3 * 4096].iter().all(|&x| x == 0x33),
        "written back to disk-a"
    );
    assert!(std::fs::read(&fb).unwrap() == before.1, "disk-b untouched");
    drop(m);
    drop(rig);
    drop(la);
}

/// Generated: two caches and three backing files with dirty data, every
/// path then leading to a random other file of the five (caches and
/// backing files mixed), and lcd restarted. Whatever the permutation, every
/// cache or device whose path moved is failed and nothing is written to
/// any file but the caches still at their own path; a cache is never taken
/// as another; re-pointed to where their files went, each backing file
/// gets exactly its own data.
#[tokio::test(flavor = "multi_thread")]
async fn any_permutation_of_cache_and_backing_paths_writes_nothing_in_the_wrong_place() {
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    for seed in 0..6u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let keep = tempfile::tempdir().unwrap();
        let state = keep.path().join("state");
        let names = ["c1.img", "c2.img", "b1.img", "b2.img", "b3.img"];
        let paths: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| file(&keep.path().join(n), if i < 2 { 16 << 20 } else { 4 << 20 }))
            .collect();
        // device d (1..=3) on paths[d + 1], of cache 1 or 2
        let cache_of: Vec<u8> = (0..3).map(|_| rng.gen_range(1..=2u8)).collect();
        {
            let rig = start(&state);
            let (_c, m) = rig.client().await;
            for c in 0..2u8 {
                m.format_cache_device(&paths[c as usize], false)
                    .await
                    .unwrap();
                m.resume_cache_as(c + 1, &paths[c as usize]).await.unwrap();
            }
            for d in 1..=3u8 {
                let cache = cache_of[d as usize - 1];
                m.create_device(d, &paths[d as usize + 1], cache)
                    .await
                    .unwrap();
            }
            drop(m);
            rig.stop();
        }
        // dirty data of each device, offline (write-back off in that run);
        // every block's fill says whose it is
        let mut blocks: Vec<Vec<(u64, u8)>> = Vec::new();
        for d in 1..=3u8 {
            let mut b: Vec<(u64, u8)> = (0..3)
                .map(|k| (rng.gen_range(0..1024u64), 0x10 * d + k))
                .collect();
            b.sort();
            b.dedup_by_key(|x| x.0);
            let cache = &paths[cache_of[d as usize - 1] as usize - 1];
            leave_dirty_data(cache, &paths[d as usize + 1], d, &b);
            blocks.push(b);
        }
        // lcd must not write anything back at the restart: write-back off
        {
            let saved = state.join("state.json");
            let mut v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&saved).unwrap()).unwrap();
            for c in v["caches"].as_array_mut().unwrap() {
                c["knobs"]["allow_migrate"] = 0.into();
            }
            for d in v["devices"].as_array_mut().unwrap() {
                d["migrate_threshold"] = 0.into();
            }
            std::fs::write(&saved, serde_json::to_vec(&v).unwrap()).unwrap();
        }
        // file i is now at paths[at[i]]
        let mut at: Vec<usize> = (0..5).collect();
        while at.iter().enumerate().all(|(i, &a)| i == a) {
            at.shuffle(&mut rng);
        }
        let tmp: Vec<String> = (0..5).map(|i| format!("{}.moving", paths[i])).collect();
        for i in 0..5 {
            std::fs::rename(&paths[i], &tmp[i]).unwrap();
        }
        for i in 0..5 {
            std::fs::rename(&tmp[i], &paths[at[i]]).unwrap();
        }
        let before: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
        let rig = start(&state);
        let (_c, m) = rig.client().await;
        let caches = m.list_caches().await.unwrap();
        let devs = m.list_devices().await.unwrap();
        let why = format!("seed {seed}, moves {at:?}: {caches:?} {devs:?}");
        for (c, &now_at) in at.iter().enumerate().take(2) {
            let info = caches.iter().find(|x| x.id == c as u8 + 1).expect("listed");
            assert_eq!(
                info.state == "running",
                now_at == c,
                "cache {}: {why}",
                c + 1
            );
        }
        for d in 1..=3usize {
            let info = devs.iter().find(|x| x.id == d as u8).expect("listed");
            let cache_here = at[cache_of[d - 1] as usize - 1] == cache_of[d - 1] as usize - 1;
            let expect_up = cache_here && at[d + 1] == d + 1;
            assert_eq!(
                !info.state.starts_with("failed"),
                expect_up,
                "device {d}: {why}"
            );
        }
        for (i, p) in paths.iter().enumerate() {
            // a file at a path it was not recorded at is untouched
            let file_here = at.iter().position(|&a| a == i).unwrap();
            if file_here != i {
                assert!(std::fs::read(p).unwrap() == before[i], "{p} written: {why}");
            }
        }
        // a moved cache is never taken as the other cache
        for c in 0..2usize {
            let other = 1 - c;
            if at[c] != c {
                let e = m
                    .repoint_cache(c as u8 + 1, &paths[at[other]])
                    .await
                    .unwrap_err();
                assert!(
                    name(&e).starts_with("Busy"),
                    "cache {}: {e:?}; {why}",
                    c + 1
                );
            }
        }
        // on purpose, to where each file went
        for c in 0..2usize {
            if at[c] != c {
                m.repoint_cache(c as u8 + 1, &paths[at[c]]).await.unwrap();
            }
        }
        for d in 1..=3usize {
            let info = m.list_devices().await.unwrap();
            let info = info.iter().find(|x| x.id == d as u8).unwrap();
            if info.state.starts_with("failed") {
                m.repoint_device(d as u8, &paths[at[d + 1]])
                    .await
                    .unwrap_or_else(|e| panic!("re-point device {d}: {e:?}; {why}"));
            }
        }
        for d in 1..=3u8 {
            m.remove_device(d).await.unwrap();
        }
        drop(m);
        rig.stop();
        for d in 1..=3usize {
            let data = std::fs::read(&paths[at[d + 1]]).unwrap();
            let mut want = vec![0u8; 4 << 20];
            for &(block, fill) in &blocks[d - 1] {
                want[block as usize * 4096..][..4096].fill(fill);
            }
            assert!(data == want, "device {d}'s file holds other data: {why}");
        }
    }
}
