mod common;
use common::*;
use lc_engine::sim::PowerDomain;
use lc_engine::sim::SimDisk;
use lc_engine::Knob;

#[test]
fn write_flush_read_resume() {
    let dom = PowerDomain::new();
    let cdev = sim_cache_disk(&dom, 8);
    let bdev = SimDisk::new(dom.clone(), 4 * MIB);
    let c = resume(cdev.clone(), 4);
    c.attach_device(1, bdev.clone()).unwrap();
    c.write(1, 3, &pattern(1, 3, 20)).unwrap();
    let mut buf = vec![0u8; 20 * 512];
    c.read(1, 3, &mut buf).unwrap();
    assert_eq!(buf, pattern(1, 3, 20));
    c.flush_sync().unwrap();
    c.read(1, 3, &mut buf).unwrap();
    assert_eq!(buf, pattern(1, 3, 20));
    c.shutdown().unwrap();
    drop(c);
    let c = resume(cdev.clone(), 4);
    c.attach_device(1, bdev.clone()).unwrap();
    c.read(1, 3, &mut buf).unwrap();
    assert_eq!(buf, pattern(1, 3, 20));
    c.set_knob(Knob::AllowMigrate, 1).unwrap();
    c.migrate_all().unwrap();
    let mut raw = vec![0u8; 20 * 512];
    lc_engine::BlockDevice::read_at(&*bdev, &mut raw, 3 * 512).unwrap();
    assert_eq!(raw, pattern(1, 3, 20));
    assert_eq!(c.nr_dirty_caches(1), 0);
}
