//! lcd: the lc daemon.
//!
//! Without a subcommand it runs the daemon: the D-Bus API (lc-mgr's
//! messages, cache and device objects), ublk block devices and the saved
//! configuration. The offline rescue subcommands
//! work on a cache device directly, with no daemon running:
//! `lcd check`, `lcd dump` and `lcd writeback`.

mod cache_object;
mod cli;
mod daemon;
mod device_object;
mod devices;
mod frontend;
mod identity;
mod ledger;
#[cfg(test)]
mod manual;
mod policy;
mod rescue;
mod rundir;
mod state;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command, FrontendArg};

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
                FrontendArg::Ublk => daemon::FrontendKind::Ublk,
                FrontendArg::None => daemon::FrontendKind::None,
            };
            daemon::run(daemon::Options {
                bus,
                state_dir: cli.state_dir,
                frontend,
                run_dir: cli.run_dir,
                queues: cli.queues,
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
