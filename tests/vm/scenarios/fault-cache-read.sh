# vm-about: the cache device fails reads (dm-flakey error_reads): readers of cached lines get EIO, never stale backing data, writes go on, status says failing; fault cleared: every acknowledged block verifies
# vm-disks: cache:128M backing:256M log:8M
# vm-timeout: 300

blocks=8192 # 32 MiB of the device for vmcheck
d=/dev/ublkb1
dm_create lccache "$DISK_cache"
format_and_resume 1 /dev/mapper/lccache
create_device 1 "$DISK_backing" 1
set_knob device 1 migrate_threshold y 0
round() { vmcheck log-round --log "$DISK_log" --blocks $blocks; }

# acknowledged data on the cache device (fsync per round); the backing
# disk holds zeros, which vmcheck would report as a bad stamp
vmcheck write --dev $d --log "$DISK_log" --blocks $blocks --seed "$SEED" --rounds 10 ||
    fail "vmcheck writer before the fault: expected 10 acknowledged rounds, saw exit $?"
expect_eq "health of cache 1 before the fault" healthy "$(cache_health 1)"
dirty=$(dev_prop 1 NrDirtyCaches | cut -d' ' -f2)
log "device 1 holds $dirty dirty lines, acknowledged round $(round)"
# the premise: the acknowledged data is on the cache device, not yet
# written back (migrate_threshold 0 stops write-back when it is set)
[ "$dirty" -gt 0 ] || fail "dirty lines of device 1 before the fault: expected > 0 (write-back off), saw $dirty"

dd if=$d of=/tmp/before bs=1M count=32 iflag=direct 2>/dev/null || fail "reading $d before the fault failed"

# ---- the fault: every read of the cache device fails
dm_set lccache error_reads
st=0
vmcheck verify --dev $d --log "$DISK_log" --blocks $blocks --expect-log 2>/tmp/verify.err || st=$?
log "USER SEES: vmcheck verify while the cache device fails reads: exit $st: $(tail -n 2 /tmp/verify.err | tr '\n' ' ')"
[ $st -eq 1 ] && fail "vmcheck verify while the cache device fails reads: saw wrong data (exit 1): a cached line was served from somewhere else than the cache (stale backing data?)"
[ $st -eq 2 ] && grep -q "Input/output error" /tmp/verify.err ||
    fail "vmcheck verify while the cache device fails reads: expected an I/O error (exit 2, EIO), saw exit $st: $(cat /tmp/verify.err)"
# block by block: each block either fails or reads what it read before the
# fault (a cached line served from the backing disk would differ)
eio=0
ok=0
b=0
while [ $b -lt $blocks ]; do
    if dd if=$d of=/tmp/blk bs=4096 skip=$b count=1 iflag=direct 2>/tmp/dd.err; then
        ok=$((ok + 1))
        dd if=/tmp/before of=/tmp/ref bs=4096 skip=$b count=1 2>/dev/null
        cmp -s /tmp/blk /tmp/ref ||
            fail "block $b read while the cache device fails reads: expected EIO or the data it held before the fault, saw other data (stale backing data)"
    else
        grep -q "Input/output error" /tmp/dd.err || fail "block $b read: expected EIO, saw: $(cat /tmp/dd.err)"
        eio=$((eio + 1))
    fi
    b=$((b + 61))
done
log "USER SEES: of $((eio + ok)) single-block reads, $eio failed with EIO (cached on the failing device), $ok read the right data (not cached, or in RAM); none stale"
[ $eio -gt 0 ] || fail "single-block reads while the cache device fails reads: expected some EIO, saw none"
# data that is not cached still reads (from the backing disk)
dd if=$d of=/dev/null bs=1M skip=128 count=16 iflag=direct 2>/tmp/dd.err ||
    fail "reading 16 MiB that is not cached while the cache device fails reads: expected success, saw: $(cat /tmp/dd.err)"
log "USER SEES: reads of data not in the cache succeed"
# writes of whole lines go on: RAM, then the cache device (writes work)
vmcheck write --dev $d --log "$DISK_log" --blocks $blocks --rounds 3 ||
    fail "vmcheck writer while the cache device fails reads: expected 3 acknowledged rounds (writes do not need reads), saw exit $?"
log "USER SEES: 3 more fsync'd rounds acknowledged during the read fault (round $(round))"
health=$(cache_health 1)
log "USER SEES: lcctl status: health $health"
case $health in
    "failing: cache device read errors ("*) ;;
    *) fail "health of cache 1 while its device fails reads: expected 'failing: cache device read errors (...', saw '$health'" ;;
esac
lcctl status 1 | grep -E '^ *errors ' | sed 's/^/[lcctl status] /'

# ---- the fault clears
dm_set lccache linear
vmcheck verify --dev $d --log "$DISK_log" --blocks $blocks --expect-log ||
    fail "acknowledged data did not verify after the read fault cleared (details above)"
expect_eq "health of cache 1 after the fault cleared and a good read" healthy "$(cache_health 1)"
log "RESULT: every block acknowledged up to round $(round) verifies; acknowledged writes lost: 0"
