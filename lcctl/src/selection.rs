//! The cache chosen with `lcctl switch-to`, remembered between runs.
//!
//! lcd keeps lc-mgr's cursor per D-Bus client, and every lcctl run is a new
//! client, so the cursor would die with each run. lcctl therefore writes the
//! chosen id to a small file in the runtime directory (a tmpfs, forgotten at
//! reboot, as dm-lc's cursor was) and, when a command is given no id, sends
//! `SwitchTo(id)` before the call on the same connection.
//!
//! The file is `$LCCTL_RUNTIME_DIR/selected-cache` when that variable is
//! set, else `/run/lcctl/selected-cache` for root and
//! `$XDG_RUNTIME_DIR/lcctl/selected-cache` for other users.

use std::path::PathBuf;

use crate::error::{Exit, Failure, Result};

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// Where the selection is kept, if there is a place for it.
pub fn file() -> Option<PathBuf> {
    let dir = if let Some(d) = std::env::var_os("LCCTL_RUNTIME_DIR") {
        PathBuf::from(d)
    } else if is_root() {
        PathBuf::from("/run/lcctl")
    } else {
        PathBuf::from(std::env::var_os("XDG_RUNTIME_DIR")?).join("lcctl")
    };
    Some(dir.join("selected-cache"))
}

/// Remembers `id` as the selected cache.
pub fn save(id: u8) -> Result<()> {
    let path = file().ok_or_else(|| {
        Failure::new(
            Exit::Failure,
            "no runtime directory to remember the selection in (XDG_RUNTIME_DIR is not set): give cache ids explicitly",
        )
    })?;
    let fail = |e: std::io::Error| {
        Failure::new(
            Exit::Io,
            format!(
                "cannot remember the selection in {}: {e}; give cache ids explicitly",
                path.display()
            ),
        )
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{id}\n")).map_err(fail)?;
    std::fs::rename(&tmp, &path).map_err(fail)
}

/// The selected cache, if one was chosen.
pub fn load() -> Option<u8> {
    let text = std::fs::read_to_string(file()?).ok()?;
    text.trim().parse::<u8>().ok().filter(|&id| id != 0)
}

/// `id` if given, else the selected cache, else a usage error.
pub fn cache_or_selected(id: Option<u8>) -> Result<u8> {
    id.or_else(load).ok_or_else(|| {
        Failure::new(
            Exit::Usage,
            "no cache given and none selected: give the cache id, or select one with `lcctl switch-to ID`",
        )
    })
}
