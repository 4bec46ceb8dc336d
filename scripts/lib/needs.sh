# scripts/lib/needs.sh — the one list of what lc's scripts need from the
# machine, and the one place that installs it. Sourced (never run) by
# scripts/demo, tests/run-all, tests/vm/run, bench/run, fuzz/run,
# packaging/build-deb and packaging/test, so their checks cannot drift apart.
# tests/fresh-machine/run proves the list against a simulated brand-new
# Debian 12 machine.
#
# Each need is one line of LC_NEEDS: GROUP KIND WHAT PACKAGE
#   cmd     WHAT is a command on PATH
#   file    WHAT is a |-separated list of globs, relative to $LC_NEEDS_ROOT
#           (default /); one matching file is enough
#   static  WHAT is a command on PATH that must be statically linked
#   py      WHAT is a module python3 must import; PACKAGE is its PyPI name
# Every check tests for the exact file or command the step uses: bindgen
# (libublk's build) loads libclang.so* or libclang-<N>.so*, not
# libclang-cpp*, so the libclang globs say exactly that.
#
# Functions:
#   lc_needs_missing GROUP...   prints "apt PKG" / "pip PKG" per missing need
#   lc_needs_install WHO GROUP...
#                               installs what is missing (apt-get update
#                               first; waits for the dpkg lock), then checks
#                               again and fails if a need is still unmet.
#                               WHO names the calling script in messages.
#                               LC_NEEDS_DRY_RUN=1 only prints the plan;
#                               LC_NEEDS_NO_INSTALL=1 fails instead.
#   lc_apt_get ARGS...          apt-get that waits for the dpkg lock
#   lc_dpkg ARGS...             dpkg that waits for the dpkg lock
#
# Groups: build (cargo build of the workspace), bus (daemon tests on a private
# dbus-daemon), man (man page lint), deb (the package's build dependencies
# besides build), debtest (packaging/test), vm (the qemu guest), fuzz
# (libFuzzer), nbd (the NBD clients lcd's NBD tests drive, openssl for their
# certificates), nbdbench (the NBD benchmark's reference server), bench
# (plots).

LC_NEEDS="
build cmd    cc                  gcc
build file   usr/include/stdio.h libc6-dev
build file   usr/lib/llvm-*/lib/libclang.so*|usr/lib/llvm-*/lib/libclang-[0-9]*.so*|usr/lib/*-linux-gnu/libclang.so*|usr/lib/*-linux-gnu/libclang-[0-9]*.so* libclang-dev
bus   cmd    dbus-daemon         dbus-daemon
bus   cmd    busctl              systemd
bus   cmd    setpriv             util-linux
bus   cmd    dbus-send           dbus-bin
man   cmd    mandoc              mandoc
deb   cmd    dpkg-deb            dpkg
deb   cmd    dpkg-shlibdeps      dpkg-dev
deb   cmd    strip               binutils
deb   cmd    gzip                gzip
debtest cmd  objdump             binutils
debtest cmd  lintian             lintian
debtest cmd  udevadm             udev
debtest cmd  systemd-analyze     systemd
debtest file usr/share/dbus-1/system.conf dbus-system-bus-common
vm    cmd    qemu-system-x86_64  qemu-system-x86
vm    cmd    fio                 fio
vm    cmd    mke2fs              e2fsprogs
vm    cmd    cpio                cpio
vm    cmd    xz                  xz-utils
vm    cmd    dmsetup             dmsetup
vm    cmd    dbus-daemon         dbus-daemon
vm    file   usr/share/dbus-1/system.conf dbus-system-bus-common
vm    cmd    busctl              systemd
vm    static busybox             busybox-static
fuzz  cmd    c++                 g++
nbd   cmd    nbdinfo             libnbd-bin
nbd   cmd    nbdcopy             libnbd-bin
nbd   cmd    fio                 fio
nbd   cmd    openssl             openssl
nbdbench cmd qemu-nbd            qemu-utils
perf  cmd    perf                linux-perf
bench py     matplotlib          matplotlib
"

# How long apt-get and dpkg wait for another apt-get/dpkg to let go of the lock.
LC_DPKG_LOCK_TIMEOUT=${LC_DPKG_LOCK_TIMEOUT:-600}

_lc_need_met() { # KIND WHAT
    local kind=$1 what=$2 root=${LC_NEEDS_ROOT:-/} glob f path
    case $kind in
    cmd) command -v "$what" >/dev/null 2>&1 ;;
    static)
        path=$(command -v "$what" 2>/dev/null) || return 1
        # ldd prints "not a dynamic executable" (and fails) for a static one
        ! ldd "$path" >/dev/null 2>&1 ;;
    file)
        local IFS='|'
        for glob in $what; do
            for f in "${root%/}"/$glob; do
                [ -e "$f" ] && return 0
            done
        done
        return 1 ;;
    py) python3 -c "import $what" >/dev/null 2>&1 ;;
    *) echo "scripts/lib/needs.sh: unknown kind $kind" >&2; return 2 ;;
    esac
}

lc_needs_missing() { # GROUP...
    local group kind what pkg want g seen=" "
    while read -r group kind what pkg; do
        [ -n "$group" ] || continue
        want=0
        for g in "$@"; do [ "$g" = "$group" ] && want=1; done
        [ "$want" = 1 ] || continue
        _lc_need_met "$kind" "$what" && continue
        if [ "$kind" = py ]; then pkg="pip $pkg"; else pkg="apt $pkg"; fi
        case $seen in *" $pkg "*) continue ;; esac
        seen="$seen$pkg "
        echo "$pkg"
    done <<<"$LC_NEEDS"
}

lc_apt_get() {
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout="$LC_DPKG_LOCK_TIMEOUT" "$@"
}

# dpkg has no lock timeout of its own (apt has DPkg::Lock::Timeout): retry
# while another dpkg/apt holds the lock, up to LC_DPKG_LOCK_TIMEOUT seconds.
lc_dpkg() {
    local t0=$SECONDS out st said=0
    out=$(mktemp)
    while :; do
        st=0
        dpkg "$@" 2>"$out" || st=$?
        # "dpkg frontend lock was locked by another process", "status
        # database area is locked by another process"
        if [ "$st" != 0 ] && grep -qiE 'lock.*(locked|another process)' "$out" &&
            ((SECONDS - t0 < LC_DPKG_LOCK_TIMEOUT)); then
            if [ "$said" = 0 ]; then
                echo "waiting for the dpkg lock (another apt-get or dpkg runs; up to ${LC_DPKG_LOCK_TIMEOUT} s)" >&2
                said=1
            fi
            sleep 3
            continue
        fi
        cat "$out" >&2
        if [ "$st" != 0 ] && grep -qiE 'lock.*(locked|another process)' "$out"; then
            echo "gave up waiting for the dpkg lock after ${LC_DPKG_LOCK_TIMEOUT} s: find the apt-get/dpkg that holds it (fuser -v /var/lib/dpkg/lock-frontend), let it finish, then run this again" >&2
        fi
        rm -f "$out"
        return "$st"
    done
}

# bookworm-backports: the guest's kernel (ublk_drv) and a new machine's
# qemu-utils come from there.
lc_have_backports_source() {
    grep -rqsE '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/
}

# The Debian archive the machine uses for bookworm (its URI).
lc_debian_archive_uri() {
    local uri
    uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk 'BEGIN { RS = "" }
        { u = ""; b = 0; n = split($0, l, "\n")
          for (i = 1; i <= n; i++) {
              if (l[i] ~ /^URIs:/) { split(l[i], f, /[ \t]+/); u = f[2] }
              if (l[i] ~ /^Suites:/ && l[i] ~ /[ \t]bookworm([ \t]|$)/) b = 1 }
          if (b && u != "") { print u; exit } }')
    [ -n "$uri" ] || uri=$(grep -hsE '^deb .* bookworm ' /etc/apt/sources.list | head -n1 | awk '{print $2}')
    [ -n "$uri" ] || uri=http://deb.debian.org/debian
    echo "$uri"
}

# Adds a deb822 source for bookworm-backports on the archive the machine
# already uses for bookworm (root only).
lc_add_backports_source() {
    local uri
    uri=$(lc_debian_archive_uri)
    echo "adding apt source bookworm-backports ($uri) in /etc/apt/sources.list.d/bookworm-backports.sources" >&2
    cat >/etc/apt/sources.list.d/bookworm-backports.sources <<EOF
# added by lc's scripts/lib/needs.sh: the guest kernel of tests/vm/run (it
# has ublk_drv) and qemu to match a backported qemu-utils come from here
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
}

# A new machine has qemu-utils from bookworm-backports (qemu-img, qemu-nbd);
# bookworm's own qemu-system-x86 conflicts with it, and apt would remove it.
# Where qemu-utils is a backport, qemu-system-x86 comes from bookworm-
# backports too (adding that source if the machine has none), in an apt-get
# of its own (-t would move every other package to backports).
_lc_backport_siblings() { # ARRAY OUT: moves such packages from array ARRAY to array OUT
    local -n pkgs=$1 out=$2
    local i v
    for i in "${!pkgs[@]}"; do
        [ "${pkgs[$i]}" = qemu-system-x86 ] || continue
        v=$(dpkg-query -W -f='${db:Status-Status} ${Version}' qemu-utils 2>/dev/null | sed -n 's/^installed //p')
        case $v in *bpo*) ;; *) continue ;; esac
        if ! lc_have_backports_source; then
            lc_add_backports_source
            lc_apt_get update -qq
        fi
        out+=("${pkgs[$i]}")
        unset 'pkgs[i]'
    done
    pkgs=("${pkgs[@]}")
}

lc_needs_install() { # WHO GROUP...
    local who=$1 apt=() pip=() kind pkg
    shift
    while read -r kind pkg; do
        [ -n "$kind" ] || continue
        if [ "$kind" = apt ]; then apt+=("$pkg"); else pip+=("$pkg"); fi
    done < <(lc_needs_missing "$@")
    ((${#apt[@]} + ${#pip[@]})) || return 0
    if [ "${LC_NEEDS_DRY_RUN:-0}" = 1 ]; then
        ((${#apt[@]})) && echo "would install with apt-get: ${apt[*]}"
        ((${#pip[@]})) && echo "would install with pip: ${pip[*]}"
        return 0
    fi
    local how=""
    ((${#apt[@]})) && how="apt-get install ${apt[*]}"
    ((${#pip[@]})) && how="${how:+$how; }python3 -m pip install ${pip[*]}"
    if [ "${LC_NEEDS_NO_INSTALL:-0}" = 1 ]; then
        echo "$who: missing: $how (not installing: LC_NEEDS_NO_INSTALL=1)" >&2
        return 1
    fi
    if ((${#apt[@]})); then
        if [ "$(id -u)" -ne 0 ]; then
            echo "$who: missing system packages; install them ($how) or run as root" >&2
            return 1
        fi
        echo "$who: installing ${apt[*]} (apt-get)" >&2
        lc_apt_get update -qq
        local bpo=()
        _lc_backport_siblings apt bpo
        # --no-remove: installing what lc needs never takes away what the
        # machine has (apt fails instead, and says why)
        ((${#apt[@]})) && lc_apt_get install -y -qq --no-install-recommends --no-remove "${apt[@]}" >/dev/null
        ((${#bpo[@]} == 0)) || lc_apt_get install -y -qq --no-install-recommends --no-remove -t bookworm-backports "${bpo[@]}" >/dev/null
    fi
    if ((${#pip[@]})); then
        echo "$who: installing ${pip[*]} (pip)" >&2
        python3 -m pip install --quiet --disable-pip-version-check "${pip[@]}"
    fi
    local still
    still=$(lc_needs_missing "$@" | tr '\n' ' ')
    if [ -n "${still// /}" ]; then
        echo "$who: still missing after installing: $still (scripts/lib/needs.sh names the wrong package)" >&2
        return 1
    fi
}

lc_need_cargo() { # WHO
    command -v cargo >/dev/null || { echo "$1: cargo not found: install Rust (https://rustup.rs) first" >&2; return 1; }
}
