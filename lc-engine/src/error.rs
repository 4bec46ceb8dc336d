//! The engine's one error type: what went wrong, in words a storage
//! administrator can act on, with the underlying I/O error kept as source.
//!
//! A message says what failed and what to do; the operating system's error
//! is only the [`std::error::Error::source`], never repeated in the message,
//! so a printer of the whole chain (anyhow's `{:#}`, [`describe`]) shows it
//! once. Whoever shows an engine error to a person prints the chain.

use std::io;

/// Result alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which device an I/O error happened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRole {
    /// The (fast) cache device.
    Cache,
    /// A (slow) backing device.
    Backing,
}

impl std::fmt::Display for DeviceRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceRole::Cache => "cache device",
            DeviceRole::Backing => "backing device",
        })
    }
}

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a device.
    #[error(
        "I/O error on the {role} while {context} (check the device: dmesg, SMART; then retry)"
    )]
    Io {
        /// Device the error happened on.
        role: DeviceRole,
        /// What the engine was doing.
        context: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Opening a device failed.
    #[error(
        "cannot open {path} (check that the path exists and is a block device or regular file)"
    )]
    Open {
        /// The path given.
        path: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The device holds no lc superblock.
    #[error("the device holds no lc cache; format it first (format_cache_device)")]
    NotFormatted,
    /// The superblock or another structure fails validation.
    #[error("the lc superblock is corrupt ({0}); if this is the right device, restore it from backup or reformat with force (loses cached data)")]
    Corrupt(String),
    /// The device was formatted with a format version this build does not read.
    #[error("the cache uses on-disk format version {0}, this lc reads version 1; use the lc release that formatted it")]
    UnsupportedVersion(u32),
    /// `format` found a signature it will not overwrite without force.
    #[error("the device holds a {0}; refusing to overwrite it (use force to format anyway; everything on it is lost)")]
    HasSignature(&'static str),
    /// The device is too small to hold a cache.
    #[error("the device has {size} bytes, a cache needs at least {min} bytes (1 MiB superblock + 2 segments of 1 MiB)")]
    TooSmall {
        /// Device size in bytes.
        size: u64,
        /// Minimum size in bytes.
        min: u64,
    },
    /// The device is larger than the largest cache lc supports.
    #[error("the device has {size} bytes, the largest cache lc supports has {max} bytes (an index line number must fit 32 bits); use a partition or volume of at most that size")]
    TooLarge {
        /// Device size in bytes.
        size: u64,
        /// Largest supported size in bytes ([`crate::MAX_CACHE_BYTES`]).
        max: u64,
    },
    /// The cache holds dirty data of a device beyond the end of the backing
    /// device attached under its id: the wrong (or a shrunk) disk.
    #[error("the cache holds dirty data of device {device_id} at sector {sector}, beyond the end of its backing device ({size} sectors): is the right disk attached? write-back of this cache stops until the right disk is attached")]
    DirtyBeyondEnd {
        /// Device id.
        device_id: u8,
        /// First dirty sector beyond the end.
        sector: u64,
        /// Backing device size in sectors.
        size: u64,
    },
    /// An argument is out of its valid range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A request addresses sectors beyond the end of the device.
    #[error("I/O beyond the end of device {device_id}: sectors {start}..{end}, device has {size} sectors")]
    OutOfRange {
        /// Device id.
        device_id: u8,
        /// First sector of the request.
        start: u64,
        /// One past the last sector of the request.
        end: u64,
        /// Device size in sectors.
        size: u64,
    },
    /// No backing device with this id is attached.
    #[error("no device {0} is attached to this cache; list devices to see which ids exist")]
    UnknownDevice(u8),
    /// A backing device with this id is already attached.
    #[error("device id {0} is already attached; choose a free id or detach it first")]
    DeviceExists(u8),
    /// The device is being detached; its writes are refused.
    #[error(
        "device {0} is being detached and takes no more writes; wait for the detach to finish"
    )]
    Detaching(u8),
    /// A device id whose dirty data was discarded while write-back could not
    /// yet pass the segments holding it: a disk attached under that id now
    /// would get that data back at the next resume.
    #[error(
        "the dirty data of device {device_id} was discarded, but the cache's log still holds it \
         until write-back passes it, and write-back waits for device {waits_for}, which is not \
         attached: no disk can take id {device_id} until then. Bring device {waits_for} back \
         (or discard its data too), then discard device {device_id}'s data again"
    )]
    DiscardUnfinished {
        /// The device id whose data was discarded.
        device_id: u8,
        /// The device that is not attached whose lines write-back waits for.
        waits_for: u8,
    },
    /// The backing device is smaller than the dirty data its id holds.
    #[error(
        "the backing device has {size_sectors} sectors but the cache holds dirty data of device \
         {device_id} up to sector {dirty_end_sector}: it is not the device that data belongs to \
         (or it shrank); attach the right device, or discard that device's dirty data"
    )]
    BackingTooSmall {
        /// Device id.
        device_id: u8,
        /// One past the highest dirty sector of the id.
        dirty_end_sector: u64,
        /// Size of the device offered, in sectors.
        size_sectors: u64,
    },
    /// Write-back cannot go on: it reached dirty data of a device that is
    /// not attached.
    #[error(
        "write-back waits for device {0}, which is not attached but has dirty data in the \
         cache: attach it again, or discard its dirty data too, then try again"
    )]
    MissingDevice(u8),
    /// The cache is shutting down or has stopped.
    #[error("the cache is stopped; resume it again")]
    Stopped,
}

impl Error {
    /// Builds an [`Error::Io`].
    pub fn io(role: DeviceRole, context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            role,
            context: context.into(),
            source,
        }
    }

    /// The errno a block-device frontend should complete a request with.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Io { source, .. } | Error::Open { source, .. } => {
                source.raw_os_error().unwrap_or(libc::EIO)
            }
            Error::OutOfRange { .. } | Error::InvalidArgument(_) => libc::EINVAL,
            Error::BackingTooSmall { .. } | Error::DirtyBeyondEnd { .. } => libc::ENOSPC,
            Error::UnknownDevice(_) | Error::Detaching(_) | Error::MissingDevice(_) => libc::ENODEV,
            Error::DiscardUnfinished { .. } => libc::EBUSY,
            Error::Stopped => libc::ESHUTDOWN,
            _ => libc::EIO,
        }
    }
}

/// `e` and its causes (each [`std::error::Error::source`]) as one line,
/// joined by ": ": what to show a person, so the operating system's error
/// behind an [`Error::Io`] or [`Error::Open`] appears exactly once.
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enoent() -> io::Error {
        io::Error::from_raw_os_error(libc::ENOENT)
    }

    #[test]
    fn chain_printers_show_the_os_error_exactly_once() {
        let makers: [fn() -> Error; 2] = [
            || Error::io(DeviceRole::Cache, "reading a cached line", enoent()),
            || Error::Open {
                path: "/dev/nothing".into(),
                source: enoent(),
            },
        ];
        let os = enoent().to_string();
        for make in makers {
            let message = make().to_string();
            assert!(
                !message.contains(&os),
                "message repeats the cause: {message}"
            );
            for text in [
                describe(&make()),
                format!("{:#}", anyhow::Error::new(make())),
            ] {
                assert_eq!(text.matches(&os).count(), 1, "{text}");
                assert!(text.starts_with(&message), "{text}");
            }
        }
    }
}
