//! Shared set-up for the engine's integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use lc_engine::sim::{PowerDomain, SimDisk};
use lc_engine::{format_cache_device, BlockDevice, Cache, CacheOptions};

pub const MIB: u64 = 1 << 20;

/// A formatted in-memory cache device of `segments` segments.
pub fn sim_cache_disk(dom: &Arc<PowerDomain>, segments: u64) -> Arc<SimDisk> {
    let d = SimDisk::new(dom.clone(), MIB * (1 + segments));
    format_cache_device(&*d, false).unwrap();
    d
}

/// Resumes cache 1 on `dev` with a small RAM pool.
pub fn resume(dev: Arc<dyn BlockDevice>, pool: usize) -> Cache {
    Cache::resume(
        1,
        dev,
        CacheOptions {
            pool_segments: pool,
        },
    )
    .unwrap()
}

/// A recognisable 512 B sector: (tag, sector) repeated.
pub fn sector_pattern(tag: u64, sector: u64) -> [u8; 512] {
    let mut b = [0u8; 512];
    for (i, c) in b.chunks_mut(16).enumerate() {
        c[..8].copy_from_slice(&tag.to_le_bytes());
        c[8..].copy_from_slice(&(sector ^ (i as u64) << 56).to_le_bytes());
    }
    b
}

/// `n` sectors starting at `sector`, each tagged with `tag`.
pub fn pattern(tag: u64, sector: u64, n: u64) -> Vec<u8> {
    (sector..sector + n)
        .flat_map(|s| sector_pattern(tag, s))
        .collect()
}

/// A device whose chosen operations wait at a gate until the test opens
/// it: the next read overlapping a byte range, or the next flush.
pub struct GatedDevice {
    inner: Arc<dyn BlockDevice>,
    gate: std::sync::Mutex<Gate>,
    cv: std::sync::Condvar,
}

#[derive(Default)]
struct Gate {
    read_range: Option<std::ops::Range<u64>>,
    flush: bool,
    held: bool,
    open: bool,
}

impl GatedDevice {
    pub fn new(inner: Arc<dyn BlockDevice>) -> Arc<Self> {
        Arc::new(GatedDevice {
            inner,
            gate: Default::default(),
            cv: Default::default(),
        })
    }

    /// The next read overlapping `range` waits until [`GatedDevice::release`].
    pub fn hold_next_read(&self, range: std::ops::Range<u64>) {
        *self.gate.lock().unwrap() = Gate {
            read_range: Some(range),
            ..Gate::default()
        };
    }

    /// The next flush waits until [`GatedDevice::release`].
    pub fn hold_next_flush(&self) {
        *self.gate.lock().unwrap() = Gate {
            flush: true,
            ..Gate::default()
        };
    }

    /// Waits until an operation waits at the gate.
    pub fn wait_held(&self) {
        let mut g = self.gate.lock().unwrap();
        while !g.held {
            g = self.cv.wait(g).unwrap();
        }
    }

    /// Lets the held operation go.
    pub fn release(&self) {
        self.gate.lock().unwrap().open = true;
        self.cv.notify_all();
    }

    fn pass(&self, is_flush: bool, offset: u64, len: u64) {
        let mut g = self.gate.lock().unwrap();
        let hit = if is_flush {
            std::mem::take(&mut g.flush)
        } else {
            match &g.read_range {
                Some(r) if offset < r.end && r.start < offset + len => {
                    g.read_range = None;
                    true
                }
                _ => false,
            }
        };
        if !hit {
            return;
        }
        g.held = true;
        self.cv.notify_all();
        while !g.open {
            g = self.cv.wait(g).unwrap();
        }
    }
}

impl BlockDevice for GatedDevice {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.pass(false, offset, buf.len() as u64);
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> std::io::Result<()> {
        self.inner.write_vectored_at(bufs, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.pass(true, 0, 0);
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.discard(offset, len)
    }
    fn describe(&self) -> String {
        format!("gated({})", self.inner.describe())
    }
}

/// What an [`ObservedDevice`] calls: with the buffer's length and offset.
pub type Observer = Box<dyn Fn(usize, u64) + Send + Sync>;

/// A device that tells a test about every read and write before passing
/// it on to the device it wraps.
pub struct ObservedDevice {
    pub inner: Arc<dyn BlockDevice>,
    /// Called before each read (its length and offset).
    pub on_read: Option<Observer>,
    /// Called before each write, vectored or not (its length and offset).
    pub on_write: Option<Observer>,
}

impl ObservedDevice {
    pub fn new(inner: Arc<dyn BlockDevice>) -> Self {
        ObservedDevice {
            inner,
            on_read: None,
            on_write: None,
        }
    }
}

impl BlockDevice for ObservedDevice {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if let Some(f) = &self.on_read {
            f(buf.len(), offset);
        }
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        if let Some(f) = &self.on_write {
            f(buf.len(), offset);
        }
        self.inner.write_at(buf, offset)
    }
    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> std::io::Result<()> {
        if let Some(f) = &self.on_write {
            f(bufs.iter().map(|b| b.len()).sum(), offset);
        }
        self.inner.write_vectored_at(bufs, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.discard(offset, len)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// A huge device that stores only the sectors written to it (the rest
/// reads as zeros), for tests of size limits and crafted content.
pub struct SparseDisk {
    size: u64,
    sectors: std::sync::Mutex<std::collections::HashMap<u64, Box<[u8; 512]>>>,
    /// Writes (and discards) that reached it.
    pub writes: std::sync::atomic::AtomicU64,
    /// Writes refused because they reach beyond its end.
    pub refused: std::sync::atomic::AtomicU64,
}

impl SparseDisk {
    pub fn new(size: u64) -> Arc<Self> {
        Arc::new(SparseDisk {
            size,
            sectors: Default::default(),
            writes: Default::default(),
            refused: Default::default(),
        })
    }
}

impl BlockDevice for SparseDisk {
    fn size_bytes(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if offset + buf.len() as u64 > self.size {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        let map = self.sectors.lock().unwrap();
        for (i, chunk) in buf.chunks_mut(512).enumerate() {
            match map.get(&(offset / 512 + i as u64)) {
                Some(s) => chunk.copy_from_slice(&s[..chunk.len()]),
                None => chunk.fill(0),
            }
        }
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        if offset + buf.len() as u64 > self.size {
            self.refused
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut map = self.sectors.lock().unwrap();
        for (i, chunk) in buf.chunks(512).enumerate() {
            let mut s = Box::new([0u8; 512]);
            s[..chunk.len()].copy_from_slice(chunk);
            map.insert(offset / 512 + i as u64, s);
        }
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let mut map = self.sectors.lock().unwrap();
        for s in offset / 512..(offset + len) / 512 {
            map.remove(&s);
        }
        Ok(())
    }
    fn describe(&self) -> String {
        format!("sparse disk of {} bytes", self.size)
    }
}
