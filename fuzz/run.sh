#!/usr/bin/env bash
# Runs one fuzz target for a wall-clock time, at the lowest CPU priority, continuing after
# crashes (fork mode); see docs/security.md ("Fuzzing").
#   fuzz/run.sh TARGET SECONDS [MAX_LEN]
# The working corpus is work/TARGET (seeded from corpus/TARGET, and from target/seeds/TARGET
# when fuzz/seeds.py made it); crash reproducers go to artifacts/TARGET/; the log to
# work/TARGET.log. Build first: cargo fuzz build -s none -O
set -euo pipefail
cd "$(dirname "$0")"
target=$1 secs=$2 max_len=${3:-65536}
mkdir -p "work/$target" "artifacts/$target" work/bin
# A copy: fork mode starts its children from this path, and a rebuild meanwhile must not
# change the code under test halfway through a run.
bin=work/bin/$target
cp target/x86_64-unknown-linux-gnu/release/"$target" "$bin"
for seeds in "corpus/$target" "target/seeds/$target"; do
    if [ -d "$seeds" ]; then cp -n "$seeds"/* "work/$target"/ 2>/dev/null || true; fi
done
exec nice -n 19 "$bin" "work/$target" \
    -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len="$max_len" \
    -artifact_prefix="artifacts/$target/" -print_final_stats=1 \
    >"work/$target.log" 2>&1
