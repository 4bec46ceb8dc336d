//! The ublk frontend: exposes one lc device as `/dev/ublkb<id>`.
//!
//! Each device gets a ublk device whose number is the lc device id, sized as
//! its backing device, with 512 B logical / 4 KiB physical blocks, a
//! volatile write cache with FUA, and discard. libublk runs one thread per
//! queue (as many queues as CPUs unless `--queues` says otherwise) with its
//! own io_uring; a queue thread never waits for room in the cache.
//!
//! - A READ is resolved by the engine into a read plan
//!   ([`Cache::plan_read`]): lines in RAM are copied at once (a RAM hit
//!   needs no I/O), and the plan's device reads (cache device, backing
//!   device) are submitted through the queue thread's own io_uring; when
//!   they have landed the plan is finished (overlay, pins) and the request
//!   committed.
//! - A WRITE is copied into the cache on the queue thread when the engine
//!   has room for it ([`Cache::write_may_wait`]); one that may have to wait
//!   for room, and every DISCARD, goes to a small pool of worker threads,
//!   and the queue thread serves its other requests meanwhile. The
//!   [`WriteGate`] of the cache keeps queue threads from writing while a
//!   worker's write or discard runs, so that a queue thread never ends up
//!   waiting for room inside the engine.
//! - FLUSH and the flush of a FUA write complete through the engine's flush
//!   callback.
//!
//! A request finished on another thread is pushed on its queue's
//! [`Completions`] and the queue's eventfd is written; each queue keeps a
//! read of that eventfd in flight in its own ring, so the queue thread
//! wakes, hands each result to the request's task, and the task commits it
//! to the kernel.
//!
//! Devices are created with `UBLK_F_USER_RECOVERY` (and `_REISSUE` where
//! the kernel has it): when lcd dies, the kernel keeps the device quiesced
//! and a restarted lcd takes it back with [`UblkDevice::start`] in
//! recovery mode. Creation runs on its own thread and is given up after
//! [`START_TIMEOUT`], so a misbehaving kernel cannot freeze the daemon.
//!
//! Which ublk devices are lc's is decided by lcd's own records only: a
//! record `ublkb<id>` in lcd's run directory (also the udev rule's marker)
//! names the lcd process that started the device, and the kernel must name
//! the same process as the device's server. A device without a matching
//! record is never recovered, served or deleted. libublk's per-device JSON
//! in [`UBLKSRVD`] is not trusted for anything; before every libublk call
//! for a device lcd makes that directory its own and removes a JSON file
//! there that is not a plain root-owned file (see `rundir`).

use std::cell::RefCell;
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::Duration;

use lc_engine::{Cache, ReadSource};

use crate::ledger::Ledger;
use crate::rundir::{describe, Dir, Owner};
use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::helpers::IoBuf;
use libublk::io::{UblkDev, UblkQueue};
use libublk::uring_async::ublk_submit_sqe_async;
use libublk::{sys, BufDesc, UblkError, UblkFlags};

/// The control node a kernel with ublk provides.
pub const CONTROL_NODE: &str = "/dev/ublk-control";
/// How long device creation or recovery may take before lcd gives up on it.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Target name given to libublk (shown by ublk tools; lcd trusts its own
/// records, not this name, to tell its devices apart).
pub const TARGET_NAME: &str = "lc";
/// The directory where libublk 0.4.8 keeps a JSON file per device,
/// `NNNN.json` (fixed in libublk).
pub const UBLKSRVD: &str = "/run/ublksrvd";
/// Requests in flight per queue.
const QUEUE_DEPTH: u16 = 64;
/// Largest request, in bytes: each tag has a buffer this big, so lcd's
/// memory grows with queues × depth × this (1 MiB buffers at depth 128 broke
/// the soak scenario's RSS bound with 3 devices; larger requests need
/// buffers that are not per tag: USER_COPY or AUTO_BUF_REG).
const IO_BUF_BYTES: u32 = 256 << 10;
/// Queues per device set by `--queues` (0: one per CPU).
static QUEUES: AtomicU16 = AtomicU16::new(0);

/// Sets the number of queues of every ublk device started from now on
/// (`lcd --queues`); 0 means one per CPU.
pub fn set_queues(n: u16) {
    QUEUES.store(n, Ordering::Relaxed);
}

/// Queues a new device gets: `--queues`, else one per CPU.
fn nr_queues() -> u16 {
    match QUEUES.load(Ordering::Relaxed) {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(64) as u16),
        n => n,
    }
}
/// Largest discard, in sectors (the engine walks discards line by line).
const MAX_DISCARD_SECTORS: u32 = 8192;
/// Worker threads per device: they serve the writes that may wait for room,
/// discards, and reads of a device without a file descriptor.
const WORKERS: usize = 4;

/// Why devices cannot be exposed here, or `None` when ublk is usable.
pub fn unavailable_reason() -> Option<String> {
    if Path::new(CONTROL_NODE).exists() {
        None
    } else {
        Some(format!(
            "{CONTROL_NODE} is missing: this kernel has no ublk driver loaded; \
             load it with `modprobe ublk_drv` (Linux 6.0 or later, built with CONFIG_BLK_DEV_UBLK)"
        ))
    }
}

/// Path of the block node of ublk device `id`.
pub fn node_path(id: u8) -> String {
    format!("/dev/ublkb{id}")
}

/// The name of libublk's JSON file of ublk device `id` in [`UBLKSRVD`].
fn json_name(id: u8) -> String {
    format!("{id:04}.json")
}

/// Makes [`UBLKSRVD`] lcd's (owned by root, mode 0755, never a symlink)
/// and removes the JSON file of each of `ids` there unless it is a plain
/// root-owned file, so that libublk's next write (`File::create`, which
/// follows symlinks) or read (which would wait on a FIFO) of it cannot be
/// aimed elsewhere. Must precede every libublk call that names a device.
fn guard_libublk_dir(ids: impl IntoIterator<Item = u8>) -> Result<(), String> {
    let dir = Dir::open(Path::new(UBLKSRVD), Owner::current()).map_err(|e| describe(&e))?;
    for id in ids {
        dir.remove_untrusted(&json_name(id))
            .map_err(|e| describe(&e))?;
    }
    Ok(())
}

/// At start: makes [`UBLKSRVD`] lcd's and clears every JSON file there
/// that libublk could use for an lc device id and that root did not write.
/// The error says why devices cannot be exposed.
pub fn prepare() -> Result<(), String> {
    guard_libublk_dir(1..=255)
}

/// What the kernel says about an existing ublk device.
struct Existing {
    /// `UBLK_S_DEV_*`.
    state: u32,
    /// The process the kernel knows as the device's server.
    server_pid: i32,
    /// Its queues and depth: a server taking it back must use the same.
    nr_queues: u16,
    depth: u16,
}

/// The kernel's view of ublk device `id`, if there is one. The caller has
/// guarded libublk's JSON file of `id` ([`guard_libublk_dir`]).
fn existing(id: u8) -> Option<Existing> {
    let ctrl = UblkCtrl::new_simple(id as i32).ok()?;
    ctrl.read_dev_info().ok()?;
    let info = ctrl.dev_info();
    ctrl.disown();
    Some(Existing {
        state: info.state as u32,
        server_pid: info.ublksrv_pid,
        nr_queues: info.nr_hw_queues,
        depth: info.queue_depth,
    })
}

/// State of an existing ublk device numbered `id`, if there is one (none
/// also when libublk's directory cannot be made safe to use: starting the
/// device then says why).
pub fn existing_state(id: u8) -> Option<u32> {
    guard_libublk_dir([id]).ok()?;
    existing(id).map(|e| e.state)
}

/// lcd's record that it serves ublk device `device_id`, in its run
/// directory as `ublkb<id>` (the file the udev rule looks for).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct ServerRecord {
    device_id: u8,
    /// The lcd process that started or took back the device; the kernel
    /// keeps the same pid as the device's server.
    server_pid: i32,
}

fn record_name(id: u8) -> String {
    format!("ublkb{id}")
}

/// Records that this process serves ublk device `id` (atomically, never
/// through a symlink).
fn write_record(run: &Dir, id: u8) -> Result<(), String> {
    let rec = ServerRecord {
        device_id: id,
        server_pid: std::process::id() as i32,
    };
    let mut bytes = serde_json::to_vec(&rec).expect("a record serializes");
    bytes.push(b'\n');
    run.write_record(&record_name(id), &bytes)
        .map_err(|e| describe(&e))
}

/// The server pid lcd recorded for ublk device `id`, `None` without a
/// record; an error for a record lcd did not write or cannot read.
fn read_record(run: &Dir, id: u8) -> Result<Option<i32>, String> {
    let name = record_name(id);
    let Some(bytes) = run.read_record(&name).map_err(|e| describe(&e))? else {
        return Ok(None);
    };
    let bad = |why: String| {
        format!(
            "{} is not a record lcd wrote ({why}); ignored",
            run.path().join(&name).display()
        )
    };
    let rec: ServerRecord =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("not its JSON: {e}")))?;
    if rec.device_id != id || rec.server_pid <= 0 {
        return Err(bad(format!(
            "it names device {} and pid {}",
            rec.device_id, rec.server_pid
        )));
    }
    Ok(Some(rec.server_pid))
}

/// Whether lcd's record says that the existing ublk device `id` is the one
/// an lcd started; if not, why it must be left alone.
fn claim(run: &Dir, id: u8, kernel: &Existing) -> Result<(), String> {
    let not_ours = |what: String| {
        format!(
            "ublk device {id} exists (state {}, server pid {}) but {what}: it belongs to another \
             program, or lcd's run directory {} was lost; lcd neither serves nor deletes it. If \
             nothing uses /dev/ublkb{id}, delete that ublk device and restart lcd",
            kernel.state,
            kernel.server_pid,
            run.path().display()
        )
    };
    match read_record(run, id) {
        Ok(Some(pid)) if pid == kernel.server_pid => Ok(()),
        // a device with no server (stopped, DEAD: the kernel sets its pid
        // to -1) that lcd recorded serving: lcd's own, left behind by a
        // failed delete or a start that failed after ADD_DEV; nobody serves
        // it, so nothing can pose as it
        Ok(Some(_)) if kernel.server_pid <= 0 => Ok(()),
        Ok(Some(pid)) => Err(not_ours(format!("lcd recorded pid {pid} as its server"))),
        Ok(None) => Err(not_ours("lcd has no record of serving it".into())),
        Err(why) => Err(not_ours(why)),
    }
}

/// Finished requests of one queue, waiting for the queue thread.
struct Completions {
    done: Mutex<Vec<(u16, i32)>>,
    eventfd: OwnedFd,
}

impl Completions {
    fn new() -> std::io::Result<Self> {
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
    fn complete(&self, tag: u16, result: i32) {
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

    fn take(&self) -> Vec<(u16, i32)> {
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
struct WriteGate {
    lock: Mutex<()>,
    /// Writes and discards handed to workers and not yet done.
    parked: AtomicUsize,
}

/// The write gates of the caches lcd serves, one per cache.
static WRITE_GATES: Mutex<Vec<(Weak<Cache>, Arc<WriteGate>)>> = Mutex::new(Vec::new());

/// The write gate of `cache` (shared by all its devices' queues).
fn write_gate(cache: &Arc<Cache>) -> Arc<WriteGate> {
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
enum WriteOutcome {
    /// Done: the request's result.
    Done(i32),
    /// Its result arrives through the queue's [`Completions`] (a worker
    /// serves it, or the engine's flush callback of a FUA write).
    Pending,
}

/// A request handed to a worker.
struct Job {
    tag: u16,
    op: u32,
    fua: bool,
    sector: u64,
    nr_sectors: u32,
    /// Address of the tag's I/O buffer.
    buf: usize,
    completions: Arc<Completions>,
}

/// Per-queue-thread table of results not yet picked up by their tasks.
struct TagSlots {
    results: RefCell<Vec<Option<i32>>>,
    wakers: RefCell<Vec<Option<Waker>>>,
}

/// Resolves when the queue thread has received the result of `tag`.
struct TagResult<'a> {
    slots: &'a TagSlots,
    tag: usize,
}

impl Future for TagResult<'_> {
    type Output = i32;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<i32> {
        if let Some(r) = self.slots.results.borrow_mut()[self.tag].take() {
            return Poll::Ready(r);
        }
        self.slots.wakers.borrow_mut()[self.tag] = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// The result a failed request completes with: the engine's errno
/// ([`lc_engine::Error::errno`], the one a frontend should use), negated.
fn errno_of(e: &lc_engine::Error) -> i32 {
    -e.errno()
}

/// What one device's queues and workers share.
struct Target {
    cache: Arc<Cache>,
    device_id: u8,
    /// Completed and durable writes, kept where the next lcd finds them.
    ledger: Ledger,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    /// The cache's write gate.
    gate: Arc<WriteGate>,
}

impl Target {
    /// Starts a FLUSH; its result reaches `completions` when the engine
    /// has made every earlier write durable.
    fn flush(self: &Arc<Self>, tag: u16, completions: Arc<Completions>) {
        self.cache.flush(self.on_durable(tag, completions, 0));
    }

    /// The engine callback of a FLUSH or FUA write of `tag` issued now: it
    /// completes the request with `success` once the engine made it
    /// durable, with the engine's errno if that failed, and with EIO when
    /// it must report writes the previous lcd lost ([`Target::durable`]).
    fn on_durable(
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
    fn submit_read(&self, job: Job) {
        self.submit_counted(job);
    }

    /// Called when a FLUSH or FUA covering the writes completed before
    /// `covered` succeeded; false when it must fail to report writes the
    /// previous lcd lost.
    fn durable(&self, covered: u64) -> bool {
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
    fn serve(self: &Arc<Self>, job: Job) {
        let parked = matches!(job.op, sys::UBLK_IO_OP_WRITE | sys::UBLK_IO_OP_DISCARD);
        self.serve_job(job);
        if parked {
            self.gate.parked.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Counts a write or discard about to go to a worker; the caller holds
    /// the gate's lock.
    fn park(&self) {
        self.gate.parked.fetch_add(1, Ordering::SeqCst);
    }

    /// Hands a write or discard to a worker.
    fn submit_parked(&self, job: Job) {
        {
            let _g = self.gate.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.park();
        }
        self.submit_counted(job);
    }

    /// Sends a job whose count is taken; a job that cannot be sent fails
    /// with EIO and is uncounted.
    fn submit_counted(&self, job: Job) {
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
    fn write_here(self: &Arc<Self>, job: Job) -> WriteOutcome {
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
                tracing::warn!(device = self.device_id, "write failed: {}", describe(&e));
                WriteOutcome::Done(errno_of(&e))
            }
        }
    }

    fn serve_job(self: &Arc<Self>, job: Job) {
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
                        tracing::warn!(device = self.device_id, "read failed: {}", describe(&e));
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
                                describe(&e)
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

/// Reads `len` bytes at `offset` of `fd` into `ptr` through the queue
/// thread's io_uring, resubmitting the rest after a short read.
async fn ring_read(fd: RawFd, ptr: *mut u8, len: usize, offset: u64) -> std::io::Result<()> {
    let mut done = 0usize;
    while done < len {
        // SAFETY: `ptr..ptr + len` is a live buffer of the request (the
        // tag's buffer or its read plan's scratch) that nothing else touches
        // until this read has completed: the tag's task awaits it before it
        // finishes the plan or commits.
        let at = unsafe { ptr.add(done) };
        let sqe = io_uring::opcode::Read::new(io_uring::types::Fd(fd), at, (len - done) as u32)
            .offset(offset + done as u64)
            .build();
        let res = ublk_submit_sqe_async(sqe, libublk::UblkUringData::Target as u64)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        match res {
            r if r < 0 => return Err(std::io::Error::from_raw_os_error(-r)),
            0 => return Err(std::io::Error::from_raw_os_error(libc::EIO)),
            r => done += r as usize,
        }
    }
    Ok(())
}

/// A READ on the queue thread: planned by the engine, its device reads
/// submitted in this queue's ring. `None` when a device of the plan has no
/// descriptor (the request then goes to a worker).
async fn read_here(target: &Target, sector: u64, out: &mut [u8]) -> Option<i32> {
    let mut plan = match target.cache.plan_read(target.device_id, sector, out) {
        Ok(p) => p,
        Err(e) => return Some(errno_of(&e)),
    };
    let reads = plan.reads().to_vec();
    let mut fds = Vec::with_capacity(reads.len());
    for r in &reads {
        fds.push(plan.raw_fd(r.source)?);
    }
    let mut pending = Vec::with_capacity(reads.len());
    for (r, fd) in reads.iter().zip(fds) {
        let t = plan.target_mut(r, out);
        pending.push((r.source, ring_read(fd, t.as_mut_ptr(), t.len(), r.offset)));
    }
    let (sources, futures): (Vec<ReadSource>, Vec<_>) = pending.into_iter().unzip();
    let results = futures_util::future::join_all(futures).await;
    let failed = sources
        .into_iter()
        .zip(results)
        .find_map(|(src, r)| r.err().map(|e| (src, e)));
    Some(match plan.finish(out, failed) {
        Ok(()) => out.len() as i32,
        Err(e) => {
            tracing::warn!(device = target.device_id, "read failed: {}", describe(&e));
            errno_of(&e)
        }
    })
}

/// Runs one tag: fetch a request, have it served, commit, repeat.
async fn tag_task(
    q: &UblkQueue<'_>,
    tag: u16,
    target: &Arc<Target>,
    slots: &TagSlots,
    completions: &Arc<Completions>,
) -> Result<(), UblkError> {
    let buf = IoBuf::<u8>::new(IO_BUF_BYTES as usize);
    q.submit_io_prep_cmd(tag, BufDesc::Slice(buf.as_slice()), 0, Some(&buf))
        .await?;
    let result_of_tag = || TagResult {
        slots,
        tag: tag as usize,
    };
    loop {
        let iod = q.get_iod(tag);
        let op = iod.op_flags & 0xff;
        let fua = iod.op_flags & sys::UBLK_IO_F_FUA != 0;
        let (sector, nr_sectors) = (iod.start_sector, iod.nr_sectors);
        let fits = nr_sectors as u64 * 512 <= IO_BUF_BYTES as u64;
        let job = |op| Job {
            tag,
            op,
            fua,
            sector,
            nr_sectors,
            buf: buf.as_mut_ptr() as usize,
            completions: completions.clone(),
        };
        let result = match op {
            sys::UBLK_IO_OP_FLUSH => {
                target.flush(tag, completions.clone());
                result_of_tag().await
            }
            sys::UBLK_IO_OP_READ if fits => {
                // SAFETY: the tag's buffer holds IO_BUF_BYTES ≥ the request
                // and is this task's alone until the commit below.
                let out = unsafe {
                    std::slice::from_raw_parts_mut(buf.as_mut_ptr(), nr_sectors as usize * 512)
                };
                match read_here(target, sector, out).await {
                    Some(r) => r,
                    None => {
                        target.submit_read(job(op));
                        result_of_tag().await
                    }
                }
            }
            sys::UBLK_IO_OP_WRITE if fits => match target.write_here(job(op)) {
                WriteOutcome::Done(r) => r,
                WriteOutcome::Pending => result_of_tag().await,
            },
            sys::UBLK_IO_OP_DISCARD => {
                target.submit_parked(job(op));
                result_of_tag().await
            }
            _ => -libc::EOPNOTSUPP,
        };
        q.submit_io_commit_cmd(tag, BufDesc::Slice(buf.as_slice()), result)
            .await?;
    }
}

/// Keeps a read of the queue's eventfd in flight and hands results to tasks.
async fn completion_task(completions: &Completions, slots: &TagSlots) {
    // The kernel may still write here after this task is dropped at queue
    // teardown, so the 8 bytes live for the whole process (one per queue).
    let counter: &'static mut u64 = Box::leak(Box::new(0u64));
    let counter_ptr = counter as *mut u64 as *mut u8;
    let fd = completions.eventfd.as_raw_fd();
    loop {
        let sqe = io_uring::opcode::Read::new(io_uring::types::Fd(fd), counter_ptr, 8).build();
        if ublk_submit_sqe_async(sqe, libublk::UblkUringData::Target as u64)
            .await
            .is_err()
        {
            return;
        }
        for (tag, result) in completions.take() {
            slots.results.borrow_mut()[tag as usize] = Some(result);
            if let Some(w) = slots.wakers.borrow_mut()[tag as usize].take() {
                w.wake();
            }
        }
    }
}

/// The queue thread's body.
fn run_queue(qid: u16, dev: &UblkDev, target: &Arc<Target>) {
    let completions = match Completions::new() {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::error!("queue {qid}: cannot create its eventfd: {e}");
            return;
        }
    };
    let q = match UblkQueue::new(qid, dev) {
        Ok(q) => Rc::new(q),
        Err(e) => {
            tracing::error!("queue {qid}: cannot set up: {e}");
            return;
        }
    };
    let depth = dev.dev_info.queue_depth as usize;
    let slots = Rc::new(TagSlots {
        results: RefCell::new(vec![None; depth]),
        wakers: RefCell::new(vec![None; depth]),
    });
    let exe = Rc::new(smol::LocalExecutor::new());
    let mut tasks = Vec::new();
    for tag in q.tags() {
        let (q, target, slots, completions) = (
            q.clone(),
            target.clone(),
            slots.clone(),
            completions.clone(),
        );
        tasks.push(exe.spawn(async move {
            match tag_task(&q, tag, &target, &slots, &completions).await {
                Ok(()) | Err(UblkError::QueueIsDown) => {}
                Err(e) => tracing::error!("tag {tag}: {e}"),
            }
        }));
    }
    {
        // runs on this thread, so its eventfd read goes into this queue's ring
        let (slots, completions) = (slots.clone(), completions.clone());
        exe.spawn(async move { completion_task(&completions, &slots).await })
            .detach();
    }
    let exe2 = exe.clone();
    smol::block_on(exe.run(async move {
        let run_ops = || while exe2.try_tick() {};
        let done = || tasks.iter().all(|t| t.is_finished());
        if let Err(e) = libublk::wait_and_handle_io_events(&q, Some(20), run_ops, done).await {
            tracing::error!("queue {qid}: {e}");
        }
    }));
}

/// A running ublk device serving one lc device.
pub struct UblkDevice {
    ctrl: Arc<UblkCtrl>,
    server: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    target: Arc<Target>,
    /// lcd's run directory, holding this device's record.
    run: Dir,
    /// `/dev/ublkb<id>`.
    pub node: String,
}

impl UblkDevice {
    /// Creates ublk device number `device_id` serving `device_id` of
    /// `cache`, or takes it back when an lcd before this one left it for
    /// user recovery (a dead one it deletes and creates anew). A device of
    /// that number that lcd's record in `run_dir` does not claim is left
    /// alone and is an error. Returns once the block device is live; gives
    /// up after [`START_TIMEOUT`].
    pub fn start(
        cache: Arc<Cache>,
        device_id: u8,
        size_bytes: u64,
        run_dir: &Path,
    ) -> Result<UblkDevice, String> {
        if let Some(why) = unavailable_reason() {
            return Err(why);
        }
        guard_libublk_dir([device_id])?;
        let run = Dir::open(run_dir, Owner::current()).map_err(|e| describe(&e))?;
        // the shape of a device taken back is the kernel's, not this lcd's
        let mut shape = (nr_queues(), QUEUE_DEPTH);
        let recover = match existing(device_id) {
            None => false,
            Some(kernel) => {
                shape = (kernel.nr_queues.max(1), kernel.depth.max(1));
                if let Err(why) = claim(&run, device_id, &kernel) {
                    // whatever record there is does not describe this device
                    let _ = run.remove(&record_name(device_id));
                    return Err(why);
                }
                if kernel.state == sys::UBLK_S_DEV_DEAD {
                    delete_stale(device_id);
                    false
                } else {
                    true
                }
            }
        };
        if !recover {
            // a new device owes nothing to an old one with its number
            run.remove(&format!("ublkb{device_id}.writes"))
                .map_err(|e| describe(&e))?;
            // before the block device appears: the udev rule looks for it
            write_record(&run, device_id)?;
        }
        let ledger = Ledger::open(run_dir, device_id).map_err(|e| {
            format!(
                "cannot keep the write ledger of device {device_id} in {}: {e}",
                run_dir.display()
            )
        })?;
        if ledger.lost_writes() {
            tracing::error!(
                device = device_id,
                "the previous lcd died holding completed writes of this device that were not \
                 yet on the cache device; its next FLUSH will fail so that the file system or \
                 application sees the loss"
            );
        }
        let target = Arc::new(Target {
            gate: write_gate(&cache),
            cache,
            device_id,
            ledger,
            jobs: Mutex::new(None),
        });
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        *target.jobs.lock().unwrap_or_else(|e| e.into_inner()) = Some(job_tx);
        let workers: Vec<JoinHandle<()>> = (0..WORKERS)
            .map(|i| {
                let (rx, target) = (job_rx.clone(), target.clone());
                std::thread::Builder::new()
                    .name(format!("lc-dev{device_id}-w{i}"))
                    .spawn(move || loop {
                        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match job {
                            Ok(job) => target.serve(job),
                            Err(_) => return,
                        }
                    })
                    .expect("spawning a worker thread")
            })
            .collect();

        let features = UblkCtrl::get_features().unwrap_or(0);
        let mut ctrl_flags = sys::UBLK_F_USER_RECOVERY as u64;
        if features & sys::UBLK_F_USER_RECOVERY_REISSUE as u64 != 0 {
            ctrl_flags |= sys::UBLK_F_USER_RECOVERY_REISSUE as u64;
        }
        let (nr_queues, depth) = shape;
        let (ready_tx, ready_rx) = mpsc::channel::<Result<Arc<UblkCtrl>, String>>();
        let t = target.clone();
        let server = std::thread::Builder::new()
            .name(format!("lc-ublk{device_id}"))
            .spawn(move || {
                let fail = |what: &str, e: UblkError| {
                    let _ = ready_tx.send(Err(format!("{what}: {e}")));
                };
                if recover {
                    match UblkCtrl::new_simple(device_id as i32) {
                        Ok(old) => {
                            if let Err(e) = old.start_user_recover() {
                                return fail("starting user recovery", e);
                            }
                            old.disown();
                        }
                        Err(e) => return fail("opening the quiesced device", e),
                    }
                }
                let dev_flags = if recover {
                    UblkFlags::UBLK_DEV_F_RECOVER_DEV
                } else {
                    UblkFlags::UBLK_DEV_F_ADD_DEV
                };
                let ctrl = match UblkCtrlBuilder::default()
                    .name(TARGET_NAME)
                    .id(device_id as i32)
                    .nr_queues(nr_queues)
                    .depth(depth)
                    .io_buf_bytes(IO_BUF_BYTES)
                    .ctrl_flags(ctrl_flags)
                    .dev_flags(dev_flags)
                    .build()
                {
                    Ok(c) => Arc::new(c),
                    Err(e) => return fail("creating the ublk device", e),
                };
                let tgt_init = move |dev: &mut UblkDev| {
                    dev.tgt.dev_size = size_bytes;
                    dev.tgt.params = sys::ublk_params {
                        types: sys::UBLK_PARAM_TYPE_BASIC | sys::UBLK_PARAM_TYPE_DISCARD,
                        basic: sys::ublk_param_basic {
                            attrs: sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA,
                            logical_bs_shift: 9,
                            physical_bs_shift: 12,
                            io_opt_shift: 12,
                            io_min_shift: 12,
                            max_sectors: IO_BUF_BYTES >> 9,
                            dev_sectors: size_bytes >> 9,
                            ..Default::default()
                        },
                        discard: sys::ublk_param_discard {
                            discard_alignment: 0,
                            discard_granularity: 4096,
                            max_discard_sectors: MAX_DISCARD_SECTORS,
                            max_write_zeroes_sectors: 0,
                            max_discard_segments: 1,
                            ..Default::default()
                        },
                        ..Default::default()
                    };
                    dev.set_target_json(serde_json::json!({ "lc": { "device_id": device_id } }));
                    Ok(())
                };
                let q_target = t.clone();
                let q_fn = move |qid: u16, dev: &UblkDev| run_queue(qid, dev, &q_target);
                let handle = ctrl.clone();
                let tx = ready_tx.clone();
                let started = move |_: &UblkCtrl| {
                    let _ = tx.send(Ok(handle));
                };
                if let Err(e) = ctrl.run_target(tgt_init, q_fn, started) {
                    fail("starting the ublk device", e);
                }
                // A device stopped on purpose is deleted by whoever stopped
                // it; one left behind by a crash must stay for recovery.
                ctrl.disown();
            })
            .map_err(|e| format!("spawning the ublk server thread: {e}"))?;
        let stop_workers = |target: &Target, workers: Vec<JoinHandle<()>>| {
            target.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
            for w in workers {
                let _ = w.join();
            }
        };
        match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(ctrl)) => {
                if recover {
                    // the kernel now names this process as the server
                    if let Err(why) = write_record(&run, device_id) {
                        tracing::error!(
                            device = device_id,
                            "cannot record that this lcd serves the device ({why}); the next \
                             lcd will not take it back"
                        );
                    }
                }
                Ok(UblkDevice {
                    ctrl,
                    server: Some(server),
                    workers,
                    target,
                    run,
                    node: node_path(device_id),
                })
            }
            Ok(Err(e)) => {
                let _ = server.join();
                stop_workers(&target, workers);
                // a device left behind keeps its record, so that the next
                // start (or lcd) may delete it
                if !recover
                    && guard_libublk_dir([device_id]).is_ok()
                    && existing(device_id).is_none()
                {
                    let _ = run.remove(&record_name(device_id));
                }
                Err(format!("ublk device {device_id}: {e}"))
            }
            Err(_) => {
                // The server thread is stuck in the kernel; leave it be.
                Err(format!(
                    "ublk device {device_id} did not start within {} s: the kernel's ublk \
                     driver is not answering (see `dmesg`); lcd keeps running without it",
                    START_TIMEOUT.as_secs()
                ))
            }
        }
    }

    /// Stops the block device (in-flight requests finish first), deletes it
    /// and stops the workers. The engine's data is untouched.
    pub fn stop(mut self) {
        let id = self.target.device_id;
        // control commands go through a ring of the calling thread's own
        if let Err(e) = ensure_control_ring() {
            tracing::error!(device = id, "cannot stop ublk device: {e}");
            return;
        }
        if let Err(e) = self.ctrl.kill_dev() {
            tracing::warn!(device = id, "stopping ublk device: {e}");
        }
        if let Some(s) = self.server.take() {
            let _ = s.join();
        }
        match self.ctrl.del_dev() {
            Ok(_) => {
                if let Err(e) = self.run.remove(&record_name(id)) {
                    tracing::warn!(device = id, "{}", describe(&e));
                }
            }
            // the record stays: the next lcd may still delete the device
            Err(e) => tracing::warn!(device = id, "deleting ublk device: {e}"),
        }
        self.target.ledger.forget();
        self.target
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Sets up libublk's per-thread control ring on this thread if it has none
/// (the `UblkCtrl` constructors do it for the thread that builds them).
fn ensure_control_ring() -> Result<(), UblkError> {
    libublk::ublk_init_ctrl_task_ring(|ring| {
        if ring.is_none() {
            *ring = Some(
                io_uring::IoUring::<io_uring::squeue::Entry128>::builder()
                    .build(16)
                    .map_err(UblkError::IOError)?,
            );
        }
        Ok(())
    })
}

/// Runs `f` on its own thread and waits at most `limit` for it (the
/// kernel's ublk control commands can hang on buggy kernels).
fn with_timeout(what: String, limit: Duration, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("lc-ublk-ctl".into())
        .spawn(move || {
            f();
            let _ = tx.send(());
        });
    match spawned {
        Ok(_) => {
            if rx.recv_timeout(limit).is_err() {
                tracing::error!(
                    "{what} did not finish within {} s; going on",
                    limit.as_secs()
                );
            }
        }
        Err(e) => tracing::error!("{what}: cannot spawn a thread: {e}"),
    }
}

/// Stops and deletes ublk device `id`, which no server of this process runs.
pub fn delete_stale(id: u8) {
    with_timeout(
        format!("deleting ublk device {id}"),
        START_TIMEOUT,
        move || {
            if let Err(why) = guard_libublk_dir([id]) {
                tracing::warn!(id, "not deleting stale ublk device: {why}");
                return;
            }
            if let Ok(ctrl) = UblkCtrl::new_simple(id as i32) {
                let _ = ctrl.kill_dev();
                if let Err(e) = ctrl.del_dev() {
                    tracing::warn!(id, "deleting stale ublk device: {e}");
                } else {
                    tracing::info!(id, "deleted a stale ublk device");
                }
            }
        },
    );
}

/// Deletes lc's ublk devices that no saved device claims (left by an lcd
/// that died after its configuration changed): those with a record in
/// `run_dir` that the kernel confirms (same server pid). Records of devices
/// that are gone or not lcd's are removed; nothing else is touched.
pub fn sweep_orphans(keep: &[u8], run_dir: &Path) {
    let run = match Dir::open(run_dir, Owner::current()) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(
                "not looking for ublk devices left by an earlier lcd: {}",
                describe(&e)
            );
            return;
        }
    };
    for id in (1..=255u8).filter(|id| !keep.contains(id)) {
        let name = record_name(id);
        let recorded = match read_record(&run, id) {
            Ok(None) => continue,
            Ok(Some(pid)) => pid,
            Err(why) => {
                tracing::warn!(id, "{why}");
                let _ = run.remove(&name);
                continue;
            }
        };
        if let Err(why) = guard_libublk_dir([id]) {
            tracing::warn!(id, "not looking at ublk device {id}: {why}");
            continue;
        }
        match existing(id) {
            Some(k) if k.server_pid == recorded => {
                tracing::info!(
                    id,
                    "ublk device left by an earlier lcd and no longer configured"
                );
                delete_stale(id);
                if guard_libublk_dir([id]).is_ok() && existing(id).is_none() {
                    let _ = run.remove(&name);
                }
            }
            Some(k) => {
                tracing::info!(
                    id,
                    server_pid = k.server_pid,
                    recorded,
                    "ublk device {id} is not the one lcd recorded; left alone"
                );
                let _ = run.remove(&name);
            }
            None => {
                let _ = run.remove(&name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The request-to-engine mapping, without a kernel: requests as the
    //! queue threads hand them to workers, served by a real engine on files.

    use super::*;
    use lc_engine::{format_cache_device, CacheOptions, FileDevice};
    use std::time::Instant;

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
    fn only_lcds_own_record_naming_the_kernels_server_claims_a_device() {
        let t = tempfile::tempdir().unwrap();
        let run = Dir::open(&t.path().join("lc"), Owner::current()).unwrap();
        let me = std::process::id() as i32;
        let kernel = Existing {
            state: sys::UBLK_S_DEV_QUIESCED,
            server_pid: me,
            nr_queues: 1,
            depth: 64,
        };
        let e = claim(&run, 3, &kernel).unwrap_err();
        assert!(e.contains("lcd has no record of serving it"), "{e}");
        assert!(e.contains("neither serves nor deletes it"), "{e}");
        write_record(&run, 3).unwrap();
        claim(&run, 3, &kernel).unwrap();
        // the file the udev rule looks for
        assert!(t.path().join("lc/ublkb3").is_file());
        // the kernel names another server: not the device lcd started
        let other = Existing {
            state: sys::UBLK_S_DEV_QUIESCED,
            server_pid: me + 1,
            nr_queues: 1,
            depth: 64,
        };
        let e = claim(&run, 3, &other).unwrap_err();
        assert!(e.contains(&format!("lcd recorded pid {me}")), "{e}");
        // lcd's own device left DEAD (the kernel's pid -1) is lcd's to delete
        let dead = Existing {
            state: sys::UBLK_S_DEV_DEAD,
            server_pid: -1,
            nr_queues: 1,
            depth: 64,
        };
        claim(&run, 3, &dead).unwrap();
        // but not without lcd's record
        let e = claim(&run, 7, &dead).unwrap_err();
        assert!(e.contains("lcd has no record of serving it"), "{e}");
        // records lcd did not write
        run.write_record("ublkb4", b"{\"device_id\":3,\"server_pid\":5}")
            .unwrap();
        let e = read_record(&run, 4).unwrap_err();
        assert!(e.contains("names device 3"), "{e}");
        run.write_record("ublkb5", b"{\"target\":{\"name\":\"lc\"}}")
            .unwrap();
        let e = read_record(&run, 5).unwrap_err();
        assert!(e.contains("not its JSON"), "{e}");
        std::os::unix::fs::symlink(t.path().join("lc/ublkb3"), t.path().join("lc/ublkb6")).unwrap();
        let e = claim(&run, 6, &kernel).unwrap_err();
        assert!(e.contains("a symlink"), "{e}");
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
