//! The write ledger: tells a restarted lcd whether the lcd before it died
//! holding writes it had completed but not yet made durable.
//!
//! A block device with a volatile write cache may complete a write before
//! the data is durable; the data is durable after the next FLUSH. When lcd
//! dies (kill -9, a crash) while the kernel and the file systems above live
//! on, the writes it had completed but not flushed are lost with its RAM,
//! and the kernel's user recovery hands the device to the next lcd without
//! telling anyone. A later FLUSH would then succeed and the application
//! would believe data durable that is gone.
//!
//! So each device keeps two counters in a small file on tmpfs (the run
//! directory), mapped into memory, which outlives the process but not the
//! machine: writes completed, and writes known durable (raised when a
//! FLUSH or FUA that was issued after them completes). A restarted lcd that
//! finds `completed > durable` fails the device's first FLUSH (and FUA)
//! with EIO, so the file system or application learns of the loss exactly
//! where it asked for durability. After a reboot the file is gone, as is
//! everything a power cut may take.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Size of the mapping (one page; two counters are used).
const MAP_BYTES: usize = 4096;

/// The two counters of one device, shared with the next lcd through tmpfs.
pub struct Ledger {
    map: *mut u8,
    path: PathBuf,
    /// Set when the previous lcd lost completed writes; cleared by the
    /// FLUSH that reports it.
    lost: AtomicBool,
}

// SAFETY: the mapping is only accessed through atomics.
unsafe impl Send for Ledger {}
// SAFETY: as above.
unsafe impl Sync for Ledger {}

impl Ledger {
    /// Opens (or creates) the ledger of device `id` in `run_dir` and reads
    /// what the previous lcd left there.
    pub fn open(run_dir: &Path, id: u8) -> std::io::Result<Ledger> {
        std::fs::create_dir_all(run_dir)?;
        let path = run_dir.join(crate::rundir::names::write_ledger(id));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            // never through a symlink, never waiting on a FIFO
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)?;
        // a file planted there before lcd owned the directory is not lcd's
        // record of anything (fstat of the open file, not the path)
        // SAFETY: geteuid has no arguments and cannot fail.
        let uid = unsafe { libc::geteuid() };
        if let Some(why) = crate::rundir::not_owned_plain_file(&file.metadata()?, uid) {
            return Err(std::io::Error::other(format!(
                "{} is {why}, not lcd's ledger; remove it",
                path.display()
            )));
        }
        file.set_len(MAP_BYTES as u64)?;
        // SAFETY: maps MAP_BYTES of a file we just sized to MAP_BYTES,
        // shared, at an address the kernel picks; the result is checked.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MAP_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ledger = Ledger {
            map: map.cast(),
            path,
            lost: AtomicBool::new(false),
        };
        let (completed, durable) = (
            ledger.completed().load(Ordering::SeqCst),
            ledger.durable().load(Ordering::SeqCst),
        );
        if completed > durable {
            ledger.lost.store(true, Ordering::SeqCst);
        }
        Ok(ledger)
    }

    fn counter(&self, i: usize) -> &AtomicU64 {
        // SAFETY: the mapping is page aligned, MAP_BYTES long and lives as
        // long as self; index 0 and 1 are 8-byte aligned u64 slots accessed
        // only atomically (here and by no one else while we run).
        unsafe { AtomicU64::from_ptr(self.map.cast::<u64>().add(i)) }
    }

    fn completed(&self) -> &AtomicU64 {
        self.counter(0)
    }

    fn durable(&self) -> &AtomicU64 {
        self.counter(1)
    }

    /// Whether the previous lcd died holding completed, unflushed writes.
    pub fn lost_writes(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Records a write about to be completed to the kernel (not yet durable).
    pub fn write_completed(&self) {
        self.completed().fetch_add(1, Ordering::SeqCst);
    }

    /// Called when a FLUSH or FUA is issued: what it will make durable.
    pub fn flush_issued(&self) -> u64 {
        self.completed().load(Ordering::SeqCst)
    }

    /// Called when that FLUSH or FUA completed successfully. Returns false
    /// (and forgets the loss) when it must fail to report writes the
    /// previous lcd lost.
    pub fn flush_done(&self, covered: u64) -> bool {
        if self.lost.swap(false, Ordering::SeqCst) {
            // the loss is reported once; from here on the counters are ours.
            // Durable is what this FLUSH covered, not what completed since:
            // a write completed while it was in flight is not yet durable.
            self.durable().store(covered, Ordering::SeqCst);
            return false;
        }
        self.durable().fetch_max(covered, Ordering::SeqCst);
        true
    }

    /// Deletes the ledger's file once the device is gone (a new device with
    /// this number starts with a clean ledger).
    pub fn forget(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `open`.
        unsafe {
            libc::munmap(self.map.cast(), MAP_BYTES);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_death_with_unflushed_writes_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let l = Ledger::open(dir.path(), 1).unwrap();
            assert!(!l.lost_writes());
            l.write_completed();
            let covered = l.flush_issued();
            l.write_completed(); // completed after the flush was issued
            assert!(l.flush_done(covered));
            // dies here: one completed write is not durable
        }
        let l = Ledger::open(dir.path(), 1).unwrap();
        assert!(l.lost_writes());
        assert!(!l.flush_done(l.flush_issued()), "the first flush fails");
        l.write_completed();
        assert!(l.flush_done(l.flush_issued()), "later ones succeed");
        drop(l);
        assert!(
            !Ledger::open(dir.path(), 1).unwrap().lost_writes(),
            "all flushed"
        );
    }

    #[test]
    fn a_ledger_lcd_did_not_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let planted = dir.path().join("ublkb2.writes");
        std::fs::write(&planted, [0u8; 64]).unwrap();
        std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = Ledger::open(dir.path(), 2).err().expect("refused");
        assert!(e.to_string().contains("others may write"), "{e}");
        std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::hard_link(&planted, dir.path().join("elsewhere")).unwrap();
        let e = Ledger::open(dir.path(), 2).err().expect("refused");
        assert!(e.to_string().contains("hard links"), "{e}");
        std::fs::remove_file(dir.path().join("elsewhere")).unwrap();
        Ledger::open(dir.path(), 2).expect("a plain file of lcd's own is its ledger");
    }

    #[test]
    fn writes_completed_during_the_flush_that_reports_a_loss_stay_undurable() {
        let dir = tempfile::tempdir().unwrap();
        {
            let l = Ledger::open(dir.path(), 3).unwrap();
            l.write_completed(); // dies with this write not durable
        }
        {
            let l = Ledger::open(dir.path(), 3).unwrap();
            assert!(l.lost_writes());
            let covered = l.flush_issued();
            l.write_completed(); // completed while the failing FLUSH was in flight
            assert!(!l.flush_done(covered), "the loss is reported");
            // dies before the next FLUSH: that write was never made durable
        }
        assert!(
            Ledger::open(dir.path(), 3).unwrap().lost_writes(),
            "the next lcd learns of the write completed during the failing FLUSH"
        );
    }

    #[test]
    fn a_removed_device_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(dir.path(), 2).unwrap();
        l.write_completed();
        l.forget();
        drop(l);
        assert!(!Ledger::open(dir.path(), 2).unwrap().lost_writes());
    }
}
