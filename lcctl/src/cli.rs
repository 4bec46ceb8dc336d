//! The command line of `lcctl`, as clap definitions.
//!
//! This module is the single source of `lcctl --help`, of the generated
//! parts of the man page `lcctl(8)` and of the shell completions (see
//! [`crate::manual`]).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::knobs::KnobName;

/// A cache or device id: 1..=255.
fn id_parser() -> clap::builder::RangedI64ValueParser<u8> {
    clap::value_parser!(u8).range(1..=255)
}

/// Administer lc, the log-structured write-back block cache
///
/// lcctl is the thin client of the lc daemon lcd: every command is one or
/// two D-Bus calls to lcd (bus name org.lc.Lcd1). Commands that change
/// something need root; reading (status, list, get) is open to every user.
#[derive(Parser, Debug)]
#[command(
    name = "lcctl",
    version,
    max_term_width = 100,
    args_override_self = true
)]
pub struct Cli {
    /// Print the result as JSON on stdout (shapes in lcctl(8), JSON OUTPUT).
    #[arg(long, global = true)]
    pub json: bool,
    /// The bus lcd serves on: system, session, or a D-Bus address such as
    /// unix:path=/run/lc/bus.
    #[arg(
        long,
        global = true,
        value_name = "system|session|ADDRESS",
        default_value = "system"
    )]
    pub bus: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write a fresh lc superblock to a cache device.
    ///
    /// Refused, unless --force is given, when the device holds an lc cache
    /// or a format lc recognises (ext2/3/4, XFS, btrfs, LVM2, LUKS, swap,
    /// bcache, GPT); other contents are not detected. A resumed cache or a
    /// device in use is never formatted.
    Format {
        /// The cache device (block device or file, at least 3 MiB).
        path: PathBuf,
        /// Format even when the device holds data (it is lost).
        #[arg(long)]
        force: bool,
    },
    /// Select the cache that later commands act on when no id is given.
    ///
    /// Like lc-mgr's switch_to. lcd keeps a cursor per D-Bus client and
    /// every lcctl run is a new client, so lcctl remembers the selection
    /// itself, in a file under the runtime directory (see FILES): resume
    /// without --id, free, clear-stat, flush, commit-super-block, get and
    /// set without --cache use it. The cache need not exist yet.
    SwitchTo {
        /// Cache id, 1..=255.
        #[arg(value_name = "ID", value_parser = id_parser())]
        id: u8,
    },
    /// Resume the cache on a formatted cache device (recovering after a
    /// crash), as cache ID.
    Resume {
        /// The cache device.
        path: PathBuf,
        /// Cache id, 1..=255 (default: the one chosen by switch-to).
        #[arg(long, value_name = "ID", value_parser = id_parser())]
        id: Option<u8>,
    },
    /// Stop a cache cleanly and forget it; its devices must be detached
    /// first. A cache that failed to resume is forgotten too.
    Free {
        /// Cache id (default: the one chosen by switch-to).
        #[arg(value_name = "ID", value_parser = id_parser())]
        id: Option<u8>,
    },
    /// Zero the 16 I/O counters of a cache.
    ClearStat {
        /// Cache id (default: the one chosen by switch-to).
        #[arg(value_name = "ID", value_parser = id_parser())]
        id: Option<u8>,
    },
    /// Serve a backing device through a cache; prints what to open: the
    /// block device node (/dev/ublkbN) or the NBD URI.
    Attach {
        /// The backing device (block device or file).
        backing: PathBuf,
        /// Cache to serve it through.
        #[arg(long, value_name = "ID", value_parser = id_parser())]
        cache: u8,
        /// Device id, 1..=255, unique over all caches (default: the lowest
        /// free one). Reuse the id a device had to get its cached data back.
        #[arg(long, value_name = "ID", value_parser = id_parser())]
        id: Option<u8>,
        /// How to expose it: `ublk` (/dev/ublkbN), `nbd` (an NBD export on
        /// a root-only Unix socket, for kernels without ublk, VMs and NBD
        /// tools: nbd-client, qemu, nbdfuse) or `none` (attached to the
        /// cache only). Default: lcd's (`lcd --frontend`; ublk where the
        /// kernel has it, else nbd). Kept across restarts of lcd.
        #[arg(long, value_enum, value_name = "FRONTEND")]
        frontend: Option<FrontendArg>,
    },
    /// Remove a device: its dirty data is written back to the backing
    /// device, its block node goes away, then it is detached from its cache.
    ///
    /// Waits for the write-back and shows the dirty blocks left (a bar on a
    /// terminal, a line now and then otherwise). If write-back keeps failing
    /// (a failing backing device), it fails with an I/O error (exit 6) and
    /// the device stays as it was, its dirty data in the cache.
    Detach {
        /// Device id.
        #[arg(value_name = "ID", value_parser = id_parser())]
        id: u8,
        /// Return as soon as the write-back has begun; the device shows
        /// state "detaching" until it is done, then goes away.
        #[arg(long)]
        no_wait: bool,
        /// Forget a failed device (its disk is gone) although its cache
        /// still holds dirty data of it: that data is dropped from the cache
        /// and lost. Without it, such a detach is refused (exit 4), so the
        /// data is never written to another disk that later gets the id.
        #[arg(long, conflicts_with = "no_wait")]
        discard_dirty: bool,
    },
    /// Bring back a failed device: from its recorded path (its disk is
    /// back, or its cache was re-pointed), checking that the disk there is
    /// the one recorded; or from BACKING, which is then recorded as the
    /// device's disk from now on.
    ///
    /// lcd records an identity for every backing device (a file's inode; a
    /// disk's size and stable names such as its WWN and serial) and at start
    /// leaves a device whose path leads to another disk "failed", writing
    /// nothing to it. Give BACKING when the disk moved (use its
    /// /dev/disk/by-id name) or when this is on purpose another disk; the
    /// cache's dirty data of the device must fit on it.
    Repoint {
        /// Device id.
        #[arg(value_name = "ID", value_parser = id_parser())]
        id: u8,
        /// The backing device to use from now on (default: the recorded one,
        /// identity checked).
        backing: Option<PathBuf>,
    },
    /// Bring back a cache that failed at start from PATH, recording PATH
    /// and the cache uuid found there as the cache's from now on.
    ///
    /// lcd records each cache's uuid and at start leaves a cache whose path
    /// leads to another cache (or to no cache) "failed", writing nothing to
    /// it. `lcd check PATH` shows the uuid a disk holds. Then bring its
    /// failed devices back with lcctl repoint.
    RepointCache {
        /// Cache id.
        #[arg(value_name = "ID", value_parser = id_parser())]
        id: u8,
        /// The cache device to use from now on.
        path: PathBuf,
    },
    /// Show caches as lc-mgr status did: segment ids, cursor, RAM, knobs,
    /// the 16 I/O counters with hit ratios, and their devices; also the
    /// health ("healthy", or "failing: ..." with what fails, since when,
    /// the last error and what to do) and the error counters.
    Status {
        /// Only this cache (default: every cache).
        #[arg(value_name = "ID", value_parser = id_parser())]
        id: Option<u8>,
    },
    /// List caches and devices, one line each.
    List,
    /// Print knobs of a cache (--cache) or of a device (--device).
    ///
    /// With KNOB, prints its value alone; without, a table of every knob.
    Get {
        /// Knob name (see KNOBS in lcctl(8)); every knob when omitted.
        #[arg(value_parser = KnobName)]
        knob: Option<String>,
        /// Whose knobs.
        #[command(flatten)]
        target: KnobTarget,
    },
    /// Set a knob of a cache (--cache) or of a device (--device).
    Set {
        /// Knob name (see KNOBS in lcctl(8)).
        #[arg(value_parser = KnobName)]
        knob: String,
        /// New value: a number; 0/1, true/false or on/off for the switches.
        value: String,
        /// Whose knobs.
        #[command(flatten)]
        target: KnobTarget,
    },
    /// Seal the partial segment of a cache's RAM buffer and write it to the
    /// cache device now.
    Flush {
        /// Cache id (default: the one chosen by switch-to).
        #[arg(value_name = "ID", value_parser = id_parser())]
        id: Option<u8>,
    },
    /// Write a cache's superblock record (last written-back segment) now.
    CommitSuperBlock {
        /// Cache id (default: the one chosen by switch-to).
        #[arg(value_name = "ID", value_parser = id_parser())]
        id: Option<u8>,
    },
}

/// Whose knobs `get` and `set` act on.
#[derive(Args, Debug)]
pub struct KnobTarget {
    /// A cache's knobs (default: the cache chosen by switch-to).
    #[arg(long, value_name = "ID", value_parser = id_parser(), conflicts_with = "device")]
    pub cache: Option<u8>,
    /// A device's knobs.
    #[arg(long, value_name = "ID", value_parser = id_parser())]
    pub device: Option<u8>,
}

/// `attach --frontend` values (lc-proto's [`lc_proto::FRONTENDS`]).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontendArg {
    /// /dev/ublkbN through the kernel's ublk driver.
    Ublk,
    /// An NBD export on a root-only Unix socket.
    Nbd,
    /// Attached to its cache only, no block device.
    None,
}

impl FrontendArg {
    /// The name lcd takes (one of [`lc_proto::FRONTENDS`]).
    pub fn name(self) -> &'static str {
        match self {
            FrontendArg::Ublk => "ublk",
            FrontendArg::Nbd => "nbd",
            FrontendArg::None => "none",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn attach_frontends_are_lc_protos() {
        let names: Vec<&str> = FrontendArg::value_variants()
            .iter()
            .map(|f| f.name())
            .collect();
        assert_eq!(names, lc_proto::FRONTENDS);
        for f in FrontendArg::value_variants() {
            let shown = f.to_possible_value().expect("a value");
            assert_eq!(
                shown.get_name(),
                f.name(),
                "what --frontend takes is what lcd gets"
            );
        }
    }
}
