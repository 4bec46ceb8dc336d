//! The flush daemon: the only thread that writes the cache device.
//!
//! It writes sealed segments in id order, flushes the device when a FLUSH
//! waits or when it runs out of work, completes waiting FLUSHes, commits the
//! superblock record and discards written-back segments. Keeping every cache
//! device write in one thread is what makes slot reuse safe: a discard of an
//! old segment can never overtake the write of the new one in the same slot.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use crate::cache::{lock, retry_io, Inner, Waiter};
use crate::device::AlignedBuf;
use crate::error::{DeviceRole, Error, Result};
use crate::format::*;
use crate::stats::ErrorCounter;

/// Work for the flush daemon.
pub(crate) enum FlushJob {
    /// Write this sealed segment.
    Segment {
        /// Its id.
        id: u64,
        /// Its slot on the device.
        slot: u64,
        /// Header block (metablocks filled in, checksum not yet).
        header: AlignedBuf,
        /// Data lines (shared with readers until written).
        data: Arc<AlignedBuf>,
        /// Valid lines.
        length: usize,
    },
    /// A FLUSH waits on already-sealed segments: make them durable.
    Barrier,
    /// Write the record block; answer if a reply channel is given.
    Commit(Option<Sender<Result<()>>>),
    /// Exit.
    Stop,
}

/// The device is flushed at least this often (in segments) under a steady
/// stream of writes, which bounds how many segments recovery must verify
/// in full after a crash.
const FLUSH_EVERY_SEGMENTS: u64 = 16;

pub(crate) fn run(inner: Arc<Inner>, rx: Receiver<FlushJob>) {
    let mut queue: VecDeque<FlushJob> = VecDeque::new();
    loop {
        if queue.is_empty() {
            match rx.recv() {
                Ok(j) => queue.push_back(j),
                Err(_) => return,
            }
        }
        while let Ok(j) = rx.try_recv() {
            queue.push_back(j);
        }
        let job = queue.pop_front().expect("non-empty");
        match job {
            FlushJob::Segment {
                id,
                slot,
                mut header,
                data,
                length,
            } => {
                write_segment(&inner, id, slot, &mut header, &data, length);
                let mut st = lock(&inner.state);
                st.last_flushed_id = id;
                st.ram[slot as usize] = None;
                // readers copy under the lock and never keep the Arc: ours is the last
                if let Ok(b) = Arc::try_unwrap(data) {
                    st.free_bufs.push(b);
                }
                let someone_waits = st.waiters.iter().any(|w| w.target <= id);
                let lag = id - st.durable_id;
                drop(st);
                inner.progress_cv.notify_all();
                let more_segments = queue.iter().any(|j| matches!(j, FlushJob::Segment { .. }));
                if someone_waits || !more_segments || lag >= FLUSH_EVERY_SEGMENTS {
                    make_durable(&inner);
                }
            }
            FlushJob::Barrier => make_durable(&inner),
            FlushJob::Commit(reply) => {
                let res = commit(&inner);
                if let Some(tx) = reply {
                    let _ = tx.send(res);
                } else if let Err(e) = res {
                    tracing::error!(
                        cache = inner.cache_id,
                        "periodic superblock commit failed: {e}"
                    );
                }
            }
            FlushJob::Stop => return,
        }
    }
}

/// Fails every FLUSH waiting on a segment at or after `from_id`.
fn fail_waiters(inner: &Inner, from_id: u64, what: &str) {
    let failed: Vec<Waiter> = {
        let mut st = lock(&inner.state);
        let (fail, keep) = std::mem::take(&mut st.waiters)
            .into_iter()
            .partition(|w| w.target >= from_id);
        st.waiters = keep;
        fail
    };
    for w in failed {
        (w.done)(Err(Error::io(
            DeviceRole::Cache,
            what,
            std::io::Error::from_raw_os_error(libc::EIO),
        )));
    }
}

/// Retries a cache-device write or flush (see [`retry_io`]); every failure
/// is counted and fails the FLUSHes waiting on segment `fail_from` or later.
fn retry(
    inner: &Inner,
    what: &str,
    fail_from: u64,
    op: impl FnMut() -> std::io::Result<()>,
) -> bool {
    let on_error = |e: &std::io::Error| {
        inner.stats.error(ErrorCounter::CacheWrite);
        tracing::error!(cache = inner.cache_id, "{what} failed: {e}; retrying");
        fail_waiters(inner, fail_from, what);
    };
    retry_io(inner, 3, on_error, op)
}

fn write_segment(
    inner: &Inner,
    id: u64,
    slot: u64,
    header: &mut AlignedBuf,
    data: &AlignedBuf,
    length: usize,
) {
    // Before slot reuse, the record must say the slot's old segment is
    // written back, or a crash would make recovery stop at the overwritten id.
    if id > inner.nr_segments && lock(&inner.state).persisted_migrated_id < id - inner.nr_segments {
        if let Err(e) = commit(inner) {
            tracing::error!(
                cache = inner.cache_id,
                "superblock commit before slot reuse failed: {e}"
            );
        }
    }
    let data = &data[..length * LINE_SIZE];
    SegmentHeader::seal(header, data);
    inner.wait_unpinned(slot);
    let off = segment_offset(slot);
    // header and data land in one sequential write
    retry(inner, "writing a segment", id, || {
        inner.dev.write_vectored_at(&[header, data], off)
    });
}

/// Flushes the cache device and completes the FLUSHes it satisfies.
fn make_durable(inner: &Inner) {
    let written = lock(&inner.state).last_flushed_id;
    if lock(&inner.state).durable_id < written
        && !retry(inner, "flushing the cache device", 0, || inner.dev.flush())
    {
        return;
    }
    let done: Vec<Waiter> = {
        let mut st = lock(&inner.state);
        st.durable_id = st.durable_id.max(written);
        let durable = st.durable_id;
        let (done, keep) = std::mem::take(&mut st.waiters)
            .into_iter()
            .partition(|w| w.target <= durable);
        st.waiters = keep;
        done
    };
    for w in done {
        (w.done)(Ok(()));
    }
    inner.progress_cv.notify_all();
    inner.migrate_cv.notify_all();
}

/// Writes the record block with the current `last_migrated_segment_id`,
/// flushes, then discards the segments that became written back.
fn commit(inner: &Inner) -> Result<()> {
    let (migrated, seq, old, durable) = {
        let st = lock(&inner.state);
        (
            st.last_migrated_id,
            st.record_sequence + 1,
            st.persisted_migrated_id,
            st.durable_id,
        )
    };
    let record = SuperBlockRecord {
        sequence: seq,
        last_migrated_segment_id: migrated,
        uuid: inner.sb.uuid,
        durable_segment_id: durable,
    };
    let mut block = AlignedBuf::zeroed(LINE_SIZE);
    block.copy_from_slice(&record.to_block());
    let io = |e| {
        inner.stats.error(ErrorCounter::CacheWrite);
        Error::io(DeviceRole::Cache, "committing the superblock record", e)
    };
    inner
        .dev
        .write_at(&block, RECORD_OFFSETS[(seq % 2) as usize])
        .map_err(io)?;
    inner.dev.flush().map_err(io)?;
    let slots: Vec<u64> = {
        let mut st = lock(&inner.state);
        st.record_sequence = seq;
        st.persisted_migrated_id = st.persisted_migrated_id.max(migrated);
        let cur_slot = st.current.as_ref().map(|c| c.slot);
        // a slot is discarded once, however far the record moved
        (old.max(migrated.saturating_sub(inner.nr_segments)) + 1..=migrated)
            .map(|id| slot_of(id, inner.nr_segments))
            .filter(|&s| {
                st.slot_ids[s as usize] <= migrated
                    && st.ram[s as usize].is_none()
                    && cur_slot != Some(s)
            })
            .collect()
    };
    for slot in slots {
        inner.wait_unpinned(slot);
        if let Err(e) = inner.dev.discard(segment_offset(slot), SEGMENT_SIZE as u64) {
            tracing::warn!(
                cache = inner.cache_id,
                "discarding written-back segment failed: {e}"
            );
        }
    }
    lock(&inner.state).last_commit = std::time::Instant::now();
    Ok(())
}
