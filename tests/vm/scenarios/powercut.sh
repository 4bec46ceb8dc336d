# vm-about: the host kills qemu at random moments of a fsync-acknowledged write load; after each cut lcd resumes from its state and every acknowledged block reads back (--cuts N, default 5)
# vm-disks: cache:128M backing:256M log:8M state:64M:ext4
# vm-powercut: yes
# vm-timeout: 600

blocks=16384 # 64 MiB of the device
d=/dev/ublkb1

if [ "$BOOT" -eq 1 ]; then
    format_and_resume 1 "$DISK_cache"
    create_device 1 "$DISK_backing" 1
else
    # lcd (started by init with the state on the state disk) must have
    # brought the cache and the device back by itself
    log "after power cut $((BOOT - 1)): ListCaches $(mgr ListCaches)"
    wait_until 60 "lcd to bring /dev/ublkb1 back from its saved state after the power cut" test -b $d
    log "ListDevices: $(mgr ListDevices)"
    vmcheck verify --dev $d --log "$DISK_log" --blocks $blocks --expect-log ||
        fail "after power cut $((BOOT - 1)): acknowledged writes did not read back (details above)"
    log "after power cut $((BOOT - 1)): every acknowledged block verified"
fi

if [ "$BOOT" -lt "$BOOTS" ]; then
    # the host cuts the power some time after this mark; never returns
    vmcheck write --dev $d --log "$DISK_log" --blocks $blocks --seed "$SEED" --report 25 \
        --mark "LC-MARK workload running"
    fail "the writer stopped before the power cut"
fi
