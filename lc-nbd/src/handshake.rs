//! The fixed newstyle handshake and option haggling.

use std::io::{self, Read, Write};
use std::sync::Arc;

use crate::wire::*;
use crate::{
    Export, Exports, MAX_OPTION_BYTES, MAX_REQUEST_BYTES, MIN_BLOCK_BYTES, PREFERRED_BLOCK_BYTES,
};

/// What the handshake agreed: the export chosen and how replies are sent.
pub struct Negotiated {
    /// The export the client chose.
    pub export: Arc<dyn Export>,
    /// Its name as the client gave it.
    pub name: String,
    /// Structured replies were negotiated (`NBD_OPT_STRUCTURED_REPLY`).
    pub structured: bool,
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// The transmission flags of `export`.
fn transmission_flags(export: &dyn Export) -> u16 {
    let mut f =
        FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES;
    if export.flush_covers_all_connections() {
        f |= FLAG_CAN_MULTI_CONN;
    }
    f
}

/// Whether a connection must start TLS before it may choose an export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsPolicy {
    /// The server offers no TLS (a root-only Unix socket):
    /// `NBD_OPT_STARTTLS` is answered `NBD_REP_ERR_UNSUP`.
    Off,
    /// Until the client has started TLS, every option but
    /// `NBD_OPT_STARTTLS` and `NBD_OPT_ABORT` is answered
    /// `NBD_REP_ERR_TLS_REQD` (and `NBD_OPT_EXPORT_NAME`, which cannot be
    /// answered so, closes the connection).
    Required,
}

/// How a handshake ended.
pub enum Handshake {
    /// The client chose an export: transmission follows.
    Export(Negotiated),
    /// The client ended it (`NBD_OPT_ABORT`, or it closed the stream
    /// between options).
    Ended,
    /// The client asked for TLS and was told yes (`NBD_REP_ACK` is sent):
    /// the caller runs TLS's handshake as the server on this stream, then
    /// goes on with [`negotiate_in_tls`] on the TLS stream.
    StartTls(TlsStarted),
}

/// Where option haggling stands on TLS.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No TLS is offered.
    Plain,
    /// TLS is required and not started yet.
    BeforeTls,
    /// Inside TLS.
    InTls,
}

/// Runs the server's side of the handshake on `r`/`w` (one stream's two
/// directions): the greeting, then the client's options under `tls`. An
/// error: the client broke the protocol or the stream failed; the caller
/// closes the connection.
pub fn handshake(
    r: &mut impl Read,
    w: &mut impl Write,
    exports: &dyn Exports,
    tls: TlsPolicy,
) -> io::Result<Handshake> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    w.write_all(&hello)?;
    w.flush()?;
    let client_flags = read_u32(r)?;
    if client_flags & FLAG_C_FIXED_NEWSTYLE == 0 {
        return Err(invalid("the client does not speak fixed newstyle"));
    }
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(invalid(format!("unknown client flags {client_flags:#x}")));
    }
    let no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;
    let phase = match tls {
        TlsPolicy::Off => Phase::Plain,
        TlsPolicy::Required => Phase::BeforeTls,
    };
    negotiate(r, w, exports, phase, no_zeroes)
}

/// Goes on with option haggling inside TLS, after [`Handshake::StartTls`]:
/// `r`/`w` are the TLS stream's two directions, `started` is what
/// [`Handshake::StartTls`] carried. What the client
/// negotiated before TLS is forgotten, as the protocol says. Never returns
/// [`Handshake::StartTls`] (a second STARTTLS is refused).
pub fn negotiate_in_tls(
    r: &mut impl Read,
    w: &mut impl Write,
    exports: &dyn Exports,
    started: TlsStarted,
) -> io::Result<Handshake> {
    negotiate(r, w, exports, Phase::InTls, started.no_zeroes)
}

/// What the plain part of a handshake agreed that outlives STARTTLS.
#[derive(Clone, Copy, Debug)]
pub struct TlsStarted {
    /// The client asked for no zeroes after `NBD_OPT_EXPORT_NAME`'s reply.
    pub no_zeroes: bool,
}

/// Option haggling until an export is chosen, the client ends it or TLS
/// starts.
fn negotiate(
    r: &mut impl Read,
    w: &mut impl Write,
    exports: &dyn Exports,
    phase: Phase,
    no_zeroes: bool,
) -> io::Result<Handshake> {
    let mut structured = false;
    loop {
        let magic = match read_u64(r) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Handshake::Ended),
            Err(e) => return Err(e),
        };
        if magic != IHAVEOPT {
            return Err(invalid(format!("option magic {magic:#018x}")));
        }
        let option = read_u32(r)?;
        let len = read_u32(r)?;
        if len > MAX_OPTION_BYTES {
            return Err(invalid(format!("option {option} of {len} bytes")));
        }
        let mut data = vec![0u8; len as usize];
        r.read_exact(&mut data)?;
        if phase == Phase::BeforeTls && !matches!(option, OPT_STARTTLS | OPT_ABORT) {
            if option == OPT_EXPORT_NAME {
                // no way to say "TLS first" but to close the connection
                return Err(invalid("NBD_OPT_EXPORT_NAME before STARTTLS"));
            }
            option_reply(w, option, REP_ERR_TLS_REQD, &[])?;
            w.flush()?;
            continue;
        }
        match option {
            OPT_STARTTLS => match phase {
                _ if !data.is_empty() => option_reply(w, option, REP_ERR_INVALID, &[])?,
                Phase::Plain => option_reply(w, option, REP_ERR_UNSUP, &[])?,
                Phase::InTls => option_reply(w, option, REP_ERR_INVALID, &[])?,
                Phase::BeforeTls => {
                    option_reply(w, option, REP_ACK, &[])?;
                    w.flush()?;
                    return Ok(Handshake::StartTls(TlsStarted { no_zeroes }));
                }
            },
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data).into_owned();
                // no way to say no but to close the connection
                let Some(export) = exports.find(&name) else {
                    return Err(invalid(format!("no export named {name:?}")));
                };
                let mut m = Vec::with_capacity(10 + 124);
                m.extend_from_slice(&export.size().to_be_bytes());
                m.extend_from_slice(&transmission_flags(&*export).to_be_bytes());
                if !no_zeroes {
                    m.extend_from_slice(&[0u8; 124]);
                }
                w.write_all(&m)?;
                w.flush()?;
                return Ok(Handshake::Export(Negotiated {
                    export,
                    name,
                    structured,
                }));
            }
            OPT_ABORT => {
                // the reply is optional; the client may already be gone
                let _ = option_reply(w, option, REP_ACK, &[]).and_then(|()| w.flush());
                return Ok(Handshake::Ended);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    option_reply(w, option, REP_ERR_INVALID, &[])?;
                } else {
                    for name in exports.names() {
                        let mut d = (name.len() as u32).to_be_bytes().to_vec();
                        d.extend_from_slice(name.as_bytes());
                        option_reply(w, option, REP_SERVER, &d)?;
                    }
                    option_reply(w, option, REP_ACK, &[])?;
                }
            }
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    option_reply(w, option, REP_ERR_INVALID, &[])?;
                } else {
                    structured = true;
                    option_reply(w, option, REP_ACK, &[])?;
                }
            }
            OPT_INFO | OPT_GO => match info_request(&data) {
                None => option_reply(w, option, REP_ERR_INVALID, &[])?,
                Some((name, _wanted)) => match exports.find(&name) {
                    None => option_reply(w, option, REP_ERR_UNKNOWN, name.as_bytes())?,
                    Some(export) => {
                        // export and block sizes always (a client that did
                        // not ask for block sizes may ignore them: requests
                        // it sends misaligned are refused with EINVAL)
                        let mut d = INFO_EXPORT.to_be_bytes().to_vec();
                        d.extend_from_slice(&export.size().to_be_bytes());
                        d.extend_from_slice(&transmission_flags(&*export).to_be_bytes());
                        option_reply(w, option, REP_INFO, &d)?;
                        let mut d = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                        d.extend_from_slice(&MIN_BLOCK_BYTES.to_be_bytes());
                        d.extend_from_slice(&PREFERRED_BLOCK_BYTES.to_be_bytes());
                        d.extend_from_slice(&MAX_REQUEST_BYTES.to_be_bytes());
                        option_reply(w, option, REP_INFO, &d)?;
                        let mut d = INFO_NAME.to_be_bytes().to_vec();
                        d.extend_from_slice(name.as_bytes());
                        option_reply(w, option, REP_INFO, &d)?;
                        option_reply(w, option, REP_ACK, &[])?;
                        if option == OPT_GO {
                            w.flush()?;
                            return Ok(Handshake::Export(Negotiated {
                                export,
                                name,
                                structured,
                            }));
                        }
                    }
                },
            },
            _ => option_reply(w, option, REP_ERR_UNSUP, &[])?,
        }
        w.flush()?;
    }
}

/// Parses the data of `NBD_OPT_INFO`/`NBD_OPT_GO`: the export name and the
/// information types asked for; `None` if malformed.
fn info_request(data: &[u8]) -> Option<(String, Vec<u16>)> {
    let name_len = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    let name = data.get(4..4usize.checked_add(name_len)?)?;
    let rest = &data[4 + name_len..];
    let n = u16::from_be_bytes(rest.get(0..2)?.try_into().ok()?) as usize;
    let types = rest.get(2..)?;
    if types.len() != 2 * n {
        return None;
    }
    let wanted = types
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Some((String::from_utf8_lossy(name).into_owned(), wanted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_requests_are_parsed_or_refused_whole() {
        let mut d = 3u32.to_be_bytes().to_vec();
        d.extend_from_slice(b"abc");
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&3u16.to_be_bytes());
        assert_eq!(info_request(&d), Some(("abc".into(), vec![3])));
        assert_eq!(info_request(&d[..d.len() - 1]), None, "a torn type");
        let mut long = u32::MAX.to_be_bytes().to_vec();
        long.extend_from_slice(b"abc\0\0");
        assert_eq!(info_request(&long), None, "a name longer than the option");
        assert_eq!(info_request(&[]), None);
    }
}
