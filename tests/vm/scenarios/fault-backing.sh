# vm-about: the backing device fails (dm error table) during write-back: reads of uncached data get EIO, detach fails with org.lc.Lcd1.Error.Io and keeps the device, status says failing; restored: write-back completes by itself, detach, host image equals what was written
# vm-disks: cache:128M backing:96M
# vm-timeout: 300

d=/dev/ublkb1
dm_create lcback "$DISK_backing"
format_and_resume 1 "$DISK_cache"
create_device 1 /dev/mapper/lcback 1
# write-back only when asked (policy: never)
set_knob device 1 migrate_threshold y 0

# random 4 KiB writes and 1 MiB sequential ones, all dirty in the cache
fio --eta=never --name=rand --filename=$d --direct=1 --ioengine=libaio --iodepth=16 --rw=randwrite --bs=4k \
    --offset=0 --size=32M --io_size=8M --randrepeat=0 --output=/tmp/fio-rand.out ||
    { cat /tmp/fio-rand.out; fail "fio random writes to $d failed"; }
dd if=/dev/urandom of=$d bs=1M seek=64 count=16 oflag=direct 2>/dev/null || fail "dd to $d failed"
dd if=/dev/zero of=$d bs=4k count=0 conv=fsync 2>/dev/null || fail "fsync of $d failed"
want=$(sha $d)
# 2 MiB of it, written again (same bytes) after the failed detach
dd if=$d of=/tmp/again bs=1M skip=64 count=2 iflag=direct 2>/dev/null || fail "reading $d failed"
dirty=$(dev_prop 1 NrDirtyCaches | cut -d' ' -f2)
log "device 1: $dirty dirty lines, sha256 through the cache $want"
[ "$dirty" -gt 1000 ] || fail "NrDirtyCaches before the fault: expected > 1000 (write-back off), saw $dirty"

# ---- the fault: every I/O to the backing device fails, and write-back runs
dm_set lcback error
set_knob cache 1 force_migrate b true
errors_counted() { [ "$(cache_status 1 errors)" -gt 0 ]; }
wait_until 60 "write-back to fail and be counted" errors_counted
st=0
dd if=$d of=/dev/null bs=1M skip=84 count=4 iflag=direct 2>/tmp/dd.err || st=$?
log "USER SEES: reading 4 MiB that is not cached: exit $st: $(tr '\n' ' ' </tmp/dd.err)"
[ $st -ne 0 ] && grep -q "Input/output error" /tmp/dd.err ||
    fail "reading uncached data while the backing device fails: expected EIO, saw exit $st: $(cat /tmp/dd.err)"
dd if=$d of=/dev/null bs=1M skip=64 count=16 iflag=direct 2>/tmp/dd.err ||
    fail "reading the 16 MiB cached in full while the backing device fails: expected success, saw: $(cat /tmp/dd.err)"
log "USER SEES: reads of fully cached data succeed"

st=0
lcctl detach 1 >/tmp/detach.out 2>&1 || st=$?
log "USER SEES: lcctl detach 1: exit $st: $(tail -c 600 /tmp/detach.out | tr '\r\n' '  ' | sed 's/.*\(lcctl:\)/\1/')"
[ $st -eq 6 ] || fail "lcctl detach 1 while the backing device fails: expected exit 6 (org.lc.Lcd1.Error.Io), saw exit $st: $(tail -c 600 /tmp/detach.out)"
grep -q "cannot detach device 1" /tmp/detach.out ||
    fail "lcctl detach 1 while the backing device fails: expected the message to say 'cannot detach device 1', saw: $(tail -c 600 /tmp/detach.out)"
st=0
out=$(busctl --no-pager --timeout=300 call $BUS $ROOT $MANAGER RemoveDevice y 1 2>&1) || st=$?
log "USER SEES: busctl call RemoveDevice 1: exit $st: $out"
[ $st -ne 0 ] || fail "RemoveDevice 1 while the backing device fails: expected a D-Bus error, saw success"
test -b $d || fail "/dev/ublkb1 after a failed detach: expected the device to stay, saw it gone"
state=$(dev_prop 1 State)
expect_eq "State of device 1 after the failed detach" 's "running"' "$state"
dd if=/tmp/again of=$d bs=1M seek=64 oflag=direct conv=fsync 2>/dev/null ||
    fail "writing 2 MiB to device 1 after the failed detach: expected success (the device stays usable), saw failure"
log "USER SEES: after the failed detach /dev/ublkb1 stays, state running, writable"
health=$(cache_health 1)
log "USER SEES: lcctl status: health $health"
case $health in
    "failing: backing device "*) ;;
    *) fail "health of cache 1 while write-back fails: expected 'failing: backing device ...', saw '$health'" ;;
esac
lcctl status 1 | grep -E '^ *errors ' | sed 's/^/[lcctl status] /'

# ---- the backing device comes back: write-back completes by itself
dm_set lcback linear
all_clean() { [ "$(cache_status 1 nr_dirty_caches)" -eq 0 ]; }
wait_until 120 "write-back to empty the cache after the backing device came back" all_clean
dd if=$d of=/dev/null bs=1M skip=84 count=4 iflag=direct 2>/tmp/dd.err ||
    fail "reading uncached data after the backing device came back: expected success, saw: $(cat /tmp/dd.err)"
# (each kind of fault ends with the next success of its kind: write-back
# ended the write errors, this read the read errors)
expect_eq "health of cache 1 after the backing device came back and served a read" healthy "$(cache_health 1)"
log "write-back done after the fault (nr_dirty 0)"
remove_device 1
drop_caches
expect_eq "sha256 of /dev/mapper/lcback after the detach (what was written through the cache before the fault)" "$want" "$(sha /dev/mapper/lcback)"
host_check_sha256 backing "$want"
log "RESULT: backing device failed during write-back and came back; its image equals what was written; acknowledged writes lost: 0"
