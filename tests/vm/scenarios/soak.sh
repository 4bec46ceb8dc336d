# vm-about: 3 devices on one cache: fsync-verified writers, fio windows with verify, a D-Bus loop of status and knob changes, kill -9 of lcd, power cuts; all acknowledged data verifies, RSS bounded, no fd or ublk leak (default: 2 cuts, 120 s)
# vm-disks: cache:128M backing1:128M backing2:128M backing3:128M log1:8M log2:8M log3:8M state:64M:ext4
# vm-powercut: yes
# vm-cuts: 2
# vm-timeout: 900
#
# Every boot verifies what the boots before it acknowledged, then runs its
# share of --duration (half of it is spread over the boots the host cuts,
# half goes to the last boot) of load on three devices sharing cache 1:
#   - per device a vmcheck writer on its first 32 MiB (fsync per round, the
#     acknowledged versions on its own log disk): survives kill -9 and power
#     cuts, so it runs all the time;
#   - fio with verify=crc32c on up to 8 MiB from 64 MiB of each device, in windows with
#     no kill (fio's verify cannot survive losing unflushed writes, which
#     the volatile write cache allows on kill -9);
#   - a D-Bus loop: lcctl/busctl status, list, get, set of knobs, clear-stat,
#     flush, commit-super-block;
#   - an RSS sampler (VmHWM of every lcd process, bounded by the cache's
#     static RAM + 128 MiB);
#   - in cycles: at a random moment of the writers' rounds kill -9 of lcd,
#     restart (user recovery), writers stopped, every device verified,
#     writers started again, then a fio window.
# The first FLUSH on a device after a restart may fail with EIO (lcd's
# write ledger: the killed lcd held completed but unflushed writes); a
# writer that stops with status 3 is started again, once per device and kill.
# The host cuts the power in every boot but the last, at a random moment in
# the last three quarters of the boot's share. The last boot runs cycles for
# a third of its share, then stops the load, kills and restarts lcd once
# more and runs the load without kills for the rest on that one lcd
# process: its fd count after the load must equal the one after its start,
# the ublk devices must be exactly the ones lcd lists, everything
# acknowledged verifies, and lcd stops cleanly with its devices gone.
# Figures: LC-COUNT/LC-MAX/LC-VALUE lines, summed over all boots by the host.

NDEV=3
BLOCKS=8192    # vmcheck's region: the first 32 MiB of each device
FIO_OFFSET=64M # fio's region starts here (up to 8 MiB of it)
LIB=/usr/local/lib/lc-vm

log_disk() { eval echo "\$DISK_log$1"; }

# rnd_to VAR LO HI: a number in LO..HI from this shell's seeded generator
# RNG stays below 2^31, so the product fits the shell's 64-bit arithmetic
# (a seed of 10 digits once made it wrap to negative numbers)
rnd_to() {
    RNG=$(((RNG * 1103515245 + 12345) % 2147483648))
    eval "$1=$(($2 + (RNG / 65536) % ($3 - $2 + 1)))"
}

kills() { cat /run/soak-kills 2>/dev/null || echo 0; }

# One vmcheck writer on device $1, started again after the one EIO per kill
# that lcd's write ledger may report; SIGTERM stops it.
soak_writer() {
    _i=$1
    _child=
    _stop=0
    trap '_stop=1; if [ -n "$_child" ]; then kill "$_child" 2>/dev/null; fi' TERM
    while :; do
        [ $_stop = 1 ] && exit 0
        vmcheck write --dev "/dev/ublkb$_i" --log "$(log_disk "$_i")" --blocks $BLOCKS \
            --seed $((SEED + _i)) --report 0 &
        _child=$!
        [ $_stop = 1 ] && kill "$_child" 2>/dev/null
        while :; do
            _st=0
            wait "$_child" || _st=$?
            # a wait cut short by SIGTERM: wait for the writer to go
            kill -0 "$_child" 2>/dev/null || break
        done
        _child=
        [ $_stop = 1 ] && exit 0
        _k=$(kills)
        _acc=$(cat "/run/soak-eio-$_i" 2>/dev/null || echo 0)
        if [ "$_st" -eq 3 ] && [ "$_k" -gt "$_acc" ]; then
            echo "$_k" >"/run/soak-eio-$_i"
            echo "LC-COUNT eio-after-kill 1"
            log "device $_i: the first fsync after kill $_k failed (lcd reported the unflushed writes the killed lcd held); writer started again"
            continue
        fi
        if [ "$_st" -eq 3 ]; then
            fail "the vmcheck writer on /dev/ublkb$_i: an fsync failed (status 3) with no kill of lcd since the last accepted one (kill $_acc); a FLUSH may fail only once per device after a kill"
        fi
        fail "the vmcheck writer on /dev/ublkb$_i stopped with status $_st (details above)"
    done
}

# D-Bus calls in a loop. A call may fail only while lcd is being killed and
# restarted (/run/soak-lcd-down, or a kill happened during the call).
soak_hammer() {
    trap 'echo "LC-COUNT dbus-calls $((_n % 10))"; exit 0' TERM
    RNG=$(((SEED * 31 + BOOT * 7 + 3) % 2147483648))
    _n=0
    _down=0
    while :; do
        _n=$((_n + 1))
        rnd_to _v 0 15
        rnd_to _d 1 $NDEV
        case $_v in
            0) set -- lcctl status ;;
            1) set -- lcctl --json list ;;
            2) set -- lcctl get --cache 1 ;;
            3) rnd_to _x 1 4; set -- lcctl set update_interval "$_x" --cache 1 ;;
            4) rnd_to _x 1 16; set -- lcctl set nr_max_batched_migration "$_x" --cache 1 ;;
            5) rnd_to _x 0 100; set -- lcctl set migrate_threshold "$_x" --device "$_d" ;;
            6) set -- busctl --no-pager call "$BUS" "$ROOT/cache/1" org.lc.Lcd1.Cache Status ;;
            7) set -- lcctl clear-stat 1 ;;
            8) rnd_to _x 0 1; set -- lcctl set allow_migrate "$_x" --cache 1 ;;
            9) rnd_to _x 0 3; [ "$_x" -gt 1 ] && _x=0; set -- lcctl set force_migrate "$_x" --cache 1 ;;
            10) rnd_to _x 1 10; set -- lcctl set barrier_deadline_ms "$_x" --cache 1 ;;
            11) set -- busctl --no-pager call "$BUS" "$ROOT" org.freedesktop.DBus.ObjectManager GetManagedObjects ;;
            12) set -- lcctl flush 1 ;;
            13) set -- lcctl commit-super-block 1 ;;
            14) rnd_to _x 0 2; set -- lcctl set flush_current_buffer_interval "$_x" --cache 1 ;;
            15) set -- lcctl get migrate_threshold --device "$_d" ;;
        esac
        _k0=$(kills)
        _f0=0
        [ -e /run/soak-lcd-down ] && _f0=1
        if ! _out=$(timeout 300 "$@" 2>&1 </dev/null); then
            if [ $_f0 = 1 ] || [ -e /run/soak-lcd-down ] || [ "$(kills)" != "$_k0" ]; then
                _down=$((_down + 1))
            else
                fail "D-Bus loop: '$*' failed while lcd was up: $_out"
            fi
        fi
        if [ $((_n % 10)) -eq 0 ]; then
            echo "LC-COUNT dbus-calls 10"
        fi
        if [ $((_n % 200)) -eq 0 ]; then
            log "D-Bus loop: $_n calls, $_down of them refused while lcd was down"
        fi
    done
}

# Samples lcd's VmRSS and VmHWM once a second, whatever lcd process runs;
# prints LC-MAX peak-rss-kib when the peak grows by 1 MiB or more; fails
# beyond the cache's static RAM (segment buffers and index) + 128 MiB.
soak_rss() {
    trap 'exit 0' TERM
    _lim=$(($(cache_status 1 static_ram_bytes) / 1024 + 131072))
    _max=0
    _shown=0
    _n=0
    while :; do
        _p=$(cat /run/lcd.pid 2>/dev/null || true)
        if [ -n "$_p" ] && [ -r "/proc/$_p/status" ]; then
            set -- $(awk '/^VmRSS:/ { r = $2 } /^VmHWM:/ { h = $2 } END { print r + 0, h + 0 }' "/proc/$_p/status" 2>/dev/null) 0 0
            [ "$2" -gt "$_max" ] && _max=$2
            [ "$_max" -le "$_lim" ] ||
                fail "lcd (pid $_p) VmHWM $_max KiB: expected at most the cache's static RAM + 128 MiB = $_lim KiB"
            echo "$_max" >/run/soak-rss-max
            if [ "$_max" -ge $((_shown + 1024)) ]; then
                echo "LC-MAX peak-rss-kib $_max"
                _shown=$_max
            fi
            _n=$((_n + 1))
            [ $((_n % 30)) -eq 0 ] && log "lcd (pid $_p) VmRSS $1 KiB, VmHWM $2 KiB"
        fi
        sleep 1
    done
}

case ${SOAK_ROLE-} in
    writer) soak_writer "$SOAK_DEV"; exit 0 ;;
    hammer) soak_hammer; exit 0 ;;
    rss) soak_rss; exit 0 ;;
esac

# ---------------------------------------------------------------- the boot

role() { # NAME ROLE [DEV]
    bg_start "$1" env SOAK_ROLE="$2" SOAK_DEV="${3-}" sh -c ". $LIB/lib.sh; . $LIB/scenarios/soak.sh"
}

now() { cut -d. -f1 /proc/uptime; }

check_roles() {
    for _r in $ROLES; do
        bg_running "$_r" || fail "the soak's $_r stopped (status $(bg_status "$_r")); see its message above"
    done
    return 0
}

start_writers() {
    for i in $(seq $NDEV); do
        role "writer$i" writer "$i"
        ROLES="$ROLES writer$i"
    done
}

# stop_role NAME: checks that every role still runs, then stops NAME
stop_role() {
    check_roles
    bg_stop "$1"
    ROLES=$(echo "$ROLES" | sed "s/ *$1\\>//")
}

stop_writers() {
    for i in $(seq $NDEV); do
        stop_role "writer$i"
    done
}

all_running() {
    [ "$(busctl --no-pager call $BUS $ROOT $MANAGER ListDevices 2>/dev/null | grep -o '"running"' | wc -l)" -eq $NDEV ] || return 1
    for _i in $(seq $NDEV); do
        [ -b "/dev/ublkb$_i" ] || return 1
    done
}

# verify_all WHEN: every acknowledged block of every device
verify_all() {
    for i in $(seq $NDEV); do
        st=0
        out=$(vmcheck verify --dev "/dev/ublkb$i" --log "$(log_disk "$i")" --blocks $BLOCKS --expect-log 2>&1) || st=$?
        line=$(echo "$out" | grep 'blocks of' | tail -n1)
        echo "LC-COUNT blocks-verified $BLOCKS"
        echo "LC-COUNT blocks-lost $(echo "$line" | sed -n 's/.* \([0-9]*\) bad$/\1/p')"
        if [ $st -ne 0 ]; then
            echo "$out"
            fail "$1: acknowledged writes on /dev/ublkb$i did not read back (details above)"
        fi
        log "$1: $line"
    done
    echo "LC-COUNT device-verifications $NDEV"
}

soak_kill() {
    touch /run/soak-lcd-down
    lcd_kill9
    echo $(($(kills) + 1)) >/run/soak-kills
    lcd_start || fail "lcd did not start again after kill -9 number $(kills)"
    wait_until 120 "lcd to serve all $NDEV devices again after kill $(kills) (ListDevices running, /dev/ublkbN present)" all_running
    rm -f /run/soak-lcd-down
    echo "LC-COUNT kills 1"
    log "kill $(kills) of this boot: lcd (pid $(lcd_pid)) serves all $NDEV devices again"
}

fio_window() {
    FIO_WINDOWS=$((FIO_WINDOWS + 1))
    {
        echo "[global]"
        echo "direct=1"
        echo "ioengine=libaio"
        echo "verify=crc32c"
        echo "verify_fatal=1"
        echo "randrepeat=0"
        echo "offset=$FIO_OFFSET"
        for i in $(seq $NDEV); do
            rnd_to pat 0 3
            rnd_to qd 0 2
            rnd_to sz 0 2
            echo "[dev$i]"
            echo "filename=/dev/ublkb$i"
            echo "iodepth=$(echo 1 4 16 | cut -d' ' -f$((qd + 1)))"
            echo "size=$(echo 2M 4M 8M | cut -d' ' -f$((sz + 1)))"
            case $pat in
                0) echo "rw=randwrite"; echo "bs=4k" ;;
                1) echo "rw=randrw"; echo "bs=4k" ;;
                2) echo "rw=write"; echo "bs=1M" ;;
                3) echo "rw=randwrite"; echo "bsrange=4k-64k" ;;
            esac
        done
    } >/tmp/soak.fio
    t0=$(uptime_s)
    if ! fio --eta=never --output=/tmp/soak-fio.out /tmp/soak.fio; then
        cat /tmp/soak.fio
        tail -n 60 /tmp/soak-fio.out
        fail "fio window $FIO_WINDOWS with verify on all $NDEV devices failed (job and output above)"
    fi
    log "fio window $FIO_WINDOWS ($(grep -E '^(rw|bs|bsrange|size|iodepth)=' /tmp/soak.fio | tr '\n' ' ')) verified in $(awk -v a="$t0" -v b="$(uptime_s)" 'BEGIN { printf "%.1f", b - a }') s"
    echo "LC-COUNT fio-windows 1"
}

# one cycle: at a random moment of the writers' rounds a kill, every
# device verified with the writers stopped, then a fio window
cycle() {
    check_roles
    rnd_to ms 0 3000
    sleep "$((ms / 1000)).$(printf '%03d' $((ms % 1000)))"
    soak_kill
    stop_writers
    verify_all "after kill $(kills) of boot $BOOT"
    start_writers
    fio_window
    check_roles
}

fds_of_lcd() { ls "/proc/$(lcd_pid)/fd" | wc -l; }

# lcd's fd count at a quiet point. A thread of tokio's blocking pool that
# made a ublk control call (device restore) holds libublk's per-thread
# control io_uring until it ends, 10 s after its last task: so wait 12 s,
# then until the count stays the same for 3 s.
quiet_fds() {
    sleep 12
    _a=$(fds_of_lcd)
    _n=0
    while :; do
        sleep 3
        _b=$(fds_of_lcd)
        [ "$_a" != "$_b" ] || break
        _a=$_b
        _n=$((_n + 1))
        [ $_n -lt 20 ] || break
    done
    echo "$_b"
}

DURATION=${DURATION:-120}
[ "$DURATION" -gt 0 ] || DURATION=120
# half the duration for the boots the host cuts, half for the last one
if [ "$BOOTS" -eq 1 ]; then
    SHARE=$DURATION
elif [ "$BOOT" -lt "$BOOTS" ]; then
    SHARE=$((DURATION / 2 / (BOOTS - 1)))
else
    SHARE=$((DURATION / 2))
fi
[ $SHARE -ge 20 ] || SHARE=20
RNG=$(((SEED * 17 + BOOT) % 2147483648))
FIO_WINDOWS=0
ROLES=
echo 0 >/run/soak-kills
log "boot $BOOT/$BOOTS: $SHARE s of load (of $DURATION s over $BOOTS boots)"

if [ "$BOOT" -eq 1 ]; then
    format_and_resume 1 "$DISK_cache"
    for i in $(seq $NDEV); do
        create_device "$i" "$(eval echo "\$DISK_backing$i")" 1
    done
else
    wait_until 120 "lcd to bring back all $NDEV devices from its saved state after power cut $((BOOT - 1))" all_running
    verify_all "after power cut $((BOOT - 1))"
fi
log "ListDevices: $(mgr ListDevices)"

role rss rss
role hammer hammer
ROLES="rss hammer"
r0=
for i in $(seq $NDEV); do
    r0="$r0 $(vmcheck log-round --log "$(log_disk "$i")" --blocks $BLOCKS)"
done
start_writers
acked() {
    set -- $r0
    for _i in $(seq $NDEV); do
        [ "$(vmcheck log-round --log "$(log_disk "$_i")" --blocks $BLOCKS)" -gt "$1" ] || return 1
        shift
    done
}
wait_until 300 "every writer to acknowledge a round" acked
check_roles
t_start=$(now)

if [ "$BOOT" -lt "$BOOTS" ]; then
    # the host cuts the power in this window; the cycles go on until then
    mark "workload running (cut between $((SHARE * 250)) and $((SHARE * 1000)) ms)"
    while :; do
        cycle
    done
fi

# The last boot: a third of its share with kills ...
while [ $(($(now) - t_start)) -lt $((SHARE / 3)) ]; do
    cycle
done
# ... then, with the load stopped, one more kill; the new lcd's fd count
# right after its start is compared with the one after a kill-free load
stop_role hammer
stop_writers
soak_kill
verify_all "after kill $(kills) of boot $BOOT (load stopped)"
pid=$(lcd_pid)
fds0=$(quiet_fds)
ls -l "/proc/$pid/fd" >/tmp/fds0
echo "LC-VALUE fds-after-start $fds0"
t1=$(now)
role hammer hammer
ROLES="$ROLES hammer"
start_writers
while :; do
    fio_window
    check_roles
    [ -n "${rss_warm-}" ] || rss_warm=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
    [ $(($(now) - t1)) -lt $((SHARE * 2 / 3)) ] || break
done
stop_role hammer
stop_writers
stop_role rss
expect_eq "lcd's pid after the kill-free load" "$pid" "$(lcd_pid)"
fds1=$(quiet_fds)
echo "LC-VALUE fds-after-load $fds1"
if [ "$fds1" != "$fds0" ]; then
    ls -l "/proc/$pid/fd" >/tmp/fds1
    diff /tmp/fds0 /tmp/fds1 || true
    fail "open file descriptors of lcd (pid $pid) at a quiet point after the load: expected $fds0 as after its start, saw $fds1 (diff above)"
fi
verify_all "at the end"
rounds=0
for i in $(seq $NDEV); do
    rounds=$((rounds + $(vmcheck log-round --log "$(log_disk "$i")" --blocks $BLOCKS)))
done
echo "LC-VALUE acknowledged-rounds $rounds"

# ublk devices: exactly the ones lcd lists
listed=$(busctl --no-pager call $BUS $ROOT $MANAGER ListDevices | grep -o '"running"' | wc -l)
chars=$(ls /sys/class/ublk-char 2>/dev/null | wc -l)
blks=$(ls -d /dev/ublkb* 2>/dev/null | wc -l)
log "ublk: $listed devices listed by lcd, $chars in /sys/class/ublk-char, $blks /dev/ublkb* nodes"
expect_eq "ublk char devices in /sys/class/ublk-char (lcd lists $listed)" "$NDEV" "$chars"
expect_eq "ublk block nodes /dev/ublkb*" "$NDEV" "$blks"
expect_eq "devices lcd lists as running" "$NDEV" "$listed"
echo "LC-VALUE ublk-devices $chars"

# RSS: bounded by the cache's static RAM (segment buffers and index) plus
# 128 MiB for everything else; the figures say how it moved
rss_end=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
peak=$(cat /run/soak-rss-max)
hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")
[ "$hwm" -le "$peak" ] || peak=$hwm
echo "LC-MAX peak-rss-kib $peak"
static=$(($(cache_status 1 static_ram_bytes) / 1024))
echo "LC-VALUE static-ram-kib $static"
echo "LC-VALUE rss-warm-kib $rss_warm"
echo "LC-VALUE rss-end-kib $rss_end"
log "lcd (pid $pid) VmRSS $rss_warm KiB after the first fio window of the kill-free load, $rss_end KiB at its end; peak of every lcd this boot $peak KiB; static RAM of cache 1 $static KiB"
[ "$peak" -le $((static + 131072)) ] ||
    fail "lcd's peak RSS this boot: expected at most the cache's static RAM + 128 MiB = $((static + 131072)) KiB, saw $peak KiB"

lcd_stop || fail "lcd did not exit 0 within 60 s of SIGTERM (exit: $(cat /run/lcd.exit 2>/dev/null || echo none))"
left=$(ls /sys/class/ublk-char 2>/dev/null | wc -l)
expect_eq "ublk devices left after lcd stopped" 0 "$left"
echo "LC-VALUE ublk-left-after-stop $left"
echo "LC-SOAK boot $BOOT/$BOOTS: $(kills) kills this boot, $FIO_WINDOWS fio windows; lcd pid $pid: fds $fds0 after start, $fds1 after load; ublk devices $chars (lcd listed $listed, $left after stop); RSS $rss_warm KiB after warm-up, $rss_end KiB at the end, peak of lcd this boot $peak KiB"
