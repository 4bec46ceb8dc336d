//! Devices for tests: an in-memory disk with a volatile write cache that can
//! lose power ([`SimDisk`], [`PowerDomain`]) and a fault-injecting wrapper
//! that also models a process crash ([`FaultyDevice`]).
//!
//! They implement [`BlockDevice`] exactly as the engine uses real devices, so
//! every engine path runs unchanged over them.
//!
//! [`pause_next_line_fetch`] stops the engine itself at one race window
//! (a cached line just read from the cache device, the cache mutex not yet
//! taken again) so a test can run a whole interleaving through it.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use crate::device::BlockDevice;

/// Disks that lose power together.
///
/// Every I/O of every [`SimDisk`] in a domain holds the domain's lock for
/// reading, so [`PowerDomain::cut`] sees all disks at one instant.
#[derive(Default)]
pub struct PowerDomain {
    dead: RwLock<bool>,
}

impl PowerDomain {
    /// A new domain with the power on.
    pub fn new() -> Arc<Self> {
        Arc::new(PowerDomain::default())
    }

    /// True once the power has been cut.
    pub fn is_dead(&self) -> bool {
        *self.dead.read().expect("power lock")
    }

    /// Cuts the power: from now on the domain's disks drop writes and read
    /// zeros. Returns, for each disk given, the image a restarted machine
    /// would find: everything flushed, plus a random subset of the writes
    /// since the last flush applied in random order, one of them possibly
    /// torn at 512 B granularity.
    pub fn cut(&self, disks: &[&SimDisk], rng: &mut impl rand::Rng) -> Vec<Vec<u8>> {
        let mut dead = self.dead.write().expect("power lock");
        *dead = true;
        disks.iter().map(|d| d.image_after_cut(rng)).collect()
    }
}

struct DiskState {
    /// What survives a power cut for sure.
    durable: Vec<u8>,
    /// What the disk returns to reads (durable + pending).
    current: Vec<u8>,
    /// Writes since the last flush, in issue order.
    pending: Vec<(u64, Vec<u8>)>,
}

/// An in-memory disk with a volatile write cache.
pub struct SimDisk {
    domain: Arc<PowerDomain>,
    state: Mutex<DiskState>,
    size: u64,
    /// Number of writes the disk has served.
    pub writes: AtomicU64,
}

impl SimDisk {
    /// A zero-filled disk of `size` bytes in `domain`.
    pub fn new(domain: Arc<PowerDomain>, size: u64) -> Arc<Self> {
        Self::from_image(domain, vec![0; size as usize])
    }

    /// A disk whose durable content is `image`.
    pub fn from_image(domain: Arc<PowerDomain>, image: Vec<u8>) -> Arc<Self> {
        let size = image.len() as u64;
        Arc::new(SimDisk {
            domain,
            state: Mutex::new(DiskState {
                durable: image.clone(),
                current: image,
                pending: Vec::new(),
            }),
            size,
            writes: AtomicU64::new(0),
        })
    }

    /// A copy of what reads return now.
    pub fn snapshot(&self) -> Vec<u8> {
        self.state.lock().expect("disk").current.clone()
    }

    /// The disk's volatile write cache fails to reach the media (what a
    /// failed flush may mean): every write since the last flush is lost,
    /// and reads return the durable content again.
    pub fn lose_volatile_writes(&self) {
        let mut st = self.state.lock().expect("disk");
        st.pending.clear();
        st.current = st.durable.clone();
    }

    fn image_after_cut(&self, rng: &mut impl rand::Rng) -> Vec<u8> {
        use rand::seq::SliceRandom;
        let st = self.state.lock().expect("disk");
        let mut image = st.durable.clone();
        let mut survivors: Vec<&(u64, Vec<u8>)> =
            st.pending.iter().filter(|_| rng.gen_bool(0.5)).collect();
        survivors.shuffle(rng);
        let torn = if !survivors.is_empty() && rng.gen_bool(0.5) {
            Some(rng.gen_range(0..survivors.len()))
        } else {
            None
        };
        for (i, (off, data)) in survivors.iter().enumerate() {
            let off = *off as usize;
            if torn == Some(i) {
                for (s, chunk) in data.chunks(512).enumerate() {
                    if rng.gen_bool(0.5) {
                        image[off + s * 512..off + s * 512 + chunk.len()].copy_from_slice(chunk);
                    }
                }
            } else {
                image[off..off + data.len()].copy_from_slice(data);
            }
        }
        image
    }

    fn check(&self, offset: u64, len: usize) -> io::Result<()> {
        if offset % 512 != 0 || len % 512 != 0 || offset + len as u64 > self.size {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(())
    }
}

impl BlockDevice for SimDisk {
    fn size_bytes(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check(offset, buf.len())?;
        let dead = self.domain.dead.read().expect("power lock");
        if *dead {
            buf.fill(0);
            return Ok(());
        }
        let st = self.state.lock().expect("disk");
        buf.copy_from_slice(&st.current[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check(offset, buf.len())?;
        let dead = self.domain.dead.read().expect("power lock");
        if *dead {
            return Ok(());
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock().expect("disk");
        st.current[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
        st.pending.push((offset, buf.to_vec()));
        Ok(())
    }

    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        // one request: a power cut keeps, drops or tears it as a whole
        self.write_at(&bufs.concat(), offset)
    }

    fn flush(&self) -> io::Result<()> {
        let dead = self.domain.dead.read().expect("power lock");
        if *dead {
            return Ok(());
        }
        let mut st = self.state.lock().expect("disk");
        let pending = std::mem::take(&mut st.pending);
        for (off, data) in pending {
            st.durable[off as usize..off as usize + data.len()].copy_from_slice(&data);
        }
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let len = len.min(self.size.saturating_sub(offset));
        self.write_at(&vec![0; len as usize], offset)
    }

    fn describe(&self) -> String {
        format!("simulated disk of {} bytes", self.size)
    }
}

/// Which operations a [`FaultyDevice`] fails with EIO.
///
/// Three kinds of faults, all transient: the `fail_*` switches fail every
/// operation of a kind while set; [`FaultPlan::fail_next_writes`] and
/// [`FaultPlan::fail_next_flushes`] fail a counted number of operations;
/// [`FaultPlan::set_random`] fails operations at random, with a seeded RNG.
#[derive(Default)]
pub struct FaultPlan {
    /// Fail every read while set.
    pub fail_reads: AtomicBool,
    /// Fail every write while set.
    pub fail_writes: AtomicBool,
    /// Fail every flush while set.
    pub fail_flushes: AtomicBool,
    /// Number of operations failed so far.
    pub injected: AtomicU64,
    counted: Mutex<CountedFaults>,
    random: Mutex<Option<RandomFaults>>,
}

#[derive(Default)]
struct CountedFaults {
    /// (byte range, writes left to fail in it)
    writes: Vec<(std::ops::Range<u64>, u64)>,
    flushes: u64,
}

/// Random transient faults: each operation fails with the chance given in
/// parts per million.
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomFaultRates {
    /// Chance of a read failing.
    pub read_ppm: u32,
    /// Chance of a write or discard failing.
    pub write_ppm: u32,
    /// Chance of a write to the first MiB (on a cache device: the
    /// superblock header and the record blocks) failing.
    pub superblock_write_ppm: u32,
    /// Chance of a flush failing.
    pub flush_ppm: u32,
}

struct RandomFaults {
    rng: rand::rngs::StdRng,
    rates: RandomFaultRates,
}

/// Kinds of operations a plan decides on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write(u64, u64),
    Flush,
}

impl FaultPlan {
    /// Fails the next `n` writes (or discards) that overlap bytes `range`.
    pub fn fail_next_writes(&self, range: std::ops::Range<u64>, n: u64) {
        self.counted.lock().expect("plan").writes.push((range, n));
    }

    /// Fails the next `n` flushes.
    pub fn fail_next_flushes(&self, n: u64) {
        self.counted.lock().expect("plan").flushes += n;
    }

    /// Fails operations at random with `rates` from now on (a seeded RNG, so
    /// a run repeats as far as thread timing allows); `None` stops it.
    pub fn set_random(&self, seed: u64, rates: Option<RandomFaultRates>) {
        use rand::SeedableRng;
        *self.random.lock().expect("plan") = rates.map(|rates| RandomFaults {
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            rates,
        });
    }

    /// Stops every kind of fault.
    pub fn heal(&self) {
        self.fail_reads.store(false, Ordering::SeqCst);
        self.fail_writes.store(false, Ordering::SeqCst);
        self.fail_flushes.store(false, Ordering::SeqCst);
        *self.counted.lock().expect("plan") = CountedFaults::default();
        *self.random.lock().expect("plan") = None;
    }

    fn decide(&self, op: Op) -> io::Result<()> {
        let flag = match op {
            Op::Read => &self.fail_reads,
            Op::Write(..) => &self.fail_writes,
            Op::Flush => &self.fail_flushes,
        };
        let mut fail = flag.load(Ordering::SeqCst);
        if !fail {
            let mut c = self.counted.lock().expect("plan");
            match op {
                Op::Write(off, len) => {
                    if let Some(w) = c
                        .writes
                        .iter_mut()
                        .find(|(r, n)| *n > 0 && off < r.end && r.start < off + len)
                    {
                        w.1 -= 1;
                        fail = true;
                    }
                    c.writes.retain(|(_, n)| *n > 0);
                }
                Op::Flush if c.flushes > 0 => {
                    c.flushes -= 1;
                    fail = true;
                }
                _ => {}
            }
        }
        if !fail {
            if let Some(r) = self.random.lock().expect("plan").as_mut() {
                use rand::Rng;
                let ppm = match op {
                    Op::Read => r.rates.read_ppm,
                    Op::Write(off, _) if off < 1 << 20 => r.rates.superblock_write_ppm,
                    Op::Write(..) => r.rates.write_ppm,
                    Op::Flush => r.rates.flush_ppm,
                };
                fail = ppm > 0 && r.rng.gen_range(0..1_000_000) < ppm;
            }
        }
        if fail {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }
}

/// Wraps a device and fails operations with EIO as its [`FaultPlan`] says.
///
/// It also stands for one process's handle on the device:
/// [`FaultyDevice::fence`] models the process dying. From then on nothing
/// it does reaches the device (writes, discards and flushes are dropped,
/// reads fail), while the device itself, with its volatile write cache,
/// lives on for the next process, which opens it through a new wrapper.
pub struct FaultyDevice {
    inner: Arc<dyn BlockDevice>,
    /// The switchable plan.
    pub plan: Arc<FaultPlan>,
    /// Set once the process owning this handle died; held for reading
    /// across every operation, so the fence waits for those in flight.
    fenced: RwLock<bool>,
    /// The simulated disk underneath, if any: a failed flush loses its
    /// volatile writes.
    sim: Option<Arc<SimDisk>>,
}

impl FaultyDevice {
    /// Wraps `inner`; faults are off until the plan says otherwise.
    pub fn new(inner: Arc<dyn BlockDevice>) -> Arc<Self> {
        Arc::new(FaultyDevice {
            inner,
            plan: Arc::new(FaultPlan::default()),
            fenced: RwLock::new(false),
            sim: None,
        })
    }

    /// Wraps a simulated disk; a flush the plan fails also loses the disk's
    /// volatile writes ([`SimDisk::lose_volatile_writes`]), as a real
    /// write-back error may: a later successful flush does not bring them back.
    pub fn over_sim(disk: Arc<SimDisk>) -> Arc<Self> {
        Arc::new(FaultyDevice {
            inner: disk.clone(),
            plan: Arc::new(FaultPlan::default()),
            fenced: RwLock::new(false),
            sim: Some(disk),
        })
    }

    /// The process using this handle dies: waits for operations in flight,
    /// then drops everything that follows.
    pub fn fence(&self) {
        *self.fenced.write().expect("fence") = true;
    }

    /// Runs `op` unless fenced (then `dead` is the result) or the plan fails it.
    fn run<T>(
        &self,
        kind: Op,
        dead: io::Result<T>,
        op: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        let fenced = self.fenced.read().expect("fence");
        if *fenced {
            return dead;
        }
        self.plan.decide(kind)?;
        op()
    }
}

fn fenced_read() -> io::Result<()> {
    Err(io::Error::from_raw_os_error(libc::EIO))
}

impl BlockDevice for FaultyDevice {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.run(Op::Read, fenced_read(), || self.inner.read_at(buf, offset))
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let op = Op::Write(offset, buf.len() as u64);
        self.run(op, Ok(()), || self.inner.write_at(buf, offset))
    }
    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        let len = bufs.iter().map(|b| b.len() as u64).sum();
        self.run(Op::Write(offset, len), Ok(()), || {
            self.inner.write_vectored_at(bufs, offset)
        })
    }
    fn flush(&self) -> io::Result<()> {
        let fenced = self.fenced.read().expect("fence");
        if *fenced {
            return Ok(());
        }
        if let Err(e) = self.plan.decide(Op::Flush) {
            if let Some(disk) = &self.sim {
                disk.lose_volatile_writes();
            }
            return Err(e);
        }
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.run(Op::Write(offset, len), Ok(()), || {
            self.inner.discard(offset, len)
        })
    }
    fn describe(&self) -> String {
        format!("faulty({})", self.inner.describe())
    }
}

/// A thread of the engine stopped by [`pause_next_line_fetch`].
#[derive(Default)]
pub struct LineFetchPause {
    /// (a thread waits here, the test let it go)
    gate: Mutex<(bool, bool)>,
    cv: Condvar,
}

impl LineFetchPause {
    /// Waits until a thread has stopped at the pause.
    pub fn wait_held(&self) {
        let mut g = self.gate.lock().expect("pause");
        while !g.0 {
            g = self.cv.wait(g).expect("pause");
        }
    }

    /// Lets the stopped thread (or the next one to arrive) go on.
    pub fn release(&self) {
        self.gate.lock().expect("pause").1 = true;
        self.cv.notify_all();
    }

    fn hold(&self) {
        let mut g = self.gate.lock().expect("pause");
        g.0 = true;
        self.cv.notify_all();
        while !g.1 {
            g = self.cv.wait(g).expect("pause");
        }
    }
}

static LINE_FETCH_PAUSE_ARMED: AtomicBool = AtomicBool::new(false);
static LINE_FETCH_PAUSE: Mutex<Option<Arc<LineFetchPause>>> = Mutex::new(None);

/// Stops the next thread of any cache in this process that reads a cached
/// line from its cache device (a write merging an older copy, a read, a
/// discard) right after the read, with the segment slot unpinned and the
/// cache mutex released, until [`LineFetchPause::release`]. Meanwhile the
/// test may run anything through the cache (write-back, slot reuse), as
/// the scheduler could between those two steps. Process-wide: for a test
/// binary of its own. Costs the engine one atomic load per such read.
pub fn pause_next_line_fetch() -> Arc<LineFetchPause> {
    let pause = Arc::new(LineFetchPause::default());
    *LINE_FETCH_PAUSE.lock().expect("pause") = Some(pause.clone());
    LINE_FETCH_PAUSE_ARMED.store(true, Ordering::SeqCst);
    pause
}

/// Where the engine stops for [`pause_next_line_fetch`].
pub(crate) fn line_fetched() {
    if !LINE_FETCH_PAUSE_ARMED.load(Ordering::Relaxed) {
        return;
    }
    let pause = LINE_FETCH_PAUSE.lock().expect("pause").take();
    LINE_FETCH_PAUSE_ARMED.store(false, Ordering::SeqCst);
    if let Some(p) = pause {
        p.hold();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn flushed_writes_survive_a_cut_and_unflushed_may_not() {
        let dom = PowerDomain::new();
        let d = SimDisk::new(dom.clone(), 8192);
        d.write_at(&[1; 512], 0).unwrap();
        d.flush().unwrap();
        d.write_at(&[2; 4096], 4096).unwrap();
        let mut seen_lost = false;
        let mut seen_kept = false;
        for seed in 0..64 {
            let dom2 = PowerDomain::new();
            let d2 = SimDisk::from_image(dom2.clone(), d.snapshot());
            // d2's durable == current, so write again unflushed to cut it
            d2.write_at(&[3; 4096], 4096).unwrap();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let img = dom2.cut(&[&d2], &mut rng).remove(0);
            assert_eq!(&img[..512], &[1; 512][..]);
            for s in 0..8 {
                let sec = &img[4096 + s * 512..4096 + (s + 1) * 512];
                assert!(
                    sec == [2; 512] || sec == [3; 512],
                    "only written bytes appear"
                );
                if sec == [3; 512] {
                    seen_kept = true;
                } else {
                    seen_lost = true;
                }
            }
        }
        assert!(seen_lost && seen_kept);
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        dom.cut(&[&d], &mut rng);
        let mut b = [9u8; 512];
        d.read_at(&mut b, 0).unwrap();
        assert_eq!(b, [0; 512], "a dead disk reads zeros");
    }

    #[test]
    fn faulty_device_fails_on_demand() {
        let d = FaultyDevice::new(SimDisk::new(PowerDomain::new(), 4096));
        d.write_at(&[1; 512], 0).unwrap();
        d.plan.fail_writes.store(true, Ordering::SeqCst);
        assert_eq!(
            d.write_at(&[1; 512], 0).unwrap_err().raw_os_error(),
            Some(libc::EIO)
        );
        assert_eq!(d.plan.injected.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn counted_faults_hit_only_what_they_name() {
        let d = FaultyDevice::new(SimDisk::new(PowerDomain::new(), 16384));
        d.plan.fail_next_writes(4096..8192, 1);
        d.plan.fail_next_flushes(2);
        d.write_at(&[1; 512], 0).unwrap();
        assert!(d.write_at(&[1; 512], 4096 + 512).is_err());
        d.write_at(&[1; 512], 4096 + 512).unwrap();
        assert!(d.flush().is_err() && d.flush().is_err());
        d.flush().unwrap();
        assert_eq!(d.plan.injected.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_failed_flush_over_a_sim_disk_loses_its_volatile_writes() {
        let disk = SimDisk::new(PowerDomain::new(), 8192);
        let d = FaultyDevice::over_sim(disk.clone());
        d.write_at(&[1; 512], 0).unwrap();
        d.flush().unwrap();
        d.write_at(&[2; 512], 0).unwrap();
        d.plan.fail_next_flushes(1);
        assert!(d.flush().is_err());
        let mut b = [0u8; 512];
        d.read_at(&mut b, 0).unwrap();
        assert_eq!(b, [1; 512], "the unflushed write is gone");
    }

    #[test]
    fn random_faults_repeat_with_their_seed_and_a_fence_stops_everything() {
        let run = |seed| {
            let d = FaultyDevice::new(SimDisk::new(PowerDomain::new(), 4096));
            // (offset 0 is in the first MiB: the superblock rate)
            let rates = RandomFaultRates {
                superblock_write_ppm: 300_000,
                ..Default::default()
            };
            d.plan.set_random(seed, Some(rates));
            (0..64)
                .map(|_| d.write_at(&[1; 512], 0).is_err())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert!(run(5).contains(&true) && run(5).contains(&false));
        let disk = SimDisk::new(PowerDomain::new(), 4096);
        let d = FaultyDevice::new(disk.clone());
        d.fence();
        d.write_at(&[7; 512], 0).unwrap();
        assert!(d.read_at(&mut [0; 512], 0).is_err());
        assert_eq!(
            disk.snapshot()[..512],
            [0; 512],
            "a dead process writes nothing"
        );
    }
}
