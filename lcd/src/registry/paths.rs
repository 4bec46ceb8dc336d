//! What the registry makes of the paths and uuids it is given.

/// Refuses a path that is not absolute: lcd does not run in the caller's
/// working directory, so a relative path would name another file.
pub fn absolute(path: &str) -> Result<(), super::RegistryError> {
    if path.starts_with('/') {
        return Ok(());
    }
    Err(super::RegistryError::InvalidArgument(format!(
        "{path:?} is not an absolute path; lcd cannot know the caller's working directory: \
         give the full path (lcctl does)"
    )))
}

/// Whether two paths name the same device: the same path, or
/// another name of it (a hard link of a file; another node of a block
/// device).
pub fn same_device(a: &str, b: &str) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if a == b {
        return true;
    }
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => {
            (x.dev(), x.ino()) == (y.dev(), y.ino())
                || (x.file_type().is_block_device()
                    && y.file_type().is_block_device()
                    && x.rdev() == y.rdev())
        }
        _ => false,
    }
}

/// A cache uuid as ListCaches and the state file show it.
pub fn uuid_hex(u: &[u8; 16]) -> String {
    u.iter().map(|b| format!("{b:02x}")).collect()
}
