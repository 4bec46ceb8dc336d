//! lcd: the lc daemon.
//!
//! Without a subcommand it runs the daemon: the D-Bus API (lc-mgr's
//! messages, cache and device objects), ublk block devices and the saved
//! configuration. The offline rescue subcommands
//! work on a cache device directly, with no daemon running:
//! `lcd check`, `lcd dump` and `lcd writeback`.

mod cache_object;
mod daemon;
mod device_object;
mod devices;
mod policy;
mod rescue;
mod state;
mod ublk;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// lcd — the lc daemon and its offline rescue tools.
#[derive(Parser, Debug)]
#[command(name = "lcd", version, about, long_about = None)]
struct Cli {
    /// Serve on the session bus instead of the system bus.
    #[arg(long, conflicts_with = "address")]
    session: bool,
    /// Serve on the bus at this D-Bus address (tests).
    #[arg(long, value_name = "ADDRESS")]
    address: Option<String>,
    /// Where lcd records its caches and knobs, to bring them back at start.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/lcd")]
    state_dir: PathBuf,
    /// How devices are exposed: `ublk` (as /dev/ublkbN) or `none` (attached
    /// to their cache only: for tests, or to drain a cache where the kernel
    /// has no ublk).
    #[arg(long, value_enum, default_value_t = FrontendArg::Ublk)]
    frontend: FrontendArg,
    /// Where lcd marks its block devices for the udev rule that adds the
    /// /dev/lc/<id> links.
    #[arg(long, value_name = "DIR", default_value = "/run/lc")]
    run_dir: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

/// `--frontend` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum FrontendArg {
    /// /dev/ublkbN through the kernel's ublk driver.
    Ublk,
    /// No block devices.
    None,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Verify a cache device offline: superblock, records, every segment
    /// checksum; report dirty data per device. Exit status 0: consistent,
    /// 3: a damaged segment was found, 1: not readable or not an lc cache.
    Check {
        /// The cache device (block device or file); it must not be in use.
        cache: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the superblock, the records and every segment header.
    Dump {
        /// The cache device (block device or file).
        cache: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write all dirty data back to the backing devices and mark the cache
    /// clean, with no daemon running (the cache must not be in use).
    Writeback {
        /// The cache device (block device or file).
        cache: PathBuf,
        /// A backing device for a device id found in the cache, as ID=PATH;
        /// repeat for each device id that has dirty data.
        #[arg(long = "backing", value_name = "ID=PATH", required = true)]
        backings: Vec<String>,
        /// Print the result as JSON (progress still goes to stderr).
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => {
            let bus = match (cli.session, cli.address) {
                (_, Some(a)) => daemon::Bus::Address(a),
                (true, None) => daemon::Bus::Session,
                (false, None) => daemon::Bus::System,
            };
            let frontend = match cli.frontend {
                FrontendArg::Ublk => devices::Frontend::Ublk,
                FrontendArg::None => devices::Frontend::None,
            };
            daemon::run(bus, &cli.state_dir, frontend, &cli.run_dir).map(|()| ExitCode::SUCCESS)
        }
        Some(Command::Check { cache, json }) => rescue::check(&cache, json),
        Some(Command::Dump { cache, json }) => {
            rescue::dump(&cache, json).map(|()| ExitCode::SUCCESS)
        }
        Some(Command::Writeback {
            cache,
            backings,
            json,
        }) => rescue::writeback(&cache, &backings, json).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lcd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
