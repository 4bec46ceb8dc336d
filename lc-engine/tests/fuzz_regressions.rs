//! What fuzzing found (fuzz/README.md), replayed deterministically through
//! the very checks the fuzz targets run: fuzz/src/engine.rs is included
//! here. Every crash input is kept in fuzz/regressions/<target>/ and has a
//! test below; the ones still ignored name an engine bug not fixed yet
//! (`cargo test --test fuzz_regressions -- --ignored` shows them failing).
//! The seed corpus replays too, and images of real power cuts are checked
//! against the recovery model.

#[allow(dead_code)]
#[path = "../../fuzz/src/engine.rs"]
mod harness;

use std::path::Path;

use harness::{build_image, check_recovery, MemDisk};
use lc_engine::format::{
    segment_id_limit, segment_offset, slot_of, Metablock, SegmentHeader, SuperBlockRecord,
    LINE_SIZE, RECORD_OFFSETS,
};
use lc_engine::index::MAX_LINE;
use lc_engine::sim::{PowerDomain, SimDisk};
use lc_engine::{format_cache_device, rescue, Cache, CacheOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MIB: u64 = 1 << 20;

fn fuzz_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz"))
}

fn input(target: &str, name: &str) -> Vec<u8> {
    let p = fuzz_dir().join("regressions").join(target).join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every seed and every kept crash input, through its target's checks
/// (inputs that reach a known, unfixed bug are skipped there, as in a
/// fuzz run; the ignored tests below replay those).
#[test]
fn corpus_and_crash_inputs_replay() {
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        for (target, check) in [
            ("superblock", harness::superblock as fn(&[u8])),
            ("segment", harness::segment),
            ("recovery", harness::recovery),
        ] {
            let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir).join(target)) else {
                continue;
            };
            for e in entries {
                let path = e.unwrap().path();
                check(&std::fs::read(&path).unwrap());
                n += 1;
            }
        }
    }
    println!("replayed {n} fuzz inputs");
    assert!(n >= 5, "the seed corpus is missing");
}

/// Images a real cache left behind at random power cuts: recovery must do
/// exactly what the model of fuzz/src/engine.rs allows.
#[test]
fn power_cut_images_recover_as_the_format_allows() {
    for seed in 0..12u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let dom = PowerDomain::new();
        let cdev = SimDisk::new(dom.clone(), 5 * MIB);
        format_cache_device(&*cdev, false).unwrap();
        // the harness replays with its own uuid; the device keeps its own
        let cache = Cache::resume(1, cdev.clone(), CacheOptions { pool_segments: 2 }).unwrap();
        cache
            .attach_device(1, SimDisk::new(dom.clone(), MIB))
            .unwrap();
        cache
            .attach_device(2, SimDisk::new(dom.clone(), MIB))
            .unwrap();
        let writes = rng.gen_range(1..700);
        for w in 0..writes {
            let dev = rng.gen_range(1..=2u8);
            let sector = rng.gen_range(0..120u64);
            let len = rng.gen_range(1..=8usize) * 512;
            cache.write(dev, sector, &vec![w as u8; len]).unwrap();
            if rng.gen_bool(0.02) {
                cache.flush_sync().unwrap();
            }
        }
        let image = dom.cut(&[&cdev], &mut rng).remove(0);
        drop(cache);
        check_recovery(with_fuzz_uuid(image));
    }
}

/// Rewrites an engine-formatted image to carry the harness's uuid (the
/// superblock, the records and every segment header, checksums redone),
/// so the shared checks apply unchanged.
fn with_fuzz_uuid(mut img: Vec<u8>) -> Vec<u8> {
    let sb = lc_engine::format::SuperBlockHeader::parse(&img[..LINE_SIZE]).unwrap();
    let new = lc_engine::format::SuperBlockHeader {
        uuid: harness::UUID,
        ..sb
    };
    img[..LINE_SIZE].copy_from_slice(&new.to_block());
    for off in RECORD_OFFSETS {
        let at = off as usize;
        if let Some(r) = SuperBlockRecord::parse(&img[at..at + LINE_SIZE]) {
            let r = SuperBlockRecord {
                uuid: harness::UUID,
                ..r
            };
            img[at..at + LINE_SIZE].copy_from_slice(&r.to_block());
        }
    }
    for slot in 0..sb.nr_segments {
        let at = segment_offset(slot) as usize;
        if let Some(h) =
            SegmentHeader::parse(&img[at..at + LINE_SIZE], slot, sb.nr_segments, &sb.uuid)
        {
            let end = at + LINE_SIZE * (1 + h.length as usize);
            let ok = SegmentHeader::verify(&img[at..at + LINE_SIZE], &img[at + LINE_SIZE..end]);
            img[at + 32..at + 48].copy_from_slice(&harness::UUID);
            if ok {
                let (head, data) = img[at..end].split_at_mut(LINE_SIZE);
                SegmentHeader::seal(head, data);
            }
        }
    }
    img
}

/// A formatted 4-segment image whose slot 0 holds segment 1 with one line
/// of device 1 at `sector`, sealed with a valid checksum.
fn image_with_one_line(sector: u64) -> Vec<u8> {
    let mut img = build_image(&[2]);
    let h = SegmentHeader {
        global_id: 1,
        durable_id: 0,
        lap: 1,
        length: 1,
        uuid: harness::UUID,
        checksum: 0,
        metablocks: vec![Metablock {
            sector,
            device_id: 1,
            dirty_bits: 0xff,
            lap: 1,
        }],
    };
    let at = segment_offset(0) as usize;
    let (head, data) = img[at..at + 2 * LINE_SIZE].split_at_mut(LINE_SIZE);
    data.fill(0xAB);
    h.write_to(head);
    SegmentHeader::seal(head, data);
    img
}

/// Found by the recovery target (fuzz/regressions/recovery/
/// line-beyond-max-line): SegmentHeader::parse accepts any sector that is
/// a multiple of 8, but the index keeps 48 bits of the line number. Resume
/// hits a debug assertion in Index::insert; a release build truncates the
/// line, so the data would be written back to another place of the
/// backing device (sector 2^51 lands on sector 0). Inspection overflows
/// computing dirty_extent for sectors from 2^55 on.
#[test]
fn a_line_beyond_the_index_range_is_never_replayed() {
    check_recovery(build_image(&input("recovery", "line-beyond-max-line")));
    for sector in [(MAX_LINE + 1) * 8, 1 << 51, 1 << 60, !7] {
        let img = image_with_one_line(sector);
        let disk = MemDisk::from_image(img.clone());
        let _ = rescue::inspect(&*disk);
        if let Ok(cache) = Cache::resume(1, disk, CacheOptions { pool_segments: 2 }) {
            assert_eq!(
                cache.nr_dirty_caches(1),
                0,
                "sector {sector} was replayed onto another line"
            );
            cache.shutdown().unwrap();
        }
        check_recovery(img);
    }
}

/// Found by the recovery target (fuzz/regressions/recovery/
/// record-sequence-max): a valid record of sequence u64::MAX makes the
/// next commit overflow `record_sequence + 1` in flusher.rs (a panic in
/// the flusher thread; a release build writes sequence 0, which the next
/// resume ignores in favour of the stale record).
#[test]
fn a_record_of_the_highest_sequence_does_not_overflow() {
    check_recovery(build_image(&input("recovery", "record-sequence-max")));
}

/// Found by the recovery target in CI (fuzz/regressions/recovery/
/// record-sequence-without-room-for-commits): a valid record of sequence
/// u64::MAX − 1 was resumed, but its successor is beyond what lc writes,
/// so the clean stop failed with Corrupt. Resume now refuses a sequence
/// that leaves a cache fewer than 2^32 − 1 commits, and accepts the
/// highest one that does not.
#[test]
fn a_record_that_leaves_no_room_for_commits_is_refused_at_resume() {
    use lc_engine::format::{MAX_RECORD_SEQUENCE, MAX_RESUMABLE_SEQUENCE};
    check_recovery(build_image(&input(
        "recovery",
        "record-sequence-without-room-for-commits",
    )));
    for (sequence, resumable) in [
        (MAX_RECORD_SEQUENCE, false),
        (MAX_RESUMABLE_SEQUENCE + 1, false),
        (MAX_RESUMABLE_SEQUENCE, true),
    ] {
        let mut img = build_image(&[2]);
        let r = SuperBlockRecord {
            sequence,
            last_migrated_segment_id: 0,
            uuid: harness::UUID,
            durable_segment_id: 0,
        };
        img[RECORD_OFFSETS[1] as usize..][..LINE_SIZE].copy_from_slice(&r.to_block());
        let disk = MemDisk::from_image(img);
        match Cache::resume(1, disk, CacheOptions { pool_segments: 2 }) {
            Ok(cache) => {
                assert!(resumable, "sequence {sequence} resumed");
                cache.shutdown().expect("a clean stop commits the record");
            }
            Err(e) => assert!(!resumable, "sequence {sequence}: {e}"),
        }
    }
}

/// Found by the recovery target (fuzz/regressions/recovery/
/// last-migrated-max): a valid record whose last_migrated_segment_id is
/// u64::MAX overflows `migrated + 1` in rescue::inspect and in resume.
#[test]
fn a_record_of_the_highest_migrated_id_is_refused() {
    check_recovery(build_image(&input("recovery", "last-migrated-max")));
    let mut img = build_image(&[2]);
    let r = SuperBlockRecord {
        sequence: 7,
        last_migrated_segment_id: u64::MAX,
        uuid: harness::UUID,
        durable_segment_id: 0,
    };
    img[RECORD_OFFSETS[1] as usize..][..LINE_SIZE].copy_from_slice(&r.to_block());
    let disk = MemDisk::from_image(img);
    assert!(rescue::inspect(&*disk).is_err());
    assert!(Cache::resume(1, disk, CacheOptions { pool_segments: 2 }).is_err());
}

/// A formatted 2-segment image whose second record (sequence 9) says
/// every segment up to `migrated` is written back.
fn image_migrated_to(migrated: u64) -> Vec<u8> {
    let mut img = build_image(&[0]);
    let r = SuperBlockRecord {
        sequence: 9,
        last_migrated_segment_id: migrated,
        uuid: harness::UUID,
        durable_segment_id: 0,
    };
    img[RECORD_OFFSETS[1] as usize..][..LINE_SIZE].copy_from_slice(&r.to_block());
    img
}

/// Suspected with the last-migrated finding (fuzz/README.md): a record
/// near the highest segment id is accepted, so the segments written after
/// resume must have laps that fit their headers (or the writes must be
/// refused); a truncated lap would make the next resume drop acknowledged
/// data. Writes up to the last id, resumes again and reads everything back.
#[test]
fn writes_after_a_resume_near_the_segment_id_limit_survive_the_next_resume() {
    let nr = 2;
    let limit = segment_id_limit(nr);
    let opts = CacheOptions { pool_segments: 2 };
    let disk = MemDisk::from_image(image_migrated_to(limit - 4));
    let backing = MemDisk::new(Vec::new(), 16 * LINE_SIZE as u64);
    let cache = Cache::resume(1, disk.clone(), opts.clone()).unwrap();
    assert_eq!(cache.nr_segments(), nr);
    cache.attach_device(1, backing.clone()).unwrap();
    // one line per segment: ids limit - 3 ..= limit - 1
    for k in 0..3u64 {
        cache
            .write(1, k * 8, &vec![k as u8 + 1; LINE_SIZE])
            .unwrap();
        cache.flush_sync().unwrap();
    }
    let refused = cache.write(1, 3 * 8, &[9; LINE_SIZE]);
    assert!(refused.is_err(), "segment {limit} was opened");
    cache.flush_sync().unwrap();
    cache.shutdown().unwrap();
    drop(cache);

    // every header the cache wrote parses: no lap was truncated
    for id in limit - 3..limit {
        let slot = slot_of(id, nr);
        let block = disk.bytes(segment_offset(slot), LINE_SIZE);
        if let Some(h) = SegmentHeader::parse(&block, slot, nr, &harness::UUID) {
            assert!(h.global_id >= limit - 3 && h.global_id < limit);
        }
    }
    let (cache, report) = Cache::resume_with_report(1, disk.clone(), opts).unwrap();
    assert!(report.last_migrated_segment_id < limit);
    assert!(report.last_replayed_segment_id < limit);
    cache.attach_device(1, backing).unwrap();
    for k in 0..3u64 {
        let mut got = vec![0; LINE_SIZE];
        cache.read(1, k * 8, &mut got).unwrap();
        assert!(got.iter().all(|&b| b == k as u8 + 1), "line {k} lost");
    }
    let mut got = vec![0xEE; LINE_SIZE];
    cache.read(1, 3 * 8, &mut got).unwrap();
    assert!(got.iter().all(|&b| b == 0), "the refused write landed");
    cache.shutdown().unwrap();

    // the last usable record still resumes (writes are refused); one more
    // leaves no id a header can carry and the device is corrupt
    let cache = Cache::resume(
        1,
        MemDisk::from_image(image_migrated_to(limit - 1)),
        CacheOptions { pool_segments: 2 },
    )
    .unwrap();
    cache
        .attach_device(1, MemDisk::new(Vec::new(), LINE_SIZE as u64))
        .unwrap();
    assert!(cache.write(1, 0, &[1; LINE_SIZE]).is_err());
    cache.shutdown().unwrap();
    let disk = MemDisk::from_image(image_migrated_to(limit));
    assert!(rescue::inspect(&*disk).is_err());
    assert!(Cache::resume(1, disk, CacheOptions { pool_segments: 2 }).is_err());
    check_recovery(image_migrated_to(limit - 1));
    check_recovery(image_migrated_to(limit));
}

/// Found by the recovery model (fuzz/regressions/recovery/
/// equal-sequence-records): when both record blocks are valid with one
/// sequence (lc never writes that; a copied block does), resume takes the
/// second block and `lcd check` (rescue::inspect) the first, so they
/// disagree about where the log starts.
#[test]
fn resume_and_inspect_agree_on_the_record() {
    let img = build_image(&input("recovery", "equal-sequence-records"));
    let disk = MemDisk::from_image(img.clone());
    let inspected = rescue::inspect(&*disk).map(|i| i.log.0 - 1);
    let resumed = Cache::resume_with_report(
        1,
        MemDisk::from_image(img),
        CacheOptions { pool_segments: 2 },
    )
    .map(|(c, r)| {
        c.shutdown().unwrap();
        r.last_migrated_segment_id
    });
    match (inspected, resumed) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "inspect and resume start the log at different ids"),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("inspect {a:?}, resume {b:?}"),
    }
}
