//! Device models the benchmark wraps around files: [`ThrottledDevice`] (an
//! SSD's write bandwidth) and [`HddModel`] (a hard disk's seeks, rotation
//! and bandwidth). Both only ever delay an I/O; they never complete one
//! earlier than the file under them does.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lc_engine::BlockDevice;

use crate::MIB;

/// A cache device with a limited write bandwidth: a model of an SSD that
/// writes `rate` bytes per second, wrapped around a faster device.
///
/// The device is one queue: each write of n bytes reserves the next n / rate
/// seconds of it, starting when the previous reservation ends (or now, if the
/// device is idle), is done on the inner device, and then returns no earlier
/// than the end of its reservation. A write thus never completes before the
/// modelled bandwidth allows (nor before the inner device completes it).
/// Reads, flushes and discards pass through untimed.
pub struct ThrottledDevice {
    inner: Arc<dyn BlockDevice>,
    /// Bytes per second.
    rate: f64,
    /// End of the last reservation: when the modelled device is free again.
    next_free: Mutex<Instant>,
    /// Time the modelled device sat idle between its first write and its
    /// last, in ns (added to [`THROTTLE_IDLE_NANOS`] when dropped).
    idle_nanos: AtomicU64,
    /// Whether a write was made yet (idle time counts from the first).
    started: AtomicU64,
}

/// Idle time of every dropped [`ThrottledDevice`] so far, ns: time between
/// two writes during which the modelled device had nothing to transfer.
pub static THROTTLE_IDLE_NANOS: AtomicU64 = AtomicU64::new(0);

impl Drop for ThrottledDevice {
    fn drop(&mut self) {
        THROTTLE_IDLE_NANOS.fetch_add(self.idle_nanos.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// Seconds the throttled devices dropped so far sat idle (for differences).
pub fn throttle_idle() -> f64 {
    THROTTLE_IDLE_NANOS.load(Ordering::Relaxed) as f64 / 1e9
}

impl ThrottledDevice {
    /// Wraps `inner`, limiting its writes to `mib_per_s` MiB/s.
    pub fn new(inner: Arc<dyn BlockDevice>, mib_per_s: u64) -> Self {
        ThrottledDevice {
            inner,
            rate: (mib_per_s * MIB) as f64,
            next_free: Mutex::new(Instant::now()),
            idle_nanos: AtomicU64::new(0),
            started: AtomicU64::new(0),
        }
    }

    /// Runs `write` of `bytes` bytes and returns once both it is done and
    /// the modelled device has had the time to transfer those bytes.
    fn paced(&self, bytes: usize, write: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let busy = Duration::from_secs_f64(bytes as f64 / self.rate);
        let done_at = {
            // an Instant cannot be left half-updated: a poisoned lock is fine
            let mut next_free = self
                .next_free
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            if now > *next_free && self.started.swap(1, Ordering::Relaxed) == 1 {
                let idle = (now - *next_free).as_nanos() as u64;
                self.idle_nanos.fetch_add(idle, Ordering::Relaxed);
            }
            *next_free = (*next_free).max(now) + busy;
            *next_free
        };
        let res = write();
        sleep_until(done_at);
        res
    }
}

impl BlockDevice for ThrottledDevice {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.paced(buf.len(), || self.inner.write_at(buf, offset))
    }

    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        let bytes = bufs.iter().map(|b| b.len()).sum();
        self.paced(bytes, || self.inner.write_vectored_at(bufs, offset))
    }

    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.discard(offset, len)
    }

    fn describe(&self) -> String {
        format!(
            "{} (writes throttled to {} MiB/s)",
            self.inner.describe(),
            self.rate / MIB as f64
        )
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// Parameters of [`HddModel`].
#[derive(Clone, Copy, Debug)]
pub struct HddParams {
    /// Media transfer rate, MiB/s.
    pub mib_per_s: u64,
    /// Spindle speed; the model charges half a revolution per access.
    pub rpm: u64,
    /// Seek time across the whole modelled disk, ms.
    pub full_seek_ms: f64,
    /// Shortest seek (to the next track), ms.
    pub min_seek_ms: f64,
}

/// A hard disk model around a faster device: one actuator, requests served
/// one at a time, an elevator choosing among the queued ones.
///
/// Service time of a request of `len` bytes at `offset`, the head being at
/// the end of the previous request:
///
/// * it continues the previous request exactly (sequential): `len / rate`;
/// * otherwise `seek(d) + half a revolution + len / rate`, where `d` is the
///   distance as a fraction of the modelled disk (the size of the file) and
///   `seek(d) = min_seek + (full_seek - min_seek) * sqrt(d)` (the usual
///   square-root shape: short seeks are dominated by acceleration).
///
/// With the defaults (150 MiB/s, 7200 rpm, 0.5 ms to 15 ms seeks) a random
/// access over the whole disk costs 8.2 ms seek (the mean of the formula)
/// + 4.2 ms rotation: about 80 random 4 KiB I/Os per second one at a time,
///   about 140 with 32 queued (the elevator shortens seeks, as the kernel's
///   scheduler and the drive's NCQ do; rotational ordering is not modelled,
///   so a real drive with NCQ would do somewhat better at depth 32).
///
/// When the disk is idle, the next request is the queued one at or after
/// the head with the lowest offset, else the lowest (C-LOOK). Its modelled
/// start is when the disk became free or when the request arrived, whichever
/// is later, so thread wake-up delays are not charged to the disk. The
/// request's I/O is then done on the inner device, and it returns no earlier
/// than its modelled end. Reads and writes are both modelled; flushes and
/// discards cost nothing (the model has no volatile write cache: every
/// write is on the platter when it completes).
pub struct HddModel {
    inner: Arc<dyn BlockDevice>,
    p: HddParams,
    capacity: f64,
    state: Mutex<HddState>,
    cv: Condvar,
    /// Bytes written through the model.
    pub written: AtomicU64,
    /// I/Os (reads and writes) served.
    pub ios: AtomicU64,
}

struct HddState {
    /// Byte position after the last request served.
    head: u64,
    /// When the modelled disk is free again.
    busy_until: Instant,
    /// Queued requests: (offset, ticket) -> (len, arrival).
    queue: BTreeMap<(u64, u64), (u64, Instant)>,
    /// Requests chosen, by ticket: their modelled end.
    granted: BTreeMap<u64, Instant>,
    next_ticket: u64,
}

impl HddModel {
    /// Wraps `inner`; the modelled disk is as large as `inner`.
    pub fn new(inner: Arc<dyn BlockDevice>, p: HddParams) -> Self {
        HddModel {
            capacity: inner.size_bytes() as f64,
            inner,
            p,
            state: Mutex::new(HddState {
                head: 0,
                busy_until: Instant::now(),
                queue: BTreeMap::new(),
                granted: BTreeMap::new(),
                next_ticket: 0,
            }),
            cv: Condvar::new(),
            written: AtomicU64::new(0),
            ios: AtomicU64::new(0),
        }
    }

    /// Modelled service time of `len` bytes at `offset` with the head at `head`.
    pub fn service(&self, head: u64, offset: u64, len: u64) -> Duration {
        let transfer = len as f64 / (self.p.mib_per_s * MIB) as f64;
        if offset == head {
            return Duration::from_secs_f64(transfer);
        }
        let d = (offset.abs_diff(head) as f64 / self.capacity).min(1.0);
        let seek =
            (self.p.min_seek_ms + (self.p.full_seek_ms - self.p.min_seek_ms) * d.sqrt()) / 1000.0;
        let rotation = 60.0 / self.p.rpm as f64 / 2.0;
        Duration::from_secs_f64(seek + rotation + transfer)
    }

    /// Queues a request, waits for the elevator to choose it, runs `io`,
    /// and returns at its modelled end.
    fn access(&self, offset: u64, len: u64, io: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let lock = || self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut st = lock();
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.queue.insert((offset, ticket), (len, Instant::now()));
        let done_at = loop {
            if let Some(end) = st.granted.remove(&ticket) {
                break end;
            }
            let now = Instant::now();
            if now >= st.busy_until {
                let head = st.head;
                let key = st
                    .queue
                    .range((head, 0)..)
                    .next()
                    .or_else(|| st.queue.iter().next())
                    .map(|(k, _)| *k)
                    .expect("our own request is queued");
                let (len, arrival) = st.queue.remove(&key).expect("just found");
                let start = st.busy_until.max(arrival);
                let end = start + self.service(head, key.0, len);
                st.busy_until = end;
                st.head = key.0 + len;
                st.granted.insert(key.1, end);
                self.cv.notify_all();
                continue;
            }
            let wait = st.busy_until - now;
            st = self
                .cv
                .wait_timeout(st, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        };
        drop(st);
        let res = io();
        self.ios.fetch_add(1, Ordering::Relaxed);
        sleep_until(done_at);
        res
    }
}

impl BlockDevice for HddModel {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let len = buf.len() as u64;
        self.access(offset, len, || self.inner.read_at(buf, offset))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let len = buf.len() as u64;
        self.access(offset, len, || self.inner.write_at(buf, offset))?;
        self.written.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        let len = bufs.iter().map(|b| b.len() as u64).sum();
        self.access(offset, len, || self.inner.write_vectored_at(bufs, offset))?;
        self.written.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.discard(offset, len)
    }

    fn describe(&self) -> String {
        format!(
            "{} (modelled HDD: {} MiB/s, {} rpm, seeks {}..{} ms)",
            self.inner.describe(),
            self.p.mib_per_s,
            self.p.rpm,
            self.p.min_seek_ms,
            self.p.full_seek_ms
        )
    }
}

/// Flushes of every [`FlushTimed`] device so far.
pub static FLUSHES: AtomicU64 = AtomicU64::new(0);
/// Time spent in those flushes, ns.
pub static FLUSH_NANOS: AtomicU64 = AtomicU64::new(0);

/// A pass-through device that counts its flushes and the time they take
/// (in [`FLUSHES`] and [`FLUSH_NANOS`]): how long the cache device was
/// busy making writes durable.
pub struct FlushTimed(pub Arc<dyn BlockDevice>);

impl BlockDevice for FlushTimed {
    fn size_bytes(&self) -> u64 {
        self.0.size_bytes()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_at(buf, offset)
    }

    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        self.0.write_vectored_at(bufs, offset)
    }

    fn flush(&self) -> io::Result<()> {
        let start = Instant::now();
        let res = self.0.flush();
        FLUSHES.fetch_add(1, Ordering::Relaxed);
        FLUSH_NANOS.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        res
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.0.discard(offset, len)
    }

    fn describe(&self) -> String {
        self.0.describe()
    }
}

/// (flushes, seconds in flushes) so far, for differences.
pub fn flush_counters() -> (u64, f64) {
    (
        FLUSHES.load(Ordering::Relaxed),
        FLUSH_NANOS.load(Ordering::Relaxed) as f64 / 1e9,
    )
}

/// A backing disk with a fixed latency per write and a queue depth, like
/// dm-delay over a disk with `depth` command tags: up to `depth` writes are
/// in service at once, each returns no earlier than `latency` after its
/// service began (and not before the inner device completed it); further
/// writes wait, first come first served, for a free tag. Reads, flushes and
/// discards pass through untimed. The model's own random-write rate is
/// thus at most `depth / latency`.
pub struct LatencyModel {
    inner: Arc<dyn BlockDevice>,
    latency: Duration,
    depth: usize,
    /// Tags in use, and the next ticket to serve (FIFO).
    tags: Mutex<(usize, u64, u64)>,
    cv: Condvar,
    /// Writes served.
    pub writes: AtomicU64,
}

impl LatencyModel {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn BlockDevice>, latency: Duration, depth: usize) -> Self {
        LatencyModel {
            inner,
            latency,
            depth: depth.max(1),
            tags: Mutex::new((0, 0, 0)),
            cv: Condvar::new(),
            writes: AtomicU64::new(0),
        }
    }

    fn timed(&self, write: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        {
            let mut t = self.tags.lock().unwrap_or_else(PoisonError::into_inner);
            let ticket = t.2;
            t.2 += 1;
            while t.0 >= self.depth || t.1 != ticket {
                t = self.cv.wait(t).unwrap_or_else(PoisonError::into_inner);
            }
            t.0 += 1;
            t.1 += 1;
            self.cv.notify_all();
        }
        let start = Instant::now();
        let res = write();
        sleep_until(start + self.latency);
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut t = self.tags.lock().unwrap_or_else(PoisonError::into_inner);
        t.0 -= 1;
        self.cv.notify_all();
        res
    }
}

impl BlockDevice for LatencyModel {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.timed(|| self.inner.write_at(buf, offset))
    }

    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        self.timed(|| self.inner.write_vectored_at(bufs, offset))
    }

    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.discard(offset, len)
    }

    fn describe(&self) -> String {
        format!(
            "{} (every write {} ms, {} at once)",
            self.inner.describe(),
            self.latency.as_millis(),
            self.depth
        )
    }
}
