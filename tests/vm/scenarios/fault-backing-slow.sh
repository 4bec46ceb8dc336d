# vm-about: the backing device is slow (dm-delay, 5 ms per I/O): fio with verify through the cache completes, writes are absorbed by the cache; write-back and detach complete; host image equals what was written (figures printed, never asserted)
# vm-disks: cache:128M backing:96M
# vm-timeout: 300

d=/dev/ublkb1
ms=5
dm_create lcback "$DISK_backing"
dm_set lcback delay $ms
# the slow disk alone, for comparison (before lc owns it)
fio --eta=never --name=raw --filename=/dev/mapper/lcback --direct=1 --ioengine=libaio --iodepth=16 \
    --rw=randwrite --bs=4k --offset=48M --size=48M --runtime=3 --time_based --output=/tmp/fio-raw.out ||
    { cat /tmp/fio-raw.out; fail "fio on the delayed backing disk failed"; }
raw=$(sed -n 's/.*WRITE: bw=\([^ ]*\) .*/\1/p' /tmp/fio-raw.out)

format_and_resume 1 "$DISK_cache"
create_device 1 /dev/mapper/lcback 1
set_knob device 1 migrate_threshold y 0
fio --eta=never --name=cached --filename=$d --direct=1 --ioengine=libaio --iodepth=16 --rw=randwrite --bs=4k \
    --offset=0 --size=8M --randrepeat=0 --verify=crc32c --verify_fatal=1 --output=/tmp/fio-cached.out ||
    { tail -n 40 /tmp/fio-cached.out; fail "fio randwrite with verify through the cache over the delayed backing disk failed"; }
cached=$(sed -n 's/.*WRITE: bw=\([^ ]*\) .*/\1/p' /tmp/fio-cached.out)
grep -E 'err=|WRITE:|READ:' /tmp/fio-cached.out | sed 's/^/[fio cached] /'
log "FIGURES: 4 KiB random writes, iodepth 16: the backing disk with $ms ms delay alone $raw; through lc $cached (verified with crc32c)"
expect_eq "Cache.Status error counters" 0 "$(cache_status 1 errors)"
dirty=$(dev_prop 1 NrDirtyCaches | cut -d' ' -f2)
log "device 1 holds $dirty dirty lines: the writes were absorbed by the cache"
[ "$dirty" -gt 1000 ] || fail "NrDirtyCaches after 8 MiB of random writes with write-back off: expected > 1000, saw $dirty"

# (the whole device read through the cache: no delay for that, it is not
# what this scenario measures)
dm_set lcback linear
want=$(sha $d)
dm_set lcback delay $ms
t0=$(uptime_s)
remove_device 1
t1=$(uptime_s)
log "FIGURES: detach wrote back $dirty dirty lines to the $ms ms disk in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
dm_set lcback linear
drop_caches
expect_eq "sha256 of /dev/mapper/lcback after the detach" "$want" "$(sha /dev/mapper/lcback)"
host_check_sha256 backing "$want"
log "RESULT: slow backing disk: verified writes, write-back and detach complete; acknowledged writes lost: 0"
