//! The real `lcd` binary on a private dbus-daemon, driven through the
//! lc-proto proxies as lcctl will drive it.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{file, lcd, leave_dirty_data};
use lc_proto::LcdError;

#[tokio::test(flavor = "multi_thread")]
async fn manager_mirrors_lc_mgr_with_named_errors() {
    let rig = lcd().start();
    let (_c1, m) = rig.client().await;
    assert_eq!(m.version().await.unwrap(), lc_proto::API_VERSION);
    let dir = tempfile::tempdir().unwrap();
    let cache = file(&dir.path().join("cache.img"), 8 << 20);
    let small = file(&dir.path().join("small.img"), 1 << 20);

    assert!(matches!(
        m.format_cache_device("/nonexistent/x", false).await,
        Err(LcdError::NotFound(_))
    ));
    assert!(matches!(
        m.format_cache_device(&small, false).await,
        Err(LcdError::InvalidArgument(_))
    ));
    m.format_cache_device(&cache, false).await.unwrap();
    match m.format_cache_device(&cache, false).await {
        Err(LcdError::InvalidArgument(msg)) => assert!(msg.contains("lc cache"), "{msg}"),
        other => panic!("formatting an lc cache again without force: {other:?}"),
    }
    assert!(
        matches!(m.resume_cache(&small).await, Err(LcdError::InvalidArgument(msg)) if msg.contains("SwitchTo"))
    );
    assert!(matches!(
        m.switch_to(0).await,
        Err(LcdError::InvalidArgument(_))
    ));
    m.switch_to(3).await.unwrap();
    assert!(matches!(
        m.resume_cache(&small).await,
        Err(LcdError::NotFormatted(_))
    ));
    m.resume_cache(&cache).await.unwrap();
    let caches = m.list_caches().await.unwrap();
    assert_eq!(caches.len(), 1);
    assert_eq!(
        (caches[0].id, caches[0].path.as_str(), caches[0].nr_segments),
        (3, cache.as_str(), 7)
    );
    assert!(matches!(
        m.format_cache_device(&cache, true).await,
        Err(LcdError::Busy(_))
    ));
    // the same file under another name is the same device
    let alias = dir.path().join("alias.img");
    std::os::unix::fs::symlink(&cache, &alias).unwrap();
    let alias = alias.display().to_string();
    assert!(matches!(
        m.format_cache_device(&alias, true).await,
        Err(LcdError::Busy(_))
    ));
    assert!(matches!(
        m.resume_cache(&cache).await,
        Err(LcdError::Busy(_))
    ));

    // a second client has its own cursor
    let (_c2, m2) = rig.client().await;
    assert!(matches!(
        m2.free_cache().await,
        Err(LcdError::InvalidArgument(_))
    ));
    m2.switch_to(4).await.unwrap();
    assert!(matches!(m2.clear_stat().await, Err(LcdError::NotFound(_))));
    assert!(
        matches!(m2.resume_cache(&cache).await, Err(LcdError::Busy(msg)) if msg.contains("cache 3"))
    );
    m.clear_stat().await.unwrap(); // the first client's cursor still names cache 3
    let cache2 = file(&dir.path().join("cache2.img"), 8 << 20);
    m2.format_cache_device(&cache2, false).await.unwrap();
    assert!(matches!(
        m2.resume_cache_as(3, &cache2).await,
        Err(LcdError::Busy(_))
    ));
    assert!(matches!(
        m2.resume_cache_as(0, &cache2).await,
        Err(LcdError::InvalidArgument(_))
    ));
    m2.resume_cache_as(9, &cache2).await.unwrap();
    let ids: Vec<u8> = m
        .list_caches()
        .await
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, [3, 9]);
    assert!(
        matches!(m2.free_cache().await, Err(LcdError::NotFound(_))),
        "cursor 4 names no cache"
    );
    m2.switch_to(9).await.unwrap();
    m2.free_cache().await.unwrap();

    m.free_cache().await.unwrap();
    assert!(m.list_caches().await.unwrap().is_empty());
    // resumed again after a clean stop
    m.resume_cache(&cache).await.unwrap();
    assert_eq!(m.list_caches().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_every_cache_cleanly() {
    let mut rig = lcd().start();
    let (_c, m) = rig.client().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = file(&dir.path().join("cache.img"), 8 << 20);
    m.format_cache_device(&cache, false).await.unwrap();
    m.switch_to(1).await.unwrap();
    m.resume_cache(&cache).await.unwrap();
    let status = rig.terminate();
    assert!(status.success(), "lcd exits 0 on SIGTERM: {status:?}");
    // the record was committed: lcd check sees a consistent, clean cache
    let out = Command::new(env!("CARGO_BIN_EXE_lcd"))
        .args(["check", &cache])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Calls a Manager method with busctl on the private bus as user nobody.
fn call_as_nobody(rig: &lc_testbus::Rig, method: &str, sig_and_args: &[&str]) -> (bool, String) {
    let o = rig
        .busctl_as_nobody()
        .args([
            "call",
            "org.lc.Lcd1",
            "/org/lc/Lcd1",
            "org.lc.Lcd1.Manager",
            method,
        ])
        .args(sig_and_args)
        .output()
        .expect("setpriv (util-linux) and busctl (systemd) must be installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn non_root_callers_may_read_but_not_change() {
    if !lc_testbus::is_root() {
        eprintln!("skipped: needs root to switch to another uid");
        return;
    }
    let rig = lcd().start();
    let (_c, m) = rig.client().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = file(&dir.path().join("cache.img"), 8 << 20);
    let before = std::fs::read(&cache).unwrap();
    let (ok, out) = call_as_nobody(&rig, "FormatCacheDevice", &["sb", &cache, "false"]);
    assert!(!ok && out.contains("need root"), "{out}");
    assert!(
        std::fs::read(&cache).unwrap() == before,
        "nothing was written"
    );
    let (ok, out) = call_as_nobody(&rig, "ListCaches", &[]);
    assert!(
        ok && out.starts_with("a(ysstts) 0"),
        "reads are open: {out}"
    );
    // and root still can
    m.format_cache_device(&cache, false).await.unwrap();
    // knobs: anyone reads, only root sets
    m.resume_cache_as(2, &cache).await.unwrap();
    let knob = |verb: &str, extra: &[&str]| {
        let o = rig
            .busctl_as_nobody()
            .args([
                verb,
                "org.lc.Lcd1",
                "/org/lc/Lcd1/cache/2",
                "org.lc.Lcd1.Cache",
                "BarrierDeadlineMs",
            ])
            .args(extra)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.success(), text)
    };
    let (ok, out) = knob("get-property", &[]);
    assert!(ok && out.trim() == "t 3", "{out}");
    let (ok, out) = knob("set-property", &["t", "9"]);
    assert!(!ok && out.contains("Access denied"), "{out}");
    assert_eq!(knob("get-property", &[]).1.trim(), "t 3", "nothing changed");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_cache_is_an_object_with_its_knobs_and_status() {
    let rig = lcd().start();
    let (conn, m) = rig.client().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = file(&dir.path().join("cache.img"), 8 << 20);
    m.format_cache_device(&cache, false).await.unwrap();
    m.resume_cache_as(5, &cache).await.unwrap();
    let c = lc_testbus::cache_proxy(&conn, 5).await;
    assert_eq!(c.id().await.unwrap(), 5);
    assert_eq!(c.barrier_deadline_ms().await.unwrap(), 3);
    // knob changes are announced with PropertiesChanged
    let watcher = lc_proto::CacheProxy::builder(&conn)
        .path(lc_proto::cache_path(5))
        .build()
        .await
        .unwrap();
    let mut changes = watcher.receive_barrier_deadline_ms_changed().await;
    c.set_barrier_deadline_ms(7).await.unwrap();
    let announced = tokio::time::timeout(Duration::from_secs(10), async {
        use futures_util::StreamExt;
        loop {
            let change = changes.next().await.expect("signal stream ended");
            if change.get().await.unwrap() == 7 {
                return;
            }
        }
    })
    .await;
    assert!(
        announced.is_ok(),
        "no PropertiesChanged for BarrierDeadlineMs"
    );
    assert_eq!(c.barrier_deadline_ms().await.unwrap(), 7);
    let err = c.set_barrier_deadline_ms(0).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("barrier_deadline_ms must be in 1..=10000"),
        "{err}"
    );
    assert_eq!(
        c.barrier_deadline_ms().await.unwrap(),
        7,
        "a refused value changes nothing"
    );
    assert!(!c.allow_migrate().await.unwrap());
    c.set_allow_migrate(true).await.unwrap();
    assert!(c.allow_migrate().await.unwrap());
    assert!(
        c.set_nr_max_batched_migration(100).await.is_err(),
        "more than the 7 segments"
    );
    let st = c.status().await.unwrap();
    assert_eq!((st.id, st.nr_segments, st.nr_caches), (5, 7, 7 * 255));
    assert_eq!(st.counters.len(), 16);
    assert_eq!(st.errors, lc_proto::ErrorCounts::default());
    c.commit_super_block().await.unwrap();
    c.flush_current_buffer().await.unwrap();
    c.clear_stat().await.unwrap();
    assert_eq!(c.last_migrated_segment_id().await.unwrap(), 0);
    // ObjectManager lists it, and it goes away with the cache
    let om = zbus::fdo::ObjectManagerProxy::builder(&conn)
        .destination("org.lc.Lcd1")
        .path("/org/lc/Lcd1")
        .build()
        .await
        .unwrap();
    let objects = om.get_managed_objects().await.unwrap();
    assert!(
        objects.keys().any(|p| p.as_str() == "/org/lc/Lcd1/cache/5"),
        "{objects:?}"
    );
    m.switch_to(5).await.unwrap();
    m.free_cache().await.unwrap();
    assert!(
        c.status().await.is_err(),
        "the object is gone with the cache"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn caches_and_knobs_come_back_after_a_restart_or_a_crash() {
    let keep = tempfile::tempdir().unwrap();
    let state = keep.path().join("state");
    let cache = file(&keep.path().join("cache.img"), 8 << 20);
    {
        let mut rig = lcd().state_dir(&state).start();
        let (conn, m) = rig.client().await;
        m.format_cache_device(&cache, false).await.unwrap();
        m.resume_cache_as(4, &cache).await.unwrap();
        lc_testbus::cache_proxy(&conn, 4)
            .await
            .set_barrier_deadline_ms(9)
            .await
            .unwrap();
        assert!(rig.terminate().success());
    }
    {
        // restarted: the cache and its knob are back; then lcd is killed
        let mut rig = lcd().state_dir(&state).start();
        let (conn, m) = rig.client().await;
        let caches = m.list_caches().await.unwrap();
        assert_eq!(
            (caches.len(), caches[0].id, caches[0].state.as_str()),
            (1, 4, "running")
        );
        assert_eq!(
            lc_testbus::cache_proxy(&conn, 4)
                .await
                .barrier_deadline_ms()
                .await
                .unwrap(),
            9
        );
        rig.kill(); // SIGKILL: no clean stop
    }
    {
        let rig = lcd().state_dir(&state).start();
        let (_conn, m) = rig.client().await;
        assert_eq!(
            m.list_caches().await.unwrap()[0].state,
            "running",
            "back after kill -9"
        );
    }
    // a cache device that disappeared is reported, not fatal, and can be forgotten
    std::fs::remove_file(&cache).unwrap();
    {
        let rig = lcd().state_dir(&state).start();
        let (_conn, m) = rig.client().await;
        let caches = m.list_caches().await.unwrap();
        assert!(caches[0].state.starts_with("failed:"), "{caches:?}");
        m.switch_to(4).await.unwrap();
        m.free_cache().await.unwrap();
        assert!(m.list_caches().await.unwrap().is_empty());
    }
    let rig = lcd().state_dir(&state).start();
    let (_conn, m) = rig.client().await;
    assert!(
        m.list_caches().await.unwrap().is_empty(),
        "the forgotten cache stays forgotten"
    );
}

/// A saved cache on `cache` (formatted and resumed as id 4 by an lcd that
/// then stopped), recorded in `state`.
async fn save_a_cache(state: &Path, cache: &str) {
    let rig = lcd().state_dir(state).start();
    let (_conn, m) = rig.client().await;
    m.format_cache_device(cache, false).await.unwrap();
    m.resume_cache_as(4, cache).await.unwrap();
    rig.stop();
}

/// A datagram socket standing in for systemd's notify socket.
fn notify_socket(dir: &Path) -> (std::os::unix::net::UnixDatagram, std::path::PathBuf) {
    let path = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    (sock, path)
}

fn expect_ready(sock: &std::os::unix::net::UnixDatagram) {
    let mut buf = [0u8; 256];
    let n = sock
        .recv(&mut buf)
        .expect("no READY=1 from lcd within 60 s");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
}

/// Early in boot there is no system bus yet: lcd brings its caches back and
/// tells systemd it is ready without one, then serves once the bus comes.
#[tokio::test(flavor = "multi_thread")]
async fn ready_without_a_bus_then_serves_when_it_comes() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let cache = file(&dir.path().join("cache.img"), 8 << 20);
    save_a_cache(&state, &cache).await;

    let (sock, sock_path) = notify_socket(dir.path());
    let mut rig = lcd()
        .state_dir(&state)
        .env("NOTIFY_SOCKET", &sock_path)
        .build();
    rig.start_lcd();
    expect_ready(&sock);
    // the bus appears only now, at the address lcd was given
    rig.start_bus();
    let (_conn, m) = rig.client().await;
    let caches = m.list_caches().await.unwrap();
    assert_eq!(
        (caches.len(), caches[0].id, caches[0].state.as_str()),
        (1, 4, "running"),
        "{caches:?}"
    );
}

/// `--wait-for-devices`: a cache device that appears late in boot is
/// waited for and resumed, not listed as failed.
#[tokio::test(flavor = "multi_thread")]
async fn waits_for_a_late_cache_device() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let cache = file(&dir.path().join("cache.img"), 8 << 20);
    save_a_cache(&state, &cache).await;
    let away = dir.path().join("not-yet.img");
    std::fs::rename(&cache, &away).unwrap();

    let (sock, sock_path) = notify_socket(dir.path());
    let rig = lcd()
        .state_dir(&state)
        .args(["--wait-for-devices", "60"])
        .env("NOTIFY_SOCKET", &sock_path)
        .start();
    sock.set_nonblocking(true).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut buf = [0u8; 256];
    assert!(
        sock.recv(&mut buf).is_err(),
        "lcd said READY=1 while its cache device was missing"
    );
    sock.set_nonblocking(false).unwrap();
    std::fs::rename(&away, &cache).unwrap(); // the disk shows up
    expect_ready(&sock);
    let (_conn, m) = rig.client().await;
    let caches = m.list_caches().await.unwrap();
    assert_eq!(caches[0].state, "running", "{caches:?}");
}

/// A client's cursor goes when the client leaves the bus: lcctl run in a
/// loop (a new client each time) must not make lcd grow.
#[tokio::test(flavor = "multi_thread")]
async fn cursors_of_departed_clients_are_dropped() {
    let rig = lcd().env("RUST_LOG", "lcd=debug").start();
    let (conn, m) = rig.client().await;
    m.switch_to(2).await.unwrap();
    let mut departed = Vec::new();
    for id in [3, 4, 5] {
        let (conn, m2) = rig.client().await;
        m2.switch_to(id).await.unwrap();
        departed.push(conn.unique_name().unwrap().to_string());
        drop(m2);
        drop(conn);
    }
    let dropped = |log: &str, name: &str| {
        log.lines()
            .any(|l| l.contains("dropped the cache cursor") && l.contains(name))
    };
    let mut log = String::new();
    for _ in 0..400 {
        log = rig.log();
        if departed.iter().all(|n| dropped(&log, n)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for name in &departed {
        assert!(
            dropped(&log, name),
            "no cursor drop for {name} in lcd's log:\n{log}"
        );
    }
    // the client still on the bus keeps its cursor
    let mine = conn.unique_name().unwrap().to_string();
    assert!(!dropped(&log, &mine));
    assert!(matches!(m.clear_stat().await, Err(LcdError::NotFound(msg)) if msg.contains('2')));
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_are_created_listed_tuned_and_removed_with_their_data_written_back() {
    let keep = tempfile::tempdir().unwrap();
    let state = keep.path().join("state");
    let cache = file(&keep.path().join("cache.img"), 16 << 20);
    let backing = file(&keep.path().join("backing.img"), 4 << 20);
    let other = file(&keep.path().join("other.img"), 4 << 20);
    let rig = lcd().state_dir(&state).frontend("none").start();
    let (conn, m) = rig.client().await;
    assert!(m.block_frontend().await.unwrap().starts_with("none: "));
    m.format_cache_device(&cache, false).await.unwrap();
    // cache 1 holds dirty data for device 3 from an earlier life
    leave_dirty_data(&cache, &backing, 3, &[(0, 0xa1), (5, 0xb2), (1023, 0xc3)]);
    m.resume_cache_as(1, &cache).await.unwrap();

    // bad input: each refused, nothing created
    let err = |r: Result<lc_proto::DeviceInfo, LcdError>| format!("{:?}", r.unwrap_err());
    let e = err(m.create_device(3, &backing, 9).await);
    assert!(
        e.starts_with("NotFound") && e.contains("resume it first"),
        "{e}"
    );
    let e = err(m.create_device(4, "/nonexistent/disk", 1).await);
    assert!(e.starts_with("NotFound"), "{e}");
    let e = err(m.create_device(4, &cache, 1).await);
    assert!(
        e.starts_with("Busy") && e.contains("cache device of cache 1"),
        "{e}"
    );
    // lcd has no record of device 3's disk: listed failed, taken on purpose
    let listed = m.list_devices().await.unwrap();
    assert!(
        listed.len() == 1 && listed[0].id == 3 && listed[0].state.contains("no record"),
        "{listed:?}"
    );
    let e = err(m.create_device(3, &backing, 1).await);
    assert!(
        e.starts_with("Busy") && e.contains("lcctl repoint 3"),
        "{e}"
    );

    let info = m.repoint_device(3, &backing).await.unwrap();
    assert_eq!((info.id, info.cache_id, info.node.as_str()), (3, 1, ""));
    assert!(info.state.starts_with("no block device: "), "{info:?}");
    assert_eq!(info.size_bytes, 4 << 20);
    // the cache's dirty lines are the device's (the policy may already be
    // writing them back)
    assert!(info.nr_dirty_caches <= 3, "{info:?}");
    let e = err(m.create_device(3, &other, 1).await);
    assert!(
        e.starts_with("Busy") && e.contains("device 3 exists"),
        "{e}"
    );
    let e = err(m.create_device(0, &backing, 1).await);
    assert!(
        e.starts_with("Busy") && e.contains("already the backing device of device 3"),
        "{e}"
    );
    // id 0: the lowest free one
    assert_eq!(m.create_device(0, &other, 1).await.unwrap().id, 1);
    assert_eq!(
        m.list_devices()
            .await
            .unwrap()
            .iter()
            .map(|d| d.id)
            .collect::<Vec<_>>(),
        vec![1, 3]
    );
    // a cache with devices cannot be freed
    m.switch_to(1).await.unwrap();
    let e = format!("{:?}", m.free_cache().await.unwrap_err());
    assert!(e.starts_with("Busy") && e.contains("1, 3"), "{e}");

    // the device object and its knob
    let d3 = lc_testbus::device_proxy(&conn, 3).await;
    assert_eq!(d3.cache_id().await.unwrap(), 1);
    assert!(d3.nr_dirty_caches().await.unwrap() <= 3);
    assert_eq!(d3.migrate_threshold().await.unwrap(), 70);
    d3.set_migrate_threshold(55).await.unwrap();
    assert!(d3.set_migrate_threshold(101).await.is_err());
    assert_eq!(d3.migrate_threshold().await.unwrap(), 55);
    drop((d3, m, conn));
    drop(rig);

    // kill -9 (the rig's drop): devices and their knob come back
    let rig = lcd().state_dir(&state).frontend("none").start();
    let (conn, m) = rig.client().await;
    let devs = m.list_devices().await.unwrap();
    assert_eq!(devs.len(), 2, "{devs:?}");
    assert_eq!((devs[1].id, devs[1].migrate_threshold), (3, 55));

    // RemoveDevice writes the dirty data back before the device goes
    m.remove_device(3).await.unwrap();
    let back = std::fs::read(&backing).unwrap();
    for (block, fill) in [(0usize, 0xa1u8), (5, 0xb2), (1023, 0xc3)] {
        assert!(
            back[block * 4096..(block + 1) * 4096]
                .iter()
                .all(|&b| b == fill),
            "block {block} was written back"
        );
    }
    assert!(
        back[4096..5 * 4096].iter().all(|&b| b == 0),
        "nothing else was"
    );
    let e = format!("{:?}", m.remove_device(3).await.unwrap_err());
    assert!(e.starts_with("NotFound"), "removing twice: {e}");
    // BeginRemoveDevice returns at once; the device goes away by itself
    m.begin_remove_device(1).await.unwrap();
    let mut gone = false;
    for _ in 0..400 {
        if m.list_devices().await.unwrap().is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(gone, "device 1 was removed in the background");
    m.switch_to(1).await.unwrap();
    m.free_cache().await.unwrap();
    drop((m, conn));
    drop(rig);
    let rig = lcd().state_dir(&state).frontend("none").start();
    let (_conn, m) = rig.client().await;
    assert!(
        m.list_devices().await.unwrap().is_empty(),
        "removals were saved"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_ublk_create_device_says_what_to_load_and_changes_nothing() {
    if Path::new("/dev/ublk-control").exists() {
        eprintln!("skipped: this kernel has ublk");
        return;
    }
    let keep = tempfile::tempdir().unwrap();
    let cache = file(&keep.path().join("cache.img"), 16 << 20);
    let backing = file(&keep.path().join("backing.img"), 4 << 20);
    let rig = lcd().frontend("ublk").start();
    let (_conn, m) = rig.client().await;
    let frontend = m.block_frontend().await.unwrap();
    assert!(frontend.contains("modprobe ublk_drv"), "{frontend}");
    m.format_cache_device(&cache, false).await.unwrap();
    m.resume_cache_as(1, &cache).await.unwrap();
    let e = format!("{:?}", m.create_device(1, &backing, 1).await.unwrap_err());
    assert!(e.starts_with("Failed") && e.contains("ublk_drv"), "{e}");
    assert!(m.list_devices().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_migration_policy_follows_each_devices_threshold() {
    let keep = tempfile::tempdir().unwrap();
    let cache = file(&keep.path().join("cache.img"), 16 << 20);
    let backing = file(&keep.path().join("backing.img"), 4 << 20);
    let rig = lcd()
        .state_dir(keep.path().join("state"))
        .frontend("none")
        .start();
    let (conn, m) = rig.client().await;
    m.format_cache_device(&cache, false).await.unwrap();
    m.resume_cache_as(1, &cache).await.unwrap();
    m.create_device(2, &backing, 1).await.unwrap();
    let c = lc_testbus::cache_proxy(&conn, 1).await;
    let d = lc_testbus::device_proxy(&conn, 2).await;
    // within a few update_intervals (1 s) the policy has set allow_migrate
    let settles_to = |want: bool| {
        let c = c.clone();
        async move {
            for _ in 0..200 {
                if c.allow_migrate().await.unwrap() == want {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        }
    };
    // the policy's first look allows write-back (the disk is idle); its
    // next look is an hour away, yet threshold 0 stops write-back at once
    c.set_update_interval(3600).await.unwrap();
    assert!(settles_to(true).await, "idle disk, threshold 70");
    d.set_migrate_threshold(0).await.unwrap();
    assert!(
        !c.allow_migrate().await.unwrap(),
        "threshold 0 stops write-back when it is set"
    );
    c.set_update_interval(1).await.unwrap();
    assert!(settles_to(false).await, "threshold 0: never write back");
    d.set_migrate_threshold(100).await.unwrap();
    assert!(settles_to(true).await, "threshold 100: always write back");
    c.set_allow_migrate(false).await.unwrap();
    assert!(settles_to(true).await, "the policy owns allow_migrate");
}
