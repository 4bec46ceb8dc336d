#!/usr/bin/env python3
"""Plots the full-cache run of the lc-engine benchmark (measurement 3).

usage: plot.py SAMPLES.csv OUT.png

SAMPLES.csv is what the benchmark writes to LC_BENCH_CSV: one row per
250 ms sample, for the run through lc ("lc") and the run straight to the
modelled disk ("direct"). Needs matplotlib (pip install matplotlib).
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    runs = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            runs.setdefault(r["run"], []).append(r)
    return runs


def col(rows, name):
    return [float(r[name]) for r in rows]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    runs = load(sys.argv[1])
    lc, direct = runs["lc"], runs["direct"]
    t_lc, t_d = col(lc, "t_s"), col(direct, "t_s")
    cum_lc, cum_d = col(lc, "written_mib"), col(direct, "written_mib")
    phases = [r["phase"] for r in lc]
    full_at = next((t for t, p in zip(t_lc, phases) if p != "filling"), None)
    steady = [t for t, p in zip(t_lc, phases) if p == "steady"]
    direct_rate = cum_d[-1] / t_d[-1]
    steady_rate = None
    if steady:
        i0 = phases.index("steady") - 1
        i1 = len(phases) - 1 - phases[::-1].index("steady")
        steady_rate = (cum_lc[i1] - cum_lc[i0]) / (t_lc[i1] - t_lc[i0])

    fig, (ax1, ax2, ax3) = plt.subplots(
        3, 1, figsize=(10, 10), sharex=True, gridspec_kw={"height_ratios": [3, 3, 1.3]}
    )
    title = "Full cache over a modelled HDD: 4 KiB random writes, write-back running"
    if steady_rate is not None:
        title += (
            f"\nsteady state: lc {steady_rate:.3f} MiB/s, direct {direct_rate:.3f} MiB/s,"
            f" lc/direct = {steady_rate / direct_rate:.2f}"
        )
    fig.suptitle(title)

    ax1.plot(t_lc, col(lc, "to_disk_mib_s"), lw=0.8, color="tab:green",
             label="lc: written back to the disk (per 250 ms)")
    ax1.plot(t_d, col(direct, "to_disk_mib_s"), lw=0.8, color="tab:red",
             label="direct: written to the disk (per 250 ms)")
    if steady_rate is not None:
        ax1.axhline(steady_rate, color="tab:blue", ls=":", lw=1,
                    label=f"lc: writes acknowledged in steady state, {steady_rate:.3f} MiB/s")
    ax1.axhline(direct_rate, color="tab:red", ls=":", lw=1,
                label=f"direct: writes acknowledged, {direct_rate:.3f} MiB/s")
    top = 2.5 * max(direct_rate, steady_rate or 0.0)
    ax1.set_ylim(0, top)
    fill_mib = next((c for c, p in zip(cum_lc, phases) if p != "filling"), None)
    if fill_mib is not None:
        ax1.annotate(f"cache filled: {fill_mib:.0f} MiB in {full_at:.2f} s (off scale)",
                     (full_at, top * 0.93), xytext=(8, 0), textcoords="offset points",
                     fontsize=8)
    ax1.set_ylabel("MiB/s")
    ax1.legend(loc="lower right", fontsize=8)

    ax2.plot(t_lc, cum_lc, color="tab:blue", label="through lc")
    ax2.plot(t_d, cum_d, color="tab:red", label="direct to the disk")
    ax2.set_ylabel("MiB acknowledged")
    ax2.legend(loc="lower right", fontsize=8)

    ax3.plot(t_lc, col(lc, "cache_used_pct"), color="tab:purple")
    ax3.set_ylabel("cache used %")
    ax3.set_ylim(0, 105)
    ax3.set_xlabel("seconds since the start of each run")

    for ax in (ax1, ax2, ax3):
        ax.grid(True, alpha=0.3)
        if full_at is not None:
            ax.axvline(full_at, color="black", ls="--", lw=0.8)
        if steady:
            ax.axvspan(steady[0] - 0.25, steady[-1], color="tab:orange", alpha=0.12)
    if full_at is not None:
        ax2.annotate(f"cache full at {full_at:.2f} s: from here writers wait for write-back",
                     (full_at, cum_lc[-1] * 0.35), xytext=(8, 0), textcoords="offset points",
                     fontsize=8)
    if steady:
        ax2.annotate("steady-state window (shaded)", (steady[0], cum_lc[-1] * 0.2),
                     xytext=(8, 0), textcoords="offset points", fontsize=8)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
