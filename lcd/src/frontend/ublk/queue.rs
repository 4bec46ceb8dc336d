//! The queue thread of a ublk device: one per queue, each with its own
//! io_uring (libublk's), a task per tag that fetches a request, has it
//! served and commits the result, and a task that keeps a read of the
//! queue's eventfd in flight so results finished on other threads wake
//! the thread.
//!
//! A READ is resolved by the engine into a read plan ([`lc_engine::Cache::plan_read`]):
//! lines in RAM are copied at once, and the plan's device reads (cache
//! device, backing device) are submitted through this thread's ring, into
//! the request's own pages under zero copy ([`super::data_path`]); when
//! they have landed the plan is finished (overlay, pins), what lcd holds
//! of the read is handed to the request, and the request committed. A
//! queue thread never waits for room in the cache.

use std::cell::RefCell;
use std::future::Future;
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use lc_engine::{DeviceRead, ReadPlan, ReadTarget};
use libublk::helpers::IoBuf;
use libublk::io::{UblkDev, UblkQueue};
use libublk::uring_async::ublk_submit_sqe_async;
use libublk::{sys, UblkError};

use super::data_path::{DataPath, Registered};
use super::requests::{errno_of, Completions, Job, Target, WriteOutcome};
use super::IO_BUF_BYTES;

/// Per-queue-thread table of results not yet picked up by their tasks.
pub(super) struct TagSlots {
    results: RefCell<Vec<Option<i32>>>,
    wakers: RefCell<Vec<Option<Waker>>>,
}

/// Resolves when the queue thread has received the result of `tag`.
pub(super) struct TagResult<'a> {
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

/// Where a ring read puts its bytes.
#[derive(Debug, Clone, Copy)]
pub(super) enum ReadInto {
    /// lcd's memory: the tag's buffer or a read plan's scratch.
    Memory(*mut u8),
    /// The request's registered pages (zero copy), from byte `at` of the
    /// request.
    Request { registered: Registered, at: usize },
}

/// Reads `len` bytes at `offset` of `fd` into `into` through the queue
/// thread's io_uring, resubmitting the rest after a short read.
pub(super) async fn ring_read(
    fd: RawFd,
    into: ReadInto,
    len: usize,
    offset: u64,
) -> std::io::Result<()> {
    let mut done = 0usize;
    while done < len {
        let (fd, rest, at) = (
            io_uring::types::Fd(fd),
            (len - done) as u32,
            offset + done as u64,
        );
        let sqe = match into {
            ReadInto::Memory(ptr) => {
                // SAFETY: `ptr..ptr + len` is a live buffer of the request
                // (the tag's buffer or its read plan's scratch) that nothing
                // else touches until this read has completed: the tag's task
                // awaits it before it finishes the plan or commits.
                let ptr = unsafe { ptr.add(done) };
                io_uring::opcode::Read::new(fd, ptr, rest)
                    .offset(at)
                    .build()
            }
            // For pages the kernel registered, the "address" is the byte
            // offset in the request; the kernel checks it against the
            // request's length.
            ReadInto::Request { registered, at: o } => {
                io_uring::opcode::ReadFixed::new(fd, (o + done) as *mut u8, rest, registered.index)
                    .offset(at)
                    .build()
            }
        };
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

/// Where device read `r` of `plan` puts its bytes: the request's
/// `registered` pages for a read into the caller's buffer under zero copy,
/// else lcd's memory (`out` or the plan's scratch).
fn read_into(
    plan: &mut ReadPlan,
    r: &DeviceRead,
    out: &mut [u8],
    registered: Option<Registered>,
) -> ReadInto {
    match (r.target, registered) {
        (ReadTarget::Out(at), Some(registered)) => ReadInto::Request { registered, at },
        _ => ReadInto::Memory(plan.target_mut(r, out).as_mut_ptr()),
    }
}

/// A READ served on the queue thread.
pub(super) struct ReadDone {
    /// The request's result.
    pub(super) result: i32,
    /// The byte ranges of the request whose bytes are in lcd's buffer:
    /// under zero copy what the plan had in memory
    /// ([`lc_engine::ReadPlan::from_memory`]), device reads having put the
    /// rest straight into the request's pages; `None`: the whole request.
    pub(super) from_memory: Option<Vec<Range<usize>>>,
}

/// A READ on the queue thread: planned by the engine, its device reads
/// submitted in this queue's ring, into the request's `registered` pages
/// where it has them. `None` when a device of the plan has no descriptor
/// (the request then goes to a worker).
pub(super) async fn read_here(
    target: &Target,
    sector: u64,
    out: &mut [u8],
    registered: Option<Registered>,
) -> Option<ReadDone> {
    let mut plan = match target.cache.plan_read(target.device_id, sector, out) {
        Ok(p) => p,
        Err(e) => {
            return Some(ReadDone {
                result: errno_of(&e),
                from_memory: None,
            })
        }
    };
    let from_memory = registered.map(|_| plan.from_memory());
    let failed = if let [only] = *plan.reads() {
        // the common hit or miss: one device read, awaited as it is
        let fd = plan.raw_fd(only.source)?;
        let into = read_into(&mut plan, &only, out, registered);
        let done = ring_read(fd, into, only.len, only.offset).await;
        done.err().map(|e| (only.source, e))
    } else {
        let reads = plan.reads().to_vec();
        let mut fds = Vec::with_capacity(reads.len());
        for r in &reads {
            fds.push(plan.raw_fd(r.source)?);
        }
        let mut pending = Vec::with_capacity(reads.len());
        for (r, fd) in reads.iter().zip(fds) {
            let into = read_into(&mut plan, r, out, registered);
            pending.push(ring_read(fd, into, r.len, r.offset));
        }
        let results = futures_util::future::join_all(pending).await;
        (reads.iter().zip(results)).find_map(|(r, done)| done.err().map(|e| (r.source, e)))
    };
    let result = match plan.finish(out, failed) {
        Ok(()) => out.len() as i32,
        Err(e) => {
            tracing::warn!(
                device = target.device_id,
                "read failed: {}",
                lc_engine::error::describe(&e)
            );
            errno_of(&e)
        }
    };
    Some(ReadDone {
        result,
        from_memory,
    })
}

/// Runs one tag: fetch a request, have it served, commit, repeat.
pub(super) async fn tag_task(
    q: &UblkQueue<'_>,
    tag: u16,
    target: &Arc<Target>,
    slots: &TagSlots,
    completions: &Arc<Completions>,
    path: DataPath,
) -> Result<(), UblkError> {
    let buf = IoBuf::<u8>::new(IO_BUF_BYTES as usize);
    let copied = path == DataPath::Copied;
    q.submit_io_prep_cmd(
        tag,
        path.buf_desc(tag, buf.as_slice()),
        0,
        copied.then_some(&buf),
    )
    .await?;
    let result_of_tag = || TagResult {
        slots,
        tag: tag as usize,
    };
    loop {
        let iod = q.get_iod(tag);
        let op = iod.op_flags & 0xff;
        let fua = iod.op_flags & sys::UBLK_IO_F_FUA != 0;
        let registered = path.registered(tag, iod.op_flags);
        let (sector, nr_sectors) = (iod.start_sector, iod.nr_sectors);
        let bytes = nr_sectors as usize * 512;
        let fits = bytes <= IO_BUF_BYTES as usize;
        let job = |op| Job {
            tag,
            op,
            fua,
            sector,
            nr_sectors,
            buf: buf.as_mut_ptr() as usize,
            completions: completions.clone(),
        };
        // SAFETY: the tag's buffer holds IO_BUF_BYTES ≥ `bytes` when `fits`
        // and is this task's alone until the commit below (a worker given
        // the request uses it only until it hands back the result).
        let data = || unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr(), bytes) };
        let result = match op {
            sys::UBLK_IO_OP_FLUSH => {
                target.flush(tag, completions.clone());
                result_of_tag().await
            }
            sys::UBLK_IO_OP_READ if fits => {
                let done = match read_here(target, sector, data(), registered).await {
                    Some(done) => done,
                    None => {
                        target.submit_read(job(op));
                        ReadDone {
                            result: result_of_tag().await,
                            from_memory: None,
                        }
                    }
                };
                if done.result > 0 {
                    deliver(
                        target,
                        &path,
                        tag,
                        data(),
                        done.from_memory.as_deref(),
                        done.result,
                    )
                } else {
                    done.result
                }
            }
            sys::UBLK_IO_OP_WRITE if fits => match path.fetch_write_data(tag, data()) {
                Ok(()) => match target.write_here(job(op)) {
                    WriteOutcome::Done(r) => r,
                    WriteOutcome::Pending => result_of_tag().await,
                },
                Err(e) => {
                    tracing::warn!(
                        device = target.device_id,
                        "cannot take a write's data from the ublk device: {e}"
                    );
                    -libc::EIO
                }
            },
            sys::UBLK_IO_OP_DISCARD => {
                target.submit_parked(job(op));
                result_of_tag().await
            }
            _ => -libc::EOPNOTSUPP,
        };
        q.submit_io_commit_cmd(tag, path.buf_desc(tag, buf.as_slice()), result)
            .await?;
    }
}

/// Puts a READ's bytes lcd holds into the request (zero copy); `result`
/// when they are there, EIO when they could not be.
fn deliver(
    target: &Target,
    path: &DataPath,
    tag: u16,
    data: &[u8],
    from_memory: Option<&[Range<usize>]>,
    result: i32,
) -> i32 {
    match path.deliver_read_data(tag, data, from_memory) {
        Ok(()) => result,
        Err(e) => {
            tracing::warn!(
                device = target.device_id,
                "cannot hand a read's data to the ublk device: {e}"
            );
            -libc::EIO
        }
    }
}

/// Keeps a read of the queue's eventfd in flight and hands results to tasks.
pub(super) async fn completion_task(completions: &Completions, slots: &TagSlots) {
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
pub(super) fn run_queue(qid: u16, dev: &UblkDev, target: &Arc<Target>) {
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
    // fds[0] is /dev/ublkcN, open as long as `dev`
    let path = DataPath::new(dev.dev_info.flags, dev.tgt.fds[0], qid);
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
            match tag_task(&q, tag, &target, &slots, &completions, path).await {
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
