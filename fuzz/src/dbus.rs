//! The `dbus` target: fuzzed calls to a real `lcd` (`--frontend none`) on
//! a private dbus-daemon, through the lc-proto proxies and raw messages.
//!
//! Each input is a sequence of calls: every Manager method, the cache and
//! device objects' methods and knobs, property writes of the wrong type,
//! methods called with the wrong signature, a second client with its own
//! cursor, and a clean restart of lcd (which restores the saved state).
//! Arguments are drawn from the input: ids 0..=255, knob values small, at
//! their limits or arbitrary, and paths from a menu of files in the rig's
//! own directory (cache images, a too-small file, a directory, a symlink,
//! a file with a foreign signature, /dev/null, relative and empty paths)
//! or made-up names under a directory that does not exist. lcd runs as
//! the caller (root in CI), so no fuzzed path may ever name a file outside
//! the rig: the made-up names cannot contain `/`.
//!
//! Checked after every call: lcd answers within 30 s, with success or a
//! named error (lc's `org.lc.Lcd1.Error.*`, or the standard D-Bus errors
//! for bad arguments, unknown objects or properties, denied access); lcd
//! is still running; a knob or threshold set within its range reads back,
//! one out of range is refused and changes nothing. After every input
//! every device and cache is removed again (that must succeed), so inputs
//! do not depend on each other.
//!
//! lcd runs in its own process, so libFuzzer's coverage guidance sees
//! only this client side (which request and which reply), not lcd's code:
//! this target is closer to a structured random test than the engine
//! targets are.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use lc_engine::Knob;
use lc_proto::{CacheProxy, LcdError, ManagerProxy, BUS_NAME, MANAGER_PATH};
use lc_testbus::{cache_proxy, device_proxy};
use zbus::Variant as Value;

use crate::engine::Input;

const MIB: u64 = 1 << 20;
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// lc-testbus's rig (bus and lcd), a runtime and two clients; lives as
/// long as the fuzzing process.
struct Rig {
    lcd: lc_testbus::Rig,
    rt: tokio::runtime::Runtime,
    clients: Vec<(zbus::Connection, ManagerProxy<'static>)>,
}

fn rig() -> &'static Mutex<Option<Rig>> {
    static RIG: OnceLock<Mutex<Option<Rig>>> = OnceLock::new();
    RIG.get_or_init(|| Mutex::new(None))
}

/// The lcd binary: `LCD_BIN`, else the workspace's debug build.
fn lcd_bin() -> PathBuf {
    std::env::var_os("LCD_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/lcd"),
        PathBuf::from,
    )
}

impl Rig {
    fn start() -> Rig {
        let tmp = std::env::temp_dir();
        // directories of earlier runs whose process is gone
        for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("lc-fuzz-dbus-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = tmp.join(format!("lc-fuzz-dbus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("files")).expect("rig directory");
        // libFuzzer ends the process with exit(), which runs no
        // destructors: the children die with it, the directory stays
        let lcd = lc_testbus::Rig::builder(lcd_bin())
            .dir(&dir)
            .die_with_parent()
            .frontend("none")
            .current_dir(dir.join("files"))
            .start();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let clients = rt.block_on(async { vec![lcd.client().await, lcd.client().await] });
        Rig { lcd, rt, clients }
    }

    fn files(&self) -> PathBuf {
        self.lcd.dir().join("files")
    }

    fn assert_alive(&mut self) {
        self.lcd.assert_lcd_running();
    }

    /// Stops lcd with SIGTERM (a clean stop) and starts it again.
    fn restart(&mut self) {
        self.lcd.restart();
        let lcd = &self.lcd;
        self.clients = self
            .rt
            .block_on(async { vec![lcd.client().await, lcd.client().await] });
    }

    /// Fresh files for the next input: two cache images, two backing
    /// images, one too small, one with an XFS signature, a directory and a
    /// symlink.
    fn reset_files(&self) {
        let f = self.files();
        for (name, size) in [
            ("c1.img", 8 * MIB),
            ("c2.img", 4 * MIB),
            ("b1.img", 4 * MIB),
            ("b2.img", 2 * MIB),
            ("small.img", MIB),
            ("xfs.img", 4 * MIB),
        ] {
            let file = std::fs::File::create(f.join(name)).expect("image");
            file.set_len(size).expect("size");
        }
        std::fs::write(f.join("xfs.img"), b"XFSB").expect("signature");
        std::fs::File::options()
            .write(true)
            .open(f.join("xfs.img"))
            .and_then(|file| file.set_len(4 * MIB))
            .expect("size");
        let _ = std::fs::create_dir(f.join("dir"));
        let _ = std::os::unix::fs::symlink("c1.img", f.join("link.img"));
    }
}

/// A path argument: from the menu, or a made-up name that cannot leave
/// the rig's directory.
fn path(inp: &mut Input, files: &Path) -> String {
    let menu = [
        "c1.img",
        "c2.img",
        "b1.img",
        "b2.img",
        "small.img",
        "xfs.img",
        "dir",
        "link.img",
    ];
    let pick = inp.u8();
    match pick % 16 {
        k @ 0..=7 => files.join(menu[k as usize]).display().to_string(),
        8 => format!("{}/./dir/../c2.img", files.display()),
        9 => "/dev/null".into(),
        10 => String::new(),
        11 => "b1.img".into(), // relative: to lcd's working directory
        12 => files.display().to_string() + "/",
        _ => {
            let n = inp.u8() as usize % 64 + if pick & 0x80 != 0 { 4096 } else { 0 };
            let name: String = (0..n)
                .map(|_| match inp.u8() {
                    0 | b'/' => '_',
                    b if b < 0x80 => b as char,
                    b => char::from_u32(0x100 + b as u32).unwrap_or('?'),
                })
                .collect();
            format!("{}/no-such-dir/{name}", files.display())
        }
    }
}

/// An id: usually one of the few the other calls use, sometimes any.
fn id(inp: &mut Input) -> u8 {
    let b = inp.u8();
    if b & 0x80 != 0 {
        inp.u8()
    } else {
        b % 4
    }
}

/// Panics unless `e` is a named error lcd may answer with.
fn allowed(e: &zbus::Error, what: &str) {
    use zbus::fdo::Error as F;
    match e {
        zbus::Error::MethodError(name, _, _) if name.as_str().starts_with("org.lc.Lcd1.Error.") => {
        }
        zbus::Error::FDO(f) => match **f {
            F::InvalidArgs(_)
            | F::UnknownMethod(_)
            | F::UnknownObject(_)
            | F::UnknownInterface(_)
            | F::UnknownProperty(_)
            | F::PropertyReadOnly(_)
            | F::AccessDenied(_)
            | F::IOError(_)
            | F::InvalidSignature(_) => {}
            _ => panic!("{what}: lcd answered {e:?}"),
        },
        zbus::Error::MethodError(name, _, _)
            if [
                "org.freedesktop.DBus.Error.InvalidArgs",
                "org.freedesktop.DBus.Error.UnknownMethod",
                "org.freedesktop.DBus.Error.UnknownObject",
                "org.freedesktop.DBus.Error.UnknownInterface",
                "org.freedesktop.DBus.Error.UnknownProperty",
                "org.freedesktop.DBus.Error.PropertyReadOnly",
                "org.freedesktop.DBus.Error.InvalidSignature",
            ]
            .contains(&name.as_str()) => {}
        _ => panic!("{what}: lcd answered {e:?}"),
    }
}

/// Awaits a call with a deadline; panics if lcd does not answer.
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: lcd did not answer within {CALL_TIMEOUT:?}"),
    }
}

/// Checks the outcome of a call to an lc-proto method.
fn outcome<T>(what: &str, r: Result<T, LcdError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        // a named error of lc's (lc-proto decodes those), or another one
        Err(LcdError::ZBus(e)) => {
            allowed(&e, what);
            None
        }
        Err(_) => None,
    }
}

/// Checks the outcome of a property access.
fn prop<T>(what: &str, r: zbus::Result<T>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            allowed(&e, what);
            None
        }
    }
}

/// Runs one input: its calls, then the clean-up.
pub fn run(data: &[u8]) {
    let mut guard = rig().lock().unwrap_or_else(|e| e.into_inner());
    let rig = guard.get_or_insert_with(Rig::start);
    rig.reset_files();
    let mut inp = Input::new(data);
    for _ in 0..24 {
        if inp.is_empty() {
            break;
        }
        let op = inp.u8();
        if op % 24 == 23 {
            rig.restart();
        } else {
            let files = rig.files();
            let client = rig.clients[(op >> 7) as usize].clone();
            rig.rt.block_on(call(op % 24, &mut inp, &files, &client));
        }
        rig.assert_alive();
    }
    let clients = rig.clients.clone();
    rig.rt.block_on(clean_up(&clients[0]));
    rig.assert_alive();
}

async fn call(
    op: u8,
    inp: &mut Input<'_>,
    files: &Path,
    (conn, m): &(zbus::Connection, ManagerProxy<'static>),
) {
    match op {
        0 => {
            let (p, force) = (path(inp, files), inp.u8() & 1 == 1);
            outcome(
                "FormatCacheDevice",
                within("FormatCacheDevice", m.format_cache_device(&p, force)).await,
            );
        }
        1 | 2 => {
            let id = id(inp);
            let r = within("SwitchTo", m.switch_to(id)).await;
            assert_eq!(r.is_ok(), id != 0, "SwitchTo({id}): {r:?}");
            outcome("SwitchTo", r);
        }
        3 => {
            let p = path(inp, files);
            outcome(
                "ResumeCache",
                within("ResumeCache", m.resume_cache(&p)).await,
            );
        }
        4 | 5 => {
            let (id, p) = (id(inp), path(inp, files));
            let r = within("ResumeCacheAs", m.resume_cache_as(id, &p)).await;
            if id == 0 {
                assert!(r.is_err(), "ResumeCacheAs(0) succeeded");
            }
            outcome("ResumeCacheAs", r);
        }
        6 => {
            outcome("FreeCache", within("FreeCache", m.free_cache()).await);
        }
        7 => {
            outcome("ClearStat", within("ClearStat", m.clear_stat()).await);
        }
        8 => check_lists(m).await,
        9 | 10 => {
            let (dev, p, cache) = (id(inp), path(inp, files), id(inp));
            let r = within("CreateDevice", m.create_device(dev, &p, cache)).await;
            if let Some(info) = outcome("CreateDevice", r) {
                assert!(info.id != 0 && (dev == 0 || info.id == dev), "{info:?}");
                assert_eq!(info.cache_id, cache);
            }
        }
        11 => {
            let dev = id(inp);
            outcome(
                "RemoveDevice",
                within("RemoveDevice", m.remove_device(dev)).await,
            );
        }
        12 => {
            let dev = id(inp);
            outcome(
                "BeginRemoveDevice",
                within("BeginRemoveDevice", m.begin_remove_device(dev)).await,
            );
        }
        13 | 14 => cache_call(op, inp, conn).await,
        15 | 16 => knob(inp, conn).await,
        17 | 18 => device_call(inp, conn).await,
        19 | 20 => wrong_property_type(inp, conn).await,
        _ => wrong_signature(inp, conn).await,
    }
}

async fn cache_call(op: u8, inp: &mut Input<'_>, conn: &zbus::Connection) {
    let id = id(inp);
    let c = cache_proxy(conn, id).await;
    match (op, inp.u8() % 4) {
        (13, 0) | (14, _) => {
            if let Some(s) = outcome("Status", within("Status", c.status()).await) {
                assert_eq!(s.id, id);
                assert_eq!(s.counters.len(), 16);
            }
        }
        (_, 1) => {
            outcome(
                "CommitSuperBlock",
                within("CommitSuperBlock", c.commit_super_block()).await,
            );
        }
        (_, 2) => {
            outcome(
                "FlushCurrentBuffer",
                within("FlushCurrentBuffer", c.flush_current_buffer()).await,
            );
        }
        _ => {
            outcome(
                "Cache.ClearStat",
                within("Cache.ClearStat", c.clear_stat()).await,
            );
        }
    }
}

/// Sets a knob through its property: in range it must read back, out of
/// range it must be refused and leave the knob as it was.
async fn knob(inp: &mut Input<'_>, conn: &zbus::Connection) {
    let id = id(inp);
    let spec = Knob::ALL[inp.u8() as usize % Knob::ALL.len()];
    let v = match inp.u8() % 4 {
        0 => spec.min,
        1 => spec.max.wrapping_add(1),
        2 => u64::MAX,
        _ => inp.num(),
    };
    let c = cache_proxy(conn, id).await;
    let before = prop(
        "read knob",
        within("read knob", get_knob(&c, spec.knob)).await,
    );
    let r = within("set knob", set_knob(&c, spec.knob, v)).await;
    let Some(before) = before else {
        prop("set knob", r); // no such cache: refused
        return;
    };
    let after = prop(
        "read knob",
        within("read knob", get_knob(&c, spec.knob)).await,
    );
    let is_bool = matches!(spec.knob, Knob::AllowMigrate | Knob::ForceMigrate);
    let sent = if is_bool { (v != 0) as u64 } else { v };
    let mut max = spec.max;
    if spec.knob == Knob::NrMaxBatchedMigration {
        // capped by the number of segments too
        match within("Status", c.status()).await {
            Ok(s) => max = max.min(s.nr_segments),
            Err(e) => panic!("cache {id} has knobs but no Status: {e:?}"),
        }
    }
    if (spec.min..=max).contains(&sent) {
        r.unwrap_or_else(|e| panic!("{} = {sent} refused: {e:?}", spec.name));
        assert_eq!(after, Some(sent), "{} read back", spec.name);
    } else {
        assert!(
            r.is_err(),
            "{} = {sent} accepted (range {}..={max})",
            spec.name,
            spec.min
        );
        prop("set knob", r);
        assert_eq!(
            after,
            Some(before),
            "{} changed by a refused value",
            spec.name
        );
    }
}

async fn get_knob(c: &CacheProxy<'_>, k: Knob) -> zbus::Result<u64> {
    Ok(match k {
        Knob::CommitSuperBlockInterval => c.commit_super_block_interval().await?,
        Knob::NrMaxBatchedMigration => c.nr_max_batched_migration().await?,
        Knob::AllowMigrate => c.allow_migrate().await? as u64,
        Knob::ForceMigrate => c.force_migrate().await? as u64,
        Knob::UpdateInterval => c.update_interval().await?,
        Knob::FlushCurrentBufferInterval => c.flush_current_buffer_interval().await?,
        Knob::BarrierDeadlineMs => c.barrier_deadline_ms().await?,
        Knob::WriteBackQueueDepth => c.write_back_queue_depth().await?,
    })
}

async fn set_knob(c: &CacheProxy<'_>, k: Knob, v: u64) -> zbus::Result<()> {
    match k {
        Knob::CommitSuperBlockInterval => c.set_commit_super_block_interval(v).await,
        Knob::NrMaxBatchedMigration => c.set_nr_max_batched_migration(v).await,
        Knob::AllowMigrate => c.set_allow_migrate(v != 0).await,
        Knob::ForceMigrate => c.set_force_migrate(v != 0).await,
        Knob::UpdateInterval => c.set_update_interval(v).await,
        Knob::FlushCurrentBufferInterval => c.set_flush_current_buffer_interval(v).await,
        Knob::BarrierDeadlineMs => c.set_barrier_deadline_ms(v).await,
        Knob::WriteBackQueueDepth => c.set_write_back_queue_depth(v).await,
    }
}

async fn device_call(inp: &mut Input<'_>, conn: &zbus::Connection) {
    let id = id(inp);
    let d = device_proxy(conn, id).await;
    match inp.u8() % 3 {
        0 => {
            if let Some(info) = outcome("Device.Info", within("Device.Info", d.info()).await) {
                assert_eq!(info.id, id);
            }
        }
        1 => {
            prop("Device.State", within("Device.State", d.state()).await);
            prop("Device.Dev", within("Device.Dev", d.dev()).await);
            prop(
                "Device.NrDirtyCaches",
                within("Device.NrDirtyCaches", d.nr_dirty_caches()).await,
            );
        }
        _ => {
            let v = inp.u8();
            let r = within("set MigrateThreshold", d.set_migrate_threshold(v)).await;
            let after = prop(
                "MigrateThreshold",
                within("MigrateThreshold", d.migrate_threshold()).await,
            );
            match r {
                Ok(()) => {
                    assert!(v <= 100, "MigrateThreshold = {v} accepted");
                    if after.is_none() {
                        // gone between the write and the read: only a
                        // BeginRemoveDevice finishing in the background may
                        // do that
                        let m = ManagerProxy::new(conn).await.expect("proxy");
                        let devices = within("ListDevices", m.list_devices())
                            .await
                            .expect("ListDevices");
                        assert!(
                            devices.iter().all(|d| d.id != id),
                            "MigrateThreshold of device {id} set, then not readable although the \
                             device is still listed: {devices:?}"
                        );
                    } else {
                        assert_eq!(after, Some(v), "MigrateThreshold read back");
                    }
                }
                Err(e) => {
                    assert!(
                        v > 100 || after.is_none(),
                        "MigrateThreshold = {v} refused: {e:?}"
                    );
                    allowed(&e, "set MigrateThreshold");
                }
            }
        }
    }
}

/// A property write through org.freedesktop.DBus.Properties with a value
/// of any type, to any property (knobs, read-only ones, unknown ones).
async fn wrong_property_type(inp: &mut Input<'_>, conn: &zbus::Connection) {
    let on_device = inp.u8() & 1 == 1;
    let id = id(inp);
    let (path, iface, names): (String, &str, &[&str]) = if on_device {
        (
            lc_proto::device_path(id),
            lc_proto::DEVICE_INTERFACE,
            &["MigrateThreshold", "State", "Id", "NoSuchProperty"],
        )
    } else {
        (
            lc_proto::cache_path(id),
            lc_proto::CACHE_INTERFACE,
            &[
                "CommitSuperBlockInterval",
                "NrMaxBatchedMigration",
                "AllowMigrate",
                "ForceMigrate",
                "UpdateInterval",
                "FlushCurrentBufferInterval",
                "BarrierDeadlineMs",
                "WriteBackQueueDepth",
                "LastFlushedSegmentId",
                "Id",
                "NoSuchProperty",
            ],
        )
    };
    let name = names[inp.u8() as usize % names.len()];
    let n = inp.u64();
    let value = match inp.u8() % 8 {
        0 => Value::from(n as u8),
        1 => Value::from(n as u32),
        2 => Value::from(n as i64),
        3 => Value::from(n),
        4 => Value::from(n & 1 == 1),
        5 => Value::from("17"),
        6 => Value::from(n as f64),
        _ => Value::from(vec![n]),
    };
    let props = zbus::fdo::PropertiesProxy::builder(conn)
        .destination(BUS_NAME)
        .path(path)
        .build()
        .await
        .expect("properties proxy");
    let iface = zbus::names::InterfaceName::try_from(iface).expect("interface");
    let r = within("Properties.Set", props.set(iface, name, &value)).await;
    if let Err(e) = r {
        allowed(&zbus::Error::FDO(Box::new(e)), "Properties.Set");
    }
}

/// A Manager method called with arguments of the wrong types or number.
async fn wrong_signature(inp: &mut Input<'_>, conn: &zbus::Connection) {
    let methods = [
        "FormatCacheDevice",
        "SwitchTo",
        "ResumeCache",
        "ResumeCacheAs",
        "FreeCache",
        "CreateDevice",
        "RemoveDevice",
        "BeginRemoveDevice",
        "ListCaches",
        "NoSuchMethod",
    ];
    let method = methods[inp.u8() as usize % methods.len()];
    let n = inp.u64();
    let s = format!("{}", n % 1000);
    macro_rules! call {
        ($body:expr) => {
            within(
                "raw call",
                conn.call_method(
                    Some(BUS_NAME),
                    MANAGER_PATH,
                    Some(lc_proto::MANAGER_INTERFACE),
                    method,
                    $body,
                ),
            )
            .await
        };
    }
    let r = match inp.u8() % 8 {
        0 => call!(&()),
        1 => call!(&(n as u32,)),
        2 => call!(&(s.as_str(),)),
        3 => call!(&(n as u8, s.as_str(), n as u8)),
        4 => call!(&(s.as_str(), n as u8, n as u8)),
        5 => call!(&(n as u8, n as u8, n as u8, n as u8)),
        6 => call!(&(s.as_str(), n & 1 == 1, n)),
        _ => call!(&(n as u8,)),
    };
    if let Err(e) = r {
        allowed(&e, method);
    }
}

/// ListCaches and ListDevices agree with the objects on the bus.
async fn check_lists(m: &ManagerProxy<'static>) {
    let conn = m.inner().connection().clone();
    if let Some(caches) = outcome("ListCaches", within("ListCaches", m.list_caches()).await) {
        let mut ids: Vec<u8> = caches.iter().map(|c| c.id).collect();
        ids.dedup();
        assert_eq!(ids.len(), caches.len(), "a cache listed twice: {caches:?}");
        for c in caches.iter().filter(|c| c.state == "running") {
            let s = within("Status", cache_proxy(&conn, c.id).await.status())
                .await
                .unwrap_or_else(|e| panic!("listed cache {} has no object: {e:?}", c.id));
            assert_eq!((s.id, s.nr_segments), (c.id, c.nr_segments));
        }
    }
    if let Some(devices) = outcome("ListDevices", within("ListDevices", m.list_devices()).await) {
        for d in devices {
            let info = within("Device.Info", device_proxy(&conn, d.id).await.info()).await;
            if let Ok(info) = info {
                assert_eq!((info.id, info.cache_id), (d.id, d.cache_id));
            }
        }
    }
}

/// Removes every device and frees every cache; all of it must work.
async fn clean_up((_, m): &(zbus::Connection, ManagerProxy<'static>)) {
    for _ in 0..200 {
        let devices = within("ListDevices", m.list_devices())
            .await
            .expect("ListDevices");
        if devices.is_empty() {
            break;
        }
        for d in devices {
            match within("RemoveDevice", m.remove_device(d.id)).await {
                Ok(()) => {}
                Err(LcdError::Busy(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
                // a BeginRemoveDevice finished meanwhile
                Err(LcdError::NotFound(_)) if d.state == "detaching" => {}
                Err(e) => panic!("clean-up: RemoveDevice({}) of {d:?}: {e:?}", d.id),
            }
        }
    }
    let devices = m.list_devices().await.expect("ListDevices");
    assert!(
        devices.is_empty(),
        "devices left after clean-up: {devices:?}"
    );
    for c in within("ListCaches", m.list_caches())
        .await
        .expect("ListCaches")
    {
        m.switch_to(c.id).await.expect("SwitchTo");
        within("FreeCache", m.free_cache())
            .await
            .unwrap_or_else(|e| panic!("clean-up: FreeCache of {c:?}: {e:?}"));
    }
    let caches = m.list_caches().await.expect("ListCaches");
    assert!(caches.is_empty(), "caches left after clean-up: {caches:?}");
}
