//! Transmission: requests read in order, served by a few threads at once,
//! answered as they finish.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

use crate::handshake::{handshake, Handshake, Negotiated, TlsPolicy};
use crate::wire::*;
use crate::{Export, Exports, MAX_IN_FLIGHT, MAX_REQUEST_BYTES, MIN_BLOCK_BYTES};

/// Threads that serve one connection's requests.
const WORKERS: usize = 8;

/// Most bytes of request payloads and read buffers one connection holds.
const MAX_IN_FLIGHT_BYTES: u64 = 64 << 20;

/// Largest write one WRITE_ZEROES request is cut into.
const ZEROES_CHUNK: u64 = 1 << 20;

/// Why a connection ended other than by the client's `NBD_CMD_DISC` or a
/// clean end of its stream.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The stream failed or ended in the middle of a message.
    #[error("the NBD connection failed")]
    Stream(#[source] io::Error),
    /// The client broke the protocol; the connection was closed.
    #[error("the NBD client broke the protocol: {0}")]
    Protocol(String),
}

impl From<io::Error> for ServeError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::InvalidData {
            ServeError::Protocol(e.to_string())
        } else {
            ServeError::Stream(e)
        }
    }
}

/// Alignment of the buffers READs are served into (the export's
/// [`Export::read`] gets one starting at such a boundary).
const READ_ALIGN: usize = 4096;

/// Serves one connection that offers no TLS: the handshake on `r`/`w` (the
/// two directions of one stream), then its requests until the client
/// disconnects.
pub fn serve<R: Read, W: Write + Send>(
    mut r: R,
    mut w: W,
    exports: &dyn Exports,
) -> Result<(), ServeError> {
    match handshake(&mut r, &mut w, exports, TlsPolicy::Off)? {
        Handshake::Export(n) => transmit(r, w, &n),
        Handshake::Ended => Ok(()),
        // STARTTLS is refused where TLS is off, so this cannot come
        Handshake::StartTls(_) => Err(ServeError::Protocol("STARTTLS without TLS".into())),
    }
}

/// One request as read, with its payload.
struct Work {
    req: Request,
    data: Vec<u8>,
    /// Bytes it holds of the in-flight budget.
    bytes: u64,
}

/// The requests read and not yet answered.
struct InFlight {
    queue: VecDeque<Work>,
    /// Read and not yet answered (queued or being served).
    count: usize,
    bytes: u64,
    /// The reader is done: workers end once the queue is empty.
    closed: bool,
}

/// The transmission phase of a negotiated connection; returns when the
/// client sends `NBD_CMD_DISC` or ends the stream (every request read is
/// answered first, unless the stream broke).
pub fn transmit<R: Read, W: Write + Send>(
    mut r: R,
    w: W,
    n: &Negotiated,
) -> Result<(), ServeError> {
    let export = &*n.export;
    let writer = Mutex::new(w);
    let broken = AtomicBool::new(false);
    let flight = Mutex::new(InFlight {
        queue: VecDeque::new(),
        count: 0,
        bytes: 0,
        closed: false,
    });
    let cv = Condvar::new();
    let lock = || flight.lock().unwrap_or_else(|e| e.into_inner());
    let reply = |bytes: Vec<u8>| {
        let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
        if w.write_all(&bytes).and_then(|()| w.flush()).is_err() {
            broken.store(true, Ordering::SeqCst);
        }
    };
    std::thread::scope(|scope| {
        for _ in 0..WORKERS {
            scope.spawn(|| loop {
                let work = {
                    let mut f = lock();
                    loop {
                        if let Some(work) = f.queue.pop_front() {
                            break Some(work);
                        }
                        if f.closed {
                            break None;
                        }
                        f = cv.wait(f).unwrap_or_else(|e| e.into_inner());
                    }
                };
                let Some(work) = work else { return };
                reply(execute(export, n.structured, &work));
                let mut f = lock();
                f.count -= 1;
                f.bytes -= work.bytes;
                drop(f);
                cv.notify_all();
            });
        }
        let res = read_requests(&mut r, n.structured, &broken, &flight, &cv, &reply);
        lock().closed = true;
        cv.notify_all();
        res
    })
}

/// The reader: requests in order, each queued for the workers once the
/// in-flight budget has room. Ends at DISC, at the end of the stream or at
/// a protocol error.
fn read_requests(
    r: &mut impl Read,
    structured: bool,
    broken: &AtomicBool,
    flight: &Mutex<InFlight>,
    cv: &Condvar,
    reply: &(impl Fn(Vec<u8>) + Sync),
) -> Result<(), ServeError> {
    loop {
        if broken.load(Ordering::SeqCst) {
            return Err(ServeError::Stream(io::ErrorKind::BrokenPipe.into()));
        }
        let Some(req) = Request::read(r)? else {
            return Ok(());
        };
        let len = req.length as u64;
        let (data, bytes) = match req.kind {
            CMD_DISC => return Ok(()),
            CMD_WRITE => {
                if req.length > MAX_REQUEST_BYTES {
                    // its payload cannot be skipped safely: close
                    return Err(ServeError::Protocol(format!(
                        "a write of {} bytes (at most {MAX_REQUEST_BYTES})",
                        req.length
                    )));
                }
                wait_for_budget(flight, cv, len);
                let mut data = vec![0u8; req.length as usize];
                r.read_exact(&mut data)?;
                (data, len)
            }
            CMD_READ if req.length <= MAX_REQUEST_BYTES => {
                wait_for_budget(flight, cv, len);
                (Vec::new(), len)
            }
            CMD_READ | CMD_FLUSH | CMD_TRIM | CMD_WRITE_ZEROES => {
                wait_for_budget(flight, cv, 0);
                (Vec::new(), 0)
            }
            _ => {
                // unknown commands carry no payload the server knows of
                reply(command_reply(
                    structured,
                    req.cookie,
                    Err(Errno::Inval),
                    None,
                ));
                continue;
            }
        };
        let mut f = flight.lock().unwrap_or_else(|e| e.into_inner());
        f.count += 1;
        f.bytes += bytes;
        f.queue.push_back(Work { req, data, bytes });
        drop(f);
        cv.notify_all();
    }
}

/// Waits until one more request of `bytes` fits the in-flight budget (a
/// request larger than the whole budget waits until nothing is in flight).
fn wait_for_budget(flight: &Mutex<InFlight>, cv: &Condvar, bytes: u64) {
    let mut f = flight.lock().unwrap_or_else(|e| e.into_inner());
    while f.count >= MAX_IN_FLIGHT || (f.count > 0 && f.bytes + bytes > MAX_IN_FLIGHT_BYTES) {
        f = cv.wait(f).unwrap_or_else(|e| e.into_inner());
    }
}

/// Checks a request's range: aligned, inside the export.
fn check_range(export: &dyn Export, req: &Request, beyond_end: Errno) -> Result<(), Errno> {
    let b = MIN_BLOCK_BYTES as u64;
    if req.offset % b != 0 || req.length as u64 % b != 0 {
        return Err(Errno::Inval);
    }
    match req.offset.checked_add(req.length as u64) {
        Some(end) if end <= export.size() => Ok(()),
        _ => Err(beyond_end),
    }
}

/// Serves one request; its reply as bytes.
fn execute(export: &dyn Export, structured: bool, work: &Work) -> Vec<u8> {
    let req = &work.req;
    let fua = req.flags & CMD_FLAG_FUA != 0;
    let known_flags = match req.kind {
        CMD_WRITE | CMD_WRITE_ZEROES => CMD_FLAG_FUA,
        _ => 0,
    };
    if req.flags & !known_flags != 0 {
        return command_reply(structured, req.cookie, Err(Errno::Inval), None);
    }
    let done = |res| command_reply(structured, req.cookie, res, None);
    match req.kind {
        CMD_READ => {
            if req.length > MAX_REQUEST_BYTES {
                return done(Err(Errno::Inval));
            }
            if let Err(e) = check_range(export, req, Errno::Inval) {
                return done(Err(e));
            }
            if req.length == 0 {
                return done(Ok(()));
            }
            // a buffer at a 4 KiB boundary, so that an export reading with
            // O_DIRECT can read into it without a bounce buffer of its own
            let len = req.length as usize;
            let mut storage = vec![0u8; len + READ_ALIGN - 1];
            let at = storage
                .as_ptr()
                .align_offset(READ_ALIGN)
                .min(READ_ALIGN - 1);
            let buf = &mut storage[at..at + len];
            match export.read(req.offset, buf) {
                Ok(()) => command_reply(structured, req.cookie, Ok(()), Some((req.offset, buf))),
                Err(e) => done(Err(e)),
            }
        }
        CMD_WRITE => done(check_range(export, req, Errno::NoSpc).and_then(|()| {
            if work.data.is_empty() {
                return Ok(());
            }
            export.write(req.offset, &work.data, fua)
        })),
        CMD_FLUSH => done(export.flush()),
        CMD_TRIM => done(check_range(export, req, Errno::Inval).and_then(|()| {
            if req.length == 0 {
                return Ok(());
            }
            export.trim(req.offset, req.length as u64)
        })),
        CMD_WRITE_ZEROES => done(check_range(export, req, Errno::NoSpc).and_then(|()| {
            let zeros = vec![0u8; ZEROES_CHUNK.min(req.length as u64) as usize];
            let end = req.offset + req.length as u64;
            let mut at = req.offset;
            while at < end {
                let n = (end - at).min(ZEROES_CHUNK);
                export.write(at, &zeros[..n as usize], false)?;
                at += n;
            }
            // FUA: every chunk durable before the reply
            if fua {
                export.flush()?;
            }
            Ok(())
        })),
        _ => done(Err(Errno::Inval)),
    }
}
