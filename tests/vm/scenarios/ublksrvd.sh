# vm-about: a local user prepares /run/ublksrvd (0777, a symlink to a scratch disk in place of a device's JSON, a FIFO in place of another's) before lcd attaches, before a restart after kill -9 and before a clean restart: lcd makes the directory root's 0755, follows and opens nothing planted, never hangs; the scratch disk is byte for byte unchanged
# vm-disks: cache:64M backing:32M backing2:32M scratch:8M
# vm-timeout: 300

# libublk 0.4.8 creates /run/ublksrvd 0777 when it is missing and writes
# /run/ublksrvd/NNNN.json with File::create, which follows symlinks; it
# reads the file (a FIFO blocks) when it opens or recovers a device.
u=/run/ublksrvd
scratch=$(sha "$DISK_scratch")
# lcd must answer quickly: a FIFO opened for reading would hang the call
T=60

as_nobody() { su -s /bin/sh nobody -c "$1"; }

# What a local user does while the directory is world-writable (as libublk
# leaves it; root makes it so here because lcd, already running, fixed it).
plant() {
    mkdir -p $u
    chmod 0777 $u
    as_nobody "rm -f $u/0001.json $u/0002.json && ln -s $DISK_scratch $u/0001.json && mkfifo $u/0002.json" ||
        fail "user nobody could not prepare $u (0777)"
    [ -L $u/0001.json ] && [ -p $u/0002.json ] || fail "the planted symlink and FIFO are not in $u: $(ls -l $u)"
    expect_eq "owner of the planted symlink" 65534 "$(stat -c %u $u/0001.json)"
    log "$1: user nobody planted $u/0001.json -> $DISK_scratch and a FIFO $u/0002.json in $u (mode $(stat -c %a $u))"
}

verify() {
    expect_eq "sha256 of the scratch disk $1" "$scratch" "$(sha "$DISK_scratch")"
    expect_eq "owner, group and mode of $u $1" "0 0 755" "$(stat -c '%u %g %a' $u)"
    for f in $u/0001.json $u/0002.json; do
        [ -L $f ] && fail "$1: $f is still the planted symlink"
        [ -p $f ] && fail "$1: $f is still the planted FIFO"
    done
    # the directory stays lcd's: the user cannot plant again
    as_nobody "ln -s $DISK_scratch $u/0003.json" 2>/dev/null &&
        fail "$1: user nobody could still create $u/0003.json"
    lcd_alive || fail "$1: lcd is not running"
    log "$1: scratch disk unchanged, $u root's 0755, nothing planted left, lcd alive"
}

running() {
    busctl --no-pager call $BUS $ROOT $MANAGER ListDevices | grep -o '"running"' | wc -l | grep -qx 2
}

# 1. planted before the devices are attached
plant "before attach"
format_and_resume 1 "$DISK_cache"
for i in 1 2; do
    b=$DISK_backing
    [ $i = 2 ] && b=$DISK_backing2
    out=$(busctl --no-pager --timeout=$T call $BUS $ROOT $MANAGER CreateDevice ysy $i "$b" 1 2>&1) ||
        fail "CreateDevice $i (its JSON planted as $(if [ $i = 1 ]; then echo "a symlink to $DISK_scratch"; else echo a FIFO; fi)) failed or hung for $T s: $out"
    wait_until 30 "/dev/ublkb$i to appear" test -b /dev/ublkb$i
    expect_eq "sha256 of the scratch disk after attaching device $i" "$scratch" "$(sha "$DISK_scratch")"
done
verify "after attach"
# data made durable (fsync) before lcd dies: it must be there afterwards
dd if=/dev/urandom of=/dev/ublkb1 bs=1M count=4 oflag=direct conv=fsync 2>/dev/null ||
    fail "writing /dev/ublkb1 failed"
drop_caches
data=$(sha /dev/ublkb1)

# 2. planted while lcd runs, then lcd dies and a new lcd takes the devices
# back (user recovery: libublk reads and rewrites the JSON)
plant "before the restart after kill -9"
lcd_kill9
lcd_start || fail "lcd did not start again after kill -9 with $u prepared by user nobody"
wait_until $T "both devices to be running again after kill -9 (lcd hung on the FIFO?)" running
verify "after the restart after kill -9"
drop_caches
expect_eq "sha256 of /dev/ublkb1 after recovery" "$data" "$(sha /dev/ublkb1)"

# 3. a clean restart: the devices go with lcd and are created anew
lcd_stop || fail "lcd did not stop cleanly on SIGTERM"
plant "before a clean restart"
lcd_start || fail "lcd did not start with $u prepared by user nobody"
wait_until $T "both devices to be running after a clean restart" running
verify "after a clean restart"
drop_caches
expect_eq "sha256 of /dev/ublkb1 after a clean restart" "$data" "$(sha /dev/ublkb1)"
