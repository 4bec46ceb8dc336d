//! What lcctl meets that it did not make: a runtime directory prepared by
//! someone else, and control characters in paths and in lcd's messages.
//! Run as root (as in CI) for the runtime-directory checks.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use common::{is_root, sparse, Rig, CACHE_BYTES};

#[test]
fn root_keeps_its_selection_in_run_lcctl_and_never_writes_through_a_symlink() {
    if !is_root() {
        eprintln!("skipped: needs root (root's selection lives in /run/lcctl)");
        return;
    }
    let rig = Rig::start();
    let files = tempfile::tempdir().unwrap();
    let cache = sparse(files.path(), "cache.img", CACHE_BYTES);
    rig.lcctl(&["format", &cache]).ok();
    let victim = files.path().join("victim");
    std::fs::write(&victim, b"keep me").unwrap();

    // what was planted where root's lcctl writes (as an older lcctl would
    // have written: a fixed temporary name, followed)
    let dir = rig.root_run_dir().join("lcctl");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("selected-cache");
    std::os::unix::fs::symlink(&victim, &file).unwrap();
    std::os::unix::fs::symlink(&victim, dir.join("selected-cache.tmp")).unwrap();

    // a symlink in place of the selection is not read
    rig.lcctl(&["flush"])
        .fails(1, "is a symlink, not a file lcctl wrote");
    rig.lcctl(&["switch-to", "6"]).ok();
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    let m = std::fs::symlink_metadata(&file).unwrap();
    assert!(
        m.file_type().is_file(),
        "the symlink was replaced by a file"
    );
    assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o600));
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), "6");
    // LCCTL_RUNTIME_DIR (set by the rig) is ignored for root
    assert!(!rig.dir().join("lcctl").exists());
    let j = rig.lcctl(&["--json", "resume", &cache]).json();
    assert_eq!(j["id"], 6, "the selection was used");

    // a FIFO in its place: an error at once, never a hang
    std::fs::remove_file(&file).unwrap();
    let c = std::ffi::CString::new(file.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is NUL-terminated and outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    rig.lcctl(&["flush"]).fails(1, "not a file lcctl wrote");
    assert!(std::fs::symlink_metadata(&file)
        .unwrap()
        .file_type()
        .is_fifo());

    // a runtime directory others may write is refused
    std::fs::remove_file(&file).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    rig.lcctl(&["switch-to", "6"])
        .fails(6, "writable by others");
    assert!(!file.exists());
}

#[test]
fn control_characters_from_paths_and_lcd_are_escaped() {
    let rig = Rig::start();
    let files = tempfile::tempdir().unwrap();
    // a cache file whose name moves the cursor and forges a line
    let name = "c\x1b[2K\rforged\nline.img";
    let cache = sparse(files.path(), name, CACHE_BYTES);
    let out = rig.lcctl(&["format", &cache]);
    let text = out.ok();
    assert!(!text.contains('\x1b') && !text.contains('\r'), "{out:?}");
    assert!(text.contains(r"c\u{1b}[2K\rforged\nline.img"), "{out:?}");
    assert_eq!(text.lines().count(), 1, "{out:?}");
    rig.lcctl(&["resume", &cache, "--id", "3"]).ok();
    for args in [vec!["list"], vec!["status"]] {
        let out = rig.lcctl(&args);
        let text = out.ok();
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{args:?}: {out:?}"
        );
        assert!(text.contains(r"\u{1b}[2K\rforged\nline.img"), "{out:?}");
        assert!(!text.lines().any(|l| l.starts_with("line.img")), "{out:?}");
    }
    // JSON carries the name exactly (JSON escapes it)
    let j = rig.lcctl(&["--json", "list"]).json();
    assert_eq!(j["caches"][0]["path"], cache.as_str());
    // lcd's error message names the path: escaped too, still one line
    let missing = files.path().join("no\x1b]0;title\x07such");
    let out = rig.lcctl(&["resume", missing.to_str().unwrap(), "--id", "4"]);
    assert_ne!(out.code, 0);
    assert!(
        !out.stderr.contains('\x1b') && !out.stderr.contains('\x07'),
        "{out:?}"
    );
    assert!(out.stderr.contains(r"no\u{1b}]0;title\u{7}such"), "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    // and what the parser echoes back
    let out = rig.lcctl(&["switch-to", "\x1b[31m7"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(!out.stderr.contains('\x1b'), "{out:?}");
}
