#!/usr/bin/env bash
# The NBD figures of BENCHMARKS.md (issue 19), on this machine at native
# speed: fio's nbd engine against lc's NBD export ÷ the same fio against
# qemu-nbd serving a file directly: one like lc's cache file on the same
# file system (qemu-nbd must not write over lc's cache) for hits and
# writes, and the backing file for misses and for what a user gains.
#
#   bash bench/nbd.sh            (bench/run --nbd-only runs it)
#
# Servers, each on a Unix socket, in rotating order per round:
#   lc          lcd (release, --frontend nbd) on a private dbus-daemon: cache
#               1 on cache.img, device 1 on backing.img, write-back off
#               (migrate_threshold 0, allow_migrate 0) so its figures are
#               the cache path alone
#   qemu-cache  qemu-nbd --cache=none --aio=native on scratch.img, a file
#               of the backing file's size beside lc's cache file
#   qemu-back   qemu-nbd --cache=none --aio=native on backing.img
# Workloads (fio --ioengine=nbd, one job, randrepeat; the same offsets on
# every server):
#   randwrite  4 KiB random writes, iodepth 32, RW_IO over region R, then a
#              FLUSH (--end_fsync=1): IOPS until durable
#   randread   4 KiB random reads, iodepth 32, RR_IO over R (lc: hits on
#              the cache device: R was written through lc first; qemu-cache
#              reads the same offsets of scratch.img)
#   readmiss   the same over region M (lc: misses, read from the backing
#              file; qemu-back reads the same blocks)
#   seqwrite   1 MiB sequential writes, iodepth 8, SEQ_IO over Q, then a
#              FLUSH: MiB/s until durable
# Every run also reports the server's CPU per request (utime + stime of its
# process). Ratios are computed per round and over the medians; only ratios
# of one run mean anything (the machine is shared).
# Write-back is off, so the cache file is made large enough for every write
# of every round: 512 MiB + 1.5 GiB per round (5 GiB for the default 3
# rounds), plus 2 GiB each for the backing and scratch files, all written
# in full first (sparse files would make the first runs pay for block
# allocation).
# Environment: LC_BENCH_DIR (files; default /tmp), LC_BENCH_NBD_ROUNDS (3),
# LC_BENCH_OUT (bench/results). Output: nbd.txt there.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/needs.sh
lc_needs_install bench/nbd.sh build bus nbd nbdbench
lc_need_cargo bench/nbd.sh
cargo build --release -p lcd -p lcctl >&2

rounds=${LC_BENCH_NBD_ROUNDS:-3}
out=${LC_BENCH_OUT:-bench/results}
mkdir -p "$out"
report=$(realpath "$out")/nbd.txt
w=$(mktemp -d "${LC_BENCH_DIR:-${TMPDIR:-/tmp}}/lc-nbd-bench.XXXXXX")
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$w"
}
trap cleanup EXIT

MIB=1048576
CACHE_MB=$((512 + rounds * 1536)) BACKING_MB=2048
R_OFF=0 R_SIZE=256m
M_OFF=$((1024 * MIB)) M_SIZE=256m
Q_OFF=$((512 * MIB)) Q_SIZE=256m
RW_IO=256m RR_IO=256m SEQ_IO=1024m

say() { echo "$*" | tee -a "$report"; }
: >"$report"
say "date: $(date -u +%FT%TZ)"
say "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
say "host: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), kernel $(uname -r)"
say "files in $w ($(df --output=source,fstype "$w" | tail -1 | tr -s ' '))"
say "qemu-nbd: $(qemu-nbd --version | head -1); fio: $(fio --version)"
say "uptime before: $(uptime)"

# the files, written in full so that no run pays for block allocation
fio_fill() {
    fio --name=fill --filename="$1" --rw=write --bs=1m --iodepth=8 --direct=1 \
        --ioengine=libaio --size="$2"m --output=/dev/null
}
truncate -s ${CACHE_MB}M "$w/cache.img"
truncate -s ${BACKING_MB}M "$w/backing.img" "$w/scratch.img"
fio_fill "$w/cache.img" $CACHE_MB
fio_fill "$w/backing.img" $BACKING_MB
fio_fill "$w/scratch.img" $BACKING_MB

# lcd on a private bus
cat >"$w/bus.conf" <<EOF
<busconfig>
  <type>session</type>
  <listen>unix:path=$w/bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/><allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/>
  </policy>
</busconfig>
EOF
dbus-daemon --config-file="$w/bus.conf" --nofork --print-address=3 3>"$w/address" 2>/dev/null &
pids+=($!)
for _ in $(seq 100); do [ -s "$w/address" ] && break; sleep 0.05; done
addr=$(head -1 "$w/address")
target/release/lcd --address "$addr" --state-dir "$w/state" --run-dir "$w/run" \
    --frontend nbd 2>"$w/lcd.log" &
lcd_pid=$!
pids+=($lcd_pid)
lcctl() { target/release/lcctl --bus "$addr" "$@"; }
for _ in $(seq 200); do lcctl list >/dev/null 2>&1 && break; sleep 0.05; done
lcctl format --force "$w/cache.img" >/dev/null
lcctl resume "$w/cache.img" --id 1 >/dev/null
lc_uri=$(lcctl attach "$w/backing.img" --cache 1 --id 1 --frontend nbd)
lcctl set migrate_threshold 0 --device 1 >/dev/null
lcctl set allow_migrate 0 --cache 1 >/dev/null

qemu_nbd() { # NAME FILE
    qemu-nbd --socket="$w/$1.sock" --format=raw --cache=none --aio=native --discard=unmap \
        --persistent --shared=8 "$2" 2>"$w/$1.log" &
    pids+=($!)
    eval "${1//-/_}_pid=$!"
    for _ in $(seq 100); do [ -S "$w/$1.sock" ] && return; sleep 0.05; done
    echo "qemu-nbd $1 did not start: $(cat "$w/$1.log")" >&2
    exit 1
}
qemu_nbd qemu-cache "$w/scratch.img"
qemu_nbd qemu-back "$w/backing.img"
uri_of() {
    case $1 in
    lc) echo "$lc_uri" ;;
    *) echo "nbd+unix:///?socket=$w/$1.sock" ;;
    esac
}
pid_of() {
    case $1 in
    lc) echo "$lcd_pid" ;;
    qemu-cache) echo "$qemu_cache_pid" ;;
    qemu-back) echo "$qemu_back_pid" ;;
    esac
}
say "lc: $lc_uri (cache 1 on cache.img, $CACHE_MB MiB; device 1 on backing.img, $BACKING_MB MiB; write-back off); qemu-nbd --cache=none --aio=native on scratch.img (as the cache file would be) and backing.img"

# region R and Q written through lc, so its reads of R hit the cache device
fio --name=pre --ioengine=nbd --uri="$lc_uri" --rw=write --bs=1m --iodepth=8 \
    --offset=$R_OFF --size=$R_SIZE --end_fsync=1 --output=/dev/null

jiffies() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
now() { date +%s.%N; }

# measure WORKLOAD SERVER ROUND
measure() {
    local wl=$1 s=$2 r=$3 args off size unit t0 t1 j0 j1 kb ios pid
    local uri
    uri=$(uri_of "$s")
    pid=$(pid_of "$s")
    off=$R_OFF size=$R_SIZE
    case $wl in
    randwrite) args="--rw=randwrite --bs=4k --iodepth=32 --io_size=$RW_IO --end_fsync=1" ;;
    randread) args="--rw=randread --bs=4k --iodepth=32 --io_size=$RR_IO" ;;
    readmiss) args="--rw=randread --bs=4k --iodepth=32 --io_size=$RR_IO"; off=$M_OFF size=$M_SIZE ;;
    seqwrite) args="--rw=write --bs=1m --iodepth=8 --io_size=$SEQ_IO --end_fsync=1"; off=$Q_OFF size=$Q_SIZE ;;
    esac
    j0=$(jiffies "$pid")
    t0=$(now)
    # shellcheck disable=SC2086
    kb=$(fio --name="$wl" --ioengine=nbd --uri="$uri" --randrepeat=1 --offset="$off" \
        --size="$size" $args --output-format=terse --terse-version=3 |
        awk -F';' '/^3;/ { if ($5 != 0) exit 1; print $6 + $47 }') ||
        { echo "fio $wl on $s failed" >&2; exit 1; }
    t1=$(now)
    j1=$(jiffies "$pid")
    unit=IOPS
    ios=$((kb / 4))
    [ "$wl" = seqwrite ] && { unit=MiB/s; ios=$((kb / 1024)); }
    awk -v wl="$wl" -v s="$s" -v r="$r" -v kb="$kb" -v t0="$t0" -v t1="$t1" -v j="$((j1 - j0))" \
        -v ios="$ios" -v unit="$unit" 'BEGIN {
            secs = t1 - t0
            v = unit == "IOPS" ? kb / 4 / secs : kb / 1024 / secs
            printf "NBD-BENCH %s.%s.r%d %.1f %s cpu_us_per_io=%.1f secs=%.2f\n", wl, s, r, v, unit, \
                j * 10000 / ios, secs }' | tee -a "$report"
}

servers="lc qemu-cache qemu-back"
r=1
while [ $r -le "$rounds" ]; do
    order=$(echo $servers | awk -v r=$r '{ for (i = 0; i < NF; i++) printf "%s ", $((i + r - 1) % NF + 1) }')
    say "round $r/$rounds, order: $order"
    for wl in randwrite randread readmiss seqwrite; do
        for s in $order; do
            # qemu on the cache file has no "miss"; lc's misses read the backing file
            [ "$wl" = readmiss ] && [ "$s" = qemu-cache ] && continue
            measure "$wl" "$s" "$r"
        done
    done
    r=$((r + 1))
done
errors=$(lcctl --json status 1 | python3 -c 'import json,sys; e=json.load(sys.stdin)["caches"][0]["status"]["errors"]; print(sum(e.values()))')
say "lc's error counters after the rounds: $errors"
say "uptime after: $(uptime)"
say ""
awk -f bench/nbd.awk "$report" | tee -a "$report.tmp"
cat "$report.tmp" >>"$report" && rm -f "$report.tmp"
