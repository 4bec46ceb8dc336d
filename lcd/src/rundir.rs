//! Directories lcd keeps under `/run` and the small files in them, handled
//! by file descriptor: never through a symlink, never opening a FIFO, never
//! trusting a file another user could have written.
//!
//! Two directories are involved. lcd's own run directory (`/run/lc`) holds
//! its records of the ublk devices it serves (also the udev markers) and
//! the write ledgers. `/run/ublksrvd` is libublk's: libublk 0.4.8 creates
//! it mode 0777 (no sticky bit) when it is missing, writes
//! `/run/ublksrvd/NNNN.json` for every device it starts or recovers with
//! `File::create` (which follows symlinks and truncates) and chmods it
//! through the path; `UblkCtrl::new_simple` and recovery open and read the
//! same file to its end. In a directory another user can write, that user
//! could aim root's write at any disk or file, or hang lcd with a FIFO. So
//! lcd makes both directories its own — owned by lcd's user (root), mode
//! 0755 — with [`Dir::open`] before libublk touches them, and removes with
//! [`Dir::remove_untrusted`] any entry libublk is about to use that is not
//! a plain, single-link file of lcd's user. Records are written atomically
//! ([`Dir::write_record`]: a new file, `O_EXCL | O_NOFOLLOW`, then a
//! rename) and read back only when they pass the same test
//! ([`Dir::read_record`]). The names of lcd's files in its run directory
//! are in [`names`], and nowhere else.

use std::ffi::{CStr, CString};
use std::fs::{File, Metadata, Permissions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The names of lcd's files in its run directory (`/run/lc`), in one place.
pub mod names {
    /// lcd's record that it serves ublk device `id`; also the marker the
    /// udev rule looks for before it adds `/dev/lc/<id>`.
    pub fn server_record(id: u8) -> String {
        format!("ublkb{id}")
    }

    /// The directory of the NBD frontend's sockets (`frontend::nbd`).
    pub const NBD_DIR: &str = "nbd";

    /// The write ledger of device `id` (see `ledger`).
    pub fn write_ledger(id: u8) -> String {
        format!("ublkb{id}.writes")
    }
}

/// The user and group that own lcd's directories and files: lcd's own
/// (root in production).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

impl Owner {
    /// The effective user and group of this process.
    pub fn current() -> Owner {
        // SAFETY: geteuid and getegid take no arguments and cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        Owner { uid, gid }
    }
}

/// Why a run directory or a file in it cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    /// The path exists but is no directory (a symlink, a file, a FIFO…).
    #[error(
        "{path} is {kind}, not a directory; lcd neither follows nor replaces it: \
         remove it (`rm {path}`) and restart lcd"
    )]
    NotADirectory {
        /// The directory lcd wanted.
        path: PathBuf,
        /// What is there instead.
        kind: &'static str,
    },
    /// Someone else can rename or replace entries of the parent directory.
    #[error(
        "{parent} (the parent of {path}) is writable by other users (mode {mode:04o}, owner \
         {uid}): anyone could swap {path}; make {parent} root's and not group- or \
         world-writable, or point lcd elsewhere"
    )]
    ParentWritable {
        /// The directory lcd wanted.
        path: PathBuf,
        /// Its parent.
        parent: PathBuf,
        /// The parent's mode.
        mode: u32,
        /// The parent's owner.
        uid: u32,
    },
    /// The directory belongs to someone else and lcd may not change that
    /// (lcd.service keeps no `CAP_CHOWN`).
    #[error(
        "{path} belongs to user {uid} (group {gid}) and lcd cannot make it its own; make it \
         root's (`chown root:root {path} && chmod 0755 {path}`) or remove it, then restart lcd"
    )]
    WrongOwner {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// Its group.
        gid: u32,
        /// Why the change failed.
        #[source]
        source: std::io::Error,
    },
    /// A file lcd would read is not one lcd wrote.
    #[error("{path} is {why}, not a file lcd wrote; lcd ignores it and removes it where it can")]
    Untrusted {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A system call failed.
    #[error("{what} {path} failed")]
    Io {
        /// What lcd was doing.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Why `m` (the metadata of an open file, never of a path) is not a plain
/// file of user `uid`'s: regular, owned by `uid`, one link, not writable by
/// group or others. Shared by the run directory's records and the ledger.
pub fn not_owned_plain_file(m: &Metadata, uid: u32) -> Option<String> {
    if !m.file_type().is_file() {
        Some(kind(m).to_string())
    } else if m.uid() != uid {
        Some(format!("a file of user {}", m.uid()))
    } else if m.nlink() != 1 {
        Some(format!("a file with {} hard links", m.nlink()))
    } else if m.mode() & 0o022 != 0 {
        Some(format!(
            "a file others may write (mode {:04o})",
            m.mode() & 0o7777
        ))
    } else {
        None
    }
}

/// An error with its causes, each once (the engine's printer, for rundir's errors too).
pub use lc_engine::error::describe;

/// What kind of file `m` describes, for messages.
fn kind(m: &Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_symlink() {
        "a symlink"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_char_device() {
        "a character device"
    } else {
        "a regular file"
    }
}

fn c_name(name: &str) -> std::io::Result<CString> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    CString::new(name).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

/// `openat(dir, name, flags | O_CLOEXEC, mode)` as a [`File`].
fn open_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> std::io::Result<File> {
    // SAFETY: `name` is NUL-terminated and outlives the call; no other
    // pointer is passed; the result is checked below.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Opens `path` itself (a symlink stays a symlink) to look at it; nothing
/// is opened for reading or writing, so FIFOs and devices do nothing.
fn look_at(dir: BorrowedFd<'_>, name: &CStr) -> std::io::Result<Metadata> {
    open_at(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0)?.metadata()
}

/// A directory lcd owns, held open.
#[derive(Debug)]
pub struct Dir {
    dir: File,
    path: PathBuf,
    owner: Owner,
}

/// The most a record may hold.
pub const RECORD_LIMIT: u64 = 64 << 10;

impl Dir {
    /// Opens directory `path`, creating it if it is missing, and makes it
    /// `owner`'s with mode 0755, fixing owner and mode of an existing one
    /// (a warning says so). Refuses a `path` that is not a directory (never
    /// following a symlink there) and one whose parent other users can
    /// write. After a fix, every entry the directory held is suspect:
    /// callers remove what they are about to use with
    /// [`remove_untrusted`](Self::remove_untrusted).
    pub fn open(path: &Path, owner: Owner) -> Result<Dir, RunDirError> {
        let io = |what, source| RunDirError::Io {
            what,
            path: path.to_path_buf(),
            source,
        };
        let (parent, name) = match (path.parent(), path.file_name()) {
            (Some(p), Some(n)) if !p.as_os_str().is_empty() => (p, n),
            _ => return Err(io("using", std::io::Error::from_raw_os_error(libc::EINVAL))),
        };
        let name = name
            .to_str()
            .ok_or_else(|| io("using", std::io::Error::from_raw_os_error(libc::EINVAL)))
            .and_then(|n| c_name(n).map_err(|e| io("using", e)))?;
        let parent_dir = File::open(parent).map_err(|e| RunDirError::Io {
            what: "opening",
            path: parent.to_path_buf(),
            source: e,
        })?;
        let pm = parent_dir.metadata().map_err(|e| RunDirError::Io {
            what: "looking at",
            path: parent.to_path_buf(),
            source: e,
        })?;
        let trusted_owner = pm.uid() == 0 || pm.uid() == owner.uid;
        if !pm.is_dir() || !trusted_owner || pm.mode() & 0o022 != 0 {
            return Err(RunDirError::ParentWritable {
                path: path.to_path_buf(),
                parent: parent.to_path_buf(),
                mode: pm.mode() & 0o7777,
                uid: pm.uid(),
            });
        }
        let pfd = parent_dir.as_fd();
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_NONBLOCK;
        let dir = match open_at(pfd, &name, flags, 0) {
            Ok(d) => d,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                // SAFETY: `name` is NUL-terminated and outlives the call.
                match check(unsafe { libc::mkdirat(pfd.as_raw_fd(), name.as_ptr(), 0o755) }) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(io("creating", e)),
                }
                open_at(pfd, &name, flags, 0).map_err(|e| not_a_dir(pfd, &name, path, e))?
            }
            Err(e) => return Err(not_a_dir(pfd, &name, path, e)),
        };
        let m = dir.metadata().map_err(|e| io("looking at", e))?;
        let mut fixed = Vec::new();
        if m.uid() != owner.uid || m.gid() != owner.gid {
            std::os::unix::fs::fchown(&dir, Some(owner.uid), Some(owner.gid)).map_err(|e| {
                RunDirError::WrongOwner {
                    path: path.to_path_buf(),
                    uid: m.uid(),
                    gid: m.gid(),
                    source: e,
                }
            })?;
            fixed.push(format!(
                "owner {}:{} → {}:{}",
                m.uid(),
                m.gid(),
                owner.uid,
                owner.gid
            ));
        }
        if m.mode() & 0o7777 != 0o755 {
            dir.set_permissions(Permissions::from_mode(0o755))
                .map_err(|e| io("changing the mode of", e))?;
            fixed.push(format!("mode {:04o} → 0755", m.mode() & 0o7777));
        }
        if !fixed.is_empty() {
            tracing::warn!(
                "{} was not lcd's alone ({}); fixed, and lcd removes every entry it uses there \
                 that it did not write",
                path.display(),
                fixed.join(", ")
            );
        }
        Ok(Dir {
            dir,
            path: path.to_path_buf(),
            owner,
        })
    }

    /// The directory's path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn entry(&self, name: &str) -> Result<CString, RunDirError> {
        c_name(name).map_err(|e| RunDirError::Io {
            what: "naming",
            path: self.path.join(name),
            source: e,
        })
    }

    /// Why `m` is not a file of lcd's, if it is not.
    fn untrusted(&self, m: &Metadata) -> Option<String> {
        if let Some(why) = not_owned_plain_file(m, self.owner.uid) {
            Some(why)
        } else if m.size() > RECORD_LIMIT {
            Some(format!("a file of {} bytes", m.size()))
        } else {
            None
        }
    }

    /// Removes entry `name` unless it is absent or a plain file of lcd's
    /// (regular, owned by lcd's user, one link, not writable by others, at
    /// most [`RECORD_LIMIT`] bytes). Symlinks are removed, never followed;
    /// FIFOs are never opened. Returns what was removed.
    pub fn remove_untrusted(&self, name: &str) -> Result<Option<String>, RunDirError> {
        let c = self.entry(name)?;
        let m = match look_at(self.dir.as_fd(), &c) {
            Ok(m) => m,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => {
                return Err(RunDirError::Io {
                    what: "looking at",
                    path: self.path.join(name),
                    source: e,
                })
            }
        };
        let Some(why) = self.untrusted(&m) else {
            return Ok(None);
        };
        let flag = if m.is_dir() { libc::AT_REMOVEDIR } else { 0 };
        // SAFETY: `c` is NUL-terminated and outlives the call.
        check(unsafe { libc::unlinkat(self.dir.as_raw_fd(), c.as_ptr(), flag) }).map_err(|e| {
            RunDirError::Io {
                what: "removing",
                path: self.path.join(name),
                source: e,
            }
        })?;
        tracing::warn!(
            "removed {}: it was {why}, which lcd did not write",
            self.path.join(name).display()
        );
        Ok(Some(why))
    }

    /// Replaces record `name` with `bytes` atomically: a new file (never
    /// an existing one, never through a symlink), synced, renamed over
    /// the old record.
    pub fn write_record(&self, name: &str, bytes: &[u8]) -> Result<(), RunDirError> {
        let io = |what, source| RunDirError::Io {
            what,
            path: self.path.join(name),
            source,
        };
        let target = self.entry(name)?;
        let tmp_name = format!(".{name}.{}.tmp", std::process::id());
        let tmp = self.entry(&tmp_name)?;
        // a temporary file left by this very pid earlier (lcd dies, its pid
        // comes back): it is lcd's own, in lcd's own directory
        // SAFETY: `tmp` is NUL-terminated and outlives the call.
        let _ = unsafe { libc::unlinkat(self.dir.as_raw_fd(), tmp.as_ptr(), 0) };
        let mut f = open_at(
            self.dir.as_fd(),
            &tmp,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            0o644,
        )
        .map_err(|e| io("creating a new", e))?;
        let written = f
            .write_all(bytes)
            .and_then(|()| f.sync_data())
            .map_err(|e| io("writing", e));
        let renamed = written.and_then(|()| {
            // SAFETY: both names are NUL-terminated and outlive the call.
            check(unsafe {
                libc::renameat(
                    self.dir.as_raw_fd(),
                    tmp.as_ptr(),
                    self.dir.as_raw_fd(),
                    target.as_ptr(),
                )
            })
            .map_err(|e| io("renaming a new", e))
        });
        if renamed.is_err() {
            // SAFETY: `tmp` is NUL-terminated and outlives the call.
            let _ = unsafe { libc::unlinkat(self.dir.as_raw_fd(), tmp.as_ptr(), 0) };
        }
        renamed
    }

    /// Record `name`, or `None` if there is none. A record that is not a
    /// plain file of lcd's (see [`remove_untrusted`](Self::remove_untrusted))
    /// is an [`RunDirError::Untrusted`] error and is not read; a FIFO is
    /// never waited on.
    pub fn read_record(&self, name: &str) -> Result<Option<Vec<u8>>, RunDirError> {
        let io = |what, source| RunDirError::Io {
            what,
            path: self.path.join(name),
            source,
        };
        let c = self.entry(name)?;
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
        let f = match open_at(self.dir.as_fd(), &c, flags, 0) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(RunDirError::Untrusted {
                    path: self.path.join(name),
                    why: "a symlink".into(),
                })
            }
            Err(e) => return Err(io("opening", e)),
        };
        let m = f.metadata().map_err(|e| io("looking at", e))?;
        if let Some(why) = self.untrusted(&m) {
            return Err(RunDirError::Untrusted {
                path: self.path.join(name),
                why,
            });
        }
        let mut bytes = Vec::new();
        f.take(RECORD_LIMIT)
            .read_to_end(&mut bytes)
            .map_err(|e| io("reading", e))?;
        Ok(Some(bytes))
    }

    /// Removes entry `name` (a symlink itself, never its target); absent
    /// is fine.
    pub fn remove(&self, name: &str) -> Result<(), RunDirError> {
        let c = self.entry(name)?;
        // SAFETY: `c` is NUL-terminated and outlives the call.
        match check(unsafe { libc::unlinkat(self.dir.as_raw_fd(), c.as_ptr(), 0) }) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(RunDirError::Io {
                what: "removing",
                path: self.path.join(name),
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

/// The error for an `openat(O_DIRECTORY | O_NOFOLLOW)` of `name` that failed.
fn not_a_dir(parent: BorrowedFd<'_>, name: &CStr, path: &Path, e: std::io::Error) -> RunDirError {
    match look_at(parent, name) {
        Ok(m) if !m.is_dir() => RunDirError::NotADirectory {
            path: path.to_path_buf(),
            kind: kind(&m),
        },
        _ => RunDirError::Io {
            what: "opening",
            path: path.to_path_buf(),
            source: e,
        },
    }
}

#[cfg(test)]
mod tests {
    //! On real directories in a temporary directory: what a local user
    //! could plant (symlinks, FIFOs, hard links, wrong modes and owners) is
    //! never followed, opened or trusted.

    use super::*;
    use std::os::unix::fs::symlink;
    use std::time::{Duration, Instant};

    fn mkfifo(p: &Path) {
        let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is NUL-terminated and outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    fn is_root() -> bool {
        Owner::current().uid == 0
    }

    /// Runs `f` on a thread and fails if it does not return soon: a FIFO
    /// opened for reading would block forever.
    fn returns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        let start = Instant::now();
        loop {
            if let Ok(v) = rx.try_recv() {
                return v;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "blocked (a FIFO was opened?)"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_missing_directory_is_created_0755() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("ublksrvd");
        let d = Dir::open(&p, Owner::current()).unwrap();
        assert_eq!(mode(&p), 0o755);
        assert_eq!(d.path(), p);
        // and opened again as it is
        Dir::open(&p, Owner::current()).unwrap();
        assert_eq!(mode(&p), 0o755);
    }

    #[test]
    fn a_world_writable_directory_is_made_0755() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("ublksrvd");
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, Permissions::from_mode(0o1777)).unwrap();
        Dir::open(&p, Owner::current()).unwrap();
        assert_eq!(mode(&p), 0o755);
    }

    #[test]
    fn a_directory_of_another_user_becomes_lcds() {
        if !is_root() {
            eprintln!("skipped: changing a directory's owner needs root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("ublksrvd");
        std::fs::create_dir(&p).unwrap();
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(&p, Permissions::from_mode(0o777)).unwrap();
        Dir::open(&p, Owner::current()).unwrap();
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, 0, 0o755));
    }

    #[test]
    fn a_directory_lcd_cannot_make_its_own_says_what_to_do() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("ublksrvd");
        std::fs::create_dir(&p).unwrap();
        // as if owned by someone else: lcd claims to be another user
        let me = Owner::current();
        let other = Owner {
            uid: me.uid + 1,
            gid: me.gid,
        };
        if me.uid == 0 {
            // root may give it away; make sure the message is right anyway
            let e = RunDirError::WrongOwner {
                path: p.clone(),
                uid: 65534,
                gid: 65534,
                source: std::io::Error::from_raw_os_error(libc::EPERM),
            };
            let text = describe(&e);
            assert!(text.contains("chown root:root"), "{text}");
            assert_eq!(text.matches("Operation not permitted").count(), 1, "{text}");
            return;
        }
        let e = Dir::open(&p, other).unwrap_err();
        assert!(matches!(e, RunDirError::WrongOwner { .. }), "{e}");
        assert!(describe(&e).contains("chown root:root"), "{e}");
    }

    #[test]
    fn a_symlink_fifo_or_file_in_place_of_the_directory_is_refused_untouched() {
        let t = tempfile::tempdir().unwrap();
        let elsewhere = t.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::set_permissions(&elsewhere, Permissions::from_mode(0o777)).unwrap();
        let link = t.path().join("link");
        symlink(&elsewhere, &link).unwrap();
        let e = Dir::open(&link, Owner::current()).unwrap_err();
        assert!(
            matches!(
                e,
                RunDirError::NotADirectory {
                    kind: "a symlink",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("remove it"), "{e}");
        assert_eq!(mode(&elsewhere), 0o777, "the symlink's target is untouched");
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());

        let fifo = t.path().join("fifo");
        mkfifo(&fifo);
        let f2 = fifo.clone();
        let e = returns(move || Dir::open(&f2, Owner::current()).unwrap_err());
        assert!(
            matches!(e, RunDirError::NotADirectory { kind: "a FIFO", .. }),
            "{e}"
        );

        let file = t.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let e = Dir::open(&file, Owner::current()).unwrap_err();
        assert!(
            matches!(
                e,
                RunDirError::NotADirectory {
                    kind: "a regular file",
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
    }

    #[test]
    fn a_parent_others_can_write_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let parent = t.path().join("run");
        std::fs::create_dir(&parent).unwrap();
        std::fs::set_permissions(&parent, Permissions::from_mode(0o777)).unwrap();
        let e = Dir::open(&parent.join("lc"), Owner::current()).unwrap_err();
        assert!(matches!(e, RunDirError::ParentWritable { .. }), "{e}");
        assert!(!parent.join("lc").exists(), "nothing created");
        // sticky does not help: others still create entries (the directory
        // itself, before lcd does)
        std::fs::set_permissions(&parent, Permissions::from_mode(0o1777)).unwrap();
        assert!(Dir::open(&parent.join("lc"), Owner::current()).is_err());
    }

    #[test]
    fn planted_entries_are_removed_and_their_targets_untouched() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("ublksrvd");
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, Permissions::from_mode(0o777)).unwrap();
        // what a local user prepares while the directory is 0777
        let victim = t.path().join("disk");
        std::fs::write(&victim, b"partition table").unwrap();
        symlink(&victim, p.join("0001.json")).unwrap();
        mkfifo(&p.join("0002.json"));
        std::fs::hard_link(&victim, p.join("0003.json")).unwrap();
        std::fs::write(p.join("0004.json"), b"{}").unwrap();
        std::fs::set_permissions(p.join("0004.json"), Permissions::from_mode(0o666)).unwrap();
        std::fs::create_dir(p.join("0005.json")).unwrap();
        std::fs::write(p.join("0006.json"), b"{\"target\":{}}").unwrap(); // a plain file of ours
        let p2 = p.clone();
        let removed = returns(move || {
            let d = Dir::open(&p2, Owner::current()).unwrap();
            (1..=7)
                .map(|i| d.remove_untrusted(&format!("{i:04}.json")).unwrap())
                .collect::<Vec<_>>()
        });
        assert_eq!(removed[0].as_deref(), Some("a symlink"));
        assert_eq!(removed[1].as_deref(), Some("a FIFO"));
        assert_eq!(removed[2].as_deref(), Some("a file with 2 hard links"));
        assert!(removed[3].as_deref().unwrap().contains("others may write"));
        assert_eq!(removed[4].as_deref(), Some("a directory"));
        assert_eq!(removed[5], None, "lcd's own file stays");
        assert_eq!(removed[6], None, "nothing there");
        for i in 1..=5 {
            assert!(std::fs::symlink_metadata(p.join(format!("{i:04}.json"))).is_err());
        }
        assert_eq!(
            std::fs::read(p.join("0006.json")).unwrap(),
            b"{\"target\":{}}"
        );
        assert_eq!(std::fs::read(&victim).unwrap(), b"partition table");
        assert_eq!(mode(&p), 0o755);
    }

    #[test]
    fn a_file_of_another_user_is_removed() {
        if !is_root() {
            eprintln!("skipped: making a file of another user needs root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let d = Dir::open(&t.path().join("ublksrvd"), Owner::current()).unwrap();
        let f = t.path().join("ublksrvd/0001.json");
        std::fs::write(&f, b"{}").unwrap();
        std::os::unix::fs::chown(&f, Some(65534), Some(65534)).unwrap();
        assert_eq!(
            d.remove_untrusted("0001.json").unwrap().as_deref(),
            Some("a file of user 65534")
        );
        assert!(!f.exists());
    }

    #[test]
    fn records_round_trip_atomically_and_replace_a_planted_symlink() {
        let t = tempfile::tempdir().unwrap();
        let d = Dir::open(&t.path().join("lc"), Owner::current()).unwrap();
        assert_eq!(d.read_record("ublkb1").unwrap(), None);
        d.write_record("ublkb1", b"one").unwrap();
        assert_eq!(d.read_record("ublkb1").unwrap().unwrap(), b"one");
        d.write_record("ublkb1", b"two").unwrap();
        assert_eq!(d.read_record("ublkb1").unwrap().unwrap(), b"two");
        let m = std::fs::metadata(t.path().join("lc/ublkb1")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o644);
        // no temporary file is left
        let names: Vec<_> = std::fs::read_dir(t.path().join("lc"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["ublkb1"]);
        // a symlink in place of the record is replaced, its target kept
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        d.remove("ublkb1").unwrap();
        symlink(&victim, t.path().join("lc/ublkb1")).unwrap();
        d.write_record("ublkb1", b"three").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(d.read_record("ublkb1").unwrap().unwrap(), b"three");
        // a stale temporary file of this pid, even a symlink, is no obstacle
        let tmp = t
            .path()
            .join(format!("lc/.ublkb2.{}.tmp", std::process::id()));
        symlink(&victim, &tmp).unwrap();
        d.write_record("ublkb2", b"four").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(d.read_record("ublkb2").unwrap().unwrap(), b"four");
        d.remove("ublkb2").unwrap();
        d.remove("ublkb2").unwrap();
        assert_eq!(d.read_record("ublkb2").unwrap(), None);
    }

    #[test]
    fn planted_records_are_not_trusted_and_never_block() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("lc");
        let d = Dir::open(&p, Owner::current()).unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"{\"server_pid\":1}").unwrap();
        symlink(&victim, p.join("ublkb1")).unwrap();
        mkfifo(&p.join("ublkb2"));
        std::fs::hard_link(&victim, p.join("ublkb3")).unwrap();
        std::fs::write(p.join("ublkb4"), vec![b' '; RECORD_LIMIT as usize + 1]).unwrap();
        let d = std::sync::Arc::new(d);
        for (name, why) in [
            ("ublkb1", "a symlink"),
            ("ublkb2", "a FIFO"),
            ("ublkb3", "a file with 2 hard links"),
            ("ublkb4", "a file of 65537 bytes"),
        ] {
            let d2 = d.clone();
            let e = returns(move || d2.read_record(name).unwrap_err());
            match e {
                RunDirError::Untrusted { why: w, .. } => assert_eq!(w, why, "{name}"),
                e => panic!("{name}: {e}"),
            }
        }
        assert!(describe(&d.read_record("ublkb1").unwrap_err()).contains("not a file lcd wrote"));
    }

    #[test]
    fn errors_name_the_cause_once() {
        let t = tempfile::tempdir().unwrap();
        let e = Dir::open(&t.path().join("missing/lc"), Owner::current()).unwrap_err();
        let text = describe(&e);
        assert!(text.starts_with("opening "), "{text}");
        assert_eq!(text.matches("No such file").count(), 1, "{text}");
    }
}
