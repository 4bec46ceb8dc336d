//! NBD over TCP (`lcd --nbd-listen`) with real clients: with TLS
//! (`--nbd-tls`), libnbd's nbdcopy and nbdinfo holding a client certificate
//! signed by the configured authority read and write the device; a client
//! without TLS, without a certificate or with one of another authority is
//! refused and changes nothing. Without TLS (`--nbd-insecure`), plain
//! `nbd://` works, and removing a device ends the TCP connections serving
//! it. lcd refuses to start with TCP but neither TLS nor `--nbd-insecure`,
//! or with an unusable TLS directory. Needs libnbd-bin and openssl
//! (tests/run-all installs them).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::lcd;
use common::nbd::{device, pattern, run, BACKING};

/// Runs openssl with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    run(Command::new("openssl").current_dir(dir).args(args));
}

/// A certificate authority `name` in `dir`: `name-cert.pem`, `name-key.pem`.
fn authority(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}-cert.pem"),
        ],
    );
}

/// A certificate `out-cert.pem` (key `out-key.pem`) in `dir`, signed by
/// authority `ca`, for `usage` (serverAuth or clientAuth).
fn certificate(dir: &Path, ca: &str, out: &str, usage: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={out}"),
            "-keyout",
            &format!("{out}-key.pem"),
            "-out",
            &format!("{out}.csr"),
        ],
    );
    let ext = dir.join(format!("{out}.ext"));
    std::fs::write(
        &ext,
        format!(
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage={usage}\n\
             basicConstraints=CA:FALSE\n"
        ),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{out}.csr"),
            "-CA",
            &format!("{ca}-cert.pem"),
            "-CAkey",
            &format!("{ca}-key.pem"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            ext.to_str().unwrap(),
            "-out",
            &format!("{out}-cert.pem"),
        ],
    );
}

/// The certificates of a test: lcd's TLS directory, a client directory
/// with a certificate of lcd's authority, one with a certificate of another
/// authority, and one with the authority only (no client certificate), in
/// libnbd's layout (ca-cert.pem, client-cert.pem, client-key.pem).
struct Pki {
    server: PathBuf,
    client: PathBuf,
    rogue: PathBuf,
    anonymous: PathBuf,
}

fn pki(dir: &Path) -> Pki {
    let work = dir.join("pki");
    std::fs::create_dir(&work).unwrap();
    authority(&work, "ca");
    authority(&work, "other-ca");
    certificate(&work, "ca", "server", "serverAuth");
    certificate(&work, "ca", "client", "clientAuth");
    certificate(&work, "other-ca", "rogue", "clientAuth");
    let made = |name: &str, files: &[(&str, &str)]| {
        let d = dir.join(name);
        std::fs::create_dir(&d).unwrap();
        for (from, to) in files {
            std::fs::copy(work.join(from), d.join(to)).unwrap();
        }
        d
    };
    Pki {
        server: made(
            "server",
            &[
                ("ca-cert.pem", "ca-cert.pem"),
                ("server-cert.pem", "server-cert.pem"),
                ("server-key.pem", "server-key.pem"),
            ],
        ),
        client: made(
            "client",
            &[
                ("ca-cert.pem", "ca-cert.pem"),
                ("client-cert.pem", "client-cert.pem"),
                ("client-key.pem", "client-key.pem"),
            ],
        ),
        rogue: made(
            "rogue",
            &[
                ("ca-cert.pem", "ca-cert.pem"),
                ("rogue-cert.pem", "client-cert.pem"),
                ("rogue-key.pem", "client-key.pem"),
            ],
        ),
        anonymous: made("anonymous", &[("ca-cert.pem", "ca-cert.pem")]),
    }
}

/// The TCP address lcd says it listens on (it was given port 0; its log
/// level must be info).
fn listening(rig: &lc_testbus::Rig) -> String {
    let log = rig.log();
    let line = log
        .lines()
        .find(|l| l.contains("NBD over TCP on "))
        .unwrap_or_else(|| panic!("lcd did not say where it listens:\n{log}"));
    let rest = &line[line.find("NBD over TCP on ").unwrap() + "NBD over TCP on ".len()..];
    rest.split_whitespace().next().unwrap().to_string()
}

/// Whether `cmd` fails; its stderr.
fn fails(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{cmd:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn over_tcp_with_tls_only_clients_of_the_authority_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let rig = lcd()
        .frontend("nbd")
        .args(["--nbd-listen", "127.0.0.1:0", "--nbd-tls"])
        .arg(&pki.server)
        .env("RUST_LOG", "info")
        .start();
    let (_c, m) = rig.client().await;
    let d = device(&m, dir.path()).await;
    let at = listening(&rig);
    assert!(at.starts_with("127.0.0.1:"), "{at}");
    let frontend = m.block_frontend().await.unwrap();
    assert!(
        frontend.contains("TLS") && frontend.contains(&format!("nbds://{at}/<id>")),
        "{frontend}"
    );
    let uri = |certs: &Path| format!("nbds://{at}/1?tls-certificates={}", certs.display());

    let info = run(Command::new("nbdinfo").args(["--json", &uri(&pki.client)]));
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["exports"][0]["export-size"], BACKING, "{info}");
    let list = run(Command::new("nbdinfo").args(["--list", "--json", &uri(&pki.client)]));
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list["exports"][0]["export-name"], "1", "{list}");

    let data = pattern(6 << 20, 11);
    let src = dir.path().join("in.bin");
    std::fs::write(&src, &data).unwrap();
    run(Command::new("nbdcopy").arg(&src).arg(uri(&pki.client)));
    let out = dir.path().join("out.bin");
    run(Command::new("nbdcopy").arg(uri(&pki.client)).arg(&out));
    assert!(std::fs::read(&out).unwrap()[..data.len()] == data[..]);
    // and the same bytes on the device's Unix socket
    let unix_out = dir.path().join("unix.bin");
    run(Command::new("nbdcopy").arg(&d.node).arg(&unix_out));
    assert!(std::fs::read(&unix_out).unwrap()[..data.len()] == data[..]);

    // refused: no TLS, no client certificate, another authority's; and
    // what they tried to write is not written
    let zeros = dir.path().join("zeros.bin");
    std::fs::write(&zeros, vec![0u8; 1 << 20]).unwrap();
    let plain = format!("nbd://{at}/1");
    fails(Command::new("nbdinfo").arg(&plain));
    fails(Command::new("nbdcopy").arg(&zeros).arg(&plain));
    for certs in [&pki.anonymous, &pki.rogue] {
        fails(Command::new("nbdinfo").arg(uri(certs)));
        fails(Command::new("nbdcopy").arg(&zeros).arg(uri(certs)));
    }
    // no such export (there is no default one over TCP)
    fails(Command::new("nbdinfo").arg(format!(
        "nbds://{at}/2?tls-certificates={}",
        pki.client.display()
    )));
    run(Command::new("nbdcopy").arg(uri(&pki.client)).arg(&out));
    assert!(
        std::fs::read(&out).unwrap()[..data.len()] == data[..],
        "refused clients wrote nothing"
    );
    let log = rig.log();
    let refused = log.matches("NBD TLS handshake with 127.0.0.1:").count();
    assert!(refused >= 4, "each refused client is in the log:\n{log}");
    rig.stop();
}

/// A raw NBD client's handshake on `s`: fixed newstyle, NBD_OPT_GO of
/// export `name`; whether the server said yes.
fn go(s: &mut TcpStream, name: &str) -> bool {
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    let mut opt = b"IHAVEOPT".to_vec();
    opt.extend_from_slice(&7u32.to_be_bytes());
    opt.extend_from_slice(&(4 + name.len() as u32 + 2).to_be_bytes());
    opt.extend_from_slice(&(name.len() as u32).to_be_bytes());
    opt.extend_from_slice(name.as_bytes());
    opt.extend_from_slice(&0u16.to_be_bytes());
    s.write_all(&opt).unwrap();
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).unwrap();
        let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
        let mut d = vec![0u8; len as usize];
        s.read_exact(&mut d).unwrap();
        match kind {
            1 => return true,
            3 => continue,
            _ => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn over_tcp_without_tls_when_told_and_a_removed_device_ends_its_connections() {
    let rig = lcd()
        .frontend("nbd")
        .args(["--nbd-listen", "127.0.0.1:0", "--nbd-insecure"])
        .env("RUST_LOG", "info")
        .start();
    let (_c, m) = rig.client().await;
    assert!(rig.log().contains("WITHOUT TLS"), "{}", rig.log());
    let dir = tempfile::tempdir().unwrap();
    let _d = device(&m, dir.path()).await;
    let at = listening(&rig);
    let data = pattern(2 << 20, 5);
    let src = dir.path().join("in.bin");
    std::fs::write(&src, &data).unwrap();
    run(Command::new("nbdcopy")
        .arg(&src)
        .arg(format!("nbd://{at}/lc1")));
    let out = dir.path().join("out.bin");
    run(Command::new("nbdcopy")
        .arg(format!("nbd://{at}/1"))
        .arg(&out));
    assert!(std::fs::read(&out).unwrap()[..data.len()] == data[..]);

    let mut s = TcpStream::connect(&at).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    assert!(!go(&mut s, ""), "no default export over TCP");
    let mut s = TcpStream::connect(&at).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    assert!(go(&mut s, "1"));
    m.remove_device(1).await.unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)
        .expect("the connection is closed, not left hanging");
    assert!(rest.is_empty(), "{rest:?}");
    let mut s = TcpStream::connect(&at).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    assert!(!go(&mut s, "1"), "the removed device is no export");
    rig.stop();
}

#[test]
fn lcd_refuses_tcp_without_tls_or_insecure_and_an_unusable_tls_directory() {
    let dir = tempfile::tempdir().unwrap();
    let lcd = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_lcd"))
            .args([
                "--address",
                "unix:path=/nonexistent/bus",
                "--frontend",
                "nbd",
            ])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--run-dir")
            .arg(dir.path().join("run"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "lcd {args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let why = lcd(&["--nbd-listen", "127.0.0.1:0"]);
    assert!(
        why.contains("--nbd-tls DIR") && why.contains("--nbd-insecure"),
        "{why}"
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let why = lcd(&["--nbd-listen", "0", "--nbd-tls", empty.to_str().unwrap()]);
    assert!(
        why.contains("ca-cert.pem") && why.contains("server-key.pem"),
        "{why}"
    );
    let why = lcd(&["--nbd-tls", empty.to_str().unwrap()]);
    assert!(why.contains("--nbd-listen"), "{why}");
    assert!(
        !dir.path().join("state").join("state.json").exists(),
        "nothing was started"
    );
}
