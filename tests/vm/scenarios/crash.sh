# vm-about: kill -9 lcd under a fsync-marked write load; restarted lcd takes the device back (user recovery); all acknowledged data verifies
# vm-disks: cache:128M backing:256M log:8M
# vm-timeout: 600

blocks=16384 # 64 MiB of the device
format_and_resume 1 "$DISK_cache"
create_device 1 "$DISK_backing" 1
d=/dev/ublkb1
round() { vmcheck log-round --log "$DISK_log" --blocks $blocks; }

bg_start writer vmcheck write --dev $d --log "$DISK_log" --blocks $blocks --seed "$SEED" --report 20
wait_until 120 "the writer to acknowledge 10 rounds" sh -c "[ \$(vmcheck log-round --log $DISK_log --blocks $blocks) -ge 10 ]"
bg_running writer || fail "the writer stopped (status $(bg_status writer)) before lcd was killed"

lcd_kill9
# the writer's I/O now waits for lcd; its log (on its own disk) is frozen
sleep 2
dd if="$DISK_log" of=/tmp/log-at-kill bs=1M iflag=direct 2>/dev/null
r_kill=$(vmcheck log-round --log /tmp/log-at-kill --blocks $blocks)
log "writer at acknowledged round $r_kill when lcd died"
bg_running writer ||
    fail "the writer stopped (status $(bg_status writer)) while lcd was down: expected its I/O to wait for the restarted lcd (ublk user recovery), not fail"

lcd_start || fail "lcd did not start again after kill -9"
wait_until 120 "/dev/ublkb1 to be served again by the restarted lcd (ListDevices state running)" \
    sh -c "busctl --no-pager call $BUS $ROOT $MANAGER ListDevices | grep -q '\"running\"'"
log "device 1 is running again: $(mgr ListDevices)"
# The writer must carry on. One failed fsync is accepted: that is lcd
# reporting the writes it lost with its RAM; a new writer then continues.
restarted=0
n=0
while [ "$(round)" -le $((r_kill + 5)) ]; do
    if ! bg_running writer; then
        st=$(bg_status writer)
        if [ $st -eq 3 ] && [ $restarted -eq 0 ]; then
            log "the writer's fsync failed after the restart (lcd reported lost unflushed writes); starting a new writer"
            bg_start writer vmcheck write --dev $d --log "$DISK_log" --blocks $blocks --seed "$SEED" --report 20
            restarted=1
        else
            fail "the writer stopped with status $st after the restart; expected its I/O to go on (status 3, one failed fsync, is accepted once)"
        fi
    fi
    n=$((n + 1))
    [ $n -gt 900 ] && fail "waited 180 s for the writer to make progress after the restart (acknowledged round > $((r_kill + 5))); it is at $(round)"
    sleep 0.2
done
bg_stop writer
log "writer stopped at acknowledged round $(round)"

# 1. everything fsync'd before the kill
vmcheck verify --dev $d --log /tmp/log-at-kill --blocks $blocks --expect-log --older-log ||
    fail "data acknowledged by fsync before lcd was killed did not read back (details above)"
log "every block acknowledged before the kill (round $r_kill) verifies"
# 2. everything whose fsync succeeded at all, also the round in flight at
# the kill: a write that completed before the kill and was still only in
# lcd's RAM is gone; the fsync that follows it must then fail, not succeed
vmcheck verify --dev $d --log "$DISK_log" --blocks $blocks --expect-log ||
    fail "writes of round $((r_kill + 1)), in flight when lcd was killed, are lost although their fsync completed successfully after the restart (the volatile write cache lost with lcd was not reported as an error; details above)"
log "every block acknowledged after the restart verifies too"
