# vm-about: the cache device fails writes (dm-flakey error_writes) under vmcheck: fsync gets EIO, writes get EIO once RAM is full (no hang), status says failing; fault cleared: lc recovers by itself, every acknowledged block verifies, also after a restart
# vm-disks: cache:128M backing:256M log:8M
# vm-timeout: 300

blocks=8192 # 32 MiB of the device for vmcheck
d=/dev/ublkb1
dm_create lccache "$DISK_cache"
format_and_resume 1 /dev/mapper/lccache
create_device 1 "$DISK_backing" 1
set_knob device 1 migrate_threshold y 0
round() { vmcheck log-round --log "$DISK_log" --blocks $blocks; }

bg_start writer vmcheck write --dev $d --log "$DISK_log" --blocks $blocks --seed "$SEED" --report 5
wait_until 120 "the writer to acknowledge 5 rounds" sh -c "[ \$(vmcheck log-round --log $DISK_log --blocks $blocks) -ge 5 ]"
expect_eq "health of cache 1 before the fault" healthy "$(cache_health 1)"

# ---- the fault: every write to the cache device fails
dm_set lccache error_writes
r_fault=$(round)
wait_until 60 "the writer to stop on a failed fsync" sh -c "! [ -e /run/bg-writer.pid ] || [ -e /run/bg-writer.exit ]"
st=$(bg_status writer)
[ "$st" = 3 ] || fail "vmcheck writer while the cache device fails writes: expected exit 3 (fsync failed with EIO), saw exit $st"
log "USER SEES: the writer's fsync failed (vmcheck exit 3) at acknowledged round $(round)"

# writes go to RAM until the 64 buffers are full, then fail instead of hanging
st=0
dd if=/dev/urandom of=$d bs=1M seek=64 count=120 oflag=direct 2>/tmp/dd.err || st=$?
log "USER SEES: dd of 120 MiB while the cache device fails writes: exit $st: $(tr '\n' ' ' </tmp/dd.err)"
[ $st -ne 0 ] && grep -q "Input/output error" /tmp/dd.err ||
    fail "dd of 120 MiB (more than the 64 MiB of RAM buffers) while the cache device fails writes: expected EIO, saw exit $st: $(cat /tmp/dd.err)"
st=0
sync_out=$(dd if=/dev/zero of=$d bs=4k count=0 conv=fsync 2>&1) || st=$?
log "USER SEES: fsync of $d (a FLUSH): exit $st: $(echo "$sync_out" | tr '\n' ' ')"
[ $st -ne 0 ] || fail "fsync of $d while the cache device fails writes: expected EIO, saw success"

health=$(cache_health 1)
log "USER SEES: lcctl status: health $health"
case $health in
    "failing: cache device write errors ("*) ;;
    *) fail "health of cache 1 while its device fails writes: expected 'failing: cache device write errors (...', saw '$health'" ;;
esac
lcctl status 1 | grep -E '^ *(errors|health) ' | sed 's/^/[lcctl status] /'

# acknowledged data is still served (reads of the cache device work)
vmcheck verify --dev $d --log "$DISK_log" --blocks $blocks --expect-log ||
    fail "acknowledged data did not verify while the cache device fails writes (details above)"
log "every block acknowledged before the fault (round $(round)) reads back during the fault"

# ---- the fault clears: lc recovers by itself
dm_set lccache linear
wait_until 60 "cache 1 to report healthy after the fault cleared" sh -c "[ \"\$(lcctl status 1 | sed -n 's/^ *health  *//p' | sed 's/ *$//')\" = healthy ]"
log "health after the fault cleared: $(cache_health 1)"
vmcheck write --dev $d --log "$DISK_log" --blocks $blocks --rounds 5 ||
    fail "vmcheck writer after the fault cleared: expected 5 acknowledged rounds, saw exit $?"
log "5 more rounds acknowledged after the fault cleared (round $(round))"
vmcheck verify --dev $d --log "$DISK_log" --blocks $blocks --expect-log ||
    fail "acknowledged data did not verify after the fault cleared (details above)"

# ---- and from the cache device alone: a restarted lcd resumes it
lcd_stop || fail "lcd did not stop cleanly after the fault cleared (exit $(cat /run/lcd.exit 2>/dev/null))"
lcd_start || fail "lcd did not start again"
wait_until 60 "/dev/ublkb1 after the restart" test -b $d
vmcheck verify --dev $d --log "$DISK_log" --blocks $blocks --expect-log ||
    fail "acknowledged data did not verify after lcd resumed the cache (details above)"
log "RESULT: fault injected at round $r_fault; every block acknowledged up to round $(round) verifies after the restart; acknowledged writes lost: 0"
