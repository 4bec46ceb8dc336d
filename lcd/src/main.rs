//! lcd: the lc daemon.
//!
//! Without a subcommand it runs the daemon: the D-Bus Manager (lc-mgr's
//! messages) works; cache and device objects, ublk devices and persistence
//! are not built yet. The offline rescue subcommands
//! work on a cache device directly, with no daemon running:
//! `lcd check`, `lcd dump` and `lcd writeback`.

mod cache_object;
mod daemon;
mod rescue;
mod state;

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
    #[command(subcommand)]
    command: Option<Command>,
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
            daemon::run(bus, &cli.state_dir).map(|()| ExitCode::SUCCESS)
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
