# vm-about: two backing disks on one cache: concurrent fio with verify on both, then detach both (host compares both images)
# vm-disks: cache:128M backing:192M backing2:160M
# vm-timeout: 900

format_and_resume 1 "$DISK_cache"
create_device 1 "$DISK_backing" 1
create_device 2 "$DISK_backing2" 1
# write-back only at the detach (policy: 0 % busy allowed = never)
set_knob device 1 migrate_threshold y 0
set_knob device 2 migrate_threshold y 0
expect_eq "size of /dev/ublkb1" "$(dev_size "$DISK_backing")" "$(dev_size /dev/ublkb1)"
expect_eq "size of /dev/ublkb2" "$(dev_size "$DISK_backing2")" "$(dev_size /dev/ublkb2)"
log "ListDevices: $(mgr ListDevices)"

cat >/tmp/shared.fio <<FIO
[global]
direct=1
ioengine=libaio
iodepth=16
verify=crc32c
verify_fatal=1
bs=4k
randrepeat=0

[rand1]
filename=/dev/ublkb1
rw=randwrite
offset=0
size=56M

[rand2]
filename=/dev/ublkb2
rw=randwrite
offset=0
size=56M

[mixed1]
filename=/dev/ublkb1
rw=randrw
offset=64M
size=32M

[seq2]
filename=/dev/ublkb2
rw=write
bs=1M
offset=64M
size=64M
FIO
t0=$(uptime_s)
fio --eta=never --output=/tmp/fio-shared.out /tmp/shared.fio || {
    tail -n 60 /tmp/fio-shared.out
    fail "concurrent fio with verify on /dev/ublkb1 and /dev/ublkb2 failed (output above)"
}
grep -E 'err=|WRITE:|READ:' /tmp/fio-shared.out | sed 's/^/[fio] /'
log "concurrent fio on both devices verified in $(awk -v a="$t0" -v b="$(uptime_s)" 'BEGIN { printf "%.1f", b - a }') s"
expect_eq "Cache.Status error counters" 0 "$(cache_status 1 errors)"

sync
d1=$(dev_prop 1 NrDirtyCaches | cut -d' ' -f2)
d2=$(dev_prop 2 NrDirtyCaches | cut -d' ' -f2)
log "dirty 4 KiB lines before the detach: device 1 $d1, device 2 $d2"
[ "$d1" -gt 0 ] && [ "$d2" -gt 0 ] || fail "NrDirtyCaches before the detach: expected > 0 on both devices (write-back off), saw $d1 and $d2"
s1=$(sha /dev/ublkb1)
s2=$(sha /dev/ublkb2)
remove_device 1
remove_device 2
drop_caches
expect_eq "sha256 of $DISK_backing after detaching device 1" "$s1" "$(sha "$DISK_backing")"
expect_eq "sha256 of $DISK_backing2 after detaching device 2" "$s2" "$(sha "$DISK_backing2")"
host_check_sha256 backing "$s1"
host_check_sha256 backing2 "$s2"
