# vm-about: two caches and two backing disks whose kernel names swap between boots (qemu attaches them in each other's place, serials stay): lcd marks each moved cache and device failed, naming what changed, and writes nothing to any disk; re-pointed on purpose, each device serves its own data and writes it back onto its own disk (checked on the host)
# vm-disks: state:64M:ext4 ca:64M cb:64M ba:32M bb:32M
# vm-boots: 2
# vm-swap: 2 ca:cb ba:bb
# vm-timeout: 600

# Cache 1 is given by its kernel name, cache 2 too; device 1 by its kernel
# name, device 2 by a /dev/disk/by-id link (what an administrator should
# use). At boot 2 every kernel name leads to the other disk of its pair.
t=/persist/test

# The /dev/disk/by-id links udev would make (the guest runs no udev).
by_id_links() {
    mkdir -p /dev/disk/by-id
    for n in ca cb ba bb; do
        eval "_d=\$DISK_$n"
        ln -sfn "../../${_d#/dev/}" "/dev/disk/by-id/virtio-$n"
    done
}
by_id_links

if [ "$BOOT" -eq 1 ]; then
    for n in ca cb ba bb; do eval "echo \$DISK_$n" >"$t/name-$n"; done
    format_and_resume 1 "$DISK_ca"
    format_and_resume 2 "$DISK_cb"
    create_device 1 "$DISK_ba" 1
    create_device 2 /dev/disk/by-id/virtio-bb 2
    for i in 1 2; do
        # 0: never write back, whatever the disk's load: the data stays dirty
        set_knob device $i migrate_threshold y 0
    done
    dd if=/dev/urandom of=/dev/ublkb1 bs=1M count=3 oflag=direct conv=fsync 2>/dev/null ||
        fail "writing /dev/ublkb1 failed"
    dd if=/dev/urandom of=/dev/ublkb2 bs=1M seek=5 count=3 oflag=direct conv=fsync 2>/dev/null ||
        fail "writing /dev/ublkb2 failed"
    drop_caches
    for i in 1 2; do
        sha /dev/ublkb$i >"$t/dev$i.sha"
        dirty=$(dev_prop $i NrDirtyCaches)
        [ "$dirty" != "t 0" ] || fail "device $i: expected dirty lines in its cache, saw $dirty"
    done
    for n in ba bb; do eval "sha \$DISK_$n" >"$t/raw-$n.sha"; done
    log "boot 1: caches on $DISK_ca, $DISK_cb; devices on $DISK_ba and /dev/disk/by-id/virtio-bb, all data dirty in the caches; rebooting with the kernel names swapped"
else
    for n in ca cb ba bb; do
        eval "_now=\$DISK_$n"
        [ "$(cat "$t/name-$n")" != "$_now" ] || fail "disk $n kept its kernel name $_now: the swap did not happen"
    done
    log "boot 2: ca is now $DISK_ca (was $(cat $t/name-ca)), cb $DISK_cb, ba $DISK_ba, bb $DISK_bb"
    caches=$(mgr ListCaches)
    devs=$(mgr ListDevices)
    log "after the swap: ListCaches $caches"
    log "after the swap: ListDevices $devs"
    n=$(echo "$caches" | grep -o '"failed: [^"]*' | wc -l)
    expect_eq "caches failed after the swap (each path now leads to another disk)" 2 "$n"
    n=$(echo "$devs" | grep -o '"failed: [^"]*' | wc -l)
    expect_eq "devices failed after the swap" 2 "$n"
    for i in 1 2; do
        [ -e /dev/ublkb$i ] && fail "/dev/ublkb$i exists although its cache is on another disk now"
    done
    # nothing was written to any backing disk (nothing written back)
    for n in ba bb; do
        eval "expect_eq \"sha256 of backing disk $n after the failed start\" \"\$(cat $t/raw-$n.sha)\" \"\$(sha \$DISK_$n)\""
    done

    # Re-point the caches to where their disks are now, on purpose. A cache
    # pointed at the other cache's disk is refused: its uuid is not cache 1's.
    if out=$(busctl --no-pager call $BUS $ROOT $MANAGER RepointCache ys 1 "$DISK_cb" 2>&1); then
        fail "RepointCache 1 $DISK_cb (cache 2's disk) succeeded: $out"
    fi
    log "RepointCache 1 onto cache 2's disk refused: $out"
    mgr RepointCache ys 1 "$DISK_ca" >/dev/null
    mgr RepointCache ys 2 "$DISK_cb" >/dev/null
    # device 1's recorded kernel name now leads to bb: refused, nothing written
    if out=$(busctl --no-pager call $BUS $ROOT $MANAGER RepointDevice ys 1 "" 2>&1); then
        fail "RepointDevice 1 from its recorded path $(cat $t/name-ba) (now disk bb) succeeded: $out"
    fi
    echo "$out" | grep -q "is not the backing device recorded" ||
        fail "RepointDevice 1 onto disk bb: expected an identity error, saw: $out"
    log "RepointDevice 1 from its recorded path refused: $out"
    expect_eq "sha256 of disk bb after the refused re-point" "$(cat $t/raw-bb.sha)" "$(sha $DISK_bb)"
    mgr RepointDevice ys 1 "$DISK_ba" >/dev/null
    # device 2's by-id path still leads to its disk: its recorded identity matches
    mgr RepointDevice ys 2 "" >/dev/null
    for i in 1 2; do
        wait_until 30 "/dev/ublkb$i after re-pointing device $i" test -b /dev/ublkb$i
        expect_eq "sha256 of /dev/ublkb$i after the re-point" "$(cat $t/dev$i.sha)" "$(sha /dev/ublkb$i)"
    done
    # write-back onto the right disks: detach writes every dirty line back
    remove_device 1
    remove_device 2
    expect_eq "sha256 of disk ba after write-back" "$(cat $t/dev1.sha)" "$(sha $DISK_ba)"
    expect_eq "sha256 of disk bb after write-back" "$(cat $t/dev2.sha)" "$(sha $DISK_bb)"
    host_check_sha256 ba "$(cat $t/dev1.sha)"
    host_check_sha256 bb "$(cat $t/dev2.sha)"
    log "boot 2: each cache and device found by what it is, none written in the wrong place; the data is on its own disk"
fi
