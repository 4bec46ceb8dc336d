# vm-about: with write-back off, RemoveDevice writes every dirty block back: the backing image, read on the host, equals what was written through the cache
# vm-disks: cache:128M backing:256M
# vm-timeout: 900

format_and_resume 1 "$DISK_cache"
create_device 1 "$DISK_backing" 1
# keep the data dirty in the cache until the detach: lcd's policy loop
# allows write-back only below migrate_threshold percent busy (0: never)
set_knob device 1 migrate_threshold y 0
set_knob cache 1 allow_migrate b false
d=/dev/ublkb1

# random 4 KiB writes, 1 MiB sequential writes, and overwrites of both
fio --eta=never --name=rand --filename=$d --direct=1 --ioengine=libaio --iodepth=16 --rw=randwrite --bs=4k \
    --offset=0 --size=48M --io_size=24M --randrepeat=0 --output=/tmp/fio-rand.out ||
    { cat /tmp/fio-rand.out; fail "fio random writes to $d failed"; }
dd if=/dev/urandom of=$d bs=1M seek=64 count=40 oflag=direct 2>/dev/null || fail "dd to $d failed"
dd if=/dev/urandom of=$d bs=4k seek=5000 count=3000 oflag=direct 2>/dev/null || fail "dd to $d failed"
sync
blockdev --flushbufs $d

dirty=$(dev_prop 1 NrDirtyCaches | cut -d' ' -f2)
log "device 1 holds $dirty dirty 4 KiB lines before the detach"
[ "$dirty" -gt 10000 ] || fail "NrDirtyCaches of device 1 before the detach: expected > 10000 4 KiB lines (about 60 MiB written, write-back off), saw $dirty"

want=$(sha $d)
log "sha256 of $d through the cache: $want"
remove_device 1
devs=$(mgr ListDevices)
echo "$devs" | grep -q '"/dev/' && fail "ListDevices after RemoveDevice 1: expected no device, saw: $devs"
caches=$(mgr ListCaches)
log "ListCaches after the detach: $caches"

drop_caches
got=$(sha "$DISK_backing")
expect_eq "sha256 of the backing disk $DISK_backing read in the guest after the detach" "$want" "$got"
host_check_sha256 backing "$want"
