//! The NBD frontend (`lcd --frontend nbd`) with real NBD clients: nbdinfo
//! (size and flags), nbdcopy both ways, fio's nbd engine with crc32c
//! verification, the data across a restart and a kill -9 of lcd, a
//! hostile client, and the socket being root's alone. Needs libnbd-bin and
//! fio (tests/run-all installs them).

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::nbd::{device, pattern, run, socket_of, BACKING};
use common::{file, lcd};

#[tokio::test(flavor = "multi_thread")]
async fn nbd_clients_write_and_read_the_device_through_the_cache() {
    let mut rig = lcd().frontend("nbd").start();
    let (_c, m) = rig.client().await;
    let dir = tempfile::tempdir().unwrap();
    let d = device(&m, dir.path()).await;
    let sock = socket_of(&d.node).to_string();
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "root's socket");
    let dmeta = std::fs::metadata(Path::new(&sock).parent().unwrap()).unwrap();
    assert_eq!(
        dmeta.permissions().mode() & 0o777,
        0o700,
        "root's directory"
    );

    let info = run(Command::new("nbdinfo").args(["--json", &d.node]));
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let export = &info["exports"][0];
    assert_eq!(export["export-size"], BACKING, "{info}");
    for flag in [
        "can_flush",
        "can_fua",
        "can_multi_conn",
        "can_trim",
        "can_zero",
    ] {
        assert_eq!(export[flag], true, "{flag}: {info}");
    }
    assert_eq!(export["block_size_minimum"], 512, "{info}");

    // nbdcopy in (it flushes at the end) and out again
    let data = pattern(12 << 20, 7);
    let src = dir.path().join("in.bin");
    std::fs::write(&src, &data).unwrap();
    run(Command::new("nbdcopy").arg(&src).arg(&d.node));
    let out = dir.path().join("out.bin");
    run(Command::new("nbdcopy").arg(&d.node).arg(&out));
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len() as u64, BACKING);
    assert!(
        got[..data.len()] == data[..],
        "nbdcopy read back what it wrote"
    );

    // fio through its nbd engine: random writes at depth 32 with crc32c
    // verification, FUA on some, a flush every 64 writes
    run(Command::new("fio").args([
        "--name=nbd",
        "--ioengine=nbd",
        &format!("--uri={}", d.node),
        "--rw=randwrite",
        "--bs=4k",
        "--offset=16m",
        "--size=8m",
        "--iodepth=32",
        "--fsync=64",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--verify_state_save=0",
        "--output-format=terse",
    ]));
    // sequential 1 MiB writes, verified
    run(Command::new("fio").args([
        "--name=nbdseq",
        "--ioengine=nbd",
        &format!("--uri={}", d.node),
        "--rw=write",
        "--bs=1m",
        "--offset=24m",
        "--size=8m",
        "--iodepth=4",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--verify_state_save=0",
        "--output-format=terse",
    ]));

    // the data comes back after lcd restarts and after it is killed
    // (everything above was flushed: nbdcopy and fio flush at the end)
    rig.restart();
    let (_c, m) = rig.client().await;
    let again = m.list_devices().await.unwrap();
    assert_eq!(again[0].node, d.node, "{again:?}");
    let out2 = dir.path().join("out2.bin");
    run(Command::new("nbdcopy").arg(&d.node).arg(&out2));
    assert!(std::fs::read(&out2).unwrap()[..data.len()] == data[..]);
    rig.kill();
    rig.start_lcd();
    rig.wait_ready();
    let out3 = dir.path().join("out3.bin");
    run(Command::new("nbdcopy").arg(&d.node).arg(&out3));
    let got3 = std::fs::read(&out3).unwrap();
    assert!(
        got3 == std::fs::read(&out2).unwrap(),
        "the same after kill -9"
    );
    rig.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_or_unprivileged_client_changes_nothing() {
    let rig = lcd().frontend("nbd").start();
    let (_c, m) = rig.client().await;
    let dir = tempfile::tempdir().unwrap();
    let d = device(&m, dir.path()).await;
    let sock = socket_of(&d.node).to_string();
    let before = dir.path().join("before.bin");
    run(Command::new("nbdcopy").arg(&d.node).arg(&before));

    // garbage after the greeting, an oversized write, a torn write
    let garbage: [&[u8]; 3] = [
        &[0xff; 64],
        &[
            b"\0\0\0\x03IHAVEOPT\0\0\0\x01\0\0\0\0".as_slice(),
            &[0x25, 0x60, 0x95, 0x13, 0, 0, 0, 1],
            &[0; 8],
            &[0; 8],
            &[0x7f, 0xff, 0xff, 0xff],
        ]
        .concat(),
        &[
            b"\0\0\0\x03IHAVEOPT\0\0\0\x01\0\0\0\0".as_slice(),
            &[0x25, 0x60, 0x95, 0x13, 0, 0, 0, 1],
            &[0; 8],
            &[0; 8],
            &[0, 0, 0x10, 0],
            &[0xAA; 100],
        ]
        .concat(),
    ];
    for g in garbage {
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).unwrap();
        assert_eq!(&hello[..8], b"NBDMAGIC");
        s.write_all(g).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest); // the server closes it
    }
    rig.assert_lcd_running();
    let after = dir.path().join("after.bin");
    run(Command::new("nbdcopy").arg(&d.node).arg(&after));
    assert!(
        std::fs::read(&before).unwrap() == std::fs::read(&after).unwrap(),
        "nothing written by the hostile clients"
    );

    // user nobody cannot reach the socket
    let denied = lc_testbus::as_nobody("nbdinfo")
        .arg(&d.node)
        .output()
        .unwrap();
    assert!(!denied.status.success(), "nobody reached the NBD socket");
    rig.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn each_device_keeps_the_frontend_it_was_attached_with_across_restarts() {
    // lcd's default is none here; one device asks for nbd, one for nothing
    let mut rig = lcd().frontend("none").start();
    let (_c, m) = rig.client().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = file(&dir.path().join("cache.img"), 64 << 20);
    let a = file(&dir.path().join("a.img"), BACKING);
    let b = file(&dir.path().join("b.img"), BACKING);
    let c = file(&dir.path().join("c.img"), BACKING);
    m.format_cache_device(&cache, false).await.unwrap();
    m.switch_to(1).await.unwrap();
    m.resume_cache(&cache).await.unwrap();

    let da = m
        .create_device_with_frontend(1, &a, 1, "nbd")
        .await
        .unwrap();
    assert_eq!(
        (da.frontend.as_str(), da.state.as_str()),
        ("nbd", "running")
    );
    assert!(da.node.starts_with("nbd+unix:///?socket="), "{da:?}");
    let db = m.create_device_with_frontend(2, &b, 1, "").await.unwrap();
    assert_eq!(db.frontend, "none", "lcd's default: {db:?}");
    assert_eq!(db.node, "");
    assert!(db.state.starts_with("no block device:"), "{db:?}");

    // a frontend lcd does not know, or one this kernel lacks, creates nothing
    let e = m
        .create_device_with_frontend(3, &c, 1, "scsi")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, lc_proto::LcdError::InvalidArgument(m) if m.contains("ublk, nbd or none")),
        "{e:?}"
    );
    if !Path::new("/dev/ublk-control").exists() {
        let e = m
            .create_device_with_frontend(3, &c, 1, "ublk")
            .await
            .unwrap_err();
        let text = format!("{e:?}");
        assert!(text.contains("/dev/ublk-control is missing"), "{text}");
        assert!(
            text.contains("--frontend nbd"),
            "says what to do instead: {text}"
        );
    }
    assert_eq!(m.list_devices().await.unwrap().len(), 2, "nothing created");

    let data = pattern(4 << 20, 11);
    let src = dir.path().join("in.bin");
    std::fs::write(&src, &data).unwrap();
    run(Command::new("nbdcopy").arg(&src).arg(&da.node));

    // the frontends are saved with the devices and come back with them,
    // after a clean restart and after kill -9
    for round in ["restart", "kill -9"] {
        if round == "restart" {
            rig.restart();
        } else {
            rig.kill();
            rig.start_lcd();
            rig.wait_ready();
        }
        let (_c, m) = rig.client().await;
        let devs = m.list_devices().await.unwrap();
        let by_id = |id: u8| devs.iter().find(|d| d.id == id).unwrap();
        assert_eq!(by_id(1).frontend, "nbd", "{round}: {devs:?}");
        assert_eq!(by_id(1).node, da.node, "{round}");
        assert_eq!(by_id(2).frontend, "none", "{round}: {devs:?}");
        let out = dir.path().join("out.bin");
        run(Command::new("nbdcopy").arg(&da.node).arg(&out));
        assert!(
            std::fs::read(&out).unwrap()[..data.len()] == data[..],
            "{round}: read back over NBD"
        );
    }
    rig.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn by_default_lcd_exports_over_nbd_where_the_kernel_has_no_ublk() {
    if Path::new("/dev/ublk-control").exists() {
        eprintln!("skipped: this kernel has ublk (the default is ublk then)");
        return;
    }
    let rig = lcd().start();
    let (_c, m) = rig.client().await;
    let frontend = m.block_frontend().await.unwrap();
    assert!(
        frontend.starts_with("nbd") && frontend.contains("modprobe ublk_drv"),
        "the default, and why not ublk: {frontend}"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = device(&m, dir.path()).await;
    assert_eq!(d.frontend, "nbd");
    run(Command::new("nbdinfo").arg(&d.node));
    rig.stop();
}
