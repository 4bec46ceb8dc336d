//! The protocol's numbers and messages as bytes on the wire (big-endian).

use std::io::{self, Read, Write};

pub(crate) const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
pub(crate) const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
pub(crate) const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub(crate) const REQUEST_MAGIC: u32 = 0x2560_9513;
pub(crate) const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub(crate) const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// handshake flags (server) and client flags
pub(crate) const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub(crate) const FLAG_NO_ZEROES: u16 = 1 << 1;
pub(crate) const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub(crate) const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// options
pub(crate) const OPT_EXPORT_NAME: u32 = 1;
pub(crate) const OPT_ABORT: u32 = 2;
pub(crate) const OPT_LIST: u32 = 3;
pub(crate) const OPT_STARTTLS: u32 = 5;
pub(crate) const OPT_INFO: u32 = 6;
pub(crate) const OPT_GO: u32 = 7;
pub(crate) const OPT_STRUCTURED_REPLY: u32 = 8;

// option replies
pub(crate) const REP_ACK: u32 = 1;
pub(crate) const REP_SERVER: u32 = 2;
pub(crate) const REP_INFO: u32 = 3;
const REP_ERR: u32 = 1 << 31;
pub(crate) const REP_ERR_UNSUP: u32 = REP_ERR | 1;
pub(crate) const REP_ERR_INVALID: u32 = REP_ERR | 3;
pub(crate) const REP_ERR_TLS_REQD: u32 = REP_ERR | 5;
pub(crate) const REP_ERR_UNKNOWN: u32 = REP_ERR | 6;

// NBD_OPT_INFO / NBD_OPT_GO information types
pub(crate) const INFO_EXPORT: u16 = 0;
pub(crate) const INFO_NAME: u16 = 1;
pub(crate) const INFO_BLOCK_SIZE: u16 = 3;

// transmission flags
pub(crate) const FLAG_HAS_FLAGS: u16 = 1 << 0;
pub(crate) const FLAG_SEND_FLUSH: u16 = 1 << 2;
pub(crate) const FLAG_SEND_FUA: u16 = 1 << 3;
pub(crate) const FLAG_SEND_TRIM: u16 = 1 << 5;
pub(crate) const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub(crate) const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

// commands and their flags
pub(crate) const CMD_READ: u16 = 0;
pub(crate) const CMD_WRITE: u16 = 1;
pub(crate) const CMD_DISC: u16 = 2;
pub(crate) const CMD_FLUSH: u16 = 3;
pub(crate) const CMD_TRIM: u16 = 4;
pub(crate) const CMD_WRITE_ZEROES: u16 = 6;
pub(crate) const CMD_FLAG_FUA: u16 = 1 << 0;

// structured reply chunks
pub(crate) const REPLY_FLAG_DONE: u16 = 1 << 0;
pub(crate) const REPLY_TYPE_NONE: u16 = 0;
pub(crate) const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub(crate) const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;

/// An error a command is answered with (the protocol's errno values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Errno {
    /// `NBD_EPERM`: not permitted.
    Perm,
    /// `NBD_EIO`: the device failed the I/O.
    Io,
    /// `NBD_ENOMEM`: no memory for it now.
    NoMem,
    /// `NBD_EINVAL`: a malformed, misaligned or out-of-range request.
    Inval,
    /// `NBD_ENOSPC`: a write beyond the end, or no room.
    NoSpc,
    /// `NBD_ENOTSUP`: not supported.
    NotSup,
    /// `NBD_ESHUTDOWN`: the server is shutting down.
    Shutdown,
}

impl Errno {
    /// The value on the wire.
    pub fn code(self) -> u32 {
        match self {
            Errno::Perm => 1,
            Errno::Io => 5,
            Errno::NoMem => 12,
            Errno::Inval => 22,
            Errno::NoSpc => 28,
            Errno::NotSup => 95,
            Errno::Shutdown => 108,
        }
    }

    /// The protocol's errno closest to a Linux errno.
    pub fn from_os(errno: i32) -> Errno {
        match errno {
            1 | 13 | 30 => Errno::Perm, // EPERM, EACCES, EROFS
            12 => Errno::NoMem,
            22 | 75 => Errno::Inval,  // EINVAL, EOVERFLOW
            28 | 122 => Errno::NoSpc, // ENOSPC, EDQUOT
            95 => Errno::NotSup,
            108 | 19 => Errno::Shutdown, // ESHUTDOWN, ENODEV
            _ => Errno::Io,
        }
    }
}

pub(crate) fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

pub(crate) fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

/// A transmission request's 28-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Request {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl Request {
    /// Reads one request header; `Ok(None)` at a clean end of the stream
    /// before its first byte.
    pub(crate) fn read(r: &mut impl Read) -> io::Result<Option<Request>> {
        let mut b = [0u8; 28];
        let mut got = 0;
        while got < b.len() {
            match r.read(&mut b[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let magic = u32::from_be_bytes(b[0..4].try_into().expect("4 bytes"));
        if magic != REQUEST_MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("request magic {magic:#010x}"),
            ));
        }
        Ok(Some(Request {
            flags: u16::from_be_bytes(b[4..6].try_into().expect("2 bytes")),
            kind: u16::from_be_bytes(b[6..8].try_into().expect("2 bytes")),
            cookie: u64::from_be_bytes(b[8..16].try_into().expect("8 bytes")),
            offset: u64::from_be_bytes(b[16..24].try_into().expect("8 bytes")),
            length: u32::from_be_bytes(b[24..28].try_into().expect("4 bytes")),
        }))
    }
}

/// Writes an option reply.
pub(crate) fn option_reply(
    w: &mut impl Write,
    option: u32,
    reply: u32,
    data: &[u8],
) -> io::Result<()> {
    let mut m = Vec::with_capacity(20 + data.len());
    m.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    m.extend_from_slice(&option.to_be_bytes());
    m.extend_from_slice(&reply.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    w.write_all(&m)
}

/// The reply to one command, as bytes: a simple reply, or one structured
/// chunk with the DONE flag.
pub(crate) fn command_reply(
    structured: bool,
    cookie: u64,
    result: Result<(), Errno>,
    read: Option<(u64, &[u8])>,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(32 + read.map_or(0, |(_, d)| d.len()));
    if !structured {
        m.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        m.extend_from_slice(&result.err().map_or(0, Errno::code).to_be_bytes());
        m.extend_from_slice(&cookie.to_be_bytes());
        if let (Ok(()), Some((_, data))) = (result, read) {
            m.extend_from_slice(data);
        }
        return m;
    }
    let chunk = |m: &mut Vec<u8>, kind: u16, payload_len: usize| {
        m.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        m.extend_from_slice(&REPLY_FLAG_DONE.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&cookie.to_be_bytes());
        m.extend_from_slice(&(payload_len as u32).to_be_bytes());
    };
    match (result, read) {
        (Err(e), _) => {
            chunk(&mut m, REPLY_TYPE_ERROR, 6);
            m.extend_from_slice(&e.code().to_be_bytes());
            m.extend_from_slice(&0u16.to_be_bytes()); // no message
        }
        (Ok(()), Some((offset, data))) => {
            chunk(&mut m, REPLY_TYPE_OFFSET_DATA, 8 + data.len());
            m.extend_from_slice(&offset.to_be_bytes());
            m.extend_from_slice(data);
        }
        (Ok(()), None) => chunk(&mut m, REPLY_TYPE_NONE, 0),
    }
    m
}
