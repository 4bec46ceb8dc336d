//! # lc-nbd: the NBD protocol as lc's server speaks it
//!
//! The Network Block Device protocol (the specification is `doc/proto.md`
//! of the NetworkBlockDevice/nbd project) lets any NBD client — the
//! kernel's `nbd` driver through `nbd-client`, qemu, `nbdfuse`, `nbdcopy`,
//! `nbdinfo`, fio's `nbd` engine — use a block device served by a process.
//! This crate is the server side of it, over any byte stream, and knows
//! nothing of lc's engine, D-Bus or sockets: lcd hands it a stream and an
//! [`Export`] (a device with read, write, flush and trim).
//!
//! What it speaks:
//! - the **fixed newstyle** handshake only (oldstyle and plain newstyle
//!   are refused), with `NBD_FLAG_NO_ZEROES`;
//! - options `NBD_OPT_EXPORT_NAME`, `NBD_OPT_GO` and `NBD_OPT_INFO` (the
//!   export's size and flags, its block sizes: minimum 512 B, preferred
//!   4 KiB, maximum [`MAX_REQUEST_BYTES`], and its name), `NBD_OPT_LIST`,
//!   `NBD_OPT_ABORT` and `NBD_OPT_STRUCTURED_REPLY`; every other option is
//!   answered `NBD_REP_ERR_UNSUP`;
//! - `NBD_OPT_STARTTLS` where the caller requires TLS ([`TlsPolicy`]):
//!   until the client starts it, other options are answered
//!   `NBD_REP_ERR_TLS_REQD`; the TLS itself is the caller's (this crate
//!   hands back the stream at [`Handshake::StartTls`] and goes on over the
//!   TLS stream in [`negotiate_in_tls`]). Without TLS required, STARTTLS is
//!   answered `NBD_REP_ERR_UNSUP`;
//! - commands `READ`, `WRITE` (with `FUA`), `FLUSH`, `TRIM`,
//!   `WRITE_ZEROES` (with `FUA`) and `DISC`, requests in flight at once
//!   (answered as they finish, as the protocol allows), simple or
//!   structured replies as negotiated.
//!
//! What a client gets for bad input, never a crash, a hang or I/O outside
//! the export: a request not aligned to 512 B or out of range is answered
//! `EINVAL` (writes beyond the end `ENOSPC`), as are unknown commands and
//! flags and a READ longer than [`MAX_REQUEST_BYTES`], and the connection
//! goes on; a WRITE longer than that (its payload cannot be skipped
//! safely), a bad magic number or a stream that ends mid-message closes
//! the connection (after the requests already read are answered); an
//! option longer than [`MAX_OPTION_BYTES`] closes it during the handshake.
//! A connection holds at most [`MAX_IN_FLIGHT`] requests and 64 MiB of
//! their data at once: beyond that it stops reading until replies are sent.
//!
//! `NBD_FLAG_CAN_MULTI_CONN` is offered when the export says a FLUSH on one
//! connection covers writes completed on every connection
//! ([`Export::flush_covers_all_connections`]), which lc's FLUSH does.

mod handshake;
mod server;
mod wire;

pub use handshake::{handshake, negotiate_in_tls, Handshake, Negotiated, TlsPolicy, TlsStarted};
pub use server::{serve, transmit, ServeError};
pub use wire::Errno;

/// Longest READ, WRITE or WRITE_ZEROES payload the server accepts (the
/// maximum block size it advertises): 32 MiB, the most the protocol's
/// interoperability advice lets a client expect.
pub const MAX_REQUEST_BYTES: u32 = 32 << 20;

/// Longest option the server reads during the handshake (export names are
/// short; nothing legitimate comes close).
pub const MAX_OPTION_BYTES: u32 = 64 << 10;

/// The block size every offset and length must be a multiple of.
pub const MIN_BLOCK_BYTES: u32 = 512;

/// The block size the server prefers (lc's cache line).
pub const PREFERRED_BLOCK_BYTES: u32 = 4096;

/// The requests of one connection that may be in flight at once; the
/// server stops reading requests while this many are not yet answered
/// (its threads serving a connection are fewer).
pub const MAX_IN_FLIGHT: usize = 64;

/// A block device served over NBD. Offsets and lengths are multiples of
/// [`MIN_BLOCK_BYTES`] and inside [`Export::size`] (the server checks).
/// Calls come from several threads at once.
pub trait Export: Send + Sync {
    /// Size in bytes (a multiple of [`MIN_BLOCK_BYTES`]).
    fn size(&self) -> u64;
    /// Reads `buf.len()` bytes at `offset`.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Errno>;
    /// Writes `data` at `offset`; with `fua`, durable before it returns.
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), Errno>;
    /// Makes every write completed before it durable.
    fn flush(&self) -> Result<(), Errno>;
    /// Discards `len` bytes at `offset` (what they read afterwards is
    /// unspecified until written).
    fn trim(&self, offset: u64, len: u64) -> Result<(), Errno>;
    /// Whether a FLUSH on one connection covers writes completed on every
    /// connection of this export (then `NBD_FLAG_CAN_MULTI_CONN` is offered).
    fn flush_covers_all_connections(&self) -> bool;
}

/// The exports a server offers, by name.
pub trait Exports {
    /// The export a client names (`""` is the default export).
    fn find(&self, name: &str) -> Option<std::sync::Arc<dyn Export>>;
    /// The names `NBD_OPT_LIST` reports.
    fn names(&self) -> Vec<String>;
}
