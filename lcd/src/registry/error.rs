//! The registry's errors: what kind of refusal or failure, with a message
//! a person can act on. The bus layer maps each kind to its named D-Bus
//! error (`org.lc.Lcd1.Error.<kind>`); the message is shown as it is.

/// Why the registry refused or could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// A cache, device or path that is not there.
    #[error("{0}")]
    NotFound(String),
    /// In use: by another cache or device, a call under way, the kernel.
    #[error("{0}")]
    Busy(String),
    /// A value or path that cannot be right.
    #[error("{0}")]
    InvalidArgument(String),
    /// Not an lc cache device (or a damaged one).
    #[error("{0}")]
    NotFormatted(String),
    /// A device or the state directory failed.
    #[error("{0}")]
    Io(String),
    /// Anything else that did not work.
    #[error("{0}")]
    Failed(String),
}

impl From<lc_engine::Error> for RegistryError {
    /// Which kind an engine error is, for the client that sees it.
    fn from(e: lc_engine::Error) -> RegistryError {
        use lc_engine::Error as E;
        let msg = lc_engine::error::describe(&e);
        match e {
            E::Open { ref source, .. }
                if matches!(source.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) =>
            {
                RegistryError::NotFound(msg)
            }
            // a path that cannot name a device, not an I/O error
            E::Open { ref source, .. }
                if matches!(
                    source.raw_os_error(),
                    Some(libc::ELOOP | libc::ENAMETOOLONG)
                ) =>
            {
                RegistryError::InvalidArgument(msg)
            }
            E::Open {
                ref path,
                ref source,
            } if source.raw_os_error() == Some(libc::EBUSY) => RegistryError::Busy(format!(
                "{path} is in use by the kernel or another program (mounted, swap, part of a \
                 RAID, LVM volume, a cache or device of this or another lcd, `lcd writeback` \
                 or `lcd check`): unmount or release it first"
            )),
            E::Io { .. } | E::Open { .. } => RegistryError::Io(msg),
            E::NotFormatted | E::Corrupt(_) | E::UnsupportedVersion(_) => {
                RegistryError::NotFormatted(msg)
            }
            E::HasSignature(_)
            | E::TooSmall { .. }
            | E::TooLarge { .. }
            | E::InvalidArgument(_)
            | E::OutOfRange { .. }
            | E::BackingTooSmall { .. } => RegistryError::InvalidArgument(msg),
            E::DirtyBeyondEnd { .. } => RegistryError::Io(msg),
            E::UnknownDevice(_) => RegistryError::NotFound(msg),
            E::DeviceExists(_)
            | E::Detaching(_)
            | E::MissingDevice(_)
            | E::DiscardUnfinished { .. } => RegistryError::Busy(msg),
            E::Stopped => RegistryError::Failed(msg),
        }
    }
}

/// Runs blocking work (engine calls, file system calls) on tokio's
/// blocking pool, off the async executor.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, RegistryError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RegistryError::Failed(format!("internal error: {e}")))?
}
