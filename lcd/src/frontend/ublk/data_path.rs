//! How a request's data moves between the kernel and lcd on one queue.
//!
//! Two paths, chosen per device from the flags it was created with:
//!
//! - [`DataPath::Copied`]: the driver copies a WRITE's data into the tag's
//!   buffer before handing the request over, and a READ's bytes out of it at
//!   commit. Every kernel with ublk has it; lcd uses it where the kernel
//!   lacks `UBLK_F_AUTO_BUF_REG`.
//! - [`DataPath::ZeroCopy`] (`UBLK_F_AUTO_BUF_REG` with `UBLK_F_USER_COPY`,
//!   Linux 6.16 and later): the driver copies nothing. It registers each
//!   request's pages in the queue's io_uring as fixed buffer number *tag*,
//!   so a READ's device reads (cache device, backing device) land in the
//!   request's pages straight from the device (`READ_FIXED`). The bytes lcd
//!   has in memory (lines in RAM, the dirty sectors laid over backing data)
//!   go to the request with a `pwrite` on `/dev/ublkcN` at the request's
//!   position, and a WRITE's data comes into the tag's buffer with a
//!   `pread` there (then lcd copies it into its RAM segment and checksums
//!   it, as on the copied path).
//!
//! When the kernel could not register a request's pages
//! (`UBLK_IO_F_NEED_REG_BUF`, asked for with `UBLK_AUTO_BUF_REG_FALLBACK`),
//! that request's bytes all go through `/dev/ublkcN`.

use std::ops::Range;
use std::os::fd::RawFd;

use libublk::io::UblkIOCtx;
use libublk::{sys, BufDesc};

/// The device flags lcd asks for, given the driver's features
/// (GET_FEATURES): zero copy where the kernel has auto buffer registration
/// and user copy, the copied path elsewhere.
pub(super) fn zero_copy_flags(features: u64) -> u64 {
    if features & ZERO_COPY == ZERO_COPY {
        ZERO_COPY
    } else {
        0
    }
}

/// The device flags of the zero-copy path (both are needed).
const ZERO_COPY: u64 = (sys::UBLK_F_AUTO_BUF_REG | sys::UBLK_F_USER_COPY) as u64;

/// How one queue's requests carry their data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DataPath {
    /// The driver copies data to and from the tag's buffer.
    Copied,
    /// The request's pages are registered in the queue's ring; lcd copies
    /// what it has in memory through `/dev/ublkcN` (descriptor `cdev`) of
    /// queue `qid`.
    ZeroCopy {
        /// `/dev/ublkcN`, open for the device's life.
        cdev: RawFd,
        /// The queue's number.
        qid: u16,
    },
}

/// A request's pages, registered in the queue's ring as fixed buffer
/// `index`: where a READ's device reads go under zero copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Registered {
    /// The fixed buffer number of the request's pages (its tag).
    pub(super) index: u16,
}

impl DataPath {
    /// The path of queue `qid` of a device created with `dev_flags`, whose
    /// `/dev/ublkcN` is `cdev`.
    pub(super) fn new(dev_flags: u64, cdev: RawFd, qid: u16) -> DataPath {
        if dev_flags & ZERO_COPY == ZERO_COPY {
            DataPath::ZeroCopy { cdev, qid }
        } else {
            DataPath::Copied
        }
    }

    /// The buffer descriptor of `tag`'s FETCH and COMMIT commands.
    pub(super) fn buf_desc<'a>(&self, tag: u16, buf: &'a [u8]) -> BufDesc<'a> {
        match self {
            DataPath::Copied => BufDesc::Slice(buf),
            DataPath::ZeroCopy { .. } => BufDesc::AutoReg(sys::ublk_auto_buf_reg {
                index: tag,
                flags: sys::UBLK_AUTO_BUF_REG_FALLBACK as u8,
                ..Default::default()
            }),
        }
    }

    /// The registered pages of the request `tag` now holds (its `op_flags`
    /// given), when device reads can go straight into them.
    pub(super) fn registered(&self, tag: u16, op_flags: u32) -> Option<Registered> {
        match self {
            DataPath::ZeroCopy { .. } if op_flags & sys::UBLK_IO_F_NEED_REG_BUF == 0 => {
                Some(Registered { index: tag })
            }
            _ => None,
        }
    }

    /// Fills `buf` with the data of `tag`'s WRITE (already there on the
    /// copied path).
    pub(super) fn fetch_write_data(&self, tag: u16, buf: &mut [u8]) -> std::io::Result<()> {
        let DataPath::ZeroCopy { cdev, qid } = *self else {
            return Ok(());
        };
        let mut done = 0;
        while done < buf.len() {
            let pos = UblkIOCtx::ublk_user_copy_pos(qid, tag, done as u32);
            let rest = &mut buf[done..];
            // SAFETY: reads into `rest`, a live buffer of `rest.len()` bytes.
            let n = unsafe { libc::pread(cdev, rest.as_mut_ptr().cast(), rest.len(), pos as i64) };
            done += copied(n)?;
        }
        Ok(())
    }

    /// Puts the `ranges` of `buf` (all of it: `None`) into `tag`'s READ
    /// request: the bytes of the read lcd has in memory (nothing to do on
    /// the copied path).
    pub(super) fn deliver_read_data(
        &self,
        tag: u16,
        buf: &[u8],
        ranges: Option<&[Range<usize>]>,
    ) -> std::io::Result<()> {
        let DataPath::ZeroCopy { cdev, qid } = *self else {
            return Ok(());
        };
        let all = 0..buf.len();
        let whole = std::slice::from_ref(&all);
        for range in ranges.unwrap_or(whole).iter().cloned() {
            let mut done = range.start;
            while done < range.end {
                let pos = UblkIOCtx::ublk_user_copy_pos(qid, tag, done as u32);
                let rest = &buf[done..range.end];
                // SAFETY: writes from `rest`, a live buffer of `rest.len()` bytes.
                let n = unsafe { libc::pwrite(cdev, rest.as_ptr().cast(), rest.len(), pos as i64) };
                done += copied(n)?;
            }
        }
        Ok(())
    }
}

/// The bytes a `pread`/`pwrite` on `/dev/ublkcN` moved, or why it failed
/// (none moved is an error: the request is shorter than lcd thinks).
fn copied(n: isize) -> std::io::Result<usize> {
    match n {
        n if n < 0 => Err(std::io::Error::last_os_error()),
        0 => Err(std::io::Error::from_raw_os_error(libc::EIO)),
        n => Ok(n as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_copy_needs_both_auto_buf_reg_and_user_copy() {
        let both = (sys::UBLK_F_AUTO_BUF_REG | sys::UBLK_F_USER_COPY) as u64;
        assert_eq!(zero_copy_flags(0), 0, "6.12-like: no zero copy");
        assert_eq!(zero_copy_flags(sys::UBLK_F_USER_COPY as u64), 0);
        assert_eq!(zero_copy_flags(sys::UBLK_F_AUTO_BUF_REG as u64), 0);
        assert_eq!(zero_copy_flags(0x1fffff), both, "7.3.4's features");
        assert_eq!(DataPath::new(0, 3, 0), DataPath::Copied);
        assert_eq!(
            DataPath::new(both | sys::UBLK_F_USER_RECOVERY as u64, 3, 1),
            DataPath::ZeroCopy { cdev: 3, qid: 1 }
        );
    }

    #[test]
    fn a_request_whose_pages_were_not_registered_is_copied_whole() {
        let zc = DataPath::ZeroCopy { cdev: 3, qid: 0 };
        assert_eq!(zc.registered(5, 0), Some(Registered { index: 5 }));
        assert_eq!(zc.registered(5, sys::UBLK_IO_F_NEED_REG_BUF), None);
        assert_eq!(DataPath::Copied.registered(5, 0), None);
        assert!(matches!(zc.buf_desc(5, &[]), BufDesc::AutoReg(r) if r.index == 5));
        assert!(matches!(
            DataPath::Copied.buf_desc(5, &[]),
            BufDesc::Slice(_)
        ));
    }
}
