//! lcd: the lc daemon.
//!
//! Without a subcommand it runs the daemon: the D-Bus API (lc-mgr's
//! messages, cache and device objects), ublk block devices and the saved
//! configuration. Inside, four parts with no cycle between them:
//!
//! - `registry`: the caches, devices and saved state with the daemon's
//!   rules; it knows neither D-Bus nor ublk.
//! - `bus`: the D-Bus API over the registry; it only authorises, converts
//!   and announces.
//! - `frontend`: how a device becomes a block device (`BlockFrontend`:
//!   ublk, NBD exports, or none).
//! - `process`: start, early boot without D-Bus, readiness and stop.
//!
//! The offline rescue subcommands
//! work on a cache device directly, with no daemon running:
//! `lcd check`, `lcd dump` and `lcd writeback`.

mod bus;
mod cli;
mod frontend;
mod identity;
mod ledger;
#[cfg(test)]
mod manual;
mod process;
mod registry;
mod rescue;
mod rundir;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command, FrontendArg};
use frontend::FrontendKind;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => {
            let bus = match (cli.session, cli.address) {
                (_, Some(a)) => bus::Bus::Address(a),
                (true, None) => bus::Bus::Session,
                (false, None) => bus::Bus::System,
            };
            let frontend = match cli.frontend {
                FrontendArg::Auto => None,
                FrontendArg::Ublk => Some(FrontendKind::Ublk),
                FrontendArg::Nbd => Some(FrontendKind::Nbd),
                FrontendArg::None => Some(FrontendKind::None),
            };
            let nbd_tcp = match frontend::nbd::NbdTcpConfig::from_flags(
                cli.nbd_listen.as_deref(),
                cli.nbd_tls,
                cli.nbd_insecure,
            ) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("lcd: {e}");
                    return ExitCode::from(2);
                }
            };
            process::run(process::Options {
                bus,
                state_dir: cli.state_dir,
                frontend,
                run_dir: cli.run_dir,
                queues: cli.queues,
                nbd_tcp,
                wait_for_devices: std::time::Duration::from_secs(cli.wait_for_devices),
            })
            .map(|()| ExitCode::SUCCESS)
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
