# vm-about: guest reboot with lcd's state on a persistent disk: lcd alone brings the cache, its knobs and /dev/ublkb1 back; the file system on it verifies
# vm-disks: cache:128M backing:256M state:64M:ext4
# vm-boots: 2
# vm-timeout: 600

d=/dev/ublkb1
if [ "$BOOT" -eq 1 ]; then
    format_and_resume 1 "$DISK_cache"
    set_knob cache 1 flush_current_buffer_interval t 7
    create_device 1 "$DISK_backing" 1
    set_knob device 1 migrate_threshold y 42
    mkfs.ext4 -q -F $d || fail "mkfs.ext4 $d failed"
    mount -t ext4 $d /mnt || fail "mount $d failed"
    for i in $(seq 40); do head -c $((i * 7919)) /dev/urandom >/mnt/f$i; done
    dd if=/dev/urandom of=/mnt/big bs=1M count=48 2>/dev/null
    (cd /mnt && sha256sum f* big) >/persist/test/sums
    umount /mnt
    sha $d >/persist/test/dev.sha
    log "boot 1: file system written; device sha256 $(cat /persist/test/dev.sha); rebooting (init stops lcd with SIGTERM)"
else
    # no command: lcd was started by init exactly as at boot 1
    wait_until 60 "lcd to bring /dev/ublkb1 back by itself after the reboot" test -b $d
    caches=$(mgr ListCaches)
    devs=$(mgr ListDevices)
    log "after reboot: ListCaches $caches; ListDevices $devs"
    echo "$caches" | grep -q "\"$DISK_cache\"" || fail "ListCaches after reboot: expected cache 1 on $DISK_cache, saw: $caches"
    echo "$caches" | grep -q '"running"' || fail "ListCaches after reboot: expected cache 1 running, saw: $caches"
    echo "$devs" | grep -q '"running"' || fail "ListDevices after reboot: expected device 1 running, saw: $devs"
    expect_eq "knob FlushCurrentBufferInterval of cache 1 after reboot" "t 7" "$(cache_prop 1 FlushCurrentBufferInterval)"
    expect_eq "knob MigrateThreshold of device 1 after reboot" "y 42" "$(dev_prop 1 MigrateThreshold)"
    expect_eq "sha256 of $d after reboot" "$(cat /persist/test/dev.sha)" "$(sha $d)"
    out=$(e2fsck -fn $d 2>&1) || { echo "$out"; fail "e2fsck -fn $d after reboot: expected clean, it reported problems (above)"; }
    mount -t ext4 $d /mnt || fail "mount $d after reboot failed"
    (cd /mnt && sha256sum -c -s /persist/test/sums) || fail "files differ after reboot"
    umount /mnt
    log "after reboot: knobs kept, device content and all files verify"
fi
