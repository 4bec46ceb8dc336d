# vm-about: kill -9 lcd under a fsync-marked write load; restarted lcd takes the device back; all acknowledged data verifies
# vm-disks: cache:128M backing:256M log:8M
# vm-timeout: 600

blocks=16384 # 64 MiB of the device
format_and_resume 1 "$DISK_cache"
create_device 1 "$DISK_backing" 1
d=/dev/ublkb1

vmcheck write --dev $d --log "$DISK_log" --blocks $blocks --seed "$SEED" --report 20 &
wpid=$!
round() { vmcheck log-round --log "$DISK_log" --blocks $blocks; }
wait_until 120 "the writer to acknowledge 10 rounds" sh -c "[ \$(vmcheck log-round --log $DISK_log --blocks $blocks) -ge 10 ]"
kill -0 $wpid 2>/dev/null || fail "the writer stopped before lcd was killed"

lcd_kill9
r_kill=$(round)
log "writer at acknowledged round $r_kill when lcd died"
sleep 2
kill -0 $wpid 2>/dev/null || {
    wait $wpid || st=$?
    fail "the writer stopped (status ${st:-0}) while lcd was down: expected its I/O to wait for the restarted lcd (ublk user recovery), not fail"
}

lcd_start || fail "lcd did not start again after kill -9"
wait_until 120 "/dev/ublkb1 to be served again by the restarted lcd (ListDevices state running)" \
    sh -c "busctl --no-pager call $BUS $ROOT $MANAGER ListDevices | grep -q '\"running\"'"
log "device 1 is running again: $(mgr ListDevices)"
wait_until 180 "the writer to make progress after the restart (acknowledged round > $((r_kill + 5)))" \
    sh -c "[ \$(vmcheck log-round --log $DISK_log --blocks $blocks) -gt $((r_kill + 5)) ]"
kill -0 $wpid 2>/dev/null || {
    wait $wpid || st=$?
    fail "the writer stopped (status ${st:-0}) after the restart; expected it to keep writing"
}
kill $wpid
wait $wpid || true
log "writer stopped at acknowledged round $(round)"

vmcheck verify --dev $d --log "$DISK_log" --blocks $blocks --expect-log ||
    fail "vmcheck verify: data acknowledged by fsync before or after the crash did not read back (details above)"
