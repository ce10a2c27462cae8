#!/bin/bash
# The measurement behind the README's performance tables, interleaved so that the machine's
# drifting speed hits both sides alike: for each (model, batch), PyTorch (every variant), then
# hmdn-cpu right after; then 1 vs 2 threads at batch 1024 back to back. Three rounds, then the
# single-thread GEMM probe. Usage (from anywhere):
#   PYTHON=../venv-torch/bin/python benches/records/run-interleaved.sh [OUT_DIR]
#   python3 benches/records/summarize.py OUT_DIR
# TORCH_RQ=rowwise times PyTorch's hmdn-* quantizing every row instead of once per distinct
# distribution key (torch_baseline.py --rq; hmdn-cpu always does the latter).
# Needs `cargo build --release` and `cargo build --release -p hmdn-kernels --example probe`.
set -u
cd "$(dirname "$0")/../.."
OUT=${1:-benches/records/new}
mkdir -p "$OUT"
for rep in 1 2 3; do
  for m in hmdn-mmoe hmdn-pepnet; do
    for b in 256 1024 4096; do
      echo "# rep $rep $m $b $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)" >> "$OUT/torch-$m.txt"
      "${PYTHON:-python3}" benches/torch_baseline.py --model $m --batch $b --threads 2 --steps 20 --variant all --rq "${TORCH_RQ:-distinct}" >> "$OUT/torch-$m.txt" 2>&1
      ./target/release/hmdn-cpu bench --model $m --batch $b --threads 2 --steps 100 --json >> "$OUT/ours.jsonl" 2>> "$OUT/ours.err"
    done
    ./target/release/hmdn-cpu bench --model $m --batch 1024 --threads 1 --steps 100 --json >> "$OUT/ours.jsonl" 2>> "$OUT/ours.err"
    ./target/release/hmdn-cpu bench --model $m --batch 1024 --threads 2 --steps 100 --json >> "$OUT/ours.jsonl" 2>> "$OUT/ours.err"
  done
done
for i in 1 2 3; do ./target/release/examples/probe 1 >> "$OUT/probe1.txt" 2>&1; done
./target/release/examples/probe 2 > "$OUT/probe2.txt" 2>&1
