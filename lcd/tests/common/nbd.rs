//! What the NBD tests (`nbd.rs`, `nbd_tcp.rs`) share: running an NBD
//! client, a device exported over NBD, and data patterns.

use std::path::Path;
use std::process::{Command, Output};

use lc_proto::DeviceInfo;

use super::file;

/// The backing file's size of [`device`].
pub const BACKING: u64 = 32 << 20;

/// Runs `cmd`, asserting it succeeds; its output.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("running {cmd:?}: {e} (tests/run-all installs libnbd-bin and fio)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A cache of 64 MiB and device 1 on a 32 MiB backing file, exported over NBD.
pub async fn device(m: &lc_proto::ManagerProxy<'_>, dir: &Path) -> DeviceInfo {
    let cache = file(&dir.join("cache.img"), 64 << 20);
    let backing = file(&dir.join("backing.img"), BACKING);
    m.format_cache_device(&cache, false).await.unwrap();
    m.switch_to(1).await.unwrap();
    m.resume_cache(&cache).await.unwrap();
    let d = m.create_device(1, &backing, 1).await.unwrap();
    assert!(d.node.starts_with("nbd+unix:///?socket="), "{d:?}");
    assert_eq!(d.state, "running");
    d
}

/// The socket path of an `nbd+unix` URI.
pub fn socket_of(uri: &str) -> &str {
    uri.strip_prefix("nbd+unix:///?socket=").unwrap()
}

/// `len` bytes of a pattern that differs for each `seed`.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}
