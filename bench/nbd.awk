# Figures of bench/nbd.sh: every run per round, medians, and the ratios
# BENCHMARKS.md reports (per round and of the medians), with each server's
# CPU per request.
#   awk -f bench/nbd.awk bench/results/nbd.txt
# Input lines: "NBD-BENCH WORKLOAD.SERVER.rROUND VALUE UNIT cpu_us_per_io=X secs=Y".

function sort(a, n,    i, j, t) {
    for (i = 2; i <= n; i++)
        for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
}
function median(x, k,    n, i, a) {
    n = 0
    for (i = 1; i <= nr; i++) if ((k, i) in x) a[++n] = x[k, i]
    if (n == 0) return ""
    sort(a, n)
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function ratio(w, a, b, target, what,    i, line, ma, mb, n, x, lo, hi) {
    ma = median(v, w SUBSEP a); mb = median(v, w SUBSEP b)
    if (ma == "" || mb == "" || mb == 0) return
    line = sprintf("%-9s %-22s", w, a " / " b); n = 0
    for (i = 1; i <= nr; i++)
        if ((w, a, i) in v && (w, b, i) in v && v[w, b, i] > 0) {
            x[++n] = v[w, a, i] / v[w, b, i]; line = line sprintf(" %6.3f", x[n])
        } else line = line sprintf(" %6s", "-")
    sort(x, n)
    printf "%s %8.3f %6.3f-%.3f  %-8s %s\n", line, ma / mb, x[1], x[n], target, what
}
$1 == "NBD-BENCH" {
    n = split($2, p, "."); r = p[n]; sub(/^r/, "", r); r += 0
    k = p[1] SUBSEP p[2]
    v[p[1], p[2], r] = $3 + 0; unit[p[1]] = $4
    split($5, c, "="); cpu[p[1], p[2], r] = c[2] + 0
    if (r > nr) nr = r
    if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
}
END {
    if (nr == 0) { print "no NBD-BENCH lines" > "/dev/stderr"; exit 1 }
    printf "%-9s %-11s", "workload", "server"
    for (i = 1; i <= nr; i++) printf " %9s", "round " i
    printf " %9s  unit   CPU us/request (median)\n", "median"
    for (j = 1; j <= nk; j++) {
        split(order[j], q, SUBSEP)
        printf "%-9s %-11s", q[1], q[2]
        for (i = 1; i <= nr; i++) printf " %9s", ((q[1], q[2], i) in v) ? v[q[1], q[2], i] : "-"
        printf " %9s  %-6s %s\n", median(v, order[j]), unit[q[1]], median(cpu, order[j])
    }
    print ""
    printf "%-9s %-22s", "workload", "ratio"
    for (i = 1; i <= nr; i++) printf " %6s", "r" i
    printf " %8s %13s  %-8s\n", "medians", "range", "target"
    ratio("randwrite", "lc", "qemu-back", ">= 1.5", "what a user gains over the backing file")
    ratio("randwrite", "lc", "qemu-cache", "", "lc vs the cache file itself")
    ratio("randread", "lc", "qemu-cache", ">= 0.9", "hits vs the same (cache) file")
    ratio("readmiss", "lc", "qemu-back", ">= 0.9", "misses vs the same (backing) file")
    ratio("seqwrite", "lc", "qemu-cache", ">= 0.9", "lc vs the cache file itself")
    ratio("seqwrite", "lc", "qemu-back", "", "lc vs the backing file")
}
