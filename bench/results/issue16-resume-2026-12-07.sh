#!/bin/bash
# old (2703575 engine, this session's bench) vs new engine, resume figure
set -x
cd /work/old-wt && CARGO_TARGET_DIR=/work/old-target cargo bench -p lc-engine --bench engine --no-run > /work/rb-build.log 2>&1
OLD=$(ls -t /work/old-target/release/deps/engine-* | grep -v '\.d$' | head -1)
NEW=$(ls -t /work/main/target/release/deps/engine-* | grep -v '\.d$' | head -1)
echo "old=$OLD new=$NEW"
for r in 1 2 3; do
  for v in old new; do
    B=$OLD; [ $v = new ] && B=$NEW
    echo "=== round $r $v"
    (cd /work/main/lc-engine && LC_BENCH_ONLY=resume LC_BENCH_RESUME_MB=1024,16384 $B --bench)
  done
done
for v in new old; do
  B=$OLD; [ $v = new ] && B=$NEW
  echo "=== 1TiB $v"
  (cd /work/main/lc-engine && LC_BENCH_ONLY=resume LC_BENCH_RESUME_MB=1048576 $B --bench)
done
echo DONE
