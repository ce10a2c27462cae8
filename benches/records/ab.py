#!/usr/bin/env python3
"""In-process A/B of one engine switch: `hmdn-cpu bench --serve`'s `ab N SWITCH` request runs
N training steps with the switch off and on in turn, step by step (each step timed), so both
halves see the same host speed. Prints, per round, the median samples/s of each half and
their ratio (on / off), then the median ratio over the rounds.

Usage (after `cargo build --release`):

    python3 benches/records/ab.py --model hmdn-pepnet --batch 4096 --switch lanes \\
        [--threads 2] [--steps 60] [--rounds 5] [--infer]

Switches: `lanes` (Model::set_training_lanes), `factoring` (Model::set_field_factoring),
`distinct` (Model::set_distinct_keys), `awake` (hmdn_kernels::par::set_keep_workers_awake),
`infer-pieces` (Model::set_inference_chunk_rows: INFER_CHUNK_ROWS on, the training chunks off;
use with --infer).
With --infer the steps are inference forwards (`ab-infer N SWITCH`).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paired import hmdn_cpu_argv  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="hmdn-pepnet")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--switch", default="lanes", choices=["lanes", "factoring", "distinct", "awake", "infer-pieces"])
    ap.add_argument("--infer", action="store_true", help="time inference forwards, not training steps")
    ap.add_argument("--steps", type=int, default=60, help="steps per round (both halves)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    op = "ab-infer" if args.infer else "ab"
    requests = "".join(f"{op} {args.steps} {args.switch}\n" for _ in range(args.rounds)) + "quit\n"
    run = subprocess.run(
        hmdn_cpu_argv(args.model, args.batch, args.threads),
        input=requests, capture_output=True, text=True, check=True)
    ratios = []
    for line in run.stdout.splitlines():
        reply = json.loads(line)
        if reply.get("op") != op:
            continue
        off = args.batch / statistics.median(reply["off_s"])
        on = args.batch / statistics.median(reply["on_s"])
        ratios.append(on / off)
        print(f"{args.model} {args.batch} {args.threads}t {args.switch}: off {off:,.0f}  "
              f"on {on:,.0f} samples/s  on/off {on / off:.3f}", flush=True)
    print(f"median on/off over {len(ratios)} rounds: {statistics.median(ratios):.3f} "
          f"(rounds {min(ratios):.3f} – {max(ratios):.3f})")


if __name__ == "__main__":
    main()
