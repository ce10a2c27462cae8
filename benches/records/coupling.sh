#!/bin/bash
# What the machine gives two independent one-thread trainings against one two-thread
# training: per trial, two `hmdn-cpu bench --threads 1` processes pinned to CPUs 0 and 1 at
# once (their samples/s added), then one `--threads 2` process, then one `--threads 1`
# process alone. Independent processes never wait for each other; the two threads of one
# process meet at every join of a step, so each waits out the other's stalls.
#
# Usage (needs `cargo build --release` and `taskset`):
#   benches/records/coupling.sh [MODEL] [BATCH] [TRIALS] [STEPS]
set -eu
cd "$(dirname "$0")/../.."
MODEL=${1:-hmdn-mmoe}
BATCH=${2:-1024}
TRIALS=${3:-4}
STEPS=${4:-200}
BIN=target/release/hmdn-cpu
rate() {
  python3 -c 'import json, sys; print(round(json.load(sys.stdin)["train_samples_per_s"]))'
}
run() { # run CPUS THREADS
  taskset -c "$1" "$BIN" bench --model "$MODEL" --batch "$BATCH" --threads "$2" \
    --steps "$STEPS" --json 2>/dev/null | rate
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for t in $(seq "$TRIALS"); do
  run 0 1 >"$tmp/a" &
  run 1 1 >"$tmp/b" &
  wait
  together=$(( $(cat "$tmp/a") + $(cat "$tmp/b") ))
  two=$(run 0,1 2)
  one=$(run 0 1)
  echo "$MODEL $BATCH trial $t: two 1-thread processes together $together," \
    "one 2-thread process $two, one 1-thread process alone $one samples/s" \
    "(ratios to alone: $(python3 -c "print(f'{$together/$one:.2f} / {$two/$one:.2f}')"))"
done
