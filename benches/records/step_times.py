#!/usr/bin/env python3
"""Step-time distributions of two sides run in alternating bursts: where a ratio's spread
comes from.

`paired.py` reports one ratio per round, from each burst's median step. This script keeps
every step instead, pools them per side over all rounds, and prints the percentiles of each
side's step time and the ratio of the two sides at each percentile. A side whose slow steps
come from stalls of the host (a two-thread step waits for whichever thread was stalled) shows
a long upper tail while its fastest steps stay put; its ratio then depends on which
percentile one reads.

Sides: hmdn-cpu on --threads, against hmdn-cpu on --versus-threads N (thread scaling), or
against one PyTorch variant (--variant, needs PYTHON with torch, see
fixtures/gen_reference.py).

    python3 benches/records/step_times.py --model hmdn-mmoe --batch 1024 --versus-threads 1
    PYTHON=../venv-torch/bin/python python3 benches/records/step_times.py \\
        --model hmdn-pepnet --batch 4096 --infer --variant sparse-fused

Needs `cargo build --release` first.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paired import Server, burst_steps, hmdn_cpu_argv, torch_argv  # noqa: E402

PERCENTILES = [("min", 0.0), ("p10", 0.10), ("p50", 0.50), ("p90", 0.90), ("p99", 0.99)]


def percentile(sorted_values, q):
    """The value at fraction `q` of a sorted list (nearest rank, no interpolation)."""
    return sorted_values[round(q * (len(sorted_values) - 1))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="hmdn-mmoe")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=0.4, help="about this long per burst")
    ap.add_argument("--infer", action="store_true", help="time inference forwards instead")
    ap.add_argument("--versus-threads", type=int, default=0, metavar="N",
                    help="the other side is hmdn-cpu on N threads")
    ap.add_argument("--variant", default=None,
                    help="the other side is this PyTorch variant (e.g. sparse-fused)")
    args = ap.parse_args()
    if bool(args.versus_threads) == bool(args.variant):
        ap.error("give exactly one of --versus-threads and --variant")

    def hmdn_cpu(threads):
        return hmdn_cpu_argv(args.model, args.batch, threads)

    op = "infer" if args.infer else "train"
    ours = Server(f"hmdn-cpu-{args.threads}t", hmdn_cpu(args.threads))
    if args.versus_threads:
        other = Server(f"hmdn-cpu-{args.versus_threads}t", hmdn_cpu(args.versus_threads))
        ask_other = lambda n: other.ask(f"{op} {n}")  # noqa: E731
    else:
        other = Server(f"pytorch {args.variant}",
                       torch_argv(args.model, args.batch, args.threads, [args.variant]))
        ask_other = lambda n: other.ask(f"{op} {args.variant} {n}")  # noqa: E731
    ask_ours = lambda n: ours.ask(f"{op} {n}")  # noqa: E731

    def burst_len(ask):
        return burst_steps(statistics.median(ask(3)["step_s"]), args.seconds)

    sides = [(ours.name, ask_ours, burst_len(ask_ours)),
             (other.name, ask_other, burst_len(ask_other))]
    steps = {name: [] for name, _, _ in sides}
    for r in range(args.rounds):
        for name, ask, n in (sides if r % 2 == 0 else sides[::-1]):
            steps[name].extend(ask(n)["step_s"])
            time.sleep(0.05)
    ours.close()
    other.close()

    a, b = (s[0] for s in sides)
    sa, sb = sorted(steps[a]), sorted(steps[b])
    print(f"{args.model} batch {args.batch} {op}: {len(sa)} / {len(sb)} steps over "
          f"{args.rounds} rounds")
    print(f"| step time (ms) | {a} | {b} | ratio {b} / {a} |")
    print("|---|---|---|---|")
    rows = [(label, percentile(sa, q), percentile(sb, q)) for label, q in PERCENTILES]
    rows.append(("mean", statistics.fmean(sa), statistics.fmean(sb)))
    for label, ta, tb in rows:
        print(f"| {label} | {ta * 1e3:.2f} | {tb * 1e3:.2f} | {tb / ta:.2f} |")


if __name__ == "__main__":
    main()
