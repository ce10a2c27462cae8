#!/usr/bin/env python3
"""hmdn-cpu vs PyTorch in alternating short bursts: the paired end-to-end comparison.

For each (model, batch) it starts `hmdn-cpu bench --serve` and `torch_baseline.py --serve`
(both warm up first), then runs rounds. In each round every side runs one burst of steps —
hmdn-cpu `--steps` training steps, each PyTorch variant `--torch-steps` — and the side that
goes first alternates from round to round. A round's ratio is hmdn-cpu's samples/s over the
best PyTorch variant's, each from its median step in that round. Bursts last about a second,
so both sides of a ratio see the same host speed; the host's speed drifts by ±30 % over
minutes, which separate runs cannot tell apart from a real difference.

With --infer, the rounds time inference forwards (hmdn-cpu `Model::infer`, PyTorch a
no_grad forward) on the same batches instead of training steps.

Usage (after `cargo build --release`; PyTorch in a virtualenv, see fixtures/gen_reference.py):

    PYTHON=../venv-torch/bin/python python3 benches/records/paired.py \\
        --model hmdn-mmoe --batch 1024 --rounds 15 --out benches/records/new/paired.jsonl

With --versus-binary PATH, the baseline is another build of hmdn-cpu (e.g. the previous
commit's `target/release/hmdn-cpu`, copied aside) on the same threads: an A/B of two
engines, paired the same way, no PyTorch. A round's ratio is then new over old.

It prints one line per round and a summary; with --out it appends one JSON object per round
and one summary object to that file. `benches/records/run-paired.sh` runs the README's set;
`paired.py --summarize FILE...` prints the table over every round in the files, and
`paired.py --summarize-variants FILE...` our median ratio against each PyTorch variant alone.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# In every recorded run of torch_baseline.py (benches/records/torch-*.txt, 294 model × batch
# results), the best variant was one of these three; dense and dense-foreach never were.
# For mmoe and hmdn-mmoe also the two `-factored` variants, which run the experts the way
# hmdn-cpu does (their first layer factored by field, `model::factored`), so that the ratio
# is against PyTorch doing that work too when it is faster for PyTorch; for hmdn-pepnet the
# same variants factor EPNet's first layer (hmdn-cpu's `gatenu::FieldSplit`).
DEFAULT_VARIANTS = ["dense-fused", "sparse", "sparse-fused"]
FACTORED_VARIANTS = DEFAULT_VARIANTS + ["dense-fused-factored", "sparse-fused-factored"]


class Server:
    """A `--serve` child: one JSON request line in, one JSON reply line out."""

    def __init__(self, name, argv):
        self.name = name
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         text=True, bufsize=1, cwd=ROOT)
        except OSError as e:
            hint = ("run `cargo build --release` first" if name.startswith("hmdn-cpu")
                    else "set PYTHON to a Python with torch (see fixtures/gen_reference.py)")
            sys.exit(f"{name}: cannot start {argv[0]}: {e.strerror}; {hint}")
        self.ready = self.read()
        if not self.ready.get("ready"):
            sys.exit(f"{name}: unexpected first line {self.ready}")

    def read(self):
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            sys.exit(f"{self.name} exited with code {code} before answering")
        return json.loads(line)

    def ask(self, request):
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        reply = self.read()
        if "error" in reply:
            sys.exit(f"{self.name}: {reply['error']}")
        return reply

    def close(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.proc.wait(timeout=60)


def hmdn_cpu_argv(model, batch, threads,
                  binary=os.path.join(ROOT, "target", "release", "hmdn-cpu")):
    """The command line of an `hmdn-cpu bench --serve` child."""
    return [binary, "bench", "--serve",
            "--model", model, "--batch", str(batch), "--threads", str(threads)]


def torch_argv(model, batch, threads, variants):
    """The command line of a `torch_baseline.py --serve` child (Python from $PYTHON)."""
    return [os.environ.get("PYTHON", "python3"), os.path.join(ROOT, "benches", "torch_baseline.py"),
            "--serve", "--model", model, "--batch", str(batch),
            "--threads", str(threads), "--variant", *variants]


def burst_steps(seconds_per_step, seconds=0.4):
    """Steps for a burst of about `seconds` (at least 5), from one probe's step time."""
    return max(5, round(seconds / max(seconds_per_step, 1e-6)))


def rate(reply):
    """Samples/s of a burst's median step."""
    return reply["batch"] / statistics.median(reply["step_s"])


# The targets (training at batch 256 / 1024 / 4096, inference at 4096).
TARGETS = {("train", 256): 4.0, ("train", 1024): 3.0, ("train", 4096): 2.0,
           ("infer", 4096): 2.0}
# 2 threads against 1 at batch 1024 (--versus-threads 1).
SCALING_TARGET = 1.8


def read_rounds(paths):
    """Every round record (not the summaries) in the given --out files, in order."""
    recs = []
    for path in paths:
        with open(path) as f:
            recs.extend(r for r in map(json.loads, f) if "round" in r)
    return recs


def summarize(paths):
    """A markdown table over every round in the given --out files, per (model, batch, op)."""
    rounds = {}
    for rec in read_rounds(paths):
        key = (rec.get("baseline", "pytorch"), rec["model"], rec["op"], rec["batch"])
        rounds.setdefault(key, []).append(rec)
    print("| model | batch | op | baseline | rounds | hmdn-cpu, median | baseline (best), median | "
          "ratio per round | median ratio | target |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    order = sorted(rounds.items(), key=lambda kv: (kv[0][0] != "pytorch", kv[0][0], kv[0][1],
                                                    kv[0][2] != "train", kv[0][3]))
    for (baseline, model, op, batch), rs in order:
        ratios = [r["ratio"] for r in rs]
        med = statistics.median(ratios)
        target = TARGETS.get((op, batch)) if baseline == "pytorch" else (
            SCALING_TARGET if (op, batch, baseline) == ("train", 1024, "hmdn-cpu-1t") else None)
        verdict = "–"
        if target:
            hits = sum(x >= target for x in ratios)
            verdict = (f"≥ {target:g}× — {'met' if med >= target else 'missed'} "
                       f"({hits} of {len(rs)} rounds ≥ {target:g}×)")
        ours = statistics.median(r["ours"] for r in rs)
        best = statistics.median(r["torch"][r["torch_best"]] for r in rs)
        print(f"| {model} | {batch} | {op} | {baseline} | {len(rs)} | {ours:,.0f} | {best:,.0f} | "
              f"{min(ratios):.2f} – {max(ratios):.2f} | **{med:.2f}×** | {verdict} |")


def summarize_variants(paths):
    """Per PyTorch variant, over every round in the given --out files: its median samples/s
    and the median of our per-round ratio against that one variant. The tables' ratio takes
    the fastest variant in each round instead, which is the conservative choice: where
    variants run the same computation (inference does not use the optimiser, and a sparse
    embedding's forward is a dense one's), the per-round maximum of several equally fast
    variants is biased upwards by their noise."""
    rounds = {}
    for rec in read_rounds(paths):
        if rec.get("baseline", "pytorch") == "pytorch":
            rounds.setdefault((rec["model"], rec["op"], rec["batch"]), []).append(rec)
    print("| model | batch | op | rounds | variant | variant, median | median ratio against it |")
    print("|---|---|---|---|---|---|---|")
    for (model, op, batch), rs in sorted(rounds.items(), key=lambda kv: (kv[0][0],
                                                                           kv[0][1] != "train",
                                                                           kv[0][2])):
        for v in dict.fromkeys(v for r in rs for v in r["torch"]):
            rv = [r for r in rs if v in r["torch"]]
            rate_v = statistics.median(r["torch"][v] for r in rv)
            ratio_v = statistics.median(r["ours"] / r["torch"][v] for r in rv)
            print(f"| {model} | {batch} | {op} | {len(rv)} | {v} | {rate_v:,.0f} | {ratio_v:.3f} |")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--summarize":
        summarize(sys.argv[2:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--summarize-variants":
        summarize_variants(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="hmdn-mmoe")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=0,
                    help="hmdn-cpu steps per burst (default: about 0.4 s of them)")
    ap.add_argument("--torch-steps", type=int, default=0,
                    help="steps per burst of each PyTorch variant (default: about 0.4 s)")
    ap.add_argument("--variants", nargs="+", default=None,
                    help="PyTorch variants to time (default: dense-fused sparse sparse-fused, "
                         "plus dense-fused-factored sparse-fused-factored for mmoe models)")
    ap.add_argument("--infer", action="store_true", help="time inference forwards instead")
    ap.add_argument("--pause", type=float, default=0.05,
                    help="seconds between bursts (lets the other side's threads go idle)")
    ap.add_argument("--out", help="append the rounds and the summary (JSON lines) here")
    ap.add_argument("--versus-threads", type=int, default=0, metavar="N",
                    help="thread scaling instead: the baseline is hmdn-cpu itself on N threads "
                         "(no PyTorch)")
    ap.add_argument("--versus-binary", metavar="PATH", default=None,
                    help="A/B instead: the baseline is the hmdn-cpu binary at PATH on the same "
                         "threads (no PyTorch)")
    args = ap.parse_args()
    if args.versus_threads and args.versus_binary:
        ap.error("--versus-threads and --versus-binary exclude each other")

    if args.variants is None:
        factored = args.model in ("mmoe", "hmdn-mmoe", "hmdn-pepnet")
        args.variants = FACTORED_VARIANTS if factored else DEFAULT_VARIANTS
    ours = Server("hmdn-cpu", hmdn_cpu_argv(args.model, args.batch, args.threads))
    if args.versus_threads:
        baseline = f"hmdn-cpu-{args.versus_threads}t"
        args.variants = [baseline]
        torch = Server(baseline, hmdn_cpu_argv(args.model, args.batch, args.versus_threads))
    elif args.versus_binary:
        baseline = "hmdn-cpu-baseline"
        args.variants = [baseline]
        torch = Server(baseline, hmdn_cpu_argv(args.model, args.batch, args.threads,
                                               os.path.abspath(args.versus_binary)))
    else:
        baseline = "pytorch"
        torch = Server("pytorch", torch_argv(args.model, args.batch, args.threads, args.variants))
    op = "infer" if args.infer else "train"

    def ask_baseline(v, n):
        own = args.versus_threads or args.versus_binary
        return torch.ask(f"{op} {n}" if own else f"{op} {v} {n}")

    # Burst lengths: about 0.4 s per burst from one probe step each (at least 5 steps).
    n_ours = args.steps or burst_steps(statistics.median(ours.ask(f"{op} 3")["step_s"]))
    n_torch = args.torch_steps or burst_steps(
        max(statistics.median(ask_baseline(v, 3)["step_s"]) for v in args.variants))

    out = open(args.out, "a") if args.out else None
    rounds = []
    for r in range(args.rounds):
        sides = ["ours", "torch"] if r % 2 == 0 else ["torch", "ours"]
        got = {}
        for side in sides:
            if side == "ours":
                got["ours"] = rate(ours.ask(f"{op} {n_ours}"))
            else:
                for v in args.variants:
                    got[v] = rate(ask_baseline(v, n_torch))
                    time.sleep(args.pause)
            time.sleep(args.pause)
        best = max(args.variants, key=lambda v: got[v])
        rec = {"round": r + 1, "model": args.model, "batch": args.batch, "op": op,
               "baseline": baseline,
               "threads": args.threads, "first": sides[0], "ours": got["ours"],
               "torch": {v: got[v] for v in args.variants}, "torch_best": best,
               "ratio": got["ours"] / got[best], "time_utc": time.strftime("%H:%M:%S",
                                                                           time.gmtime())}
        rounds.append(rec)
        print(f"{args.model} {args.batch} {op} round {r + 1:>2}: hmdn-cpu {got['ours']:>9.0f}"
              f"  {baseline} {got[best]:>9.0f} ({best})  ratio {rec['ratio']:.2f}", flush=True)
        if out:
            out.write(json.dumps(rec) + "\n")
    ours.close()
    torch.close()

    ratios = [r["ratio"] for r in rounds]
    summary = {
        "summary": True, "model": args.model, "batch": args.batch, "op": op,
        "baseline": baseline,
        "threads": args.threads, "rounds": len(rounds), "steps_ours": n_ours,
        "steps_torch": n_torch, "variants": args.variants,
        "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "ours_median": statistics.median(r["ours"] for r in rounds),
        "torch_best_median": statistics.median(r["torch"][r["torch_best"]] for r in rounds),
        "torch": torch.ready, "hmdn_cpu": ours.ready,
    }
    print(f"{args.model} {args.batch} {op}: median ratio {summary['ratio_median']:.2f} "
          f"(rounds {summary['ratio_min']:.2f} – {summary['ratio_max']:.2f}); hmdn-cpu "
          f"{summary['ours_median']:.0f}, {baseline} best {summary['torch_best_median']:.0f} "
          f"samples/s (medians over {len(rounds)} rounds; {n_ours} / {n_torch} steps per burst)",
          flush=True)
    if out:
        out.write(json.dumps(summary) + "\n")
        out.close()


if __name__ == "__main__":
    main()
