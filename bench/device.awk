# Device-level figures from the console of `tests/vm/run bench`
# (tests/vm/scenarios/bench.sh): every measurement per round, the median
# over the rounds, and the ratios BENCHMARKS.md reports.
#   awk -f bench/device.awk tests/vm/cache/work/bench/console-1.log
# Input lines: "LC-BENCH WORKLOAD.DEVICE.rROUND VALUE UNIT".

function median(w, d,    n, i, j, t, a) {
    n = 0
    for (i = 1; i <= nr; i++)
        if ((w, d, i) in v) a[++n] = v[w, d, i]
    if (n == 0) return ""
    for (i = 2; i <= n; i++)
        for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}

# median of x[k, 1..nr] (the rounds that have a value)
function med(x, k,    n, i, j, t, a) {
    n = 0
    for (i = 1; i <= nr; i++)
        if ((k, i) in x) a[++n] = x[k, i]
    if (n == 0) return ""
    for (i = 2; i <= n; i++)
        for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}

function ratio(w, a, b, what,    i, line, ma, mb, n, k, j, t, x) {
    ma = median(w, a); mb = median(w, b)
    if (ma == "" || mb == "" || mb == 0) return
    line = sprintf("%-9s %-26s", w, a " / " b)
    n = 0
    for (i = 1; i <= nr; i++) {
        if ((w, a, i) in v && (w, b, i) in v && v[w, b, i] > 0) {
            line = line sprintf(" %7.3f", v[w, a, i] / v[w, b, i]); x[++n] = v[w, a, i] / v[w, b, i]
        } else line = line sprintf(" %7s", "-")
    }
    for (k = 2; k <= n; k++)
        for (j = k; j > 1 && x[j - 1] > x[j]; j--) { t = x[j]; x[j] = x[j - 1]; x[j - 1] = t }
    printf "%s %9.3f %9.3f  %s\n", line, ma / mb, (n % 2 ? x[(n + 1) / 2] : (x[n / 2] + x[n / 2 + 1]) / 2), what
}

{ sub(/\r$/, "") }
# LC-BENCH-DETAIL W.D.rR k=v ...: what explains a figure
$1 == "LC-BENCH-DETAIL" {
    n = split($2, p, "."); r = p[n]; sub(/^r/, "", r); r += 0
    key = p[1] SUBSEP p[2]
    for (i = 3; i <= NF; i++) {
        split($i, kv, "="); val = kv[2]; sub(/[%A-Za-z\/]+$/, "", val)
        det[kv[1], key, r] = val + 0
    }
    ios[key, r] = det["kib", key, r] / (p[1] == "seqwrite" ? 1024 : 4)
    if (!(key in dseen)) { dseen[key] = 1; dorder[++ndd] = key }
}
# LC-BENCH-THREADS W.D.rR lcd CPU ms by thread: NAME=MS ...
$1 == "LC-BENCH-THREADS" {
    n = split($2, p, "."); r = p[n]; sub(/^r/, "", r); r += 0
    key = p[1] SUBSEP p[2]
    for (i = 8; i <= NF; i++) {
        split($i, kv, "=")
        thr[key, kv[1], r] = kv[2] + 0
        if (!((key, kv[1]) in tseen)) { tseen[key, kv[1]] = 1; torder[++nt] = key SUBSEP kv[1] }
    }
}
$1 == "LC-BENCH" && NF >= 4 {
    n = split($2, p, ".")
    r = p[n]; sub(/^r/, "", r); r += 0
    w = p[1]; d = p[2]
    v[w, d, r] = $3 + 0; unit[w] = $4
    if (r > nr) nr = r
    if (!((w, d) in seen)) { seen[w, d] = 1; order[++nd] = w SUBSEP d }
}

END {
    if (nr == 0) { print "no LC-BENCH lines in the input" > "/dev/stderr"; exit 1 }
    printf "%-9s %-13s", "workload", "device"
    for (i = 1; i <= nr; i++) printf " %9s", "round " i
    printf " %9s  unit\n", "median"
    for (k = 1; k <= nd; k++) {
        split(order[k], q, SUBSEP)
        printf "%-9s %-13s", q[1], q[2]
        for (i = 1; i <= nr; i++) printf " %9s", ((q[1], q[2], i) in v) ? v[q[1], q[2], i] : "-"
        printf " %9s  %s\n", median(q[1], q[2]), unit[q[1]]
    }
    print ""
    printf "%-9s %-26s", "workload", "ratio"
    for (i = 1; i <= nr; i++) printf " %7s", "r" i
    printf " %9s %9s\n", "medians", "med(r)"
    ratio("randwrite", "lc", "rublk", "lc vs the reference ublk server on the same disk")
    ratio("randwrite", "lc", "rawcache", "lc vs the cache disk itself")
    ratio("randwrite", "lc", "rawcache-nodm", "lc vs the cache disk without the dm-linear split")
    ratio("randwrite", "lc", "rawbacking", "what a user gains over the backing disk")
    ratio("randwrite", "rublk", "rawcache", "cost of ublk itself (reference)")
    ratio("randwrite", "rawcache", "rawcache-nodm", "cost of the dm-linear split (reference)")
    ratio("randread", "lc", "rublk", "hits on the cache device")
    ratio("randread", "lc", "rawcache", "hits on the cache device")
    ratio("randread", "lc", "rawcache-nodm", "hits vs the cache disk without the dm-linear split")
    ratio("randread", "lc-miss", "rawbacking", "misses: the same backing blocks read directly")
    ratio("randread", "lc-miss", "rublk", "misses vs rublk over the (identical) cache disk")
    ratio("randread", "lc-ram", "rublk", "hits in lc's RAM segment (no I/O) vs rublk's reads")
    ratio("randread", "rublk", "rawcache", "cost of ublk itself (reference)")
    ratio("randread4", "lc", "rublk", "iodepth 4 (diagnostic)")
    ratio("randread4", "lc", "rawcache", "iodepth 4 (diagnostic)")
    ratio("randread4", "rublk", "rawcache", "iodepth 4 (diagnostic)")
    ratio("randread", "rawcache", "rawcache-nodm", "cost of the dm-linear split (reference)")
    ratio("randrw", "lc", "rublk", "70/30 mix: reads hit the cache device")
    ratio("randrw", "lc", "rawcache", "70/30 mix vs the cache disk itself")
    ratio("randrw", "lc", "rawbacking", "70/30 mix: what a user gains over the backing disk")
    ratio("randrw", "rublk", "rawcache", "cost of ublk itself (reference)")
    ratio("seqwrite", "lc", "rublk", "lc vs the reference ublk server on the same disk")
    ratio("seqwrite", "lc", "rawcache", "lc vs the cache disk itself")
    ratio("seqwrite", "lc", "rawcache-nodm", "lc vs the cache disk without the dm-linear split")
    ratio("seqwrite", "lc", "rawbacking", "lc vs the backing disk")
    ratio("seqwrite", "rublk", "rawcache", "cost of ublk itself (reference)")
    ratio("seqwrite", "rawcache", "rawcache-nodm", "cost of the dm-linear split (reference)")

    print ""
    print "CPU per request (medians over the rounds; guest: both vCPUs, all processes;"
    print "server: lcd or rublk; us = microseconds of CPU per 4 KiB request, per 1 MiB for seqwrite)"
    printf "%-9s %-13s %10s %10s %10s %8s\n", "workload", "device", "guest us", "server us", "clat us", "flush s"
    for (k = 1; k <= ndd; k++) {
        split(dorder[k], q, SUBSEP)
        for (f = 1; f <= 4; f++) {
            fld = f == 1 ? "guest_cpu_us_per_io" : f == 2 ? "server_cpu_us_per_io" : f == 3 ? "clat_mean_us" : "flush_s"
            delete tmp
            for (i = 1; i <= nr; i++) if ((fld, dorder[k], i) in det) tmp[dorder[k], i] = det[fld, dorder[k], i]
            m[f] = med(tmp, dorder[k])
        }
        printf "%-9s %-13s %10s %10s %10s %8s\n", q[1], q[2], m[1], m[2], m[3], m[4]
    }
    print ""
    print "completion latency percentiles (medians over the rounds, us; randrw: reads, then writes)"
    printf "%-9s %-13s %8s %8s %8s %8s\n", "workload", "device", "p50", "p99", "w p50", "w p99"
    for (k = 1; k <= ndd; k++) {
        split(dorder[k], q, SUBSEP)
        line = sprintf("%-9s %-13s", q[1], q[2])
        for (f = 1; f <= 4; f++) {
            fld = f == 1 ? "clat_p50_us" : f == 2 ? "clat_p99_us" : f == 3 ? "write_clat_p50_us" : "write_clat_p99_us"
            delete tmp
            for (i = 1; i <= nr; i++) if ((fld, dorder[k], i) in det) tmp[dorder[k], i] = det[fld, dorder[k], i]
            x = med(tmp, dorder[k])
            line = line sprintf(" %8s", x == "" ? "-" : x)
        }
        print line
    }
    if (nt) {
        print ""
        print "lcd's CPU per request by thread group (medians over the rounds, us)"
        for (k = 1; k <= nt; k++) {
            split(torder[k], q, SUBSEP)
            delete tmp
            for (i = 1; i <= nr; i++)
                if ((q[1], q[2], q[3], i) in thr && ios[q[1], q[2], i] > 0)
                    tmp[torder[k], i] = thr[q[1], q[2], q[3], i] * 1000 / ios[q[1], q[2], i]
            printf "%-9s %-8s %-16s %8.0f\n", q[1], q[2], q[3], med(tmp, torder[k])
        }
    }
}
