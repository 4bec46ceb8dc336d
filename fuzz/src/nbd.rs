//! The `nbd` target: a client's byte stream fed to lc-nbd's server, the
//! one lcd's NBD frontend runs on each connection, serving an export in RAM.
//!
//! Input: the first byte chooses how the rest is sent. Bit 0 clear: the
//! rest is the whole client stream, handshake included. Bit 0 set: a valid
//! fixed-newstyle handshake comes first (client flags, then
//! `NBD_OPT_STRUCTURED_REPLY` if bit 1 is set, then `NBD_OPT_GO` for the
//! default export), and the rest is the transmission phase, so the fuzzer
//! reaches the requests at once. Bit 2 set: the server requires TLS, as
//! lcd's TCP listener with `--nbd-tls` does (the valid handshake of bit 0
//! then starts with `NBD_OPT_STARTTLS`; the "TLS stream" is the same byte
//! stream, the TLS itself being lcd's, not lc-nbd's).
//!
//! What must hold for any input: the server returns when the stream ends
//! (every request read answered or the connection closed: libFuzzer's
//! timeout catches a hang), never panics, and calls the export only with
//! offsets and lengths that are multiples of 512 and inside the export (the
//! export panics otherwise); a READ never returns more than the export
//! holds; where TLS is required, no export is looked up before STARTTLS.

use std::io::{self, Cursor, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use lc_nbd::{
    handshake, negotiate_in_tls, serve, transmit, Errno, Export, Exports, Handshake, TlsPolicy,
};

/// Size of the export: small, so the fuzzer finds the end quickly.
pub const EXPORT_BYTES: u64 = 256 << 10;

const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const FLAG_FIXED_NEWSTYLE: u32 = 1;
const FLAG_NO_ZEROES: u32 = 2;
const OPT_STARTTLS: u32 = 5;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;

/// An export in RAM that refuses (panics at) any call the server must never
/// make.
struct CheckedExport {
    bytes: Mutex<Vec<u8>>,
}

fn check(what: &str, offset: u64, len: u64) {
    assert!(
        offset % 512 == 0 && len % 512 == 0,
        "{what} at {offset}+{len}: not 512-byte aligned"
    );
    assert!(
        offset
            .checked_add(len)
            .is_some_and(|end| end <= EXPORT_BYTES),
        "{what} at {offset}+{len}: beyond the export's {EXPORT_BYTES} bytes"
    );
}

impl Export for CheckedExport {
    fn size(&self) -> u64 {
        EXPORT_BYTES
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        check("read", offset, buf.len() as u64);
        let b = self.bytes.lock().expect("export");
        buf.copy_from_slice(&b[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8], _fua: bool) -> Result<(), Errno> {
        check("write", offset, data.len() as u64);
        self.bytes.lock().expect("export")[offset as usize..offset as usize + data.len()]
            .copy_from_slice(data);
        Ok(())
    }
    fn flush(&self) -> Result<(), Errno> {
        Ok(())
    }
    fn trim(&self, offset: u64, len: u64) -> Result<(), Errno> {
        check("trim", offset, len);
        Ok(())
    }
    fn flush_covers_all_connections(&self) -> bool {
        true
    }
}

/// The one export; with `locked`, looking it up before TLS panics.
struct OneExport(Arc<CheckedExport>, AtomicBool);

impl Exports for OneExport {
    fn find(&self, name: &str) -> Option<Arc<dyn Export>> {
        assert!(
            !self.1.load(Ordering::SeqCst),
            "an export was looked up before STARTTLS"
        );
        (name.is_empty() || name == "lc1").then(|| self.0.clone() as Arc<dyn Export>)
    }
    fn names(&self) -> Vec<String> {
        vec!["lc1".into()]
    }
}

/// The server's replies, discarded (counted, to bound them).
struct Sink(u64);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A valid client handshake: flags, STARTTLS if `tls`, optionally
/// structured replies, then GO for the default export.
pub fn client_handshake(tls: bool, structured: bool) -> Vec<u8> {
    let mut h = (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)
        .to_be_bytes()
        .to_vec();
    let mut option = |opt: u32, data: &[u8]| {
        h.extend(IHAVEOPT.to_be_bytes());
        h.extend(opt.to_be_bytes());
        h.extend((data.len() as u32).to_be_bytes());
        h.extend(data);
    };
    if tls {
        option(OPT_STARTTLS, &[]);
    }
    if structured {
        option(OPT_STRUCTURED_REPLY, &[]);
    }
    // GO: export name length 0, no information requests
    option(OPT_GO, &[0, 0, 0, 0, 0, 0]);
    h
}

/// One input: see the module documentation.
pub fn nbd(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut stream = Vec::new();
    if mode & 1 != 0 {
        stream = client_handshake(mode & 4 != 0, mode & 2 != 0);
    }
    stream.extend_from_slice(rest);
    let input_bytes = stream.len() as u64;
    let export = Arc::new(CheckedExport {
        bytes: Mutex::new(vec![0; EXPORT_BYTES as usize]),
    });
    let tls = mode & 4 != 0;
    let exports = OneExport(export, AtomicBool::new(tls));
    let mut reader: Box<dyn Read + Send> = Box::new(Cursor::new(stream));
    let mut sink = Sink(0);
    // a protocol error closes the connection: that is allowed, a panic is not
    if tls {
        if let Ok(Handshake::StartTls(started)) =
            handshake(&mut reader, &mut sink, &exports, TlsPolicy::Required)
        {
            exports.1.store(false, Ordering::SeqCst);
            if let Ok(Handshake::Export(n)) =
                negotiate_in_tls(&mut reader, &mut sink, &exports, started)
            {
                let _ = transmit(reader, &mut sink, &n);
            }
        }
    } else {
        let _ = serve(reader, &mut sink, &exports);
    }
    // each request of 28 bytes gets at most one reply of its READ length
    // (at most the export) plus a header: no reply comes from nowhere
    let most = 4096 + (input_bytes / 28 + 1) * (EXPORT_BYTES + 64);
    assert!(
        sink.0 <= most,
        "{} reply bytes for {input_bytes} input bytes",
        sink.0
    );
}
