# Helpers for tests/vm scenarios (busybox sh). Sourced by /init and by each
# scenario's shell. Every failure goes through `fail`, which says what was
# expected and what was seen; the host prints it.

BUS=org.lc.Lcd1
ROOT=/org/lc/Lcd1
MANAGER=org.lc.Lcd1.Manager
# long enough for a write-back under TCG
CALL_TIMEOUT=${CALL_TIMEOUT:-900}

log() { echo "[$SCENARIO] $*"; }

# also works inside $(...): the message goes to stderr (the console)
fail() {
    echo "FAIL [$SCENARIO]: $*" >&2
    echo "FAIL [$SCENARIO]: $*" >>/tmp/lc-vm-failed
    exit 1
}

mark() { echo "LC-MARK $*"; }

uptime_s() { cut -d' ' -f1 /proc/uptime; }

# expect_eq WHAT EXPECTED SEEN
expect_eq() {
    [ "$2" = "$3" ] || fail "$1: expected '$2', saw '$3'"
}

# Manager method call: mgr METHOD [SIGNATURE ARGS...]; prints busctl's reply,
# fails the scenario on an error reply.
mgr() {
    _m=$1
    shift
    _out=$(busctl --no-pager --timeout="$CALL_TIMEOUT" call "$BUS" "$ROOT" "$MANAGER" "$_m" "$@" 2>&1) ||
        fail "Manager.$_m $* failed: $_out"
    [ -n "$_out" ] && echo "$_out"
    return 0
}

# obj_call PATH INTERFACE METHOD [SIGNATURE ARGS...]
obj_call() {
    _p=$1 _i=$2 _m=$3
    shift 3
    _out=$(busctl --no-pager --timeout="$CALL_TIMEOUT" call "$BUS" "$_p" "$_i" "$_m" "$@" 2>&1) ||
        fail "$_i.$_m on $_p failed: $_out"
    [ -n "$_out" ] && echo "$_out"
    return 0
}

# get PATH INTERFACE PROPERTY: prints busctl's value (e.g. 's "ublk"', 'b true', 't 5')
get() {
    _out=$(busctl --no-pager get-property "$BUS" "$1" "$2" "$3" 2>&1) ||
        fail "reading property $3 of $2 at $1 failed: $_out"
    echo "$_out"
}

# set PATH INTERFACE PROPERTY SIGNATURE VALUE
set_prop() {
    _out=$(busctl --no-pager set-property "$BUS" "$1" "$2" "$3" "$4" "$5" 2>&1) ||
        fail "setting property $3 of $2 at $1 to $5 failed: $_out"
}

mgr_prop() { get "$ROOT" "$MANAGER" "$1"; }
cache_prop() { get "$ROOT/cache/$1" org.lc.Lcd1.Cache "$2"; }
dev_prop() { get "$ROOT/device/$1" org.lc.Lcd1.Device "$2"; }

# cache_status ID FIELD...: fields of cache ID's status as lcctl reports it
# (`lcctl --json status ID`, lcctl(8) JSON OUTPUT): FIELD is a key of its
# "status" object (nr_segments, nr_caches, static_ram_bytes, index_ram_bytes,
# current_segment_id, cursor, last_flushed_segment_id,
# last_durable_segment_id, last_migrated_segment_id, nr_dirty_caches, health),
# or writes / reads (the sums of the 8 write and the 8 read counters),
# read_misses / read_hits / read_hits_on_buffer (read lines by outcome), or
# errors (the sum of the named error counters); prints them on one line.
# Reads lcctl's pretty JSON with awk: the guest has no JSON tool.
cache_status() {
    _id=$1
    shift
    _s=$(lcctl --json status "$_id" 2>&1) || fail "lcctl --json status $_id failed: $_s"
    echo "$_s" | awk -v fields="$*" '
        /^ *"status": \{/ { in_s = 1; next }
        in_s && /^ *"counters": \[/ { in_c = 1; n = 0; next }
        in_c && /\]/ { in_c = 0; next }
        in_c { gsub(/[ ,]/, ""); c[n] = $0; if (n >= 8) w += $0; else r += $0; n++; next }
        in_s && /^ *"errors": \{/ { in_e = 1; ne = 0; next }
        in_e && /\}/ { in_e = 0; next }
        in_e { v = $0; sub(/.*": */, "", v); sub(/,$/, "", v); e += v; ne++; next }
        in_s && /^ *\}/ { in_s = 0; next }
        in_s && match($0, /"[a-z_]+": /) {
            k = substr($0, RSTART + 1, RLENGTH - 4); v = substr($0, RSTART + RLENGTH)
            sub(/,$/, "", v); gsub(/"/, "", v); val[k] = v }
        END {
            if (n != 16 || ne != 5) { print "lcctl status layout? (" n " counters, " ne " error counters)"; exit 1 }
            val["writes"] = w; val["reads"] = r; val["errors"] = e
            # counter i = write*8 + hit*4 + on_buffer*2 + fullsize
            val["read_misses"] = c[0] + c[1] + c[2] + c[3]
            val["read_hits"] = c[4] + c[5] + c[6] + c[7]
            val["read_hits_on_buffer"] = c[6] + c[7]
            nf = split(fields, f, " "); out = ""
            for (i = 1; i <= nf; i++) {
                if (!(f[i] in val)) { print "no field " f[i] " in lcctl status"; exit 1 }
                out = out (i > 1 ? " " : "") val[f[i]] }
            print out }'
}

# wait_until SECONDS WHAT COMMAND...: polls COMMAND every 0.2 s
wait_until() {
    _t=$1 _what=$2
    shift 2
    _n=0
    while ! "$@" >/dev/null 2>&1; do
        _n=$((_n + 1))
        [ $_n -gt $((_t * 5)) ] && fail "waited $_t s for $_what; it did not happen"
        sleep 0.2
    done
    return 0
}

lcd_has_name() {
    busctl --no-pager call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus \
        NameHasOwner s "$BUS" 2>/dev/null | grep -q 'b true'
}

lcd_pid() { cat /run/lcd.pid 2>/dev/null; }
lcd_alive() { _p=$(lcd_pid) && [ -n "$_p" ] && kill -0 "$_p" 2>/dev/null; }

# Starts lcd as a service manager would (system bus, --state-dir
# $STATE_DIR, output on the console) and waits until it owns its bus name,
# which it takes once every saved cache is back.
lcd_start() {
    rm -f /run/lcd.pid /run/lcd.exit
    _t0=$(uptime_s)
    # (the `|| _st=$?` keeps a scenario's `set -e` from skipping the record)
    (
        _st=0
        NO_COLOR=1 RUST_LOG=${LCD_LOG:-info} sh -c 'echo $$ >/run/lcd.pid; exec lcd --state-dir "$STATE_DIR"' || _st=$?
        echo $_st >/run/lcd.exit
    ) </dev/null >/dev/console 2>&1 &
    _n=0
    while ! lcd_has_name; do
        if [ -e /run/lcd.exit ]; then
            echo "FAIL [$SCENARIO]: lcd exited with status $(cat /run/lcd.exit) before taking $BUS" | tee -a /tmp/lc-vm-failed >&2
            return 1
        fi
        _n=$((_n + 1))
        if [ $_n -gt 600 ]; then
            echo "FAIL [$SCENARIO]: lcd did not take $BUS within 120 s" | tee -a /tmp/lc-vm-failed >&2
            return 1
        fi
        sleep 0.2
    done
    echo "LC-GUEST lcd (pid $(lcd_pid)) owns $BUS after $(awk -v a="$_t0" -v b="$(uptime_s)" 'BEGIN { printf "%.1f", b - a }') s"
}

# SIGTERM; lcd must exit 0 within 60 s
lcd_stop() {
    _p=$(lcd_pid)
    kill -TERM "$_p" 2>/dev/null || return 1
    _n=0
    while [ ! -e /run/lcd.exit ]; do
        _n=$((_n + 1))
        [ $_n -gt 300 ] && return 1
        sleep 0.2
    done
    [ "$(cat /run/lcd.exit)" = 0 ]
}

lcd_kill9() {
    _p=$(lcd_pid)
    kill -9 "$_p" || fail "kill -9 lcd ($_p) failed"
    _n=0
    while [ ! -e /run/lcd.exit ]; do
        _n=$((_n + 1))
        [ $_n -gt 100 ] && fail "lcd (pid $_p) did not die within 20 s of kill -9"
        sleep 0.2
    done
    log "lcd killed with SIGKILL (pid $_p)"
}

# The admin client the scenarios drive lcd with: lcctl once it is in the
# repository, busctl before (tests/vm/run --client picks; lc.client=).
client() { echo "${LC_CLIENT:-busctl}"; }

# lcctl ARGS...: fails the scenario with lcctl's own message
lcctl_ok() {
    _out=$(lcctl "$@" 2>&1) || fail "lcctl $* failed (exit $?): $_out"
    [ -n "$_out" ] && echo "$_out"
    return 0
}

# snake_case knob -> D-Bus property name
prop_name() { echo "$1" | awk -F_ '{ for (i = 1; i <= NF; i++) printf "%s%s", toupper(substr($i, 1, 1)), substr($i, 2) }'; }

# set_knob cache|device ID KNOB SIGNATURE VALUE  (KNOB as in lcctl: snake_case)
set_knob() {
    if [ "$(client)" = lcctl ]; then
        lcctl_ok set "$3" "$5" --"$1" "$2" >/dev/null
    elif [ "$1" = cache ]; then
        set_prop "$ROOT/cache/$2" org.lc.Lcd1.Cache "$(prop_name "$3")" "$4" "$5"
    else
        set_prop "$ROOT/device/$2" org.lc.Lcd1.Device "$(prop_name "$3")" "$4" "$5"
    fi
    log "knob $3 of $1 $2 set to $5"
}

# format_and_resume CACHE_ID DEV
format_and_resume() {
    if [ "$(client)" = lcctl ]; then
        lcctl_ok format "$2" --force >/dev/null
        lcctl_ok resume "$2" --id "$1" >/dev/null
    else
        mgr FormatCacheDevice sb "$2" true >/dev/null
        mgr ResumeCacheAs ys "$1" "$2" >/dev/null
    fi
    log "cache $1 formatted and resumed on $2 ($(client))"
}

# create_device DEV_ID BACKING CACHE_ID: attach, then waits for /dev/ublkbN
create_device() {
    if [ "$(client)" = lcctl ]; then
        _info=$(lcctl_ok attach "$2" --cache "$3" --id "$1")
        log "lcctl attach $2 --cache $3 --id $1 -> $_info"
    else
        _info=$(mgr CreateDevice ysy "$1" "$2" "$3")
        log "CreateDevice $1 $2 $3 -> $_info"
    fi
    wait_until 30 "/dev/ublkb$1 to appear after attaching device $1" test -b "/dev/ublkb$1"
}

# remove_device DEV_ID: detach (writes the device's dirty data back first)
remove_device() {
    _t0=$(uptime_s)
    if [ "$(client)" = lcctl ]; then
        lcctl_ok detach "$1" >/dev/null
    else
        mgr RemoveDevice y "$1" >/dev/null
    fi
    log "device $1 detached ($(client)) after $(awk -v a="$_t0" -v b="$(uptime_s)" 'BEGIN { printf "%.1f", b - a }') s"
    [ -e "/dev/ublkb$1" ] && fail "/dev/ublkb$1 still exists after detaching device $1"
    return 0
}

dev_size() { blockdev --getsize64 "$1"; }

# host_check_sha256 DISK_NAME HEX: the host compares DISK_NAME's image file
host_check_sha256() { echo "LC-HOST-CHECK sha256 $1 $2"; }

sha() { sha256sum "$1" | cut -d' ' -f1; }

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# write_file_tree DIRS FILES: on the file system at /mnt, DIRS directories
# of FILES small files and a 3 MiB one each, and a 160 MiB file (bigger than
# the cache's RAM buffers); their sha256 sums go to /tmp/sums
write_file_tree() {
    _i=0
    for _dir in $(seq "$1"); do
        mkdir -p "/mnt/d$_dir/sub"
        for _f in $(seq "$2"); do
            _i=$((_i + 1))
            head -c $((_i * 1531 % 65536 + 1)) /dev/urandom >"/mnt/d$_dir/small$_f"
        done
        head -c $((3 * 1024 * 1024 + _i)) /dev/urandom >"/mnt/d$_dir/sub/medium"
    done
    dd if=/dev/urandom of=/mnt/big bs=1M count=160 2>/dev/null || fail "writing /mnt/big failed"
    (cd /mnt && find . -type f ! -path './lost+found/*' | sort | xargs sha256sum) >/tmp/sums
    log "$(wc -l </tmp/sums) files written ($(du -sm /mnt | cut -f1) MiB)"
}

# verify_file_tree WHEN: the files at /mnt match /tmp/sums; fails listing
# those that differ
verify_file_tree() {
    (cd /mnt && sha256sum -c -s /tmp/sums) || {
        (cd /mnt && sha256sum -c /tmp/sums 2>&1 | grep -v ': OK$' | head -n 20)
        fail "files read back $1 differ from what was written (list above)"
    }
    log "all $(wc -l </tmp/sums) files verify $1"
}

# run_fio NAME ARGS...: fio with verification; fails with fio's output tail
run_fio() {
    _name=$1
    shift
    _t0=$(uptime_s)
    if ! fio --eta=never --name="$_name" --output=/tmp/fio-"$_name".out "$@"; then
        tail -n 40 /tmp/fio-"$_name".out
        fail "fio $_name $* failed (see its output above)"
    fi
    grep -E 'verify|err=|WRITE:|READ:' /tmp/fio-"$_name".out | sed "s/^/[fio $_name] /"
    log "fio $_name done in $(awk -v a="$_t0" -v b="$(uptime_s)" 'BEGIN { printf "%.1f", b - a }') s"
}

# Background jobs that other shells can see: bg_start NAME COMMAND...;
# bg_running NAME; bg_status NAME (exit status, empty while running);
# bg_stop NAME (SIGTERM, then waits)
bg_start() {
    _name=$1
    shift
    rm -f "/run/bg-$_name.pid" "/run/bg-$_name.exit"
    (
        _st=0
        sh -c 'echo $$ >"$0"; exec "$@"' "/run/bg-$_name.pid" "$@" || _st=$?
        echo $_st >"/run/bg-$_name.exit"
    ) &
    _n=0
    while [ ! -s "/run/bg-$_name.pid" ]; do
        _n=$((_n + 1))
        [ $_n -gt 100 ] && fail "background job $_name did not start"
        sleep 0.1
    done
}
bg_running() { [ ! -e "/run/bg-$1.exit" ]; }
bg_status() { cat "/run/bg-$1.exit" 2>/dev/null; }
bg_stop() {
    kill "$(cat "/run/bg-$1.pid")" 2>/dev/null || true
    _n=0
    while bg_running "$1"; do
        _n=$((_n + 1))
        [ $_n -gt 300 ] && fail "background job $1 did not stop within 60 s of SIGTERM"
        sleep 0.2
    done
}

# ---- device-mapper fault injection (fault-* scenarios) ----
# The guest has no udev: with DM_DISABLE_UDEV=1 dmsetup makes the
# /dev/mapper nodes itself and waits for no udev cookie.

# dm_create NAME DEV: /dev/mapper/NAME, a linear map of all of DEV
dm_create() {
    echo "$2" >"/run/dm-$1.dev"
    _out=$(echo "0 $(blockdev --getsz "$2") linear $2 0" |
        DM_DISABLE_UDEV=1 dmsetup create "$1" --noudevsync 2>&1) ||
        fail "dmsetup create $1 over $2 failed: $_out"
    wait_until 10 "/dev/mapper/$1 to appear" test -b "/dev/mapper/$1"
    log "dm: /dev/mapper/$1 maps $2 (linear)"
}

# dm_set NAME linear|error|error_writes|error_reads|delay MS: replaces the
# live table of NAME (load + resume; in-flight I/O completes first)
dm_set() {
    _dev=$(cat "/run/dm-$1.dev")
    _sz=$(blockdev --getsz "$_dev")
    case $2 in
        linear) _t="0 $_sz linear $_dev 0" ;;
        error) _t="0 $_sz error" ;;
        error_writes | error_reads) _t="0 $_sz flakey $_dev 0 0 1 1 $2" ;; # always down
        delay) _t="0 $_sz delay $_dev 0 $3" ;;
        *) fail "dm_set: unknown table kind $2" ;;
    esac
    _out=$(echo "$_t" | DM_DISABLE_UDEV=1 dmsetup load "$1" 2>&1) ||
        fail "dmsetup load $1 ($2) failed: $_out"
    _out=$(DM_DISABLE_UDEV=1 dmsetup resume "$1" --noudevsync 2>&1) ||
        fail "dmsetup resume $1 ($2) failed: $_out"
    log "dm: /dev/mapper/$1 is now: $(dmsetup table "$1")"
}

# cache_health ID: the health line of `lcctl status ID` ("healthy" or
# "failing: ...")
cache_health() {
    lcctl status "$1" | sed -n 's/^ *health  *//p' | sed 's/ *$//'
}
