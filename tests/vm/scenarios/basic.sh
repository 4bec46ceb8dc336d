# vm-about: fio randwrite/randrw with verify=crc32c, 1 MiB sequential, blkdiscard on /dev/ublkb1; Status counters move
# vm-disks: cache:128M backing:256M
# vm-timeout: 600

format_and_resume 1 "$DISK_cache"
create_device 1 "$DISK_backing" 1
d=/dev/ublkb1
q=/sys/block/ublkb1/queue

expect_eq "size of $d (that of the backing disk)" "$(dev_size "$DISK_backing")" "$(dev_size $d)"
expect_eq "$q/logical_block_size" 512 "$(cat $q/logical_block_size)"
expect_eq "$q/physical_block_size" 4096 "$(cat $q/physical_block_size)"
expect_eq "$q/write_cache (volatile write cache advertised)" "write back" "$(cat $q/write_cache)"
expect_eq "$q/fua" 1 "$(cat $q/fua)"
[ "$(cat $q/discard_max_bytes)" -gt 0 ] || fail "$q/discard_max_bytes: expected > 0 (discard supported), saw $(cat $q/discard_max_bytes)"
dinfo=$(mgr ListDevices)
log "ListDevices: $dinfo"
echo "$dinfo" | grep -q '"/dev/ublkb1"' || fail "ListDevices: expected device 1 with node /dev/ublkb1, saw: $dinfo"

w0=$(cache_status 1 writes)
r0=$(cache_status 1 reads)

common="--filename=$d --direct=1 --ioengine=libaio --iodepth=16 --verify=crc32c --verify_fatal=1 --do_verify=1"
# shellcheck disable=SC2086
run_fio randwrite $common --rw=randwrite --bs=4k --offset=0 --size=64M --randrepeat=0
# shellcheck disable=SC2086
run_fio randrw $common --rw=randrw --bs=4k --offset=64M --size=48M --randrepeat=0
# shellcheck disable=SC2086
run_fio seq1m $common --rw=write --bs=1M --offset=128M --size=96M

w1=$(cache_status 1 writes)
r1=$(cache_status 1 reads)
log "Status counters: writes $w0 -> $w1, reads $r0 -> $r1, errors $(cache_status 1 errors)"
[ "$w1" -gt "$w0" ] || fail "Cache.Status write counters: expected to grow under fio, saw $w0 -> $w1"
[ "$r1" -gt "$r0" ] || fail "Cache.Status read counters: expected to grow under fio's verify, saw $r0 -> $r1"
expect_eq "Cache.Status error counters" 0 "$(cache_status 1 errors)"
if [ "$(client)" = lcctl ]; then
    lcctl_ok status 1
    lcctl_ok list
fi

# discard: 8 MiB of random data, flushed, discarded, read back as zeros
# (the backing disk zeroes discarded ranges, so nothing else is right)
off=$((232 * 1024 * 1024)) len=$((8 * 1024 * 1024))
dd if=/dev/urandom of=$d bs=1M seek=232 count=8 oflag=direct conv=fsync 2>/dev/null ||
    fail "dd of 8 MiB at 232 MiB to $d failed"
before=$(dd if=$d bs=1M skip=232 count=8 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
blkdiscard -o $off -l $len $d || fail "blkdiscard -o $off -l $len $d failed"
after=$(dd if=$d bs=1M skip=232 count=8 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
zeros=$(head -c $len /dev/zero | sha256sum | cut -d' ' -f1)
[ "$before" != "$zeros" ] || fail "the random data written before the discard read back as zeros"
expect_eq "sha256 of the discarded range read back (zeros)" "$zeros" "$after"
# the data around it is untouched: fio's sequential region still verifies
# shellcheck disable=SC2086
run_fio seq1m-reverify --filename=$d --direct=1 --ioengine=libaio --iodepth=16 --verify=crc32c \
    --verify_fatal=1 --rw=read --verify_only=1 --bs=1M --offset=128M --size=96M
log "discard of 8 MiB read back as zeros"
