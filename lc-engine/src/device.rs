//! The block-device abstraction the engine does all its I/O through, its
//! implementation over regular files and block devices, and the aligned
//! buffers direct I/O needs.
//!
//! Offsets and lengths given to a [`BlockDevice`] are always multiples of
//! 512 bytes. Test doubles (crash simulation, fault injection) live in
//! [`crate::sim`].

use std::alloc::{self, Layout};
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A device the engine reads and writes: the cache device or a backing device.
///
/// Implementations must be usable from several threads at once.
pub trait BlockDevice: Send + Sync {
    /// Size in bytes (a multiple of 512).
    fn size_bytes(&self) -> u64;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset` (possibly into a volatile cache).
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Writes the buffers back to back starting at `offset`, as one request
    /// where the device can (the default writes them one after the other).
    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        let mut off = offset;
        for b in bufs {
            self.write_at(b, off)?;
            off += b.len() as u64;
        }
        Ok(())
    }
    /// Makes every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// Tells the device that a range's content is no longer needed.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Human-readable identity (path and major:minor where known).
    fn describe(&self) -> String;
    /// The open file descriptor reads may go through directly (for a
    /// frontend's own asynchronous I/O, see [`crate::read_plan`]), or
    /// `None` when all I/O must go through this trait. Valid while the
    /// device lives.
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

/// Alignment of every buffer the engine hands to a device.
pub const BUF_ALIGN: usize = 4096;

/// A zero-initialised heap buffer aligned to [`BUF_ALIGN`], as direct I/O needs.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Box<[u8]>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out &[u8], like a Box<[u8]>.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` zero bytes (len > 0).
    pub fn zeroed(len: usize) -> Self {
        assert!(len > 0, "AlignedBuf of zero length");
        let layout = Layout::from_size_align(len, BUF_ALIGN).expect("valid layout");
        // SAFETY: layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = std::ptr::NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len }
    }

    /// The start of the allocation as a raw pointer (for buffers whose
    /// disjoint parts are written by several threads; see
    /// `segment_buffer.rs`). Using it is the caller's `unsafe`.
    pub(crate) fn raw_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr points to len initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr points to len initialised bytes owned exclusively by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.len, BUF_ALIGN).expect("valid layout");
        // SAFETY: allocated in `zeroed` with this same layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

fn is_aligned(buf: &[u8]) -> bool {
    (buf.as_ptr() as usize) % BUF_ALIGN == 0
}

mod ioctl {
    //! The two block-device ioctls the engine needs.
    #![allow(missing_docs)]
    nix::ioctl_read!(blk_getsize64, 0x12, 114, u64);
    nix::ioctl_write_ptr_bad!(blk_discard, nix::request_code_none!(0x12, 119), [u64; 2]);
}
use ioctl::{blk_discard, blk_getsize64};

/// A regular file or a block device, opened with `O_DIRECT` where the file
/// system allows it.
///
/// The path is opened once and everything else is learnt from the open
/// file descriptor (`fstat`, `BLKGETSIZE64`), so a path swapped after the
/// open cannot change what is used. Every open is exclusive: `O_EXCL` (a
/// block device the kernel or another opener holds is refused) and an
/// advisory `flock` on the file (a second cache, `lcd writeback`, `lcd check`
/// or another lcd on the same file or block device is refused, whatever name
/// it is opened by). Both are released when the device is dropped.
pub struct FileDevice {
    file: File,
    path: PathBuf,
    size: u64,
    is_block: bool,
    direct: bool,
    rdev: Option<(u32, u32)>,
    identity: FileIdentity,
}

/// What the open file descriptor is, from `fstat`: stable while it is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    /// Device of the file system holding the inode (`st_dev`).
    pub dev: u64,
    /// Inode number (`st_ino`).
    pub ino: u64,
    /// For a block device, its device number (`st_rdev`); `None` for a file.
    pub rdev: Option<u64>,
}

/// The flock taken on every [`FileDevice`].
fn lock_exclusively(file: &File) -> io::Result<()> {
    // SAFETY: flock takes the descriptor of a file we own and plain flags.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        // named like the kernel's refusal of a held block device
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    }
    Err(e)
}

impl FileDevice {
    /// Opens `path` for reading and writing, exclusively (see the type's
    /// documentation): a device already in use fails with `EBUSY`.
    pub fn open(path: &Path) -> Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let open_err = |source: io::Error| Error::Open {
            path: path.display().to_string(),
            source,
        };
        // O_EXCL without O_CREAT claims a block device and is ignored for
        // other files; O_NONBLOCK keeps a FIFO or a terminal from blocking
        // the open (they are refused below).
        let flags = libc::O_DIRECT | libc::O_EXCL | libc::O_NOCTTY | libc::O_NONBLOCK;
        let try_open = |flags| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(flags)
                .open(path)
        };
        let neither = || {
            Error::InvalidArgument(format!(
                "{} is neither a block device nor a regular file",
                path.display()
            ))
        };
        // a directory or socket cannot even be opened; say what it is (the
        // stat only words the error, it decides nothing that is opened)
        let failed = |e: io::Error| {
            let usable = |m: &std::fs::Metadata| m.is_file() || m.file_type().is_block_device();
            match std::fs::metadata(path) {
                Ok(m) if !usable(&m) => neither(),
                _ => open_err(e),
            }
        };
        let (file, direct) = match try_open(flags) {
            Ok(f) => (f, true),
            // tmpfs and some FUSE file systems refuse O_DIRECT.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                (try_open(flags & !libc::O_DIRECT).map_err(failed)?, false)
            }
            Err(e) => return Err(failed(e)),
        };
        let meta = file.metadata().map_err(open_err)?;
        let ft = meta.file_type();
        let is_block = ft.is_block_device();
        if !is_block && !ft.is_file() {
            return Err(neither());
        }
        // the I/O paths block; only the open had to not
        nix::fcntl::fcntl(
            file.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(if direct {
                nix::fcntl::OFlag::O_DIRECT
            } else {
                nix::fcntl::OFlag::empty()
            }),
        )
        .map_err(|e| open_err(io::Error::from(e)))?;
        lock_exclusively(&file).map_err(open_err)?;
        let size = if is_block {
            let mut sz = 0u64;
            // SAFETY: BLKGETSIZE64 writes one u64 into the pointer we pass.
            unsafe { blk_getsize64(file.as_raw_fd(), &mut sz) }
                .map_err(|e| open_err(io::Error::from(e)))?;
            sz
        } else {
            meta.len()
        };
        let rdev = is_block.then(|| {
            let r = meta.rdev();
            (libc::major(r), libc::minor(r))
        });
        Ok(FileDevice {
            file,
            path: path.to_path_buf(),
            size: size & !511,
            is_block,
            direct,
            rdev,
            identity: FileIdentity {
                dev: meta.dev(),
                ino: meta.ino(),
                rdev: is_block.then(|| meta.rdev()),
            },
        })
    }

    /// What the open descriptor is (`fstat` at open).
    pub fn identity(&self) -> FileIdentity {
        self.identity
    }

    /// True for a block device, false for a regular file.
    pub fn is_block_device(&self) -> bool {
        self.is_block
    }

    /// True when the device was opened with `O_DIRECT`.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// The (major, minor) of a block device.
    pub fn rdev(&self) -> Option<(u32, u32)> {
        self.rdev
    }

    fn check(&self, offset: u64, len: usize) -> io::Result<()> {
        if offset % 512 != 0 || len % 512 != 0 || offset + len as u64 > self.size {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(())
    }
}

impl BlockDevice for FileDevice {
    fn size_bytes(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check(offset, buf.len())?;
        if self.direct && !is_aligned(buf) {
            let mut bounce = AlignedBuf::zeroed(buf.len());
            self.file.read_exact_at(&mut bounce, offset)?;
            buf.copy_from_slice(&bounce);
            return Ok(());
        }
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check(offset, buf.len())?;
        if self.direct && !is_aligned(buf) {
            let mut bounce = AlignedBuf::zeroed(buf.len());
            bounce.copy_from_slice(buf);
            return self.file.write_all_at(&bounce, offset);
        }
        self.file.write_all_at(buf, offset)
    }

    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        self.check(offset, total)?;
        if self.direct
            && !bufs
                .iter()
                .all(|b| is_aligned(b) && b.len() % BUF_ALIGN == 0)
        {
            let mut off = offset;
            for b in bufs {
                self.write_at(b, off)?;
                off += b.len() as u64;
            }
            return Ok(());
        }
        let (mut done, mut skip) = (0usize, 0usize);
        let mut first = 0; // first buffer not yet fully written
        while done < total {
            let mut iov: Vec<io::IoSlice<'_>> = Vec::with_capacity(bufs.len() - first);
            iov.push(io::IoSlice::new(&bufs[first][skip..]));
            iov.extend(bufs[first + 1..].iter().map(|b| io::IoSlice::new(b)));
            let n = nix::sys::uio::pwritev(&self.file, &iov, (offset + done as u64) as i64)
                .map_err(io::Error::from)?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero));
            }
            done += n;
            // advance (first, skip) by n bytes
            let mut left = n;
            while left > 0 {
                let rest = bufs[first].len() - skip;
                if left >= rest {
                    left -= rest;
                    first += 1;
                    skip = 0;
                } else {
                    skip += left;
                    left = 0;
                }
            }
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.check(offset, 0)?;
        let len = len.min(self.size - offset);
        let res = if self.is_block {
            let range = [offset, len];
            // SAFETY: BLKDISCARD reads two u64 (offset, length) from the pointer.
            unsafe { blk_discard(self.file.as_raw_fd(), &range) }.map(|_| ())
        } else {
            nix::fcntl::fallocate(
                self.file.as_raw_fd(),
                nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                    | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                offset as i64,
                len as i64,
            )
        };
        match res {
            Ok(()) => Ok(()),
            // Discard is advisory: a device or file system without it is fine.
            Err(nix::errno::Errno::EOPNOTSUPP) | Err(nix::errno::Errno::ENOTTY) => Ok(()),
            Err(e) => Err(io::Error::from(e)),
        }
    }

    fn describe(&self) -> String {
        match self.rdev {
            Some((ma, mi)) => format!("{} ({ma}:{mi})", self.path.display()),
            None => self.path.display().to_string(),
        }
    }

    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.file.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buf_is_aligned_and_zero() {
        let b = AlignedBuf::zeroed(8192);
        assert!(is_aligned(&b));
        assert!(b.iter().all(|&x| x == 0));
    }

    #[test]
    fn file_device_round_trip_unaligned_buffers_and_discard() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dev.img");
        std::fs::File::create(&p).unwrap().set_len(1 << 20).unwrap();
        let d = FileDevice::open(&p).unwrap();
        assert_eq!(d.size_bytes(), 1 << 20);
        let mut data = vec![0u8; 4096 + 1];
        for (i, b) in data.iter_mut().enumerate() {
            *b = i as u8;
        }
        // deliberately misaligned slice
        d.write_at(&data[1..], 8192).unwrap();
        let mut back = vec![0u8; 4097];
        d.read_at(&mut back[1..], 8192).unwrap();
        assert_eq!(back[1..], data[1..]);
        d.flush().unwrap();
        d.discard(8192, 4096).unwrap();
        d.read_at(&mut back[1..], 8192).unwrap();
        assert!(back[1..].iter().all(|&x| x == 0));
        assert!(d.read_at(&mut back[1..], 1 << 20).is_err(), "beyond end");
        assert!(d.write_at(&data[1..513], 100).is_err(), "unaligned offset");
    }

    #[test]
    fn vectored_writes_land_back_to_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dev.img");
        std::fs::File::create(&p).unwrap().set_len(1 << 20).unwrap();
        let d = FileDevice::open(&p).unwrap();
        let mut a = AlignedBuf::zeroed(4096);
        a.fill(1);
        let mut b = AlignedBuf::zeroed(8192);
        b.fill(2);
        d.write_vectored_at(&[&a, &b], 4096).unwrap();
        let unaligned = vec![3u8; 513];
        d.write_vectored_at(&[&unaligned[1..], &a[..512]], 65536)
            .unwrap();
        let mut back = AlignedBuf::zeroed(16384);
        d.read_at(&mut back, 0).unwrap();
        assert!(back[..4096].iter().all(|&x| x == 0));
        assert!(back[4096..8192].iter().all(|&x| x == 1));
        assert!(back[8192..16384].iter().all(|&x| x == 2));
        let mut tail = AlignedBuf::zeroed(4096);
        d.read_at(&mut tail, 65536).unwrap();
        assert!(tail[..512].iter().all(|&x| x == 3) && tail[512..1024].iter().all(|&x| x == 1));
        assert!(
            d.write_vectored_at(&[&a], (1 << 20) - 512).is_err(),
            "beyond end"
        );
    }

    #[test]
    fn open_rejects_directories_and_missing_paths() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            FileDevice::open(dir.path()),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            FileDevice::open(&dir.path().join("nope")),
            Err(Error::Open { .. })
        ));
    }
}
