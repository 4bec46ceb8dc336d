//! The server against a minimal client written from the specification,
//! over a socket pair, serving an export in RAM: handshakes, every command,
//! simple and structured replies, pipelined requests, and what malformed or
//! hostile input gets (an error or a closed connection, nothing written).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use lc_nbd::{
    handshake, negotiate_in_tls, serve, transmit, Errno, Export, Exports, Handshake, ServeError,
    TlsPolicy,
};

const SIZE: u64 = 1 << 20;

/// An export in RAM that counts its flushes.
struct MemExport {
    bytes: Mutex<Vec<u8>>,
    flushes: Mutex<u64>,
}

impl Export for MemExport {
    fn size(&self) -> u64 {
        SIZE
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        assert_eq!(
            buf.as_ptr() as usize % 4096,
            0,
            "reads are served into buffers at a 4 KiB boundary (O_DIRECT exports need no bounce)"
        );
        let b = self.bytes.lock().unwrap();
        buf.copy_from_slice(&b[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), Errno> {
        self.bytes.lock().unwrap()[offset as usize..offset as usize + data.len()]
            .copy_from_slice(data);
        if fua {
            *self.flushes.lock().unwrap() += 1;
        }
        Ok(())
    }
    fn flush(&self) -> Result<(), Errno> {
        *self.flushes.lock().unwrap() += 1;
        Ok(())
    }
    fn trim(&self, offset: u64, len: u64) -> Result<(), Errno> {
        self.bytes.lock().unwrap()[offset as usize..(offset + len) as usize].fill(0xEE);
        Ok(())
    }
    fn flush_covers_all_connections(&self) -> bool {
        true
    }
}

struct One(Arc<MemExport>);

impl Exports for One {
    fn find(&self, name: &str) -> Option<Arc<dyn Export>> {
        (name.is_empty() || name == "dev1").then(|| self.0.clone() as Arc<dyn Export>)
    }
    fn names(&self) -> Vec<String> {
        vec!["dev1".into()]
    }
}

/// A server on one end of a socket pair; the client's end, the export and
/// the server thread (its result).
fn start() -> (
    UnixStream,
    Arc<MemExport>,
    std::thread::JoinHandle<Result<(), ServeError>>,
) {
    let (client, server) = UnixStream::pair().unwrap();
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let export = Arc::new(MemExport {
        bytes: Mutex::new(vec![0x11; SIZE as usize]),
        flushes: Mutex::new(0),
    });
    let exports = One(export.clone());
    let t = std::thread::spawn(move || {
        let w = server.try_clone().unwrap();
        serve(server, w, &exports)
    });
    (client, export, t)
}

fn u16_of(b: &[u8]) -> u16 {
    u16::from_be_bytes(b.try_into().unwrap())
}
fn u32_of(b: &[u8]) -> u32 {
    u32::from_be_bytes(b.try_into().unwrap())
}
fn u64_of(b: &[u8]) -> u64 {
    u64::from_be_bytes(b.try_into().unwrap())
}

fn read_n(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).unwrap();
    b
}

/// Reads the server's greeting and sends the client flags.
fn hello(s: &mut UnixStream) {
    let g = read_n(s, 18);
    assert_eq!(&g[0..8], b"NBDMAGIC");
    assert_eq!(&g[8..16], b"IHAVEOPT");
    assert_eq!(u16_of(&g[16..18]) & 3, 3, "fixed newstyle, no zeroes");
    s.write_all(&3u32.to_be_bytes()).unwrap();
}

fn send_option(s: &mut UnixStream, option: u32, data: &[u8]) {
    let mut m = b"IHAVEOPT".to_vec();
    m.extend_from_slice(&option.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m).unwrap();
}

/// Reads one option reply: (reply type, data).
fn option_reply(s: &mut UnixStream, option: u32) -> (u32, Vec<u8>) {
    let h = read_n(s, 20);
    assert_eq!(u64_of(&h[0..8]), 0x0003_e889_0455_65a9);
    assert_eq!(u32_of(&h[8..12]), option);
    let len = u32_of(&h[16..20]) as usize;
    (u32_of(&h[12..16]), read_n(s, len))
}

fn go_data(name: &str) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&1u16.to_be_bytes());
    d.extend_from_slice(&3u16.to_be_bytes()); // NBD_INFO_BLOCK_SIZE
    d
}

/// NBD_OPT_GO; the export's size, flags and block sizes.
fn go(s: &mut UnixStream, name: &str) -> (u64, u16, [u32; 3]) {
    send_option(s, 7, &go_data(name));
    let (mut size, mut flags, mut sizes) = (0, 0, [0; 3]);
    loop {
        let (kind, d) = option_reply(s, 7);
        match kind {
            1 => return (size, flags, sizes),
            3 => match u16_of(&d[0..2]) {
                0 => {
                    size = u64_of(&d[2..10]);
                    flags = u16_of(&d[10..12]);
                }
                3 => sizes = [u32_of(&d[2..6]), u32_of(&d[6..10]), u32_of(&d[10..14])],
                _ => {}
            },
            other => panic!("reply {other:#x} to GO"),
        }
    }
}

fn request(s: &mut UnixStream, kind: u16, flags: u16, cookie: u64, offset: u64, len: u32) {
    let mut m = 0x2560_9513u32.to_be_bytes().to_vec();
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&cookie.to_be_bytes());
    m.extend_from_slice(&offset.to_be_bytes());
    m.extend_from_slice(&len.to_be_bytes());
    s.write_all(&m).unwrap();
}

/// Reads a simple reply: (error, cookie), then `data_len` bytes if no error.
fn simple_reply(s: &mut UnixStream, data_len: usize) -> (u32, u64, Vec<u8>) {
    let h = read_n(s, 16);
    assert_eq!(u32_of(&h[0..4]), 0x6744_6698);
    let err = u32_of(&h[4..8]);
    let data = if err == 0 {
        read_n(s, data_len)
    } else {
        Vec::new()
    };
    (err, u64_of(&h[8..16]), data)
}

#[test]
fn a_client_negotiates_then_writes_reads_flushes_trims_and_zeroes() {
    let (mut s, export, t) = start();
    hello(&mut s);
    send_option(&mut s, 3, &[]); // LIST
    let (kind, d) = option_reply(&mut s, 3);
    assert_eq!(kind, 2);
    assert_eq!(&d[4..], b"dev1");
    assert_eq!(option_reply(&mut s, 3).0, 1);
    send_option(&mut s, 7, &go_data("nope"));
    assert_eq!(option_reply(&mut s, 7).0, (1 << 31) | 6, "unknown export");
    send_option(&mut s, 99, &[1, 2, 3]);
    assert_eq!(option_reply(&mut s, 99).0, (1 << 31) | 1, "unsupported");
    let (size, flags, sizes) = go(&mut s, "dev1");
    assert_eq!(size, SIZE);
    assert_eq!(
        flags & (1 | 4 | 8 | 32 | 64 | 256),
        1 | 4 | 8 | 32 | 64 | 256
    );
    assert_eq!(sizes, [512, 4096, 32 << 20]);

    let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    request(&mut s, 1, 1, 7, 4096, 8192); // WRITE with FUA
    s.write_all(&data).unwrap();
    assert_eq!(simple_reply(&mut s, 0).0, 0);
    assert_eq!(*export.flushes.lock().unwrap(), 1, "FUA reached the export");
    request(&mut s, 0, 0, 8, 4096, 8192);
    let (err, cookie, got) = simple_reply(&mut s, 8192);
    assert_eq!((err, cookie), (0, 8));
    assert!(got == data);
    request(&mut s, 3, 0, 9, 0, 0); // FLUSH
    assert_eq!(simple_reply(&mut s, 0).0, 0);
    request(&mut s, 4, 0, 10, 4096, 512); // TRIM
    assert_eq!(simple_reply(&mut s, 0).0, 0);
    request(&mut s, 6, 0, 11, 8192, 1024); // WRITE_ZEROES
    assert_eq!(simple_reply(&mut s, 0).0, 0);
    let b = export.bytes.lock().unwrap().clone();
    assert!(b[4096..4608].iter().all(|&x| x == 0xEE));
    assert!(b[8192..9216].iter().all(|&x| x == 0));
    assert!(b[9216..12288] == data[5120..]);
    request(&mut s, 2, 0, 12, 0, 0); // DISC
    t.join().unwrap().unwrap();
}

#[test]
fn bad_requests_get_errors_and_the_connection_goes_on() {
    let (mut s, export, t) = start();
    hello(&mut s);
    go(&mut s, "");
    let before = export.bytes.lock().unwrap().clone();
    request(&mut s, 0, 0, 1, 100, 512); // misaligned read
    assert_eq!(simple_reply(&mut s, 0).0, 22);
    request(&mut s, 0, 0, 2, SIZE - 512, 1024); // read past the end
    assert_eq!(simple_reply(&mut s, 0).0, 22);
    request(&mut s, 1, 0, 3, SIZE, 512); // write past the end
    s.write_all(&[0xAB; 512]).unwrap();
    assert_eq!(simple_reply(&mut s, 0).0, 28);
    request(&mut s, 1, 0, 4, u64::MAX - 511, 512); // offset overflow
    s.write_all(&[0xAB; 512]).unwrap();
    assert_eq!(simple_reply(&mut s, 0).0, 28);
    request(&mut s, 0, 0, 5, 0, (32 << 20) + 512); // oversized read
    assert_eq!(simple_reply(&mut s, 0).0, 22);
    request(&mut s, 42, 0, 6, 0, 0); // unknown command
    assert_eq!(simple_reply(&mut s, 0).0, 22);
    request(&mut s, 3, 0x80, 7, 0, 0); // unknown flag
    assert_eq!(simple_reply(&mut s, 0).0, 22);
    assert!(*export.bytes.lock().unwrap() == before, "nothing written");
    request(&mut s, 0, 0, 8, 0, 512);
    assert_eq!(simple_reply(&mut s, 512).0, 0, "still served");
    drop(s); // end of stream between requests: a clean end
    t.join().unwrap().unwrap();
}

#[test]
fn an_oversized_write_a_bad_magic_or_a_torn_payload_closes_the_connection() {
    for case in 0..3 {
        let (mut s, export, t) = start();
        hello(&mut s);
        go(&mut s, "");
        let before = export.bytes.lock().unwrap().clone();
        match case {
            0 => request(&mut s, 1, 0, 1, 0, (32 << 20) + 512),
            1 => s.write_all(&[0x55; 28]).unwrap(),
            _ => {
                request(&mut s, 1, 0, 1, 0, 4096);
                s.write_all(&[0xCD; 1000]).unwrap();
                s.shutdown(std::net::Shutdown::Write).unwrap();
            }
        }
        let res = t.join().unwrap();
        assert!(res.is_err(), "case {case}: {res:?}");
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty(), "case {case}: no reply: {rest:?}");
        assert!(*export.bytes.lock().unwrap() == before, "case {case}");
    }
}

#[test]
fn a_handshake_with_garbage_or_huge_options_ends_without_an_export() {
    let (mut s, _e, t) = start();
    hello(&mut s);
    let mut m = b"IHAVEOPT".to_vec();
    m.extend_from_slice(&7u32.to_be_bytes());
    m.extend_from_slice(&u32::MAX.to_be_bytes());
    s.write_all(&m).unwrap();
    assert!(matches!(t.join().unwrap(), Err(ServeError::Protocol(_))));

    let (mut s, _e, t) = start();
    let _ = read_n(&mut s, 18);
    s.write_all(&0u32.to_be_bytes()).unwrap(); // not fixed newstyle
    assert!(matches!(t.join().unwrap(), Err(ServeError::Protocol(_))));

    let (mut s, _e, t) = start();
    hello(&mut s);
    send_option(&mut s, 2, &[]); // ABORT
    assert_eq!(option_reply(&mut s, 2).0, 1);
    t.join().unwrap().unwrap();
}

#[test]
fn structured_replies_carry_reads_and_errors_in_chunks() {
    let (mut s, _e, t) = start();
    hello(&mut s);
    send_option(&mut s, 8, &[]);
    assert_eq!(option_reply(&mut s, 8).0, 1);
    go(&mut s, "");
    request(&mut s, 0, 0, 5, 1024, 512);
    let h = read_n(&mut s, 20);
    assert_eq!(u32_of(&h[0..4]), 0x668e_33ef);
    assert_eq!(u16_of(&h[4..6]), 1, "done");
    assert_eq!(u16_of(&h[6..8]), 1, "offset data");
    assert_eq!(u64_of(&h[8..16]), 5);
    assert_eq!(u32_of(&h[16..20]), 8 + 512);
    let d = read_n(&mut s, 8 + 512);
    assert_eq!(u64_of(&d[0..8]), 1024);
    assert!(d[8..].iter().all(|&b| b == 0x11));
    request(&mut s, 0, 0, 6, 1, 512);
    let h = read_n(&mut s, 20);
    assert_eq!(u16_of(&h[6..8]), (1 << 15) | 1, "error chunk");
    let d = read_n(&mut s, u32_of(&h[16..20]) as usize);
    assert_eq!(u32_of(&d[0..4]), 22);
    request(&mut s, 3, 0, 7, 0, 0);
    let h = read_n(&mut s, 20);
    assert_eq!(u16_of(&h[6..8]), 0, "none");
    assert_eq!(u32_of(&h[16..20]), 0);
    request(&mut s, 2, 0, 8, 0, 0);
    t.join().unwrap().unwrap();
}

#[test]
fn pipelined_requests_are_all_answered_by_cookie() {
    let (mut s, export, t) = start();
    hello(&mut s);
    go(&mut s, "");
    const N: u64 = 300; // more than are served at once
    let writer = {
        let mut s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            for i in 0..N {
                request(&mut s, 1, 0, i, i * 512, 512);
                s.write_all(&[i as u8; 512]).unwrap();
            }
        })
    };
    let mut cookies: Vec<u64> = (0..N)
        .map(|_| simple_reply(&mut s, 0))
        .map(|r| r.1)
        .collect();
    writer.join().unwrap();
    cookies.sort_unstable();
    assert_eq!(cookies, (0..N).collect::<Vec<_>>());
    let b = export.bytes.lock().unwrap();
    assert!(
        (0..N).all(|i| b[(i * 512) as usize..((i + 1) * 512) as usize]
            .iter()
            .all(|&x| x == i as u8))
    );
    drop(b);
    request(&mut s, 2, 0, 0, 0, 0);
    t.join().unwrap().unwrap();
}

/// How a server that requires TLS ended its handshake: "export" (the
/// client chose one after STARTTLS, and was served), "ended", or the error.
fn start_tls_required() -> (
    UnixStream,
    std::thread::JoinHandle<Result<&'static str, ServeError>>,
) {
    let (client, server) = UnixStream::pair().unwrap();
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let exports = One(Arc::new(MemExport {
        bytes: Mutex::new(vec![0x11; SIZE as usize]),
        flushes: Mutex::new(0),
    }));
    let t = std::thread::spawn(move || {
        let (mut r, mut w) = (server.try_clone().unwrap(), server);
        let started = match handshake(&mut r, &mut w, &exports, TlsPolicy::Required)? {
            Handshake::StartTls(started) => started,
            Handshake::Ended => return Ok("ended"),
            Handshake::Export(_) => panic!("an export was chosen without TLS"),
        };
        // the test's "TLS stream" is the same socket: this crate leaves the
        // TLS itself to its caller
        match negotiate_in_tls(&mut r, &mut w, &exports, started)? {
            Handshake::Export(n) => transmit(r, w, &n).map(|()| "export"),
            Handshake::Ended => Ok("ended"),
            Handshake::StartTls(_) => panic!("a second STARTTLS was accepted"),
        }
    });
    (client, t)
}

#[test]
fn where_tls_is_required_only_starttls_and_abort_are_answered_before_it() {
    let (mut s, t) = start_tls_required();
    hello(&mut s);
    for option in [3u32, 6, 7, 8, 99] {
        let data = if matches!(option, 6 | 7) {
            go_data("dev1")
        } else {
            vec![]
        };
        send_option(&mut s, option, &data);
        assert_eq!(
            option_reply(&mut s, option).0,
            (1 << 31) | 5,
            "option {option} before STARTTLS: NBD_REP_ERR_TLS_REQD"
        );
    }
    send_option(&mut s, 5, b"x");
    assert_eq!(
        option_reply(&mut s, 5).0,
        (1 << 31) | 3,
        "STARTTLS with data"
    );
    send_option(&mut s, 5, &[]);
    assert_eq!(option_reply(&mut s, 5).0, 1, "STARTTLS: ACK");
    // inside TLS: a second STARTTLS is invalid, then the export is served
    send_option(&mut s, 5, &[]);
    assert_eq!(
        option_reply(&mut s, 5).0,
        (1 << 31) | 3,
        "a second STARTTLS"
    );
    let (size, _, _) = go(&mut s, "dev1");
    assert_eq!(size, SIZE);
    request(&mut s, 0, 0, 7, 0, 512);
    let (err, cookie, data) = simple_reply(&mut s, 512);
    assert_eq!((err, cookie), (0, 7));
    assert!(data.iter().all(|&b| b == 0x11));
    request(&mut s, 2, 0, 8, 0, 0); // DISC
    assert_eq!(t.join().unwrap().unwrap(), "export");

    // NBD_OPT_EXPORT_NAME cannot be refused with an error: the connection
    // is closed, and nothing is served
    let (mut s, t) = start_tls_required();
    hello(&mut s);
    send_option(&mut s, 1, b"dev1");
    assert!(matches!(t.join().unwrap(), Err(ServeError::Protocol(_))));
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "no export info was sent: {rest:?}");

    let (mut s, t) = start_tls_required();
    hello(&mut s);
    send_option(&mut s, 2, &[]); // ABORT is allowed before TLS
    assert_eq!(option_reply(&mut s, 2).0, 1);
    assert_eq!(t.join().unwrap().unwrap(), "ended");
}

#[test]
fn where_tls_is_off_starttls_is_unsupported_and_the_handshake_goes_on() {
    let (mut s, _e, t) = start();
    hello(&mut s);
    send_option(&mut s, 5, &[]);
    assert_eq!(
        option_reply(&mut s, 5).0,
        (1 << 31) | 1,
        "NBD_REP_ERR_UNSUP"
    );
    let (size, _, _) = go(&mut s, "dev1");
    assert_eq!(size, SIZE);
    request(&mut s, 2, 0, 1, 0, 0);
    t.join().unwrap().unwrap();
}
