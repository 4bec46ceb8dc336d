//! lcd's command line, in one place: `main` parses it and `manual` makes
//! the man page from it.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// lcd — the lc daemon and its offline rescue tools.
#[derive(Parser, Debug)]
#[command(name = "lcd", version, about, long_about = None)]
pub struct Cli {
    /// Serve on the system bus (the default; named so that units and
    /// scripts can say it).
    #[arg(long, conflicts_with_all = ["session", "address"])]
    pub system: bool,
    /// Serve on the session bus instead of the system bus.
    #[arg(long, conflicts_with = "address")]
    pub session: bool,
    /// Serve on the bus at this D-Bus address (tests).
    #[arg(long, value_name = "ADDRESS")]
    pub address: Option<String>,
    /// Where lcd records its caches, devices and knobs, to bring them back
    /// at start.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/lcd")]
    pub state_dir: PathBuf,
    /// How devices are exposed unless their attach says otherwise (`lcctl
    /// attach --frontend`): `ublk` (as /dev/ublkbN), `nbd` (each as an NBD
    /// export on the Unix socket RUN_DIR/nbd/N.sock, root only: for kernels
    /// without ublk, VMs and NBD tools), `none` (attached to their cache
    /// only: for tests, or to drain a cache) or `auto` (the default: ublk
    /// where the kernel offers it, else nbd).
    #[arg(long, value_enum, default_value_t = FrontendArg::Auto, hide_possible_values = true)]
    pub frontend: FrontendArg,
    /// Where lcd marks its block devices for the udev rule that adds the
    /// /dev/lc/<id> links.
    #[arg(long, value_name = "DIR", default_value = "/run/lc")]
    pub run_dir: PathBuf,
    /// At start, wait up to SECONDS for saved cache and backing devices
    /// that do not exist yet (disks still appearing during boot) before
    /// bringing the caches and devices back; what is still missing then is
    /// listed as failed. lcd.service passes 90.
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    pub wait_for_devices: u64,
    /// Queues of each ublk device: one thread with its own io_uring per
    /// queue, each serving up to 64 requests at once of up to 256 KiB. 0
    /// (the default) gives one queue per CPU. A device keeps its count
    /// while it lives; a changed count applies to devices started later.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=64))]
    pub queues: u16,
    /// Also serve every NBD device over TCP at ADDRESS: PORT (on loopback,
    /// 127.0.0.1), HOST:PORT or [IPV6]:PORT (0.0.0.0:10809 for every
    /// address). Clients name the device as the export: nbds://HOST:PORT/1.
    /// Needs --nbd-tls or --nbd-insecure. Off by default: NBD is served on
    /// root-only Unix sockets only.
    #[arg(long, value_name = "ADDRESS")]
    pub nbd_listen: Option<String>,
    /// TLS for NBD over TCP, with DIR holding ca-cert.pem, server-cert.pem
    /// and server-key.pem (qemu-nbd's layout; read at start). Clients must
    /// start TLS (NBD_OPT_STARTTLS) and present a certificate signed by
    /// ca-cert.pem; any other is refused.
    #[arg(
        long,
        value_name = "DIR",
        requires = "nbd_listen",
        conflicts_with = "nbd_insecure"
    )]
    pub nbd_tls: Option<PathBuf>,
    /// NBD over TCP without TLS or any check of who connects: whoever can
    /// reach ADDRESS can read and write every NBD device. Only for a
    /// machine and network you trust entirely (a test VM's host side).
    #[arg(long, requires = "nbd_listen")]
    pub nbd_insecure: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `--frontend` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum FrontendArg {
    /// ublk where the kernel offers it, else nbd.
    Auto,
    /// /dev/ublkbN through the kernel's ublk driver.
    Ublk,
    /// An NBD export per device on a Unix socket.
    Nbd,
    /// No block devices.
    None,
}

#[derive(Subcommand, Debug)]
pub enum Command {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_bus_can_be_named_and_conflicts_with_the_others() {
        let cli = Cli::try_parse_from(["lcd", "--system"]).expect("--system is accepted");
        assert!(cli.system && !cli.session && cli.address.is_none());
        for other in [&["--session"][..], &["--address", "unix:path=/x"][..]] {
            let mut args = vec!["lcd", "--system"];
            args.extend_from_slice(other);
            let err = Cli::try_parse_from(args).expect_err("two buses are refused");
            assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        }
    }
}
