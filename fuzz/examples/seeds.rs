//! Writes the seed corpus (fuzz/corpus/<target>/) from devices the engine
//! itself formatted and wrote: `cargo run --manifest-path fuzz/Cargo.toml
//! --example seeds` (no instrumentation needed).

use std::path::Path;

use lc_engine::format::{segment_offset, SegmentHeader, LINE_SIZE, RECORD_OFFSETS};
use lc_engine::{format_cache_device, Cache, CacheOptions};
use lc_fuzz::engine::MemDisk;

const MIB: u64 = 1 << 20;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    // a cache of 4 segments, formatted, then three lines written and flushed
    let cdev = MemDisk::new(Vec::new(), 5 * MIB);
    let sb = format_cache_device(&*cdev, false).unwrap();
    write("superblock", "formatted-header", &cdev.bytes(0, LINE_SIZE));
    write(
        "superblock",
        "formatted-record",
        &cdev.bytes(RECORD_OFFSETS[1], LINE_SIZE),
    );
    let cache = Cache::resume(1, cdev.clone(), CacheOptions { pool_segments: 2 }).unwrap();
    cache
        .attach_device(1, MemDisk::new(Vec::new(), MIB))
        .unwrap();
    for (sector, fill) in [(0u64, 1u8), (8, 2), (20, 3)] {
        cache.write(1, sector, &vec![fill; 2048]).unwrap();
    }
    cache.flush_sync().unwrap();
    cache.shutdown().unwrap();
    drop(cache);
    let header = cdev.bytes(segment_offset(0), LINE_SIZE);
    let h = SegmentHeader::parse(&header, 0, sb.nr_segments, &sb.uuid).expect("engine segment");
    let data = cdev.bytes(
        segment_offset(0) + LINE_SIZE as u64,
        LINE_SIZE * h.length as usize,
    );
    // segment target encoding: nr u32, slot u64, flags u8, header, data;
    // the header carries the engine's uuid, so flag 1 puts the fuzz uuid in
    let mut seg = (sb.nr_segments as u32).to_le_bytes().to_vec();
    seg.extend(0u64.to_le_bytes());
    seg.push(1);
    seg.extend(&header);
    seg.extend(&data);
    write("segment", "engine-segment", &seg);

    // recovery target encoding (see lc_fuzz::engine::build_image): 4
    // segments, records as formatted; slot 0: id 1 with three lines of
    // devices 1 and 2; slot 1: id 2 vouching for 1, two lines, one of them
    // a newer copy; slot 2: id 3, torn (a data byte flipped after sealing)
    let recovery: &[u8] = &[
        2, 0, 0, // 4 segments, both records as format writes them
        1, 0, 0, 3, 0x01, 0xff, 0x05, 0x0f, 0x02, 0xff, // slot 0
        1, 0, 0, 2, 0x01, 0xf0, 0x09, 0xff, // slot 1
        0x41, 0, 0, 1, 0x01, 0xff, 0x10, 0x20, 0, 0, 0x55, // slot 2 torn
        0,    // slot 3 empty
    ];
    lc_fuzz::engine::check_recovery(lc_fuzz::engine::build_image(recovery));
    write("recovery", "log-of-three", recovery);
    write("recovery", "fresh", &[]);

    // dbus: format, switch, resume, create a device, knobs, status, a
    // device threshold, lists, restart, removal and free
    let dbus: &[u8] = &[
        0, 0, 0, // FormatCacheDevice(c1.img, false)
        1, 1, // SwitchTo(1)
        3, 0, // ResumeCache(c1.img)
        9, 1, 2, 1, // CreateDevice(1, b1.img, 1)
        15, 1, 2, 0, // AllowMigrate = min
        16, 1, 4, 1, // UpdateInterval = max + 1 (refused)
        13, 1, 0, // Status of cache 1
        17, 1, 2, 50, // MigrateThreshold = 50
        8,  // lists agree with objects
        23, // restart lcd
        8, 12, 1, // BeginRemoveDevice(1)
        6, // FreeCache
    ];
    write("dbus", "session", dbus);

    // nbd: a valid handshake (mode 1; 3 with structured replies), then a
    // WRITE, a READ of it, FLUSH, TRIM, WRITE_ZEROES with FUA, an
    // out-of-range READ, DISC; and the handshake alone sent raw (mode 0)
    let request = |flags: u16, kind: u16, cookie: u64, offset: u64, len: u32| {
        let mut r = 0x2560_9513u32.to_be_bytes().to_vec();
        r.extend(flags.to_be_bytes());
        r.extend(kind.to_be_bytes());
        r.extend(cookie.to_be_bytes());
        r.extend(offset.to_be_bytes());
        r.extend(len.to_be_bytes());
        r
    };
    let mut session = request(0, 1, 1, 4096, 4096);
    session.extend(vec![0x5A; 4096]);
    session.extend(request(0, 0, 2, 4096, 4096));
    session.extend(request(0, 3, 3, 0, 0));
    session.extend(request(0, 4, 4, 8192, 8192));
    session.extend(request(1, 6, 5, 16384, 4096));
    session.extend(request(0, 0, 6, lc_fuzz::nbd::EXPORT_BYTES, 4096));
    session.extend(request(0, 2, 7, 0, 0));
    for (mode, name) in [
        (1u8, "session"),
        (3, "session-structured"),
        (7, "session-tls-structured"),
    ] {
        let mut input = vec![mode];
        input.extend(&session);
        write("nbd", name, &input);
    }
    let mut raw = vec![0u8];
    raw.extend(lc_fuzz::nbd::client_handshake(false, true));
    raw.extend(&session);
    write("nbd", "raw-handshake-and-session", &raw);
    let mut raw = vec![4u8];
    raw.extend(lc_fuzz::nbd::client_handshake(true, true));
    raw.extend(&session);
    write("nbd", "raw-tls-handshake-and-session", &raw);
}
