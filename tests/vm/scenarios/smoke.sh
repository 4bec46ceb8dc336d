# vm-about: lcd on the guest's system bus; format + resume a cache on a virtio disk; ListCaches; BlockFrontend
# vm-disks: cache:64M
# vm-timeout: 180

[ -c /dev/ublk-control ] || fail "expected /dev/ublk-control (ublk_drv loaded), it is missing"
log "ublk_drv loaded: $(ls -l /dev/ublk-control)"

v=$(mgr_prop Version)
log "Manager.Version: $v"

format_and_resume 1 "$DISK_cache"

caches=$(mgr ListCaches)
log "ListCaches: $caches"
echo "$caches" | grep -q "\"$DISK_cache\"" ||
    fail "ListCaches: expected cache 1 on $DISK_cache, saw: $caches"
echo "$caches" | grep -q '"running"' ||
    fail "ListCaches: expected cache 1 in state running, saw: $caches"

id=$(cache_prop 1 Id)
expect_eq "Cache.Id of /org/lc/Lcd1/cache/1" "y 1" "$id"
segs=$(cache_status 1 nr_segments)
log "Cache.Status: $segs segments, static RAM $(cache_status 1 static_ram_bytes) bytes"
[ "$segs" -gt 0 ] 2>/dev/null || fail "Cache.Status: expected nr_segments > 0, saw '$segs'"

fe=$(mgr_prop BlockFrontend)
expect_eq "Manager.BlockFrontend (the kernel has ublk_drv)" 's "ublk"' "$fe"
log "Manager.BlockFrontend: $fe"
