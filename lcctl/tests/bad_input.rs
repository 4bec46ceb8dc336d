//! The bad-input catalogue (docs/bad-input.md): every bad input to the
//! real lcctl and, through `dbus-send`, to the real lcd's D-Bus API, the
//! error it gets, and proof that the refused call changed nothing: the
//! files involved are byte-identical, ListCaches/ListDevices, every knob
//! and lcd's saved state (state.json) are as they were.
//!
//! Rows already proven by caches.rs, devices.rs and lcd/tests/dbus.rs are
//! cited in the table, not repeated here.

mod common;

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::process::Command;

use common::{sparse, Rig, CACHE_BYTES};
use serde_json::Value;

/// A running lcd with cache 1 resumed on `cache` and device 2 attached to
/// it on `backing`, the migration policy settled (its next decision an hour
/// away) so nothing changes by itself.
struct World {
    rig: Rig,
    files: tempfile::TempDir,
    cache: String,
    backing: String,
}

/// Everything a refused call must leave as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    /// `lcctl --json list`: ListCaches and ListDevices.
    list: Value,
    /// `lcctl --json get` of every cache and device.
    knobs: Vec<Value>,
    /// lcd's saved configuration.
    state: Vec<u8>,
    /// (path, hash of the contents) of the files involved.
    files: Vec<(String, u64)>,
}

fn hash_file(path: &str) -> u64 {
    let mut h = DefaultHasher::new();
    match std::fs::read(path) {
        Ok(b) => b.hash(&mut h),
        Err(e) => e.kind().hash(&mut h),
    }
    h.finish()
}

impl World {
    fn new() -> World {
        let rig = Rig::start();
        let files = tempfile::tempdir().unwrap();
        let cache = sparse(files.path(), "cache.img", CACHE_BYTES);
        let backing = sparse(files.path(), "backing.img", 16 << 20);
        // something in the files, so "unchanged" means something
        std::fs::write(&backing, vec![0x5a; 16 << 20]).unwrap();
        rig.lcctl(&["format", &cache]).ok();
        rig.lcctl(&["resume", &cache, "--id", "1"]).ok();
        rig.lcctl(&["set", "update_interval", "3600", "--cache", "1"])
            .ok();
        rig.lcctl(&["attach", &backing, "--cache", "1", "--id", "2"])
            .ok();
        let w = World {
            rig,
            files,
            cache,
            backing,
        };
        w.settle();
        w
    }

    /// Waits for the migration policy's first decision on cache 1 (idle
    /// devices: write-back allowed); the next is update_interval away.
    fn settle(&self) {
        for _ in 0..400 {
            let v = self
                .rig
                .lcctl(&["get", "allow_migrate", "--cache", "1"])
                .ok()
                .trim()
                .to_string();
            if v == "1" {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("lcd's policy never decided on cache 1");
    }

    /// A path in the test's scratch directory.
    fn path(&self, name: &str) -> String {
        self.files.path().join(name).display().to_string()
    }

    fn snapshot(&self, files: &[&str]) -> Snapshot {
        let list = self.rig.lcctl(&["--json", "list"]).json();
        let mut knobs = Vec::new();
        for c in list["caches"].as_array().unwrap() {
            if c["state"] == "running" {
                let id = c["id"].to_string();
                knobs.push(self.rig.lcctl(&["--json", "get", "--cache", &id]).json());
            }
        }
        for d in list["devices"].as_array().unwrap() {
            let id = d["id"].to_string();
            knobs.push(self.rig.lcctl(&["--json", "get", "--device", &id]).json());
        }
        let state = std::fs::read(self.rig.dir().join("state/state.json")).unwrap();
        let mut all = vec![self.cache.as_str(), self.backing.as_str()];
        all.extend(files);
        Snapshot {
            list,
            knobs,
            state,
            files: all.iter().map(|f| (f.to_string(), hash_file(f))).collect(),
        }
    }

    /// Runs `refused` (which asserts the error) and asserts that nothing
    /// changed: the cache and backing files, `files`, the caches, devices,
    /// knobs and saved state.
    #[track_caller]
    fn refused(&self, files: &[&str], what: &str, refused: impl FnOnce()) {
        let before = self.snapshot(files);
        refused();
        let after = self.snapshot(files);
        assert!(
            before == after,
            "{what} changed something:\n{before:#?}\n{after:#?}"
        );
    }

    /// `lcctl ARGS` fails with `code` and a one-line message containing
    /// `text`, and changes nothing.
    #[track_caller]
    fn lcctl_fails(&self, files: &[&str], args: &[&str], code: i32, text: &str) {
        self.refused(files, &format!("lcctl {args:?}"), || {
            self.rig.lcctl(args).fails(code, text)
        });
    }

    /// A call through `dbus-send` (as root, or as user nobody) fails with
    /// the error `name` and a message containing `text`, and changes
    /// nothing. `object` is relative to /org/lc/Lcd1; `method` is
    /// `Interface.Method`; `args` are dbus-send's `type:value`.
    #[track_caller]
    fn dbus_fails(
        &self,
        nobody: bool,
        object: &str,
        method: &str,
        args: &[&str],
        name: &str,
        text: &str,
    ) {
        self.refused(&[], &format!("{method} {args:?}"), || {
            let (ok, out) = dbus_send(&self.rig, nobody, object, method, args);
            assert!(!ok, "{method} {args:?} succeeded: {out}");
            let want = format!("Error {name}: ");
            assert!(
                out.starts_with(&want) && out.contains(text),
                "{method} {args:?}: wanted {want}…{text}…, got {out}"
            );
        });
    }
}

/// Calls `method` on `/org/lc/Lcd1{object}` with dbus-send (which, unlike
/// busctl, prints the name of the error), as root or as user nobody.
fn dbus_send(rig: &Rig, nobody: bool, object: &str, method: &str, args: &[&str]) -> (bool, String) {
    let mut c = if nobody {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "dbus-send",
        ]);
        c
    } else {
        Command::new("dbus-send")
    };
    let iface = if method.starts_with("Properties.") {
        "org.freedesktop.DBus"
    } else {
        "org.lc.Lcd1"
    };
    let o = c
        .arg(format!("--bus={}", rig.address()))
        .args(["--print-reply", "--dest=org.lc.Lcd1"])
        .arg(format!("/org/lc/Lcd1{object}"))
        .arg(format!("{iface}.{method}"))
        .args(args)
        .output()
        .expect("dbus-send (package dbus) and setpriv (util-linux) must be installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

fn string(s: &str) -> String {
    format!("string:{s}")
}

/// The lc superblock is on `path` (it was formatted).
fn is_lc_cache(path: &str) -> bool {
    std::fs::read(path).unwrap().starts_with(b"lcCACHE\0")
}

#[test]
fn a_device_in_use_is_refused_under_any_of_its_names() {
    let w = World::new();
    let cache_link = w.path("cache-link.img");
    std::fs::hard_link(&w.cache, &cache_link).unwrap();
    let backing_link = w.path("backing-link.img");
    std::fs::hard_link(&w.backing, &backing_link).unwrap();
    // an old cache device, reused as the backing device of device 3
    let old_cache = sparse(w.files.path(), "old-cache.img", CACHE_BYTES);
    w.rig.lcctl(&["format", &old_cache]).ok();
    w.rig
        .lcctl(&["attach", &old_cache, "--cache", "1", "--id", "3"])
        .ok();
    let files = [old_cache.as_str()];
    let detach_first = "is the backing device of device 2; detach it first (lcctl detach 2)";
    for (args, text) in [
        (vec!["format", &w.backing], detach_first),
        (vec!["format", &w.backing, "--force"], detach_first),
        (vec!["format", &backing_link, "--force"], "detach it first"),
        (
            vec!["format", &cache_link, "--force"],
            "is cache 1, which is resumed; free it first",
        ),
        (
            vec!["resume", &old_cache, "--id", "3"],
            "is the backing device of device 3; a cache device must be another device",
        ),
        (
            vec!["resume", &w.backing, "--id", "3"],
            "backing device of device 2",
        ),
        (
            vec!["resume", &cache_link, "--id", "3"],
            "is already cache 1",
        ),
        (
            vec!["attach", &cache_link, "--cache", "1"],
            "is the cache device of cache 1",
        ),
        (
            vec!["attach", &backing_link, "--cache", "1"],
            "is already the backing device of device 2",
        ),
    ] {
        w.lcctl_fails(&files, &args, 4, text);
    }
    assert!(!is_lc_cache(&w.backing));
    // and through D-Bus, the named error
    w.dbus_fails(
        false,
        "",
        "Manager.FormatCacheDevice",
        &[&string(&backing_link), "boolean:true"],
        "org.lc.Lcd1.Error.Busy",
        "backing device of device 2",
    );
    w.dbus_fails(
        false,
        "",
        "Manager.ResumeCacheAs",
        &["byte:3", &string(&old_cache)],
        "org.lc.Lcd1.Error.Busy",
        "backing device of device 3",
    );
}

#[test]
fn a_path_that_cannot_name_a_device_is_not_an_io_error() {
    let w = World::new();
    let loop_a = w.path("loop-a");
    std::os::unix::fs::symlink(w.path("loop-b"), &loop_a).unwrap();
    std::os::unix::fs::symlink(&loop_a, w.path("loop-b")).unwrap();
    let under_a_file = format!("{}/x.img", w.cache);
    let long = w.path(&"n".repeat(300));
    for (path, code, text) in [
        (under_a_file.as_str(), 3, "Not a directory"),
        (loop_a.as_str(), 2, "Too many levels of symbolic links"),
        (long.as_str(), 2, "File name too long"),
    ] {
        w.lcctl_fails(&[], &["format", path], code, text);
        w.lcctl_fails(&[], &["resume", path, "--id", "3"], code, text);
        w.lcctl_fails(&[], &["attach", path, "--cache", "1"], code, text);
    }
    w.dbus_fails(
        false,
        "",
        "Manager.FormatCacheDevice",
        &[&string(&under_a_file), "boolean:false"],
        "org.lc.Lcd1.Error.NotFound",
        "Not a directory",
    );
    w.dbus_fails(
        false,
        "",
        "Manager.CreateDevice",
        &["byte:0", &string(&loop_a), "byte:1"],
        "org.lc.Lcd1.Error.InvalidArgument",
        "Too many levels of symbolic links",
    );
}

#[test]
fn ids_out_of_range() {
    let w = World::new();
    let other = sparse(w.files.path(), "other.img", 16 << 20);
    // D-Bus: a cache id is a byte; 0 is no cache
    w.dbus_fails(
        false,
        "",
        "Manager.CreateDevice",
        &["byte:0", &string(&other), "byte:0"],
        "org.lc.Lcd1.Error.InvalidArgument",
        "cache ids are 1..=255",
    );
}

#[test]
fn relative_and_empty_paths_through_dbus() {
    let w = World::new();
    let fresh = sparse(w.files.path(), "fresh.img", CACHE_BYTES);
    // lcd runs in a directory of its own: it cannot resolve the caller's
    // relative path, even one naming an existing file there
    let rel = "fresh.img";
    assert!(Path::new(&fresh).ends_with(rel));
    for path in [rel, "./fresh.img", ""] {
        let quoted = format!("{path:?} is not an absolute path");
        w.dbus_fails(
            false,
            "",
            "Manager.FormatCacheDevice",
            &[&string(path), "boolean:true"],
            "org.lc.Lcd1.Error.InvalidArgument",
            &quoted,
        );
        w.dbus_fails(
            false,
            "",
            "Manager.ResumeCacheAs",
            &["byte:3", &string(path)],
            "org.lc.Lcd1.Error.InvalidArgument",
            &quoted,
        );
        w.dbus_fails(
            false,
            "",
            "Manager.CreateDevice",
            &["byte:0", &string(path), "byte:1"],
            "org.lc.Lcd1.Error.InvalidArgument",
            &quoted,
        );
    }
    assert!(!is_lc_cache(&fresh));
}

#[test]
fn odd_characters_in_paths() {
    use std::os::unix::ffi::OsStrExt;
    let w = World::new();
    // not UTF-8: refused, never replaced by the file whose name is the
    // lossy conversion
    let raw = w
        .files
        .path()
        .join(std::ffi::OsStr::from_bytes(b"\xff.img"));
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(CACHE_BYTES)
        .unwrap();
    let lossy = sparse(w.files.path(), "\u{fffd}.img", CACHE_BYTES);
    w.refused(&[&lossy], "format of a non-UTF-8 path", || {
        let o = Command::new(env!("CARGO_BIN_EXE_lcctl"))
            .args(["--bus", w.rig.address(), "format"])
            .arg(&raw)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains("is not valid UTF-8"), "{err}");
    });
    assert!(std::fs::read(&raw).unwrap().iter().all(|&b| b == 0));
    // a newline in a path: the message stays one line
    w.lcctl_fails(
        &[],
        &["format", &w.path("no\nsuch.img")],
        3,
        "No such file or directory",
    );
    // spaces, quotes and non-ASCII letters are just names
    let odd = sparse(w.files.path(), "a 'cache' ü.img", CACHE_BYTES);
    let j = w.rig.lcctl(&["--json", "format", &odd]).json();
    assert_eq!(j["formatted"], odd.as_str());
}

/// `lcctl ARGS` is refused by the command-line parser (exit 2, clap's
/// message naming the value), before any call to lcd.
#[track_caller]
fn parser_refuses(w: &World, args: &[&str], text: &str) {
    w.refused(&[], &format!("lcctl {args:?}"), || {
        let r = w.rig.lcctl(args);
        assert_eq!(r.code, 2, "{r:?}");
        assert!(
            r.stdout.is_empty() && r.stderr.starts_with("error: ") && r.stderr.contains(text),
            "{r:?}"
        );
    });
}

#[test]
fn paths_that_are_no_usable_device() {
    let w = World::new();
    let dir = w.path("a-directory");
    std::fs::create_dir(&dir).unwrap();
    let empty = sparse(w.files.path(), "empty.img", 0);
    let tiny = sparse(w.files.path(), "tiny.img", 100);
    let garbage = w.path("garbage.img");
    std::fs::write(&garbage, vec![0xa7; 8 << 20]).unwrap();
    let ext4 = sparse(w.files.path(), "ext4.img", CACHE_BYTES);
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F", &ext4])
        .status()
        .expect("mkfs.ext4 (e2fsprogs) must be installed");
    assert!(mkfs.success());
    let files = [
        garbage.as_str(),
        ext4.as_str(),
        empty.as_str(),
        tiny.as_str(),
    ];
    let neither = "is neither a block device nor a regular file";
    for (args, code, text) in [
        (
            vec!["resume", "/nonexistent/cache.img", "--id", "3"],
            3,
            "No such file",
        ),
        (vec!["format", &dir], 2, neither),
        (vec!["resume", &dir, "--id", "3"], 2, neither),
        (vec!["attach", &dir, "--cache", "1"], 2, neither),
        // a mount point is a directory
        (vec!["format", "/proc", "--force"], 2, neither),
        (vec!["format", "/dev/null", "--force"], 2, neither),
        (vec!["attach", "/dev/null", "--cache", "1"], 2, neither),
        // too small to hold a cache; a backing device of no whole sector
        (
            vec!["format", &tiny, "--force"],
            2,
            "a cache needs at least 3145728 bytes",
        ),
        (
            vec!["attach", &empty, "--cache", "1"],
            2,
            "unusable size of 0 bytes",
        ),
        (
            vec!["attach", &tiny, "--cache", "1"],
            2,
            "unusable size of 0 bytes",
        ),
        // holds a file system, or no lc cache
        (
            vec!["format", &ext4],
            2,
            "holds a ext2/3/4 file system; refusing to overwrite it",
        ),
        (
            vec!["resume", &ext4, "--id", "3"],
            8,
            "format it with `lcctl format PATH`",
        ),
        (
            vec!["resume", &garbage, "--id", "3"],
            8,
            "holds no lc cache",
        ),
        // the cache device as backing device (D-Bus: lcd/tests/dbus.rs)
        (
            vec!["attach", &w.cache, "--cache", "1"],
            4,
            "is the cache device of cache 1",
        ),
    ] {
        w.lcctl_fails(&files, &args, code, text);
    }
    for (method, args, name, text) in [
        (
            "Manager.FormatCacheDevice",
            vec![string(&dir), "boolean:true".into()],
            "InvalidArgument",
            neither,
        ),
        (
            "Manager.ResumeCacheAs",
            vec!["byte:3".into(), string(&garbage)],
            "NotFormatted",
            "holds no lc cache",
        ),
        (
            "Manager.FormatCacheDevice",
            vec![string(&ext4), "boolean:false".into()],
            "InvalidArgument",
            "ext2/3/4 file system",
        ),
        (
            "Manager.CreateDevice",
            vec!["byte:0".into(), string(&empty), "byte:1".into()],
            "InvalidArgument",
            "unusable size",
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        w.dbus_fails(
            false,
            "",
            method,
            &args,
            &format!("org.lc.Lcd1.Error.{name}"),
            text,
        );
    }
}

#[test]
fn ids_taken_missing_or_gone_twice() {
    let w = World::new();
    let other = sparse(w.files.path(), "other.img", 16 << 20);
    // lcctl: every id is 1..=255, checked before lcd is asked
    for (args, text) in [
        (vec!["resume", &w.cache, "--id", "0"], "0 is not in 1..=255"),
        (
            vec!["resume", &w.cache, "--id", "256"],
            "256 is not in 1..=255",
        ),
        (
            vec!["attach", &other, "--cache", "1", "--id", "0"],
            "0 is not in 1..=255",
        ),
        (
            vec!["attach", &other, "--cache", "256"],
            "256 is not in 1..=255",
        ),
        (vec!["detach", "0"], "0 is not in 1..=255"),
        (vec!["detach", "256"], "256 is not in 1..=255"),
        (vec!["free", "0"], "0 is not in 1..=255"),
        (vec!["status", "256"], "256 is not in 1..=255"),
        (vec!["get", "--device", "0"], "0 is not in 1..=255"),
    ] {
        parser_refuses(&w, &args, text);
    }
    w.lcctl_fails(&[], &["detach", "9", "--no-wait"], 3, "no device 9");
    // D-Bus: dbus-send wraps byte:256 to 0 (busctl refuses to send it)
    w.dbus_fails(
        false,
        "",
        "Manager.SwitchTo",
        &["byte:256"],
        "org.lc.Lcd1.Error.InvalidArgument",
        "cache ids are 1..=255",
    );
    for method in ["Manager.RemoveDevice", "Manager.BeginRemoveDevice"] {
        for id in ["byte:0", "byte:9"] {
            w.dbus_fails(
                false,
                "",
                method,
                &[id],
                "org.lc.Lcd1.Error.NotFound",
                "(lcctl list shows them)",
            );
        }
    }
    w.dbus_fails(
        false,
        "",
        "Manager.CreateDevice",
        &["byte:2", &string(&other), "byte:1"],
        "org.lc.Lcd1.Error.Busy",
        "device 2 exists",
    );
    // detaching twice: the second finds nothing and changes nothing
    w.rig.lcctl(&["detach", "2"]).ok();
    w.lcctl_fails(&[], &["detach", "2"], 3, "no device 2");
    w.lcctl_fails(&[], &["detach", "2", "--no-wait"], 3, "no device 2");
    w.dbus_fails(
        false,
        "",
        "Manager.BeginRemoveDevice",
        &["byte:2"],
        "org.lc.Lcd1.Error.NotFound",
        "there is no device 2",
    );
}

/// (D-Bus property, lcctl name, min, max) of the cache's number knobs
/// (nr_max_batched_migration's max is the 63 segments of the test cache).
const NUMBER_KNOBS: [(&str, &str, u64, u64); 5] = [
    (
        "CommitSuperBlockInterval",
        "commit_super_block_interval",
        0,
        86_400,
    ),
    ("NrMaxBatchedMigration", "nr_max_batched_migration", 1, 63),
    ("UpdateInterval", "update_interval", 1, 3600),
    (
        "FlushCurrentBufferInterval",
        "flush_current_buffer_interval",
        0,
        86_400,
    ),
    ("BarrierDeadlineMs", "barrier_deadline_ms", 1, 10_000),
];

fn set_property(iface: &str, property: &str, value: &str) -> Vec<String> {
    vec![
        string(&format!("org.lc.Lcd1.{iface}")),
        string(property),
        format!("variant:{value}"),
    ]
}

#[test]
fn knob_values_out_of_range_or_of_the_wrong_type() {
    let w = World::new();
    let set = |object: &str, iface: &str, prop: &str, value: &str, name: &str, text: &str| {
        let args = set_property(iface, prop, value);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let name = format!("org.freedesktop.DBus.Error.{name}");
        w.dbus_fails(false, object, "Properties.Set", &args, &name, text);
    };
    for (prop, knob, min, max) in NUMBER_KNOBS {
        let range = format!("{knob} must be in {min}..={max}");
        let mut bad = vec![max + 1, u64::MAX];
        if min > 0 {
            bad.push(min - 1);
        }
        for v in bad {
            let v = v.to_string();
            w.lcctl_fails(&[], &["set", knob, &v, "--cache", "1"], 2, &range);
            set(
                "/cache/1",
                "Cache",
                prop,
                &format!("uint64:{v}"),
                "InvalidArgs",
                &range,
            );
        }
        w.lcctl_fails(
            &[],
            &["set", knob, "1.5", "--cache", "1"],
            2,
            "takes a number",
        );
        set(
            "/cache/1",
            "Cache",
            prop,
            "string:5",
            "InvalidArgs",
            "Signature mismatch",
        );
        set(
            "/cache/1",
            "Cache",
            prop,
            "uint32:5",
            "InvalidArgs",
            "Signature mismatch",
        );
        set(
            "/cache/1",
            "Cache",
            prop,
            "int64:-1",
            "InvalidArgs",
            "Signature mismatch",
        );
    }
    for prop in ["AllowMigrate", "ForceMigrate"] {
        set(
            "/cache/1",
            "Cache",
            prop,
            "string:yes",
            "InvalidArgs",
            "Signature mismatch",
        );
        set(
            "/cache/1",
            "Cache",
            prop,
            "uint64:1",
            "InvalidArgs",
            "Signature mismatch",
        );
    }
    w.lcctl_fails(
        &[],
        &["set", "force_migrate", "maybe", "--device", "2"],
        2,
        "use --cache ID",
    );
    set(
        "/device/2",
        "Device",
        "MigrateThreshold",
        "byte:101",
        "InvalidArgs",
        "0..=100, got 101",
    );
    set(
        "/device/2",
        "Device",
        "MigrateThreshold",
        "string:50",
        "InvalidArgs",
        "Signature mismatch",
    );
    set(
        "/device/2",
        "Device",
        "MigrateThreshold",
        "uint64:50",
        "InvalidArgs",
        "Signature mismatch",
    );
    // read-only and unknown properties, objects that do not exist
    set("/cache/1", "Cache", "Id", "byte:3", "UnknownProperty", "Id");
    set(
        "/cache/1",
        "Cache",
        "LastFlushedSegmentId",
        "uint64:0",
        "UnknownProperty",
        "",
    );
    set(
        "/device/2",
        "Device",
        "State",
        "string:running",
        "UnknownProperty",
        "State",
    );
    set(
        "/device/2",
        "Device",
        "CacheId",
        "byte:3",
        "UnknownProperty",
        "CacheId",
    );
    set(
        "/cache/1",
        "Cache",
        "Frobnicate",
        "uint64:1",
        "UnknownProperty",
        "Frobnicate",
    );
    set(
        "/cache/9",
        "Cache",
        "BarrierDeadlineMs",
        "uint64:5",
        "UnknownObject",
        "/org/lc/Lcd1/cache/9",
    );
    set(
        "/device/9",
        "Device",
        "MigrateThreshold",
        "byte:5",
        "UnknownObject",
        "device/9",
    );
    // methods called with the wrong arguments, or that do not exist
    for (method, args) in [
        ("Manager.SwitchTo", vec!["string:1"]),
        ("Manager.SwitchTo", vec!["uint32:1"]),
        ("Manager.FormatCacheDevice", vec!["string:/x"]),
        (
            "Manager.CreateDevice",
            vec!["byte:0", "string:/x", "uint64:1"],
        ),
        ("Manager.RemoveDevice", vec![]),
    ] {
        w.dbus_fails(
            false,
            "",
            method,
            &args,
            "org.freedesktop.DBus.Error.InvalidArgs",
            "Signature mismatch",
        );
    }
    w.dbus_fails(
        false,
        "",
        "Manager.Frobnicate",
        &[],
        "org.freedesktop.DBus.Error.UnknownMethod",
        "Frobnicate",
    );
}

#[test]
fn non_root_callers_change_nothing() {
    if !common::is_root() {
        eprintln!("skipped: needs root to call lcd as another user");
        return;
    }
    let w = World::new();
    let other = sparse(w.files.path(), "other.img", 16 << 20);
    let need_root = "changes need root";
    let denied = "org.lc.Lcd1.Error.AccessDenied";
    for (object, method, args) in [
        (
            "",
            "Manager.FormatCacheDevice",
            vec![string(&other), "boolean:true".into()],
        ),
        ("", "Manager.ResumeCache", vec![string(&w.cache)]),
        (
            "",
            "Manager.ResumeCacheAs",
            vec!["byte:3".into(), string(&w.cache)],
        ),
        ("", "Manager.FreeCache", vec![]),
        ("", "Manager.ClearStat", vec![]),
        (
            "",
            "Manager.CreateDevice",
            vec!["byte:0".into(), string(&other), "byte:1".into()],
        ),
        ("", "Manager.RemoveDevice", vec!["byte:2".into()]),
        ("", "Manager.BeginRemoveDevice", vec!["byte:2".into()]),
        ("/cache/1", "Cache.CommitSuperBlock", vec![]),
        ("/cache/1", "Cache.FlushCurrentBuffer", vec![]),
        ("/cache/1", "Cache.ClearStat", vec![]),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        w.dbus_fails(true, object, method, &args, denied, need_root);
    }
    let mut knobs: Vec<(&str, &str, String)> = NUMBER_KNOBS
        .iter()
        .map(|(prop, _, min, _)| ("/cache/1", *prop, format!("uint64:{min}")))
        .collect();
    knobs.push(("/cache/1", "AllowMigrate", "boolean:false".into()));
    knobs.push(("/cache/1", "ForceMigrate", "boolean:true".into()));
    knobs.push(("/device/2", "MigrateThreshold", "byte:5".into()));
    for (object, prop, value) in knobs {
        let iface = if object.starts_with("/cache") {
            "Cache"
        } else {
            "Device"
        };
        let args = set_property(iface, prop, &value);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        w.dbus_fails(
            true,
            object,
            "Properties.Set",
            &args,
            "org.freedesktop.DBus.Error.AccessDenied",
            need_root,
        );
    }
    // lcctl: the rest are in caches.rs and devices.rs
    w.refused(&[], "lcctl detach --no-wait as nobody", || {
        w.rig
            .lcctl_as_nobody(&["detach", "2", "--no-wait"])
            .fails(5, "sudo")
    });
    w.refused(&[&other], "lcctl attach as nobody", || {
        w.rig
            .lcctl_as_nobody(&["attach", &other, "--cache", "1", "--id", "3"])
            .fails(5, "sudo")
    });
}

/// A loop device over a file in the test's directory, detached on drop.
struct Loop {
    dev: String,
    mount: Option<std::path::PathBuf>,
}

impl Loop {
    fn new(file: &str) -> Option<Loop> {
        let o = Command::new("losetup")
            .args(["--find", "--show", file])
            .output()
            .ok()?;
        o.status.success().then(|| Loop {
            dev: String::from_utf8_lossy(&o.stdout).trim().to_string(),
            mount: None,
        })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        if let Some(m) = &self.mount {
            let _ = Command::new("umount").arg(m).status();
        }
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

#[test]
fn a_block_device_holding_a_file_system_mounted_or_not() {
    let w = World::new();
    let image = sparse(w.files.path(), "fs.img", CACHE_BYTES);
    let Some(mut lo) = common::is_root().then(|| Loop::new(&image)).flatten() else {
        eprintln!("skipped: needs root and a free loop device (losetup)");
        return;
    };
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", &lo.dev])
        .status()
        .expect("mkfs.ext4 (e2fsprogs) must be installed");
    assert!(mkfs.success());
    // not mounted: a file system lc will not overwrite without --force
    w.lcctl_fails(
        &[&image],
        &["format", &lo.dev],
        2,
        "holds a ext2/3/4 file system; refusing to overwrite it",
    );
    w.lcctl_fails(
        &[&image],
        &["resume", &lo.dev, "--id", "3"],
        8,
        "holds no lc cache",
    );
    // mounted: in use, even with --force
    let mnt = w.files.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .arg(&lo.dev)
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount {} failed", lo.dev);
    lo.mount = Some(mnt.clone());
    std::fs::write(mnt.join("data"), b"kept").unwrap();
    let busy = "is in use by the kernel or another program (mounted, swap, part of a RAID, LVM volume, a cache or device of this or another lcd, `lcd writeback` or `lcd check`): unmount or release it first";
    for args in [
        vec!["format", &lo.dev, "--force"],
        vec!["resume", &lo.dev, "--id", "3"],
        vec!["attach", &lo.dev, "--cache", "1"],
    ] {
        w.lcctl_fails(&[], &args, 4, busy);
    }
    w.dbus_fails(
        false,
        "",
        "Manager.FormatCacheDevice",
        &[&string(&lo.dev), "boolean:true"],
        "org.lc.Lcd1.Error.Busy",
        busy,
    );
    assert_eq!(std::fs::read(mnt.join("data")).unwrap(), b"kept");
}
