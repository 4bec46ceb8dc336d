#!/bin/bash
# alternates old (a05a383) and new (HEAD) engine benches: write, full (60 s), writeback; 3 rounds
cd /work/main/lc-engine
for round in 1 2 3; do
  for v in old new; do
    for only in write full writeback; do
      echo "=== round $round $v $only $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
      LC_BENCH_ONLY=$only LC_BENCH_FULL_SECS=60 /work/bench/$v --bench 2>&1
    done
  done
done
echo "=== done $(date +%T)"
