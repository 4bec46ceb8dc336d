//! The real lcctl against the real lcd on a private bus: the cache
//! commands, their text and JSON output, and every error path's exit
//! status and message (and that a refused command changed nothing).

mod common;

use common::{sparse, Rig, CACHE_BYTES};
use serde_json::Value;

fn cache_ids(rig: &Rig) -> Vec<u64> {
    rig.lcctl(&["--json", "list"]).json()["caches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_u64().unwrap())
        .collect()
}

#[test]
fn format_resume_inspect_tune_and_free_a_cache() {
    let rig = Rig::start();
    let files = tempfile::tempdir().unwrap();
    let cache = sparse(files.path(), "cache.img", CACHE_BYTES);
    let small = sparse(files.path(), "small.img", 1 << 20);

    // format
    let j = rig.lcctl(&["--json", "format", &cache]).json();
    assert_eq!(j, serde_json::json!({ "formatted": cache }));
    rig.lcctl(&["format", &cache]).fails(2, "lc cache");
    let out = rig.lcctl(&["format", &cache, "--force"]);
    assert!(out.ok().contains("resume it with `lcctl resume"), "{out:?}");
    rig.lcctl(&["format", "/nonexistent/cache.img"])
        .fails(3, "/nonexistent/cache.img");
    rig.lcctl(&["format", &small]).fails(2, "");

    // a relative path is made absolute for lcd
    let rel = tempfile::tempdir().unwrap();
    sparse(rel.path(), "rel.img", CACHE_BYTES);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_lcctl"))
        .current_dir(rel.path())
        .args(["--bus", rig.address(), "--json", "format", "rel.img"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        j["formatted"],
        rel.path().join("rel.img").display().to_string()
    );

    // resume
    rig.lcctl(&["resume", &small, "--id", "3"])
        .fails(8, "format it with `lcctl format PATH`");
    let j = rig.lcctl(&["--json", "resume", &cache, "--id", "3"]).json();
    assert_eq!(j["id"], 3);
    assert_eq!(j["path"], cache.as_str());
    assert_eq!(j["nr_segments"], 63);
    assert_eq!(j["nr_dirty_caches"], 0);
    assert_eq!(j["state"], "running");
    assert_eq!(j["uuid"].as_str().unwrap().len(), 32);
    rig.lcctl(&["resume", &cache, "--id", "4"])
        .fails(4, "already cache 3");
    rig.lcctl(&["resume", &small, "--id", "3"])
        .fails(4, "cache 3 is already resumed");
    rig.lcctl(&["format", &cache, "--force"])
        .fails(4, "free it first");
    assert_eq!(cache_ids(&rig), [3]);

    // list
    let text = rig.lcctl(&["list"]).ok().to_string();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["TYPE", "ID", "CACHE", "PATH", "FRONTEND", "NODE", "DIRTY", "STATE"]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        row,
        ["cache", "3", "-", cache.as_str(), "-", "-", "0", "running"]
    );
    let j = rig.lcctl(&["--json", "list"]).json();
    assert_eq!(j["caches"][0]["path"], cache.as_str());
    assert_eq!(j["devices"], serde_json::json!([]));

    // status, text: what lc-mgr status showed, and the counters
    let text = rig.lcctl(&["status", "3"]).ok().to_string();
    assert!(
        text.starts_with(&format!("cache 3  {cache}  running")),
        "{text}"
    );
    for field in [
        "static_ram",
        "allow_migrate",
        "nr_segments",
        "last_migrated_segment_id",
        "last_flushed_segment_id",
        "current_segment_id",
        "cursor",
        "barrier_deadline_ms",
        "errors",
        "HIT RATIO",
        "no devices",
    ] {
        assert!(text.contains(field), "{field} missing:\n{text}");
    }
    let nr_segments = text
        .lines()
        .find(|l| l.trim_start().starts_with("nr_segments"))
        .unwrap();
    assert_eq!(nr_segments.split_whitespace().nth(1), Some("63"));
    let io: Vec<&str> = text
        .lines()
        .filter(|l| matches!(l.split_whitespace().next(), Some("read" | "write")))
        .collect();
    assert_eq!(io.len(), 6, "read/write × 4 KiB/partial/all:\n{text}");

    // status, JSON
    let j = rig.lcctl(&["--json", "status"]).json();
    let c = &j["caches"][0];
    assert_eq!(c["id"], 3);
    assert_eq!(c["state"], "running");
    assert_eq!(c["status"]["nr_segments"], 63);
    assert_eq!(c["status"]["nr_caches"], 63 * 255);
    assert!(c["status"]["static_ram_bytes"].as_u64().unwrap() > 0);
    assert_eq!(c["status"]["counters"].as_array().unwrap().len(), 16);
    // the five error counters, by name (they were five numbers by position)
    assert_eq!(
        c["status"]["errors"],
        serde_json::json!({"cache_read": 0, "cache_write": 0, "backing_read": 0,
                           "backing_write": 0, "migration_retries": 0})
    );
    assert_eq!(
        c["hit_ratio"],
        serde_json::json!({"read": null, "write": null})
    );
    assert_eq!(c["knobs"]["barrier_deadline_ms"], 3);
    // allow_migrate is lcd's migration policy's to set (a cache with no
    // device may always write back): wait for its first look, then give it
    // an hour before the next, so the knob holds what this test sets
    let mut looked = false;
    for _ in 0..600 {
        let j = rig
            .lcctl(&["--json", "get", "allow_migrate", "--cache", "3"])
            .json();
        if j["knobs"]["allow_migrate"] == 1 {
            looked = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        looked,
        "the migration policy never allowed write-back of a cache with no device"
    );
    rig.lcctl(&["set", "update_interval", "3600", "--cache", "3"])
        .ok();
    assert_eq!(c["devices"], serde_json::json!([]));
    rig.lcctl(&["status", "9"]).fails(3, "no cache 9");
    let e = rig.lcctl(&["--json", "status", "9"]);
    assert_eq!(e.code, 3);
    let doc: Value = serde_json::from_str(&e.stdout).unwrap();
    assert_eq!(doc["error"]["kind"], "not_found");
    assert_eq!(doc["error"]["exit_status"], 3);

    // knobs
    let j = rig.lcctl(&["--json", "get", "--cache", "3"]).json();
    assert_eq!(j["cache"], 3);
    let knobs = j["knobs"].as_object().unwrap();
    assert_eq!(knobs.len(), 8);
    assert_eq!(knobs["nr_max_batched_migration"], 8);
    assert_eq!(
        rig.lcctl(&["get", "barrier_deadline_ms", "--cache", "3"])
            .ok()
            .trim(),
        "3"
    );
    let table = rig.lcctl(&["get", "--cache", "3"]).ok().to_string();
    assert!(table.starts_with("KNOB"), "{table}");
    assert!(table.contains("update_interval"), "{table}");
    let j = rig
        .lcctl(&["--json", "set", "barrier_deadline_ms", "7", "--cache", "3"])
        .json();
    assert_eq!(
        j,
        serde_json::json!({"cache": 3, "knobs": {"barrier_deadline_ms": 7}})
    );
    assert_eq!(
        rig.lcctl(&["set", "allow_migrate", "on", "--cache", "3"])
            .ok()
            .trim(),
        "cache 3: allow_migrate = 1"
    );
    rig.lcctl(&["set", "allow_migrate", "0", "--cache", "3"])
        .ok();
    // refused values change nothing
    rig.lcctl(&["set", "barrier_deadline_ms", "0", "--cache", "3"])
        .fails(2, "barrier_deadline_ms must be in 1..=10000");
    rig.lcctl(&["set", "nr_max_batched_migration", "100", "--cache", "3"])
        .fails(2, "");
    rig.lcctl(&["set", "barrier_deadline_ms", "soon", "--cache", "3"])
        .fails(2, "takes a number");
    rig.lcctl(&["set", "allow_migrate", "2", "--cache", "3"])
        .fails(2, "takes 0 or 1");
    rig.lcctl(&["set", "frobnicate", "1", "--cache", "3"])
        .fails(2, "unknown cache knob");
    rig.lcctl(&["get", "migrate_threshold", "--cache", "3"])
        .fails(2, "use --device ID");
    rig.lcctl(&["get", "allow_migrate", "--device", "3"])
        .fails(2, "use --cache ID");
    rig.lcctl(&["get", "--cache", "8"]).fails(3, "no cache 8");
    rig.lcctl(&["set", "update_interval", "5", "--cache", "8"])
        .fails(3, "no cache 8");
    let knobs = rig.lcctl(&["--json", "get", "--cache", "3"]).json()["knobs"].clone();
    assert_eq!(knobs["barrier_deadline_ms"], 7);
    assert_eq!(knobs["nr_max_batched_migration"], 8);
    assert_eq!(knobs["allow_migrate"], 0);

    // actions on the cache
    assert_eq!(
        rig.lcctl(&["--json", "flush", "3"]).json(),
        serde_json::json!({"flushed_cache": 3})
    );
    assert_eq!(
        rig.lcctl(&["--json", "commit-super-block", "3"]).json(),
        serde_json::json!({"committed_cache": 3})
    );
    assert_eq!(
        rig.lcctl(&["--json", "clear-stat", "3"]).json(),
        serde_json::json!({"cleared_cache": 3})
    );
    rig.lcctl(&["flush", "8"]).fails(3, "no cache 8");
    rig.lcctl(&["commit-super-block", "8"])
        .fails(3, "no cache 8");
    rig.lcctl(&["clear-stat", "8"])
        .fails(3, "cache 8 is not resumed");

    // free
    rig.lcctl(&["free", "8"]).fails(3, "cache 8 is not resumed");
    assert_eq!(
        rig.lcctl(&["--json", "free", "3"]).json(),
        serde_json::json!({"freed_cache": 3})
    );
    assert!(cache_ids(&rig).is_empty());
    rig.lcctl(&["free", "3"]).fails(3, "");
    assert_eq!(
        rig.lcctl(&["status"]).ok().trim(),
        "no caches (format a cache device with `lcctl format PATH`, then `lcctl resume PATH --id ID`)"
    );

    // a freed cache can be resumed again, under another id
    let j = rig.lcctl(&["--json", "resume", &cache, "--id", "5"]).json();
    assert_eq!(j["id"], 5);
}

#[test]
fn switch_to_selects_the_cache_for_later_commands() {
    let rig = Rig::start();
    let files = tempfile::tempdir().unwrap();
    let cache = sparse(files.path(), "cache.img", CACHE_BYTES);
    rig.lcctl(&["format", &cache]).ok();

    // nothing selected: commands without an id say how to give one
    for args in [
        vec!["resume", cache.as_str()],
        vec!["free"],
        vec!["clear-stat"],
        vec!["flush"],
        vec!["commit-super-block"],
        vec!["get"],
        vec!["set", "update_interval", "2"],
    ] {
        rig.lcctl(&args).fails(2, "lcctl switch-to ID");
    }
    assert!(cache_ids(&rig).is_empty(), "nothing happened");

    let out = rig.lcctl(&["switch-to", "6"]);
    assert!(out.ok().contains("not resumed yet"), "{out:?}");
    assert_eq!(
        rig.lcctl(&["--json", "switch-to", "6"]).json(),
        serde_json::json!({"selected_cache": 6})
    );
    let j = rig.lcctl(&["--json", "resume", &cache]).json();
    assert_eq!(j["id"], 6);
    assert_eq!(
        rig.lcctl(&["switch-to", "6"]).ok().trim(),
        "selected cache 6"
    );
    rig.lcctl(&["set", "update_interval", "2"]).ok();
    assert_eq!(rig.lcctl(&["get", "update_interval"]).ok().trim(), "2");
    assert_eq!(
        rig.lcctl(&["get", "update_interval", "--cache", "6"])
            .ok()
            .trim(),
        "2"
    );
    rig.lcctl(&["flush"]).ok();
    rig.lcctl(&["commit-super-block"]).ok();
    rig.lcctl(&["clear-stat"]).ok();
    // an explicit id wins over the selection
    rig.lcctl(&["flush", "7"]).fails(3, "no cache 7");
    assert_eq!(
        rig.lcctl(&["--json", "free"]).json(),
        serde_json::json!({"freed_cache": 6})
    );
    assert!(cache_ids(&rig).is_empty());

    // ids out of range are usage errors from the parser
    for args in [
        vec!["switch-to", "0"],
        vec!["switch-to", "256"],
        vec!["free", "x"],
    ] {
        let r = rig.lcctl(&args);
        assert_eq!(r.code, 2, "{r:?}");
        assert!(r.stderr.contains("error:"), "{r:?}");
    }
}

#[test]
fn unreachable_daemon_says_how_to_start_it() {
    let rig = Rig::bus_only();
    for args in [vec!["list"], vec!["status"], vec!["switch-to", "1"]] {
        rig.lcctl(&args).fails(
            7,
            &format!(
                "nobody owns org.lc.Lcd1 on the given bus; start it with `lcd --address {}`",
                rig.address()
            ),
        );
    }
    let missing = format!("unix:path={}/no-bus", rig.dir().display());
    let r = rig.lcctl(&["--bus", &missing, "list"]);
    r.fails(7, "cannot connect to the");
    rig.lcctl(&["--bus", "nonsense", "list"])
        .fails(2, "not system, session or a D-Bus address");
    // --json: the error is a JSON document too
    let r = rig.lcctl(&["--json", "list"]);
    assert_eq!(r.code, 7);
    let doc: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc["error"]["kind"], "unreachable");
    assert!(doc["error"]["message"]
        .as_str()
        .unwrap()
        .contains("start it"));
}

#[test]
fn users_other_than_root_may_read_but_not_change() {
    if !common::is_root() {
        eprintln!("skipped: needs root to run lcctl as another user");
        return;
    }
    let rig = Rig::start();
    let files = tempfile::tempdir().unwrap();
    let cache = sparse(files.path(), "cache.img", CACHE_BYTES);
    let other = sparse(files.path(), "other.img", CACHE_BYTES);
    rig.lcctl(&["format", &cache]).ok();
    rig.lcctl(&["resume", &cache, "--id", "2"]).ok();
    let before = std::fs::read(&other).unwrap();

    rig.lcctl_as_nobody(&["format", &other])
        .fails(5, "run the command with sudo");
    assert!(std::fs::read(&other).unwrap() == before, "nothing written");
    rig.lcctl_as_nobody(&["resume", &other, "--id", "3"])
        .fails(5, "sudo");
    rig.lcctl_as_nobody(&["set", "barrier_deadline_ms", "9", "--cache", "2"])
        .fails(5, "sudo");
    rig.lcctl_as_nobody(&["flush", "2"]).fails(5, "sudo");
    rig.lcctl_as_nobody(&["commit-super-block", "2"])
        .fails(5, "sudo");
    rig.lcctl_as_nobody(&["free", "2"]).fails(5, "sudo");
    rig.lcctl_as_nobody(&["clear-stat", "2"]).fails(5, "sudo");
    assert_eq!(cache_ids(&rig), [2], "still there");
    assert_eq!(
        rig.lcctl(&["get", "barrier_deadline_ms", "--cache", "2"])
            .ok()
            .trim(),
        "3",
        "unchanged"
    );

    // reading is open
    assert_eq!(
        rig.lcctl_as_nobody(&["--json", "list"]).json()["caches"][0]["id"],
        2
    );
    assert!(rig
        .lcctl_as_nobody(&["status", "2"])
        .ok()
        .contains("nr_segments"));
    assert_eq!(
        rig.lcctl_as_nobody(&["get", "barrier_deadline_ms", "--cache", "2"])
            .ok()
            .trim(),
        "3"
    );
}

/// What lcctl meets when the daemon on the bus is not the lcd it was
/// built with: a Manager of another API version (refused before any
/// call), or one of the right version that lacks a call. lcd itself cannot
/// be made to be another version, so the test serves such a Manager on the
/// bus: the only part of it lcctl sees is `Version`.
struct OtherManager {
    version: u32,
}

#[zbus::interface(name = "org.lc.Lcd1.Manager")]
impl OtherManager {
    #[zbus(property)]
    fn version(&self) -> u32 {
        self.version
    }
}

#[test]
fn a_daemon_of_another_api_version_is_refused() {
    let rig = Rig::bus_only();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    for (version, code, text) in [
        (
            lc_proto::API_VERSION + 1,
            9,
            format!(
                "lcd speaks API version {}, this lcctl speaks {}",
                lc_proto::API_VERSION + 1,
                lc_proto::API_VERSION
            ),
        ),
        (
            lc_proto::API_VERSION,
            9,
            "lcd does not offer this".to_string(),
        ),
    ] {
        let conn = rt.block_on(async {
            zbus::connection::Builder::address(rig.address())
                .serve_at(lc_proto::MANAGER_PATH, OtherManager { version })
                .name(lc_proto::BUS_NAME)
                .build()
                .await
                .unwrap()
        });
        rig.lcctl(&["list"]).fails(code, &text);
        rig.lcctl(&["format", "/nonexistent"]).fails(code, &text);
        rt.block_on(conn.close()).unwrap();
    }
}

#[test]
fn a_cache_lcd_could_not_bring_back_is_shown_failed_and_can_be_freed() {
    let mut rig = Rig::start();
    let files = tempfile::tempdir().unwrap();
    let cache = sparse(files.path(), "cache.img", CACHE_BYTES);
    rig.lcctl(&["format", &cache]).ok();
    rig.lcctl(&["resume", &cache, "--id", "4"]).ok();
    rig.stop_lcd();
    std::fs::remove_file(&cache).unwrap();
    rig.start_lcd();

    let text = rig.lcctl(&["list"]).ok().to_string();
    let row = text.lines().nth(1).unwrap();
    assert!(
        row.starts_with("cache") && row.contains(cache.as_str()) && row.contains("failed:"),
        "{text}"
    );
    let j = rig.lcctl(&["--json", "status"]).json();
    let c = &j["caches"][0];
    assert_eq!(c["id"], 4);
    assert!(c["state"].as_str().unwrap().starts_with("failed:"), "{c}");
    assert_eq!(c["status"], Value::Null);
    assert_eq!(c["knobs"], Value::Null);
    let text = rig.lcctl(&["status", "4"]).ok().to_string();
    assert!(
        text.starts_with(&format!("cache 4  {cache}  failed:")),
        "{text}"
    );
    assert!(!text.contains("nr_segments"), "{text}");
    rig.lcctl(&["flush", "4"]).fails(3, "no cache 4");
    assert_eq!(
        rig.lcctl(&["--json", "free", "4"]).json(),
        serde_json::json!({"freed_cache": 4})
    );
    assert!(cache_ids(&rig).is_empty());
}

#[test]
fn an_io_error_of_lcd_has_its_own_exit_status() {
    let rig = Rig::start();
    let files = tempfile::tempdir().unwrap();
    let cache = sparse(files.path(), "cache.img", CACHE_BYTES);
    rig.lcctl(&["format", &cache]).ok();
    // lcd can no longer record its configuration: its state directory is
    // now a file
    let state = rig.dir().join("state");
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::write(&state, b"not a directory").unwrap();
    rig.lcctl(&["resume", &cache, "--id", "2"])
        .fails(6, "will not survive a restart");
    rig.lcctl(&["set", "update_interval", "9", "--cache", "2"])
        .fails(6, "will not survive a restart");
    let e = rig.lcctl(&["--json", "set", "update_interval", "9", "--cache", "2"]);
    assert_eq!(e.code, 6);
    let doc: Value = serde_json::from_str(&e.stdout).unwrap();
    assert_eq!(doc["error"]["kind"], "io");
}
