#!/bin/bash
# The README's end-to-end comparison, paired: for each model and batch, hmdn-cpu and PyTorch
# in alternating ~0.4 s bursts (paired.py), training at 256 / 1024 / 4096 and inference at
# 4096, and 2 threads against 1 at 1024. Usage (from anywhere; needs `cargo build --release` and PyTorch, see
# fixtures/gen_reference.py):
#   PYTHON=../venv-torch/bin/python benches/records/run-paired.sh [OUT_DIR] [ROUNDS]
#   python3 benches/records/paired.py --summarize OUT_DIR/paired.jsonl
set -eu
cd "$(dirname "$0")/../.."
OUT=${1:-benches/records/new}
ROUNDS=${2:-15}
mkdir -p "$OUT"
for m in hmdn-mmoe hmdn-pepnet; do
  for b in 256 1024 4096; do
    python3 benches/records/paired.py --model $m --batch $b --rounds "$ROUNDS" --out "$OUT/paired.jsonl"
  done
  python3 benches/records/paired.py --model $m --batch 4096 --infer --rounds "$ROUNDS" --out "$OUT/paired.jsonl"
  # Thread scaling: 2 threads against 1, both hmdn-cpu.
  python3 benches/records/paired.py --model $m --batch 1024 --versus-threads 1 --rounds "$ROUNDS" --out "$OUT/paired.jsonl"
done
python3 benches/records/paired.py --summarize "$OUT/paired.jsonl"
