//! How ublk requests map onto the engine: the work each request of one
//! device becomes, on the queue thread or on a worker, and how a result
//! finished on another thread reaches the queue thread.
//!
//! A WRITE is copied into the cache on the queue thread when the engine
//! has room for it ([`Cache::write_may_wait`]); one that may have to wait
//! for room, and every DISCARD, goes to a small pool of worker threads.
//! The [`WriteGate`] of the cache keeps queue threads from writing while a
//! worker's write or discard runs, so that a queue thread never ends up
//! waiting for room inside the engine. FLUSH and the flush of a FUA write
//! complete through the engine's flush callback; the device's write
//! [`Ledger`] makes the first FLUSH after a lost write fail.
//!
//! A request finished on another thread is pushed on its queue's
//! [`Completions`] and the queue's eventfd is written.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};

use lc_engine::Cache;
use libublk::sys;

use crate::ledger::Ledger;

/// Finished requests of one queue, waiting for the queue thread.
pub(super) struct Completions {
    pub(super) done: Mutex<Vec<(u16, i32)>>,
    pub(super) eventfd: OwnedFd,
}

impl Completions {
    pub(super) fn new() -> std::io::Result<Self> {
        // SAFETY: eventfd has no pointer arguments; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Completions {
            done: Mutex::new(Vec::new()),
            // SAFETY: fd is a fresh descriptor owned by nobody else.
            eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Hands `(tag, result)` to the queue thread (any thread may call it).
    pub(super) fn complete(&self, tag: u16, result: i32) {
        let first = {
            let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
            done.push((tag, result));
            done.len() == 1
        };
        // Only the first result after a drain needs to wake the queue thread:
        // it drains everything queued by then.
        if first {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to our eventfd.
            let _ = unsafe {
                libc::write(
                    self.eventfd.as_raw_fd(),
                    (&one as *const u64).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
        }
    }

    pub(super) fn take(&self) -> Vec<(u16, i32)> {
        std::mem::take(&mut *self.done.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Orders the writes of one cache between lcd's queue threads and its
/// workers. A queue thread writes only while holding `lock`, and only when
/// no worker write or discard is under way (`parked` is 0) and the engine
/// has room for the write; otherwise it hands the request to a worker,
/// counting it in `parked` under `lock`. `lock` is therefore never held by
/// anything that waits for room, and a queue thread never waits for room
/// inside the engine (where it could wait for a segment pin that only its
/// own finished reads release).
pub(super) struct WriteGate {
    pub(super) lock: Mutex<()>,
    /// Writes and discards handed to workers and not yet done.
    pub(super) parked: AtomicUsize,
}

/// The write gates of the caches lcd serves, one per cache.
pub(super) static WRITE_GATES: Mutex<Vec<(Weak<Cache>, Arc<WriteGate>)>> = Mutex::new(Vec::new());

/// The write gate of `cache` (shared by all its devices' queues).
pub(super) fn write_gate(cache: &Arc<Cache>) -> Arc<WriteGate> {
    let mut gates = WRITE_GATES.lock().unwrap_or_else(|e| e.into_inner());
    gates.retain(|(c, _)| c.strong_count() > 0);
    if let Some((_, g)) = gates
        .iter()
        .find(|(c, _)| std::ptr::eq(c.as_ptr(), Arc::as_ptr(cache)))
    {
        return g.clone();
    }
    let g = Arc::new(WriteGate {
        lock: Mutex::new(()),
        parked: AtomicUsize::new(0),
    });
    gates.push((Arc::downgrade(cache), g.clone()));
    g
}

/// What became of a write the queue thread was given.
pub(super) enum WriteOutcome {
    /// Done: the request's result.
    Done(i32),
    /// Its result arrives through the queue's [`Completions`] (a worker
    /// serves it, or the engine's flush callback of a FUA write).
    Pending,
}

/// A request handed to a worker.
pub(super) struct Job {
    pub(super) tag: u16,
    pub(super) op: u32,
    pub(super) fua: bool,
    pub(super) sector: u64,
    pub(super) nr_sectors: u32,
    /// Address of the tag's I/O buffer.
    pub(super) buf: usize,
    pub(super) completions: Arc<Completions>,
}

/// The result a failed request completes with: the engine's errno
/// ([`lc_engine::Error::errno`], the one a frontend should use), negated.
pub(super) fn errno_of(e: &lc_engine::Error) -> i32 {
    -e.errno()
}

/// What one device's queues and workers share.
pub(super) struct Target {
    pub(super) cache: Arc<Cache>,
    pub(super) device_id: u8,
    /// Completed and durable writes, kept where the next lcd finds them.
    pub(super) ledger: Ledger,
    pub(super) jobs: Mutex<Option<mpsc::Sender<Job>>>,
    /// The cache's write gate.
    pub(super) gate: Arc<WriteGate>,
}

impl Target {
    /// Starts a FLUSH; its result reaches `completions` when the engine
    /// has made every earlier write durable.
    pub(super) fn flush(self: &Arc<Self>, tag: u16, completions: Arc<Completions>) {
        self.cache.flush(self.on_durable(tag, completions, 0));
    }

    /// The engine callback of a FLUSH or FUA write of `tag` issued now: it
    /// completes the request with `success` once the engine made it
    /// durable, with the engine's errno if that failed, and with EIO when
    /// it must report writes the previous lcd lost ([`Target::durable`]).
    pub(super) fn on_durable(
        self: &Arc<Self>,
        tag: u16,
        completions: Arc<Completions>,
        success: i32,
    ) -> lc_engine::FlushCallback {
        let covered = self.ledger.flush_issued();
        let target = self.clone();
        Box::new(move |r: lc_engine::Result<()>| {
            let result = match r {
                Err(e) => errno_of(&e),
                Ok(()) if target.durable(covered) => success,
                Ok(()) => -libc::EIO,
            };
            completions.complete(tag, result)
        })
    }

    /// Hands a read to a worker (devices without a descriptor).
    pub(super) fn submit_read(&self, job: Job) {
        self.submit_counted(job);
    }

    /// Called when a FLUSH or FUA covering the writes completed before
    /// `covered` succeeded; false when it must fail to report writes the
    /// previous lcd lost.
    pub(super) fn durable(&self, covered: u64) -> bool {
        if self.ledger.flush_done(covered) {
            return true;
        }
        tracing::error!(
            device = self.device_id,
            "this FLUSH fails on purpose: the lcd before this one died holding writes it had \
             completed but not yet written to the cache device; they are lost, and the file \
             system or application on /dev/ublkb{} learns it here",
            self.device_id
        );
        false
    }

    /// Serves one request on a worker thread; a write or discard was
    /// counted in the gate's `parked` ([`Target::park`]) and is uncounted
    /// once served.
    pub(super) fn serve(self: &Arc<Self>, job: Job) {
        let parked = matches!(job.op, sys::UBLK_IO_OP_WRITE | sys::UBLK_IO_OP_DISCARD);
        self.serve_job(job);
        if parked {
            self.gate.parked.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Counts a write or discard about to go to a worker; the caller holds
    /// the gate's lock.
    pub(super) fn park(&self) {
        self.gate.parked.fetch_add(1, Ordering::SeqCst);
    }

    /// Hands a write or discard to a worker.
    pub(super) fn submit_parked(&self, job: Job) {
        {
            let _g = self.gate.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.park();
        }
        self.submit_counted(job);
    }

    /// Sends a job whose count is taken; a job that cannot be sent fails
    /// with EIO and is uncounted.
    pub(super) fn submit_counted(&self, job: Job) {
        let parked = matches!(job.op, sys::UBLK_IO_OP_WRITE | sys::UBLK_IO_OP_DISCARD);
        let sent = match &*self.jobs.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        };
        if let Err(job) = sent {
            if parked {
                self.gate.parked.fetch_sub(1, Ordering::SeqCst);
            }
            job.completions.complete(job.tag, -libc::EIO);
        }
    }

    /// A WRITE on the queue thread: copied into the cache now when that
    /// cannot wait for room (see [`WriteGate`]), else handed to a worker.
    pub(super) fn write_here(self: &Arc<Self>, job: Job) -> WriteOutcome {
        let bytes = job.nr_sectors as usize * 512;
        let g = self.gate.lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.gate.parked.load(Ordering::SeqCst) != 0 || self.cache.write_may_wait(bytes) {
            self.park();
            drop(g);
            self.submit_counted(job);
            return WriteOutcome::Pending;
        }
        // SAFETY: the tag's buffer holds IO_BUF_BYTES ≥ bytes (checked by
        // the caller), filled by the kernel, untouched until commit.
        let data = unsafe { std::slice::from_raw_parts(job.buf as *const u8, bytes) };
        let written = self.cache.write(self.device_id, job.sector, data);
        drop(g);
        match written {
            Ok(()) if job.fua => {
                // durable once the flush is: not counted as only completed
                self.cache
                    .flush(self.on_durable(job.tag, job.completions.clone(), bytes as i32));
                WriteOutcome::Pending
            }
            Ok(()) => {
                self.ledger.write_completed();
                WriteOutcome::Done(bytes as i32)
            }
            Err(e) => {
                tracing::warn!(
                    device = self.device_id,
                    "write failed: {}",
                    lc_engine::error::describe(&e)
                );
                WriteOutcome::Done(errno_of(&e))
            }
        }
    }

    pub(super) fn serve_job(self: &Arc<Self>, job: Job) {
        let bytes = job.nr_sectors as usize * 512;
        let result = match job.op {
            sys::UBLK_IO_OP_READ => {
                // SAFETY: the tag's buffer holds IO_BUF_BYTES ≥ bytes (the
                // kernel never sends more than max_sectors) and nothing else
                // touches it until this job's result is committed.
                let buf = unsafe { std::slice::from_raw_parts_mut(job.buf as *mut u8, bytes) };
                match self.cache.read(self.device_id, job.sector, buf) {
                    Ok(()) => bytes as i32,
                    Err(e) => {
                        tracing::warn!(
                            device = self.device_id,
                            "read failed: {}",
                            lc_engine::error::describe(&e)
                        );
                        errno_of(&e)
                    }
                }
            }
            sys::UBLK_IO_OP_WRITE => {
                // SAFETY: as for reads; the kernel filled the buffer before
                // sending the request and it stays untouched until commit.
                let data = unsafe { std::slice::from_raw_parts(job.buf as *const u8, bytes) };
                if job.fua {
                    let done = self.on_durable(job.tag, job.completions.clone(), bytes as i32);
                    match self.cache.write_fua(self.device_id, job.sector, data, done) {
                        Ok(()) => return,
                        Err(e) => errno_of(&e),
                    }
                } else {
                    match self.cache.write(self.device_id, job.sector, data) {
                        Ok(()) => {
                            self.ledger.write_completed();
                            bytes as i32
                        }
                        Err(e) => {
                            tracing::warn!(
                                device = self.device_id,
                                "write failed: {}",
                                lc_engine::error::describe(&e)
                            );
                            errno_of(&e)
                        }
                    }
                }
            }
            sys::UBLK_IO_OP_DISCARD => {
                match self
                    .cache
                    .discard(self.device_id, job.sector, job.nr_sectors as u64)
                {
                    Ok(()) => 0,
                    Err(e) => errno_of(&e),
                }
            }
            _ => -libc::EOPNOTSUPP,
        };
        job.completions.complete(job.tag, result);
    }
}

#[cfg(test)]
mod tests {
    //! The request-to-engine mapping, without a kernel: requests as the
    //! queue threads hand them to workers, served by a real engine on files.

    use super::*;
    use lc_engine::{format_cache_device, CacheOptions, FileDevice};
    use std::time::{Duration, Instant};

    struct Rig {
        target: Arc<Target>,
        completions: Arc<Completions>,
        _dir: tempfile::TempDir,
    }

    fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let (cache_path, backing) = (dir.path().join("cache"), dir.path().join("backing"));
        std::fs::File::create(&cache_path)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        std::fs::File::create(&backing)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let dev = FileDevice::open(&cache_path).unwrap();
        format_cache_device(&dev, false).unwrap();
        let cache = Arc::new(Cache::resume(1, Arc::new(dev), CacheOptions::default()).unwrap());
        cache
            .attach_device(4, Arc::new(FileDevice::open(&backing).unwrap()))
            .unwrap();
        let ledger = Ledger::open(&dir.path().join("run"), 4).unwrap();
        Rig {
            target: Arc::new(Target {
                gate: write_gate(&cache),
                cache,
                device_id: 4,
                ledger,
                jobs: Mutex::new(None),
            }),
            completions: Arc::new(Completions::new().unwrap()),
            _dir: dir,
        }
    }

    impl Rig {
        /// Serves a request on a worker, as the queue thread hands it over.
        fn serve(&self, tag: u16, op: u32, fua: bool, sector: u64, buf: &mut [u8]) -> i32 {
            if matches!(op, sys::UBLK_IO_OP_WRITE | sys::UBLK_IO_OP_DISCARD) {
                self.target.park();
            }
            self.target.serve(Job {
                tag,
                op,
                fua,
                sector,
                nr_sectors: (buf.len() / 512).max(8) as u32,
                buf: buf.as_mut_ptr() as usize,
                completions: self.completions.clone(),
            });
            self.result_of(tag)
        }

        /// Waits for `tag`'s result as the queue thread would (the eventfd
        /// is written when a result arrives).
        fn result_of(&self, tag: u16) -> i32 {
            let start = Instant::now();
            loop {
                if let Some(&(_, r)) = self.completions.take().iter().find(|(t, _)| *t == tag) {
                    return r;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "no result for tag {tag}"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    #[test]
    fn writes_reads_flushes_and_discards_reach_the_engine() {
        let r = rig();
        let mut data = vec![0x5au8; 8192];
        assert_eq!(
            r.serve(1, sys::UBLK_IO_OP_WRITE, false, 16, &mut data),
            8192
        );
        let mut back = vec![0u8; 8192];
        assert_eq!(r.serve(2, sys::UBLK_IO_OP_READ, false, 16, &mut back), 8192);
        assert_eq!(back, data, "a read sees the write");
        r.target.flush(3, r.completions.clone());
        assert_eq!(r.result_of(3), 0, "FLUSH succeeds");
        // FUA completes once durable
        let mut fua = vec![0x77u8; 4096];
        assert_eq!(r.serve(4, sys::UBLK_IO_OP_WRITE, true, 64, &mut fua), 4096);
        assert!(r.target.cache.status().last_durable_segment_id >= 1);
        // discard: the cached lines go, the backing file's zeros show
        let mut none = vec![0u8; 8192];
        assert_eq!(r.serve(5, sys::UBLK_IO_OP_DISCARD, false, 16, &mut none), 0);
        assert_eq!(r.serve(6, sys::UBLK_IO_OP_READ, false, 16, &mut back), 8192);
        assert!(back.iter().all(|&b| b == 0));
        assert_eq!(
            r.target.cache.nr_dirty_caches(4),
            1,
            "only the FUA line is dirty"
        );
    }

    #[test]
    fn writes_with_room_complete_on_the_queue_thread_others_go_to_a_worker() {
        let r = rig();
        let (tx, rx) = mpsc::channel::<Job>();
        *r.target.jobs.lock().unwrap() = Some(tx);
        let mut data = vec![0x31u8; 8192];
        let job = |tag, fua, buf: &mut [u8]| Job {
            tag,
            op: sys::UBLK_IO_OP_WRITE,
            fua,
            sector: 8,
            nr_sectors: (buf.len() / 512) as u32,
            buf: buf.as_mut_ptr() as usize,
            completions: r.completions.clone(),
        };
        match r.target.write_here(job(1, false, &mut data)) {
            WriteOutcome::Done(n) => assert_eq!(n, 8192),
            WriteOutcome::Pending => panic!("a write with room waits for nothing"),
        }
        assert!(rx.try_recv().is_err(), "no worker was involved");
        // a FUA write is copied at once and completes when durable
        assert!(matches!(
            r.target.write_here(job(2, true, &mut data)),
            WriteOutcome::Pending
        ));
        assert_eq!(r.result_of(2), 8192);
        // while a worker's write is under way, writes queue behind it
        r.target.park();
        let mut other = vec![0x32u8; 4096];
        assert!(matches!(
            r.target.write_here(job(3, false, &mut other)),
            WriteOutcome::Pending
        ));
        let handed = rx.try_recv().expect("handed to a worker");
        assert_eq!(handed.tag, 3);
        assert_eq!(r.target.gate.parked.load(Ordering::SeqCst), 2);
        r.target.serve(handed);
        assert_eq!(r.result_of(3), 4096);
        let mut back = vec![0u8; 8192];
        r.target.cache.read(4, 8, &mut back).unwrap();
        assert_eq!(&back[..4096], &other[..]);
        assert_eq!(&back[4096..], &data[4096..]);
    }

    #[test]
    fn bad_requests_get_errors_not_panics() {
        let r = rig();
        let mut buf = vec![0u8; 4096];
        // beyond the end of the 1 MiB device
        assert_eq!(
            r.serve(1, sys::UBLK_IO_OP_WRITE, false, 2048, &mut buf),
            -libc::EINVAL
        );
        assert_eq!(
            r.serve(2, sys::UBLK_IO_OP_READ, false, 4096, &mut buf),
            -libc::EINVAL
        );
        // an operation lc does not offer (WRITE_ZEROES is not advertised)
        assert_eq!(
            r.serve(3, sys::UBLK_IO_OP_WRITE_ZEROES, false, 0, &mut buf),
            -libc::EOPNOTSUPP
        );
    }

    #[test]
    fn failed_requests_complete_with_the_engines_errno() {
        let r = rig();
        let mut buf = vec![0u8; 4096];
        r.target.cache.detach_device(4, |_| {}).unwrap();
        let want = -lc_engine::Error::UnknownDevice(4).errno();
        assert_eq!(want, -libc::ENODEV);
        for (tag, op, fua) in [
            (1, sys::UBLK_IO_OP_READ, false),
            (2, sys::UBLK_IO_OP_WRITE, false),
            (3, sys::UBLK_IO_OP_WRITE, true),
            (4, sys::UBLK_IO_OP_DISCARD, false),
        ] {
            assert_eq!(
                r.serve(tag, op, fua, 0, &mut buf),
                want,
                "op {op} fua {fua}"
            );
        }
    }

    #[test]
    fn a_failed_flush_or_fua_completes_with_the_engines_errno() {
        let r = rig();
        for (tag, success) in [(1u16, 0), (2, 4096)] {
            let done = r.target.on_durable(tag, r.completions.clone(), success);
            done(Err(lc_engine::Error::Stopped));
            assert_eq!(r.result_of(tag), -libc::ESHUTDOWN);
        }
        let done = r.target.on_durable(3, r.completions.clone(), 4096);
        done(Ok(()));
        assert_eq!(
            r.result_of(3),
            4096,
            "a durable FUA write completes with its bytes"
        );
    }

    #[test]
    fn the_first_flush_after_a_lost_write_fails_once() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        {
            let l = Ledger::open(&run, 4).unwrap();
            l.write_completed(); // completed, never flushed: lcd "dies"
        }
        let mut r = rig();
        let target = Arc::get_mut(&mut r.target).unwrap();
        target.ledger = Ledger::open(&run, 4).unwrap();
        r.target.flush(1, r.completions.clone());
        assert_eq!(r.result_of(1), -libc::EIO, "the loss is reported");
        r.target.flush(2, r.completions.clone());
        assert_eq!(r.result_of(2), 0, "once");
    }
}
