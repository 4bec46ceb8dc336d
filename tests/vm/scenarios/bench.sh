# vm-about: benchmark, not a test (not in the CI set): fio on the raw virtio disks, a rublk loop device and lc's /dev/ublkb1; prints LC-BENCH lines for bench/run
# vm-disks: cache:8G backing:2G
# vm-needs: rublk
# vm-timeout: 2400
#
# Device-level figures of BENCHMARKS.md. One boot; every device is measured
# in each of $ROUNDS rounds, the devices' order rotated from round to round,
# so that drift of the (shared, emulated) machine affects all alike. Only
# ratios within this one run mean anything (TCG). bench/run computes them
# from the lines printed here:
#   LC-BENCH WORKLOAD.DEVICE.rROUND VALUE UNIT      (the figure)
#   LC-BENCH-DETAIL WORKLOAD.DEVICE.rROUND k=v ...  (what explains it)
#   LC-BENCH-INFO ...                               (set-up)
#
# The cache disk is split in two by dm-linear: lc's cache device is its
# first 7 GiB, the last 1 GiB is what the raw cache-disk runs and the rublk
# loop device use (rublk must not write over lc's cache). Devices:
#   rawcache   /dev/mapper/bench-scratch  (last 1 GiB of the cache disk)
#   rawcache-nodm  the same blocks of the cache disk without dm-linear
#              (the cache virtio disk itself at offset 7 GiB): what the
#              dm-linear split costs
#   rawbacking the backing virtio disk itself
#   rublk      rublk's loop target over /dev/mapper/bench-scratch, with
#              lcd's queue shape in a 2-CPU guest: 2 queues, depth 64, 256 KiB buffers,
#              user recovery
#   lc         /dev/ublkb1: cache on /dev/mapper/bench-lc, backing on the
#              backing disk, write-back off (migrate_threshold 0,
#              allow_migrate 0), so lc's figures are its cache path alone
#              and it never writes the backing disk while others run
# Regions (same offsets on every device): R = [0, 256M) random I/O,
# Q = [512M, 768M) sequential writes, M = [1G, 1.25G) of the backing disk
# (lc read misses). Every region is written before it is measured, and lc's
# whole part is written once before it is formatted, so no run pays for
# the host allocating blocks of the sparse image files.
# Workloads (fio, libaio, O_DIRECT, one job, same random offsets on every
# device: randrepeat):
#   randwrite  4 KiB random writes, iodepth 32, 128 MiB over R, then a
#              FLUSH of the device (sync DEV); IOPS counted until durable
#   randread   4 KiB random reads, iodepth 32, 64 MiB over R (lc: all hits
#              on the cache device; "lc-miss": over M, all misses)
#              "lc-ram": 32 MiB over a 768 KiB region of R written through
#              lc just before, after a FLUSH, so all of it is in lc's open
#              RAM segment: hits on the RAM buffer, served with no I/O
#   randread4  diagnostic: randread at iodepth 4, 32 MiB over R, on
#              rawcache, rublk and lc
#   randrw     4 KiB random reads and writes mixed 70/30, iodepth 32,
#              64 MiB over R (lc: the reads hit the cache device), then a
#              FLUSH; IOPS of both counted until durable
#   seqwrite   1 MiB sequential writes, iodepth 8, 1024 MiB (4 passes over
#              Q), then a FLUSH; MiB/s until durable
# Every run also reports fio's completion-latency percentiles p50 and p99
# (reads and writes apart for randrw).
# Space through lc: R 256 + Q 256 + rounds x (128 + 20 + 1024) MiB; 5 rounds
# use about 6372 of the ~7140 MiB of data lines of its 7 GiB cache, so lc
# never waits for write-back.
# For lc's runs, LC-BENCH-THREADS gives the CPU time of each of lcd's
# thread groups (perf is not in the guest).

ROUNDS=5
MIB=1048576
R_OFF=0 R_SIZE=256M
Q_OFF=$((512 * MIB)) Q_SIZE=256M
M_OFF=$((1024 * MIB)) M_SIZE=256M
RW_IO=128M RR_IO=64M RR4_IO=32M RRW_IO=64M SEQ_IO=1024M
RAM_OFF=$((64 * MIB)) RAM_SIZE=768K RAM_IO=32M
# dm-linear split of the cache disk, in sectors: lc's part, then the scratch
scratch=$((1024 * 2048))
lcpart=$(($(dev_size "$DISK_cache") / 512 - scratch))

info() { echo "LC-BENCH-INFO $*"; }

info "guest kernel $(uname -r), $(nproc) CPUs, $(awk '/^MemTotal/ {print $2 " kB"}' /proc/meminfo) memory, fio $(fio --version)"
info "guest CPU: $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n1), $(grep -m1 -qw sse4_2 /proc/cpuinfo && echo "has" || echo "no") sse4_2 (crc32c instruction)"
info "disks: cache $DISK_cache $(($(dev_size "$DISK_cache") / MIB)) MiB, backing $DISK_backing $(($(dev_size "$DISK_backing") / MIB)) MiB"

dmsetup create bench-lc --table "0 $lcpart linear $DISK_cache 0" || fail "dmsetup create bench-lc failed"
dmsetup create bench-scratch --table "0 $scratch linear $DISK_cache $lcpart" || fail "dmsetup create bench-scratch failed"
[ -b /dev/mapper/bench-lc ] && [ -b /dev/mapper/bench-scratch ] || dmsetup mknodes
LCDEV=/dev/mapper/bench-lc
SCRATCH=/dev/mapper/bench-scratch

# --------------------------------------------------------------- helpers

# fio_plain NAME ARGS...: an unmeasured fio run (preconditioning)
fio_plain() {
    _n=$1
    shift
    fio --eta=never --name="$_n" --direct=1 --ioengine=libaio "$@" --output=/tmp/fio-"$_n".out ||
        { tail -n 30 /tmp/fio-"$_n".out; fail "fio $_n $* failed"; }
}

# busy and total jiffies of all CPUs
cpu_jiffies() { awk '/^cpu / { b = $2 + $3 + $4 + $7 + $8 + $9; print b, b + $5 + $6 }' /proc/stat; }

# utime + stime (jiffies) of the server process(es) of a device
server_pids() {
    case $1 in
        lc*) lcd_pid ;;
        rublk) pidof rublk ;;
    esac
}
server_jiffies() {
    _j=0
    for _p in $(server_pids "$1"); do
        _j=$((_j + $(awk '{ print $14 + $15 }' "/proc/$_p/stat")))
    done
    echo $_j
}

# CPU jiffies of lcd's threads, by name (trailing numbers folded into *)
lcd_thread_jiffies() {
    for _t in /proc/$(lcd_pid)/task/*; do
        awk '{ c = $2; gsub(/[()]/, "", c); sub(/[0-9]+$/, "*", c); print c, $14 + $15 }' "$_t/stat" 2>/dev/null
    done | awk '{ s[$1] += $2 } END { for (k in s) print k, s[k] }'
}

# read counters of lc's cache 1: "miss hit hit_on_buffer" (lines)
lc_read_counters() { cache_status 1 read_misses read_hits read_hits_on_buffer; }

dev_path() {
    case $1 in
        rawcache) echo "$SCRATCH" ;;
        rawcache-nodm) echo "$DISK_cache" ;;
        rawbacking) echo "$DISK_backing" ;;
        rublk) echo /dev/ublkb9 ;;
        lc | lc-miss | lc-ram) echo /dev/ublkb1 ;;
    esac
}

# measure WORKLOAD DEVICE ROUND
measure() {
    _w=$1 _d=$2 _r=$3
    _path=$(dev_path "$_d")
    _off=$R_OFF _size=$R_SIZE
    case $_w in
        randwrite) _args="--rw=randwrite --bs=4k --iodepth=32 --io_size=$RW_IO" ;;
        randread) _args="--rw=randread --bs=4k --iodepth=32 --io_size=$RR_IO" ;;
        randread4) _args="--rw=randread --bs=4k --iodepth=4 --io_size=$RR4_IO" ;;
        randrw) _args="--rw=randrw --rwmixread=70 --bs=4k --iodepth=32 --io_size=$RRW_IO" ;;
        seqwrite) _args="--rw=write --bs=1M --iodepth=8 --io_size=$SEQ_IO"; _off=$Q_OFF _size=$Q_SIZE ;;
    esac
    [ "$_d" = rawbacking ] && [ "$_w" = randread ] && _off=$M_OFF _size=$M_SIZE
    [ "$_d" = lc-miss ] && _off=$M_OFF _size=$M_SIZE
    if [ "$_d" = lc-ram ]; then
        _off=$RAM_OFF _size=$RAM_SIZE _args="--rw=randread --bs=4k --iodepth=32 --io_size=$RAM_IO"
        # a FLUSH closes lc's open segment; the region then fills a new one
        sync /dev/ublkb1 || fail "sync (FLUSH) of /dev/ublkb1 failed"
        fio_plain pre-lc-ram --filename=/dev/ublkb1 --rw=write --bs=256k --iodepth=1 --offset=$RAM_OFF --size=$RAM_SIZE
    fi
    [ "$_d" = rawcache-nodm ] && _off=$((_off + lcpart * 512))
    _c0=$(lc_read_counters)
    lcd_thread_jiffies >/tmp/th0
    _s0=$(server_jiffies "$_d")
    _j0=$(cpu_jiffies)
    # shellcheck disable=SC2086
    _t=$(fio --name="$_w" --filename="$_path" --direct=1 --ioengine=libaio --randrepeat=1 \
        --offset="$_off" --size="$_size" $_args --output-format=terse --terse-version=3 2>/tmp/fio.err) ||
        { cat /tmp/fio.err; fail "fio $_w on $_d ($_path) failed"; }
    _f0=$(uptime_s)
    case $_w in
        randread*) ;;
        *) sync "$_path" || fail "sync (FLUSH) of $_path failed" ;;
    esac
    _f1=$(uptime_s)
    _j1=$(cpu_jiffies)
    _s1=$(server_jiffies "$_d")
    _c1=$(lc_read_counters)
    echo "$_t" | awk -F';' -v w="$_w" -v d="$_d" -v r="$_r" -v f0="$_f0" -v f1="$_f1" \
        -v j0="$_j0" -v j1="$_j1" -v s0="$_s0" -v s1="$_s1" -v c0="$_c0" -v c1="$_c1" '
        $5 != 0 { print "FAIL [bench]: fio reported error " $5 " for " w " on " d; exit 1 }
        # the value of percentile P among the 20 fields from F ("P.000000%=V")
        function pct(f, p,    i, kv) {
            for (i = f; i < f + 20; i++)
                if ($i ~ ("^" p "\\.0+%=")) { split($i, kv, "="); return kv[2] + 0 }
            return -1
        }
        { rd = (w ~ /^randread/); mix = (w == "randrw")
          kb = rd ? $6 : mix ? $6 + $47 : $47
          ms = rd ? $9 : mix ? ($9 > $50 ? $9 : $50) : $50; iops = rd ? $8 : $49
          clat = rd || mix ? $16 : $57; usr = $88; sys = $89
          # percentiles: of the reads (fields 18-37), else of the writes (59-78)
          p50 = pct(rd || mix ? 18 : 59, 50); p99 = pct(rd || mix ? 18 : 59, 99)
          flush = rd ? 0 : f1 - f0; secs = ms / 1000 + flush
          ios = rd ? iops * ms / 1000 : kb / (w == "seqwrite" ? 1024 : 4)
          split(j0, a, " "); split(j1, b, " "); busy = b[1] - a[1]; tot = b[2] - a[2]
          split(c0, x, " "); split(c1, y, " ")
          name = w "." d ".r" r
          if (w == "seqwrite") printf "LC-BENCH %s %.1f MiB/s\n", name, kb / 1024 / secs
          else printf "LC-BENCH %s %.0f IOPS\n", name, (kb / 4) / secs
          printf "LC-BENCH-DETAIL %s kib=%d fio_runtime_ms=%d fio_rate=%s%s flush_s=%.2f clat_mean_us=%.0f clat_p50_us=%d clat_p99_us=%d fio_cpu_usr=%s fio_cpu_sys=%s guest_cpu_busy=%.0f%% guest_cpu_us_per_io=%.0f server_cpu_us_per_io=%.0f", \
              name, kb, ms, (w == "seqwrite" ? sprintf("%.1f", kb / 1024 / (ms / 1000)) : iops), \
              (w == "seqwrite" ? "MiB/s" : "IOPS"), flush, clat, p50, p99, usr, sys, \
              (tot ? 100 * busy / tot : 0), busy * 10000 / ios, (s1 - s0) * 10000 / ios
          if (mix) printf " write_clat_mean_us=%.0f write_clat_p50_us=%d write_clat_p99_us=%d", \
              $57, pct(59, 50), pct(59, 99)
          if (d ~ /^lc/) printf " lc_read_lines_miss=%d lc_read_lines_hit=%d lc_read_lines_hit_ram=%d", \
              y[1] - x[1], y[2] - x[2], y[3] - x[3]
          printf "\n" }' || fail "fio $_w on $_d: $_t"
    if [ "$_d" = lc ] || [ "$_d" = lc-miss ] || [ "$_d" = lc-ram ]; then
        lcd_thread_jiffies >/tmp/th1
        echo "LC-BENCH-THREADS $_w.$_d.r$_r lcd CPU ms by thread: $(awk 'NR == FNR { a[$1] = $2; next }
            { d = $2 - a[$1]; if (d > 0) printf "%s=%d ", $1, d * 10 }' /tmp/th0 /tmp/th1)"
    fi
}

# ---------------------------------------------------------------- set-up

t0=$(uptime_s)
# lc's part in full (its log is written everywhere in turn), and every
# measured region of the other devices
fio_plain pre-lc --filename=$LCDEV --rw=write --bs=1M --iodepth=8
fio_plain pre-scratch-r --filename=$SCRATCH --rw=write --bs=1M --iodepth=8 --offset=$R_OFF --size=$R_SIZE
fio_plain pre-scratch-q --filename=$SCRATCH --rw=write --bs=1M --iodepth=8 --offset=$Q_OFF --size=$Q_SIZE
fio_plain pre-backing-r --filename="$DISK_backing" --rw=write --bs=1M --iodepth=8 --offset=$R_OFF --size=$R_SIZE
fio_plain pre-backing-q --filename="$DISK_backing" --rw=write --bs=1M --iodepth=8 --offset=$Q_OFF --size=$Q_SIZE
fio_plain pre-backing-m --filename="$DISK_backing" --rw=write --bs=1M --iodepth=8 --offset=$M_OFF --size=$M_SIZE
log "preconditioning of the raw disks took $(awk -v a="$t0" -v b="$(uptime_s)" 'BEGIN { printf "%.1f", b - a }') s"

format_and_resume 1 "$LCDEV"
create_device 1 "$DISK_backing" 1
set_knob device 1 migrate_threshold y 0
set_knob cache 1 allow_migrate b false
info "lc: cache 1 on $LCDEV ($((lcpart / 2048)) MiB, $(cache_status 1 nr_segments) segments), device /dev/ublkb1 on $DISK_backing; write-back off (migrate_threshold 0, allow_migrate 0); lcd: $(ls /sys/block/ublkb1/mq 2>/dev/null | wc -l) queues x depth 64, 256 KiB buffers (lcd/src/frontend/ublk/)"
# lc's regions R and Q, written through lc: every measured write through lc
# replaces a cached line, as every raw write lands on written blocks
fio_plain pre-lc-r --filename=/dev/ublkb1 --rw=write --bs=1M --iodepth=8 --offset=$R_OFF --size=$R_SIZE
fio_plain pre-lc-q --filename=/dev/ublkb1 --rw=write --bs=1M --iodepth=8 --offset=$Q_OFF --size=$Q_SIZE
sync /dev/ublkb1

rublk add loop -n 9 -q 2 -d 64 -b 256KiB -r -f "$SCRATCH" --quiet >/tmp/rublk.out 2>&1 ||
    { cat /tmp/rublk.out; fail "rublk add loop over $SCRATCH failed"; }
wait_until 30 "/dev/ublkb9 (rublk) to appear" test -b /dev/ublkb9
info "rublk $(rublk --version 2>/dev/null | head -n1): loop over $SCRATCH, 2 queues x depth 64, 256 KiB buffers, user recovery (pids $(pidof rublk))"
for d in /sys/block/dm-*; do
    [ "$(cat "$d/dm/name")" = bench-scratch ] && scratch_blk=${d##*/}
done
for b in ublkb1 ublkb9 "$scratch_blk" ${DISK_backing#/dev/} ${DISK_cache#/dev/}; do
    s=/sys/block/$b
    info "queue of $b: hw queues $(ls "$s/mq" 2>/dev/null | wc -l), nr_requests $(cat "$s/queue/nr_requests"), max_sectors_kb $(cat "$s/queue/max_sectors_kb"), scheduler '$(cat "$s/queue/scheduler")', write_cache '$(cat "$s/queue/write_cache")'"
done
log "set-up took $(awk -v a="$t0" -v b="$(uptime_s)" 'BEGIN { printf "%.1f", b - a }') s"

# ---------------------------------------------------------------- rounds

devices="rawcache rawbacking rublk lc rawcache-nodm"
t1=$(uptime_s)
r=1
while [ $r -le $ROUNDS ]; do
    # rotate the order by one device per round
    order=$(echo $devices | awk -v r=$r '{ for (i = 0; i < NF; i++) printf "%s ", $((i + r - 1) % NF + 1) }')
    log "round $r/$ROUNDS, device order: $order"
    for w in randwrite randread randread4 randrw seqwrite; do
        for d in $order; do
            case $w.$d in randread4.rawbacking | randread4.rawcache-nodm | randrw.rawcache-nodm) continue ;; esac
            measure $w $d $r
            if [ $w = randread ] && [ $d = lc ]; then
                measure randread lc-miss $r
                measure randread lc-ram $r
            fi
        done
    done
    r=$((r + 1))
done
log "$ROUNDS rounds took $(awk -v a="$t1" -v b="$(uptime_s)" 'BEGIN { printf "%.1f", b - a }') s"
info "lc after the rounds: $(cache_status 1 nr_dirty_caches) dirty lines, current segment $(cache_status 1 current_segment_id) of $(cache_status 1 nr_segments)"
expect_eq "lc's Cache.Status error counters" 0 "$(cache_status 1 errors)"

rublk del -n 9 >/tmp/rublk.out 2>&1 || { cat /tmp/rublk.out; fail "rublk del -n 9 failed"; }
wait_until 30 "/dev/ublkb9 to go after rublk del" test ! -e /dev/ublkb9
mark "bench done"
