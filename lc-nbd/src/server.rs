//! Transmission: requests read in order, served by a few threads at once
//! (each serving the request it read), answered as they finish.

use std::io::{self, BufReader, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

use crate::handshake::{handshake, Handshake, Negotiated, TlsPolicy};
use crate::wire::*;
use crate::{Export, Exports, MAX_IN_FLIGHT, MAX_REQUEST_BYTES, MIN_BLOCK_BYTES};

/// Threads that serve one connection's requests.
const WORKERS: usize = 8;
const _: () = assert!(WORKERS <= MAX_IN_FLIGHT);

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
pub fn serve<R: Read + Send, W: Write + Send>(
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

/// The connection's request stream, read by one worker at a time, and how
/// reading it ended.
struct RequestStream<R> {
    r: BufReader<R>,
    /// Set by the worker that saw the end: DISC or the end of the stream
    /// (`Ok`), a protocol or stream error.
    ended: Option<Result<(), ServeError>>,
}

/// Payload bytes of the requests being served, against
/// [`MAX_IN_FLIGHT_BYTES`].
struct Budget {
    bytes: Mutex<u64>,
    freed: Condvar,
}

impl Budget {
    /// Waits until `bytes` more fit (a request larger than the whole budget
    /// waits until nothing is in flight), then takes them.
    fn take(&self, bytes: u64) {
        let mut b = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        while *b > 0 && *b + bytes > MAX_IN_FLIGHT_BYTES {
            b = self.freed.wait(b).unwrap_or_else(|e| e.into_inner());
        }
        *b += bytes;
    }

    fn give_back(&self, bytes: u64) {
        if bytes > 0 {
            *self.bytes.lock().unwrap_or_else(|e| e.into_inner()) -= bytes;
            self.freed.notify_all();
        }
    }
}

/// Bytes the request stream is read in: several pipelined requests per
/// read of the socket.
const READ_BUFFER_BYTES: usize = 64 << 10;

/// The transmission phase of a negotiated connection; returns when the
/// client sends `NBD_CMD_DISC` or ends the stream (every request read is
/// answered first, unless the stream broke).
///
/// Eight threads take turns at reading: the one holding the stream reads
/// the next request, lets go of the stream and serves that request itself
/// (no hand-over between threads), so at most eight (fewer than
/// [`MAX_IN_FLIGHT`]) requests are in flight, answered as they finish.
pub fn transmit<R: Read + Send, W: Write + Send>(
    r: R,
    w: W,
    n: &Negotiated,
) -> Result<(), ServeError> {
    let export = &*n.export;
    let structured = n.structured;
    let writer = Mutex::new(w);
    let broken = AtomicBool::new(false);
    let stream = Mutex::new(RequestStream {
        r: BufReader::with_capacity(READ_BUFFER_BYTES, r),
        ended: None,
    });
    let budget = Budget {
        bytes: Mutex::new(0),
        freed: Condvar::new(),
    };
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
                    let mut s = stream.lock().unwrap_or_else(|e| e.into_inner());
                    if s.ended.is_some() {
                        return;
                    }
                    if broken.load(Ordering::SeqCst) {
                        let e = ServeError::Stream(io::ErrorKind::BrokenPipe.into());
                        s.ended = Some(Err(e));
                        return;
                    }
                    match next_request(&mut s.r, structured, &budget, &reply) {
                        Ok(Some(work)) => work,
                        Ok(None) => {
                            s.ended = Some(Ok(()));
                            return;
                        }
                        Err(e) => {
                            s.ended = Some(Err(e));
                            return;
                        }
                    }
                };
                reply(execute(export, structured, &work));
                budget.give_back(work.bytes);
            });
        }
    });
    let ended = stream.into_inner().unwrap_or_else(|e| e.into_inner()).ended;
    ended.unwrap_or(Ok(()))
}

/// Reads the next request to serve, with its payload, once the in-flight
/// budget has room for it; `None` at DISC or the end of the stream.
/// Unknown commands are answered here and skipped.
fn next_request(
    r: &mut impl Read,
    structured: bool,
    budget: &Budget,
    reply: &impl Fn(Vec<u8>),
) -> Result<Option<Work>, ServeError> {
    loop {
        let Some(req) = Request::read(r)? else {
            return Ok(None);
        };
        let len = req.length as u64;
        return Ok(Some(match req.kind {
            CMD_DISC => return Ok(None),
            CMD_WRITE => {
                if req.length > MAX_REQUEST_BYTES {
                    // its payload cannot be skipped safely: close
                    return Err(ServeError::Protocol(format!(
                        "a write of {} bytes (at most {MAX_REQUEST_BYTES})",
                        req.length
                    )));
                }
                budget.take(len);
                let mut data = vec![0u8; req.length as usize];
                if let Err(e) = r.read_exact(&mut data) {
                    budget.give_back(len);
                    return Err(e.into());
                }
                Work {
                    req,
                    data,
                    bytes: len,
                }
            }
            CMD_READ if req.length <= MAX_REQUEST_BYTES => {
                budget.take(len);
                Work {
                    req,
                    data: Vec::new(),
                    bytes: len,
                }
            }
            CMD_READ | CMD_FLUSH | CMD_TRIM | CMD_WRITE_ZEROES => Work {
                req,
                data: Vec::new(),
                bytes: 0,
            },
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
        }));
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
