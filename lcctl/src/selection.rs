//! The cache chosen with `lcctl switch-to`, remembered between runs.
//!
//! lcd keeps lc-mgr's cursor per D-Bus client, and every lcctl run is a new
//! client, so the cursor would die with each run. lcctl therefore writes the
//! chosen id to a small file in the runtime directory (a tmpfs, forgotten at
//! reboot, as dm-lc's cursor was) and, when a command is given no id, sends
//! `SwitchTo(id)` before the call on the same connection.
//!
//! The file is `/run/lcctl/selected-cache` for root, whatever the
//! environment says (a root shell's environment may come from a user, as
//! with `sudo -E`); for other users `$LCCTL_RUNTIME_DIR/selected-cache`
//! when that variable is set, else `$XDG_RUNTIME_DIR/lcctl/selected-cache`.
//! The directory must be the user's own, a real directory (not a symlink)
//! that nobody else may write; it is created mode 0700. The file is written
//! as a new file (`O_CREAT | O_EXCL | O_NOFOLLOW`, mode 0600) renamed into
//! place, and read only if it is a small regular file of the user's, never
//! through a symlink and never waiting on a FIFO. (Messages are escaped
//! by [`Failure::new`].)

use std::fs::{Metadata, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Exit, Failure, Result};

/// The file's name in the runtime directory.
const FILE_NAME: &str = "selected-cache";

fn euid() -> u32 {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

/// The runtime directory for a user `uid` with environment `var`.
fn dir_for(uid: u32, var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    if uid == 0 {
        Some(PathBuf::from("/run/lcctl"))
    } else if let Some(d) = var("LCCTL_RUNTIME_DIR") {
        Some(PathBuf::from(d))
    } else {
        Some(PathBuf::from(var("XDG_RUNTIME_DIR")?).join("lcctl"))
    }
}

/// Where the selection is kept, if there is a place for it.
pub fn file() -> Option<PathBuf> {
    Some(dir_for(euid(), |v| std::env::var_os(v))?.join(FILE_NAME))
}

/// What is wrong with `m` as something lcctl of user `uid` wrote or owns,
/// if anything.
fn untrusted(m: &Metadata, uid: u32, dir: bool) -> Option<String> {
    let t = m.file_type();
    if t.is_symlink() {
        return Some("a symlink".into());
    }
    if dir && !t.is_dir() {
        return Some("not a directory".into());
    }
    if !dir && !t.is_file() {
        return Some(if t.is_dir() {
            "a directory".into()
        } else {
            "not a regular file (a FIFO, socket or device)".into()
        });
    }
    if m.uid() != uid {
        return Some(format!("owned by user {}, not {uid}", m.uid()));
    }
    if m.mode() & 0o022 != 0 {
        return Some(format!(
            "writable by others (mode {:04o})",
            m.mode() & 0o7777
        ));
    }
    if !dir && m.nlink() != 1 {
        return Some(format!("a file with {} hard links", m.nlink()));
    }
    None
}

/// Opens the runtime directory `dir` (creating it 0700 if missing) and
/// checks that it is the user's own; never follows a symlink there.
fn open_dir(dir: &Path) -> std::io::Result<()> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::ENOTDIR) {
                std::io::Error::other("it is a symlink or not a directory; remove it")
            } else {
                e
            }
        })?;
    if let Some(why) = untrusted(&f.metadata()?, euid(), true) {
        return Err(std::io::Error::other(format!(
            "it is {why}; lcctl keeps its selection only in a directory of your own"
        )));
    }
    Ok(())
}

/// Writes `text` to `path` atomically: a new file next to it (never an
/// existing one, never through a symlink), renamed over it.
fn write_new(path: &Path, text: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(".{FILE_NAME}.{}.{nanos}.tmp", std::process::id()));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    let done = f.write_all(text).and_then(|()| std::fs::rename(&tmp, path));
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

/// Remembers `id` as the selected cache.
pub fn save(id: u8) -> Result<()> {
    let path = file().ok_or_else(|| {
        Failure::new(
            Exit::Failure,
            "no runtime directory to remember the selection in (XDG_RUNTIME_DIR is not set): give cache ids explicitly",
        )
    })?;
    let fail = |e: std::io::Error| {
        Failure::new(
            Exit::Io,
            format!(
                "cannot remember the selection in {}: {e}; give cache ids explicitly",
                path.display()
            ),
        )
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    open_dir(dir).map_err(|e| {
        Failure::new(
            Exit::Io,
            format!(
                "cannot remember the selection in {}: {e}; give cache ids explicitly",
                dir.display()
            ),
        )
    })?;
    write_new(&path, format!("{id}\n").as_bytes()).map_err(fail)
}

/// The selected cache, if one was chosen. A file there that lcctl did not
/// write (a symlink, a FIFO, another user's) is an error, not read.
pub fn load() -> Result<Option<u8>> {
    let Some(path) = file() else { return Ok(None) };
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(not_ours(&path, "a symlink"));
        }
        Err(e) => {
            return Err(Failure::new(
                Exit::Io,
                format!(
                    "cannot read the selected cache from {}: {e}; give the cache id",
                    path.display()
                ),
            ))
        }
    };
    let m = f
        .metadata()
        .map_err(|e| Failure::new(Exit::Io, format!("cannot look at {}: {e}", path.display())))?;
    if let Some(why) = untrusted(&m, euid(), false) {
        return Err(not_ours(&path, &why));
    }
    let mut text = String::new();
    let _ = f.take(64).read_to_string(&mut text);
    Ok(text.trim().parse::<u8>().ok().filter(|&id| id != 0))
}

fn not_ours(path: &Path, why: &str) -> Failure {
    let p = path.display();
    Failure::new(
        Exit::Failure,
        format!(
            "{p} is {why}, not a file lcctl wrote, so lcctl ignores it: remove it (rm {p}) and \
             select the cache again with `lcctl switch-to ID`, or give the cache id"
        ),
    )
}

/// `id` if given, else the selected cache, else a usage error.
pub fn cache_or_selected(id: Option<u8>) -> Result<u8> {
    if let Some(id) = id {
        return Ok(id);
    }
    load()?.ok_or_else(|| {
        Failure::new(
            Exit::Usage,
            "no cache given and none selected: give the cache id, or select one with `lcctl switch-to ID`",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn root_ignores_runtime_dir_overrides() {
        let env = |v: &str| match v {
            "LCCTL_RUNTIME_DIR" => Some(OsString::from("/home/mallory/x")),
            "XDG_RUNTIME_DIR" => Some(OsString::from("/run/user/1000")),
            _ => None,
        };
        assert_eq!(dir_for(0, env), Some(PathBuf::from("/run/lcctl")));
        assert_eq!(dir_for(1000, env), Some(PathBuf::from("/home/mallory/x")));
        let xdg_only = |v: &str| (v == "XDG_RUNTIME_DIR").then(|| OsString::from("/run/user/1000"));
        assert_eq!(
            dir_for(1000, xdg_only),
            Some(PathBuf::from("/run/user/1000/lcctl"))
        );
        assert_eq!(dir_for(1000, |_| None), None);
    }

    #[test]
    fn the_file_is_replaced_never_written_through_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let path = t.path().join(FILE_NAME);
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        // the fixed temporary name an older lcctl used
        std::os::unix::fs::symlink(&victim, t.path().join("selected-cache.tmp")).unwrap();
        write_new(&path, b"6\n").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        let m = std::fs::symlink_metadata(&path).unwrap();
        assert!(m.file_type().is_file());
        assert_eq!(m.mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"6\n");
        let left: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp") && n.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_runtime_directory_others_may_write_or_a_symlink_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("lcctl");
        open_dir(&d).unwrap();
        assert_eq!(
            std::fs::metadata(&d).unwrap().mode() & 0o7777,
            0o700,
            "created 0700"
        );
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = open_dir(&d).unwrap_err();
        assert!(e.to_string().contains("writable by others"), "{e}");
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        let e = open_dir(&link).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
    }

    #[test]
    fn planted_files_are_not_trusted() {
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is NUL-terminated and outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let m = std::fs::symlink_metadata(&fifo).unwrap();
        assert!(untrusted(&m, euid(), false).unwrap().contains("FIFO"));
        let f = t.path().join("f");
        std::fs::write(&f, b"3\n").unwrap();
        std::fs::hard_link(&f, t.path().join("g")).unwrap();
        let m = std::fs::symlink_metadata(&f).unwrap();
        assert_eq!(
            untrusted(&m, euid(), false).as_deref(),
            Some("a file with 2 hard links")
        );
        assert!(untrusted(&m, euid() + 1, false)
            .unwrap()
            .contains("owned by user"));
    }
}
