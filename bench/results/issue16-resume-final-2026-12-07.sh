#!/bin/bash
# resume with the final read-ahead (16 headers per batch, 8 batches), old vs new
set -x
OLD=/work/old-target/release/deps/engine-ecd8de94c1a14ffb
NEW=$(ls -t /work/main/target/release/deps/engine-* | grep -v '\.d$' | head -1)
echo "old=$OLD new=$NEW"
for r in 1 2 3; do
  for v in old new; do
    B=$OLD; [ $v = new ] && B=$NEW
    echo "=== round $r $v"
    (cd /work/main/lc-engine && LC_BENCH_ONLY=resume LC_BENCH_RESUME_MB=1024,16384 $B --bench)
  done
done
echo "=== 1TiB new"
(cd /work/main/lc-engine && LC_BENCH_ONLY=resume LC_BENCH_RESUME_MB=1048576 $NEW --bench)
echo DONE
