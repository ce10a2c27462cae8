"""Prints the README's performance tables from run-interleaved.sh output.

    summarize.py OUT_DIR                      one run: OUT_DIR/ours.jsonl, OUT_DIR/torch-{model}.txt
    summarize.py OUT_DIR OURS TORCH_PATTERN   one run, files named explicitly ({} = the model)
    summarize.py --runs OURS TORCH_PATTERN [OURS TORCH_PATTERN ...]
                                              several runs of the same procedure, their rounds
                                              pooled (each run's rounds keep their pairing)
"""
import json, re, statistics as st, sys
if len(sys.argv) > 1 and sys.argv[1] == '--runs':
    RUNS = list(zip(sys.argv[2::2], sys.argv[3::2]))
else:
    OUT = sys.argv[1] if len(sys.argv) > 1 else 'benches/records/new'
    RUNS = [(sys.argv[2] if len(sys.argv) > 2 else f'{OUT}/ours.jsonl',
             sys.argv[3] if len(sys.argv) > 3 else f'{OUT}/torch-{{}}.txt')]
ours = []
torch = {}
seq = {}
NREP = 0
for ri, (OURS, TORCH) in enumerate(RUNS):
    run = [json.loads(l) for l in open(OURS) if l.strip()]
    ours += run
    reps = set()
    for m in ['hmdn-mmoe', 'hmdn-pepnet']:
        rep = None
        for line in open(TORCH.format(m)):
            g = re.match(r'# rep (\d+) (\S+) (\d+)', line)
            if g: rep = NREP + int(g.group(1)); reps.add(rep); continue
            g = re.match(r'(\S+)\s+batch=(\d+)\s+threads=\d+ (\S+)\s+train\s+(\d+) samples/s.*infer@4096\s+(\d+)', line)
            if g:
                torch.setdefault((m, int(g.group(2)), rep), []).append((g.group(3), int(g.group(4)), int(g.group(5))))
    NREP += max(reps) - NREP if reps else 0
    for d in run:
        seq.setdefault((d['model'], d['batch'], d['threads']), []).append(d)
REPS = range(1, NREP + 1)
# ours 2-thread runs in order; pair each (model,batch) per rep: first 3 per model per rep are batches, then 1-thr, 2-thr
print(f'| model | batch | hmdn-cpu ({NREP} rounds) | PyTorch best ({NREP} rounds) | ratio per round | median ratio |')
for m in ['hmdn-mmoe', 'hmdn-pepnet']:
    for b in [256, 1024, 4096]:
        o = [d['train_samples_per_s'] for d in seq[(m, b, 2)]]
        if b == 1024:
            o = [d['train_samples_per_s'] for d in seq[(m, b, 2)]][0::2]  # the runs right after torch
        t = [max(v[1] for v in torch[(m, b, r)]) for r in REPS if (m, b, r) in torch]
        tv = [max(torch[(m, b, r)], key=lambda v: v[1])[0] for r in REPS if (m, b, r) in torch]
        ratios = [a / c for a, c in zip(o, t)]
        print(f'| {m} | {b} | {", ".join(f"{x:,.0f}" for x in o)} | {", ".join(f"{x:,}" for x in t)} ({"/".join(tv)}) | {", ".join(f"{r:.2f}" for r in ratios)} | {st.median(ratios):.2f} |')
print()
print('inference @4096: ours (the batch-4096 runs) vs torch infer@4096 best variant per run')
for m in ['hmdn-mmoe', 'hmdn-pepnet']:
    o = [d['infer_samples_per_s'] for d in seq[(m, 4096, 2)]]
    t = [max(v[2] for v in torch[(m, 4096, r)]) for r in REPS if (m, 4096, r) in torch]
    ratios = [a / c for a, c in zip(o, t)]
    print(m, [round(x) for x in o], t, [round(r, 2) for r in ratios], 'median', round(st.median(ratios), 2))
print()
print('thread scaling at 1024 (1-thread run, then 2-thread run right after)')
for m in ['hmdn-mmoe', 'hmdn-pepnet']:
    one = [d['train_samples_per_s'] for d in seq[(m, 1024, 1)]]
    two = [d['train_samples_per_s'] for d in seq[(m, 1024, 2)]][1::2]
    print(m, [round(x) for x in one], [round(x) for x in two], [round(b / a, 2) for a, b in zip(one, two)], 'median', round(st.median([b / a for a, b in zip(one, two)]), 2))
print()
print('GFLOP/s (train) per run, 2 threads:')
for m in ['hmdn-mmoe', 'hmdn-pepnet']:
    for b in [256, 1024, 4096]:
        print(m, b, [round(d['train_gflops'], 1) for d in seq[(m, b, 2)]])
print()
print('phases (median share over the 2-thread runs):')
for m in ['hmdn-mmoe', 'hmdn-pepnet']:
    for b in [256, 1024, 4096]:
        names = [n for n, _ in seq[(m, b, 2)][0]['phases']]
        med = {n: st.median([dict(d['phases']).get(n, 0) for d in seq[(m, b, 2)]]) for n in names}
        print(m, b, ' '.join(f'{n}={100*v:.1f}' for n, v in med.items()))
    names = [n for n, _ in seq[(m, 4096, 2)][0]['infer_phases']]
    med = {n: st.median([dict(d['infer_phases']).get(n, 0) for d in seq[(m, 4096, 2)]]) for n in names}
    print(m, 'infer 4096', ' '.join(f'{n}={100*v:.1f}' for n, v in med.items()))
print('peak RSS', sorted(set(round(d['peak_rss_mib']) for d in ours)))
