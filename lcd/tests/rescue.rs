//! The offline rescue tools, run as a user would: the real `lcd` binary on
//! cache and backing files written by the engine.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use lc_engine::{format_cache_device, Cache, CacheOptions, FileDevice};

const MIB: u64 = 1 << 20;

fn lcd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lcd"))
        .args(args)
        .output()
        .expect("run lcd")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn file(path: &Path, size: u64) {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
}

fn block(tag: u8) -> Vec<u8> {
    vec![tag; 4096]
}

/// A cache file with dirty data for device 1 (lines 0..200 and line 5000).
fn dirty_cache(dir: &Path) -> (String, String) {
    let cache = dir.join("cache.img");
    let backing = dir.join("backing.img");
    file(&cache, 8 * MIB);
    file(&backing, 64 * MIB);
    let dev = Arc::new(FileDevice::open(&cache).unwrap());
    format_cache_device(&*dev, false).unwrap();
    let c = Cache::resume(1, dev, CacheOptions { pool_segments: 2 }).unwrap();
    c.attach_device(1, Arc::new(FileDevice::open(&backing).unwrap()))
        .unwrap();
    for l in 0..200u64 {
        c.write(1, l * 8, &block(l as u8 + 1)).unwrap();
    }
    c.write(1, 5000 * 8, &block(7)).unwrap();
    c.shutdown().unwrap();
    (cache.display().to_string(), backing.display().to_string())
}

#[test]
fn check_dump_and_writeback_of_a_dirty_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, backing) = dirty_cache(dir.path());

    let o = lcd(&["check", &cache, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["dirty_lines"]["1"], 201);
    assert_eq!(v["clean"], false);
    assert_eq!(v["damaged"], false);

    let o = lcd(&["dump", &cache]);
    assert!(
        o.status.success() && text(&o).contains("superblock: version 1"),
        "{}",
        text(&o)
    );

    // refusals change nothing
    let o = lcd(&["writeback", &cache]);
    assert_eq!(o.status.code(), Some(2), "clap usage error: {}", text(&o));
    let other = dir.path().join("other.img");
    file(&other, 64 * MIB);
    let o = lcd(&[
        "writeback",
        &cache,
        "--backing",
        &format!("2={}", other.display()),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("device id(s) 1"), "{}", text(&o));
    let small = dir.path().join("small.img");
    file(&small, MIB);
    let o = lcd(&[
        "writeback",
        &cache,
        "--backing",
        &format!("1={}", small.display()),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("right device"), "{}", text(&o));
    let o = lcd(&["writeback", &cache, "--backing", "1"]);
    assert!(text(&o).contains("ID=PATH"), "{}", text(&o));
    let o = lcd(&["check", &cache, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["dirty_lines"]["1"], 201, "the refusals wrote nothing");

    let o = lcd(&["writeback", &cache, "--backing", &format!("1={backing}")]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("written back"), "{}", text(&o));
    let raw = std::fs::read(&backing).unwrap();
    for l in 0..200usize {
        assert!(
            raw[l * 4096..(l + 1) * 4096]
                .iter()
                .all(|&b| b == l as u8 + 1),
            "line {l}"
        );
    }
    assert!(raw[5000 * 4096..5001 * 4096].iter().all(|&b| b == 7));
    let o = lcd(&["check", &cache]);
    assert!(
        o.status.success() && text(&o).contains("state: clean"),
        "{}",
        text(&o)
    );
}

#[test]
fn check_reports_damage_and_bad_paths() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, _) = dirty_cache(dir.path());
    // damage the data of the one segment the engine wrote (slot 0)
    let mut img = std::fs::read(&cache).unwrap();
    img[(MIB + 4096) as usize] ^= 0xFF;
    std::fs::write(&cache, &img).unwrap();
    let o = lcd(&["check", &cache]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("damaged: segment 1"), "{}", text(&o));

    let o = lcd(&["check", "/nonexistent/cache.img"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("cannot open /nonexistent/cache.img"),
        "{}",
        text(&o)
    );
    let blank = dir.path().join("blank.img");
    file(&blank, 4 * MIB);
    let o = lcd(&["check", &blank.display().to_string()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("holds no lc cache"), "{}", text(&o));
}

#[test]
fn version_and_help() {
    assert!(lcd(&["--version"]).status.success());
    let o = lcd(&["--help"]);
    assert!(
        o.status.success() && text(&o).contains("writeback"),
        "{}",
        text(&o)
    );
}
