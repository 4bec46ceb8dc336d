# vm-about: where lcd's CPU goes (not in CI): perf profiles of lcd under fio misses, cache-device hits, randwrite, randrw 70/30 and 1 MiB seq write on /dev/ublkb1
# vm-disks: cache:8G backing:2G
# vm-timeout: 1500
# vm-needs: perf
#
# A diagnostic, not a test: no figure is judged. Each 4 KiB workload runs
# with fio for 30 s while `perf record -e cpu-clock` samples lcd (all its
# threads) for 20 s of it (the sequential write: 3 GiB, sampled for 10 s,
# so that the log never fills and write-back, which is off, is not
# forced); the flat profile (symbols over 0.5 %) goes to
# the console as "LC-PROFILE WORKLOAD ..." lines, after fio's rate and
# the share of each binary ("by-dso": lcd, libc, the kernel). The
# guest has no PMU (TCG), so the samples are timer-driven. tests/vm/run
# copies the host's perf (linux-perf) into the guest for this scenario.

command -v perf >/dev/null 2>&1 ||
    fail "perf is not in the guest: tests/vm/run copies the host's /usr/bin/perf (package linux-perf) for this scenario"
format_and_resume 1 "$DISK_cache"
create_device 1 "$DISK_backing" 1
# write-back off, as in the benchmark: lc's own path alone
set_knob device 1 migrate_threshold y 0
set_knob cache 1 allow_migrate b false
d=/dev/ublkb1

# hits live in [0, 256M) on the cache device (the FLUSH writes the segments
# out and frees their RAM); misses are read from [512M, 768M), never written
run_fio fill --filename=$d --direct=1 --ioengine=libaio --rw=write --bs=1M --iodepth=8 --offset=0 --size=256M
sync $d || fail "sync (FLUSH) of $d failed"

# profile NAME DELAY SECONDS FIO-ARGS...: samples lcd for SECONDS, DELAY s
# after fio started
profile() {
    _name=$1 _delay=$2 _secs=$3
    shift 3
    fio --name="$_name" --filename=$d --direct=1 --ioengine=libaio \
        "$@" --output-format=terse --terse-version=3 >/tmp/fio-"$_name".out 2>&1 &
    _fio=$!
    sleep "$_delay"
    perf record -q -e cpu-clock -F 499 -p "$(lcd_pid)" -o /tmp/perf-"$_name".data -- sleep "$_secs" \
        >/tmp/perf-"$_name".err 2>&1 || { cat /tmp/perf-"$_name".err; fail "perf record ($_name) failed"; }
    wait $_fio || { cat /tmp/fio-"$_name".out; fail "fio $_name failed"; }
    awk -F';' -v n="$_name" '{ printf "LC-PROFILE %s fio: read %s IOPS, write %s IOPS\n", n, $8, $49 }' \
        /tmp/fio-"$_name".out
    # where the samples are: lcd's code, libc, the kernel
    perf report -i /tmp/perf-"$_name".data --stdio --no-children --sort dso 2>/dev/null |
        grep -v '^#' | grep -v '^$' | sed "s/^/LC-PROFILE $_name by-dso /"
    perf report -i /tmp/perf-"$_name".data --stdio --no-children --sort comm,dso,symbol \
        --percent-limit 0.5 2>/dev/null | grep -v '^#' | grep -v '^$' | sed "s/^/LC-PROFILE $_name /"
}

timed="--time_based --runtime=30"
# shellcheck disable=SC2086
profile misses 5 20 $timed --rw=randread --bs=4k --iodepth=32 --offset=512M --size=256M
# shellcheck disable=SC2086
profile hits 5 20 $timed --rw=randread --bs=4k --iodepth=32 --offset=0 --size=256M
# shellcheck disable=SC2086
profile randwrite 5 20 $timed --rw=randwrite --bs=4k --iodepth=32 --offset=0 --size=256M
# shellcheck disable=SC2086
profile randrw 5 20 $timed --rw=randrw --rwmixread=70 --bs=4k --iodepth=32 --offset=0 --size=256M
profile seqwrite 2 10 --rw=write --bs=1M --iodepth=8 --offset=1G --size=1G --io_size=3G
log "profiles done"
