#!/usr/bin/env python3
"""PyTorch CPU baseline for the end-to-end benchmark (hmdn-cpu vs PyTorch).

Workload "aliccp-shape": synthetic batches with the shape of processed Ali-CCP:
  * 23 categorical fields (vocabularies below, uniform random ids), e = 16, so x is 368 wide
    (no numeric fields);
  * 3 distribution fields (vocab 3, 5, 3; fields 4, 9, 8 of the 23) with separate tables,
    so z = 48; RQ K = 64, D = 6, `ste` gate input, β = 0.25, α = 1;
  * MLPs 128-64-32 with ReLU, 3 experts, GateNU hidden 64 and γ = 2;
  * click rate 4 % (a second task, purchase, is click AND Bernoulli(0.25) when --tasks 2);
  * Adam lr 1e-3, betas (0.9, 0.999), eps 1e-8.
The models follow SPEC §3 with the SPEC §5 parameter names (the same modules as
fixtures/gen_reference.py, at full size).

Variants (--variant, or `all`):
  dense          nn.Embedding + torch.optim.Adam over everything (default Adam: per-tensor loop)
  dense-foreach  the same, Adam(foreach=True)
  dense-fused    the same, Adam(fused=True)
  sparse         nn.Embedding(sparse=True) + SparseAdam for the tables, Adam for the rest
  sparse-fused   the same, Adam(fused=True) for the rest
  dense-fused-factored
                 dense-fused, with (mmoe, hmdn-mmoe) the experts' first layer factored by
                 field as hmdn-cpu runs it (its `model::factored`): for every field of at
                 most 256 ids, the terms E_f·W_fᵀ of all its ids (all three experts at once)
                 summed per row by one embedding_bag and added to the GEMM on the other
                 fields' columns; the same function. hmdn-pepnet (with --rq distinct):
                 EPNet's first layer factored the same way, as hmdn-cpu's
                 `gatenu::FieldSplit` (on sg(x), so no table gradient through it). Other
                 models: plain dense-fused
  sparse-fused-factored
                 sparse-fused, factored the same way; mmoe's small fields' tables are then
                 dense (their rows feed F.linear whole) and go to the fused Adam

The quantizer (hmdn-*), --rq:
  distinct       (default) once per distinct (gender, city, domain) key of the batch, the
                 results (and hmdn-mmoe's gate weights, and the g part of hmdn-pepnet's
                 GateNU first layers) indexed back to the rows
                 (`Model.rq_forward_distinct`), as hmdn-cpu runs it (its `model::distinct`);
                 the same function as quantizing every row
  rowwise        every row (`Model.rq_forward`), the form PyTorch code usually takes
Both sides do the same work that way. With 45 keys in a batch, `distinct` was the faster
PyTorch form at every batch size tried (2026-11-28, 2 threads: hmdn-mmoe training +10–50 %,
inference at 4096 +40 %), so it is the baseline; `--rq rowwise` gives the other.

What is timed: batches are generated before timing. One training step is zero_grad, the
forward pass, the loss, backward and the optimiser step(s). Each step is timed on its own
after --warmup steps. The figure reported is the median step time, converted to samples/s;
the fastest step is printed too (on a shared, oversubscribed machine the median is dominated
by preemption of the OpenMP threads, the fastest step much less).
Inference is a torch.no_grad() forward at --infer-batch rows (default 4096), timed the same
way. Each variant builds a new model and optimiser with the same seed.

The 1-minute load average is printed with every line. On a machine that is already busy, the
default OpenMP policy (threads spin at every barrier) collapses when another process takes
one of the cores. `OMP_WAIT_POLICY=PASSIVE` (set in the environment before starting Python;
it is recorded in the output) makes it degrade gracefully instead. On an idle machine the
default policy is the one to quote.

--serve keeps one model per variant alive and answers timed `train|infer VARIANT N` requests
on stdin (one JSON line each); benches/records/paired.py alternates such bursts with
`hmdn-cpu bench --serve`, so that both sides of a ratio run within about a second of each
other. --variant takes one or more variants there and here.

Run it (torch 2.15.0; see fixtures/gen_reference.py for the virtualenv):

    python benches/torch_baseline.py --model hmdn-mmoe --batch 256 1024 4096 --threads 2
    python benches/torch_baseline.py --model pepnet --batch 1024 --variant sparse --json
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCABS = [238635, 467298, 9, 14, 3, 8, 4, 4, 3, 5, 100000, 50000, 20000, 10000, 5000,
          1000, 1000, 1000, 500, 200, 100, 50, 20]
FIELDS = [f"f{j}" for j in range(len(VOCABS))]
DIST_FIELDS = [4, 9, 8]  # vocab 3, 5, 3 (gender, city level, domain in Ali-CCP)
DOMAIN_FIELD = DIST_FIELDS[-1]  # shared-bottom towers are per value of this field
E = 16
HIDDEN = [128, 64, 32]
N_EXPERTS = 3
GATENU_HIDDEN = 64
GATENU_GAMMA = 2.0
K, DEPTH, BETA, ALPHA = 64, 6, 0.25, 1.0
CROSS_LAYERS = 3
EMBED_STD = 0.05
LR = 1e-3
CLICK_RATE = 0.04

X_DIM = len(FIELDS) * E  # 368
Z = len(DIST_FIELDS) * E  # 48

MODELS = ["dnn", "wide-deep", "dcn", "shared-bottom", "mmoe", "pepnet", "hmdn-mmoe",
          "hmdn-pepnet"]
VARIANTS = ["dense", "dense-foreach", "dense-fused", "sparse", "sparse-fused",
            "dense-fused-factored", "sparse-fused-factored"]
# Fields whose expert terms are looked up per id in `dense-fused-factored` (hmdn-cpu's
# `factored::MAX_FACTOR_VOCAB`), and the others.
FACTOR_VOCAB = 256
SMALL = [j for j, v in enumerate(VOCABS) if v <= FACTOR_VOCAB]
REST = [j for j, v in enumerate(VOCABS) if v > FACTOR_VOCAB]
REST_COLS = torch.tensor([j * E + c for j in REST for c in range(E)])
SMALL_BASE = torch.tensor([sum(VOCABS[k] for k in SMALL[:i]) for i in range(len(SMALL))])


# ---- modules -----------------------------------------------------------------------------
class MLP(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        dims = [d_in] + HIDDEN
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))

    def forward(self, h):
        for lin in self.layers:
            h = F.relu(lin(h))
        return h


class GateNU(nn.Module):
    """δ(v) = γ·sigmoid(fc2(ReLU(fc1(v))))."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.fc1 = nn.Linear(d_in, GATENU_HIDDEN)
        self.fc2 = nn.Linear(GATENU_HIDDEN, d_out)

    def forward(self, v):
        return GATENU_GAMMA * torch.sigmoid(self.fc2(F.relu(self.fc1(v))))

    def forward_split(self, g_u, inv, x):
        """`forward([g_u[inv], x])` without the concatenation, the g part of fc1 once per
        distinct row `g_u` and indexed back by `inv` (as hmdn-cpu's `GateNu::forward_split`
        with the g term per distinct key): the same function."""
        w = self.fc1.weight
        u1 = F.linear(x, w[:, Z:], self.fc1.bias) + F.linear(g_u, w[:, :Z])[inv]
        return GATENU_GAMMA * torch.sigmoid(self.fc2(F.relu(u1)))


class Codebook(nn.Module):
    def __init__(self):
        super().__init__()
        self.codebook = nn.Embedding(K, Z)


class Model(nn.Module):
    def __init__(self, kind, tasks, sparse, rq_distinct=False, factored=False):
        super().__init__()
        self.kind, self.tasks = kind, tasks
        self.factored = factored
        self.rq_distinct = rq_distinct
        # Factored MMoE reads the small fields' tables whole (dense gradients).
        dense_small = factored and kind in ("mmoe", "hmdn-mmoe")
        self.embedding = nn.ModuleDict(
            {n: nn.Embedding(v, E, sparse=sparse and not (dense_small and j in SMALL))
             for j, (n, v) in enumerate(zip(FIELDS, VOCABS))}
        )
        uses_dist = kind in ("mmoe", "pepnet", "hmdn-mmoe", "hmdn-pepnet")
        self.uses_rq = kind.startswith("hmdn-")
        if uses_dist:
            self.dist_embedding = nn.ModuleDict(
                {FIELDS[j]: nn.Embedding(VOCABS[j], E, sparse=sparse) for j in DIST_FIELDS}
            )
        if self.uses_rq:
            self.rq = Codebook()
        tables = [m.weight for m in self.modules() if isinstance(m, nn.Embedding)]
        with torch.no_grad():
            for w in tables:
                w.normal_(0.0, EMBED_STD)
        if kind in ("mmoe", "hmdn-mmoe"):
            self.experts = nn.ModuleList(MLP(X_DIM) for _ in range(N_EXPERTS))
            self.gates = nn.ModuleList(nn.Linear(Z, N_EXPERTS) for _ in range(tasks))
        elif kind in ("pepnet", "hmdn-pepnet"):
            self.epnet = GateNU(Z + X_DIM, X_DIM)
            self.dnn = MLP(X_DIM)
            self.ppnet = nn.ModuleList(GateNU(Z + X_DIM, h) for h in HIDDEN)
        else:
            self.dnn = MLP(X_DIM)
        if kind == "wide-deep":
            self.wide = nn.ModuleDict(
                {n: nn.Embedding(v, 1, sparse=sparse) for n, v in zip(FIELDS, VOCABS)}
            )
            self.wide.bias = nn.Parameter(torch.zeros(1))
            with torch.no_grad():
                for n in FIELDS:
                    self.wide[n].weight.zero_()
        if kind == "dcn":
            self.cross = nn.ModuleList(CrossLayer() for _ in range(CROSS_LAYERS))
        if kind == "shared-bottom":
            n_dom = VOCABS[DOMAIN_FIELD]
            self.towers = nn.ModuleList(
                nn.ModuleList(nn.Linear(HIDDEN[-1], 1) for _ in range(n_dom))
                for _ in range(tasks)
            )
        else:
            d_h = X_DIM + HIDDEN[-1] if kind == "dcn" else HIDDEN[-1]
            self.towers = nn.ModuleList(nn.Linear(d_h, 1) for _ in range(tasks))

    def table_params(self):
        # The sparse tables (not the codebook, nor a factored model's small-field tables).
        return [m.weight for m in self.modules() if isinstance(m, nn.Embedding) and m.sparse]

    def other_params(self):
        tables = {id(p) for p in self.table_params()}
        return [p for p in self.parameters() if id(p) not in tables]

    def rq_forward(self, xb, weight=None):
        """Implicit RQ with a shared codebook and the `ste` gate input (SPEC §2). L_rq is the
        mean over the rows of `xb`, or with `weight` [rows] the weighted sum of the rows'
        terms (`rq_forward_distinct`: each distinct row weighs its share of the batch)."""
        C = self.rq.codebook.weight  # [K, z]
        c_sg = C.detach()
        c_sq = (c_sg * c_sg).sum(1)  # [K]
        r, s, loss = xb, torch.zeros_like(xb), xb.new_zeros(())
        for _ in range(DEPTH):
            u = r
            u_sg = u.detach()
            # ||u − C_k||² up to the per-row constant ||u||²: the argmin is unchanged.
            codes = torch.addmm(c_sq, u_sg, c_sg.t(), alpha=-2.0).argmin(1)
            q = F.embedding(codes, C)
            q_sg = q.detach()
            if weight is None:
                loss = loss + ((q - u_sg) ** 2).sum(1).mean() + BETA * ((q_sg - u) ** 2).sum(1).mean()
            else:
                terms = ((q - u_sg) ** 2).sum(1) + BETA * ((q_sg - u) ** 2).sum(1)
                loss = loss + (terms * weight).sum()
            r = u - q_sg
            s = s + q
        return xb + (s - xb).detach(), loss

    def rq_forward_distinct(self, cat):
        """`rq_forward` once per distinct (gender, city, domain) key of the batch, as
        hmdn-cpu runs it: rows with the same distribution ids have the same x_b, so the same
        codes, gate input and L_rq terms. The distinct rows' results go back to the rows by
        index (their gradients add up there), and each distinct row's L_rq term counts as
        often as the key occurs. The same function as `rq_forward` on every row. Returns the
        distinct rows' gate input, each row's distinct row, and L_rq."""
        ids = cat[:, DIST_FIELDS]
        key = ids[:, 0]
        for j in DIST_FIELDS[1:]:
            key = key * VOCABS[j] + cat[:, j]
        uniq, inv, counts = torch.unique(key, return_inverse=True, return_counts=True)
        # The first row of each key holds its ids.
        first = torch.full_like(uniq, key.numel()).scatter_reduce(
            0, inv, torch.arange(key.numel()), reduce="amin")
        ids_u = ids[first]
        xb = torch.cat([self.dist_embedding[FIELDS[j]](ids_u[:, p])
                        for p, j in enumerate(DIST_FIELDS)], 1)
        g_u, loss = self.rq_forward(xb, weight=counts.to(xb.dtype) / key.numel())
        return g_u, inv, loss

    def experts_factored(self, cat):
        """The experts on x, their first layer factored by field (`dense-fused-factored`):
        u = x_rest·W_restᵀ + b + Σ_f P_f[i_f] with P_f = E_f·W_fᵀ over all of field f's ids,
        the three experts' first layers side by side. The same function as `e(x)`."""
        w = torch.cat([e.layers[0].weight for e in self.experts], 0)  # [3·128, 368]
        b = torch.cat([e.layers[0].bias for e in self.experts], 0)
        x_rest = torch.cat([self.embedding[FIELDS[j]](cat[:, j]) for j in REST], 1)
        u = F.linear(x_rest, w[:, REST_COLS], b)
        # All small fields' terms in one table [Σ vocab, 384], summed per row by one
        # embedding_bag over the rows' ids shifted to their field's block.
        p = torch.cat([F.linear(self.embedding[FIELDS[j]].weight, w[:, j * E:(j + 1) * E])
                       for j in SMALL], 0)
        ids = (cat[:, SMALL] + SMALL_BASE).reshape(-1)
        u = u + F.embedding_bag(ids, p, mode="sum",
                                offsets=torch.arange(0, ids.numel(), len(SMALL)))
        out = []
        for i, e in enumerate(self.experts):
            h = F.relu(u[:, i * HIDDEN[0]:(i + 1) * HIDDEN[0]])
            for lin in e.layers[1:]:
                h = F.relu(lin(h))
            out.append(h)
        return torch.stack(out, 1)

    def epnet_factored(self, g_u, inv, x, cat):
        """EPNet's δ on [g, sg(x)] with the x part of its first layer factored by field
        (`-factored` variants of pepnet models): u1 = sg(x_rest)·W_restᵀ + b + g-term +
        Σ_f P_f[i_f], P_f = sg(E_f)·W_fᵀ over all of field f's ids. The same function as
        `epnet.forward_split(g_u, inv, x.detach())`."""
        fc1 = self.epnet.fc1
        wx = fc1.weight[:, Z:]
        u1 = F.linear(x.detach()[:, REST_COLS], wx[:, REST_COLS], fc1.bias)
        u1 = u1 + F.linear(g_u, fc1.weight[:, :Z])[inv]
        p = torch.cat([F.linear(self.embedding[FIELDS[j]].weight.detach(),
                                wx[:, j * E:(j + 1) * E]) for j in SMALL], 0)
        ids = (cat[:, SMALL] + SMALL_BASE).reshape(-1)
        u1 = u1 + F.embedding_bag(ids, p, mode="sum",
                                  offsets=torch.arange(0, ids.numel(), len(SMALL)))
        return GATENU_GAMMA * torch.sigmoid(self.epnet.fc2(F.relu(u1)))

    def forward(self, cat):
        """Returns logits [B, T] and the RQ loss (0 without RQ)."""
        factored = self.factored and self.kind in ("mmoe", "hmdn-mmoe")
        x = None if factored else torch.cat(
            [self.embedding[n](cat[:, j]) for j, n in enumerate(FIELDS)], dim=1)
        rq_loss = cat.new_zeros((), dtype=torch.float32)
        g_u = inv = None
        if self.uses_rq and self.rq_distinct:
            # As hmdn-cpu: MMoE's gate weights depend on g only, so they too are computed
            # per distinct key and indexed back to the rows.
            g_u, inv, rq_loss = self.rq_forward_distinct(cat)
            g = g_u[inv]
        elif hasattr(self, "dist_embedding"):
            xb = torch.cat([self.dist_embedding[FIELDS[j]](cat[:, j]) for j in DIST_FIELDS], 1)
            g = xb
            if self.uses_rq:
                g, rq_loss = self.rq_forward(xb)
        k = self.kind
        if k in ("mmoe", "hmdn-mmoe"):
            if factored:
                ex = self.experts_factored(cat)
            else:
                ex = torch.stack([e(x) for e in self.experts], dim=1)  # [B, n, 32]
            def gate(t):
                if g_u is None:
                    return torch.softmax(self.gates[t](g), 1)
                return torch.softmax(self.gates[t](g_u), 1)[inv]
            logits = [
                self.towers[t](torch.bmm(gate(t)[:, None, :], ex)[:, 0])
                for t in range(self.tasks)
            ]
        elif k in ("pepnet", "hmdn-pepnet"):
            if g_u is None:
                xp = self.epnet(torch.cat([g, x.detach()], 1)) * x
                pp_in = torch.cat([g, xp.detach()], 1)
                deltas = [gate(pp_in) for gate in self.ppnet]
            elif self.factored:
                # As hmdn-cpu's `gatenu::FieldSplit`: EPNet's first layer by field.
                xp = self.epnet_factored(g_u, inv, x, cat) * x
                xp_sg = xp.detach()
                deltas = [gate.forward_split(g_u, inv, xp_sg) for gate in self.ppnet]
            else:
                # As hmdn-cpu: each GateNU's g term per distinct key, no [g, sg(x)] copies.
                xp = self.epnet.forward_split(g_u, inv, x.detach()) * x
                xp_sg = xp.detach()
                deltas = [gate.forward_split(g_u, inv, xp_sg) for gate in self.ppnet]
            h = xp
            for lin, delta in zip(self.dnn.layers, deltas):
                h = F.relu(lin(h)) * delta
            logits = [tw(h) for tw in self.towers]
        elif k == "dcn":
            xl = x
            for layer in self.cross:
                xl = layer(x, xl)
            h = torch.cat([xl, self.dnn(x)], 1)
            logits = [tw(h) for tw in self.towers]
        elif k == "shared-bottom":
            h = self.dnn(x)
            dom = cat[:, DOMAIN_FIELD : DOMAIN_FIELD + 1]
            logits = []
            for towers in self.towers:
                w = torch.cat([tw.weight for tw in towers], 0)  # [n_dom, 32]
                b = torch.cat([tw.bias for tw in towers], 0)
                logits.append(torch.addmm(b, h, w.t()).gather(1, dom))
        else:  # dnn, wide-deep
            h = self.dnn(x)
            logits = [tw(h) for tw in self.towers]
            if k == "wide-deep":
                wide = sum(self.wide[n](cat[:, j]) for j, n in enumerate(FIELDS))
                logits = [lg + wide + self.wide.bias for lg in logits]
        return torch.cat(logits, 1), rq_loss


class CrossLayer(nn.Module):
    """DCN-v1 cross layer x_{l+1} = x_0·(x_l·w) + b + x_l."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(X_DIM) / X_DIM**0.5)
        self.bias = nn.Parameter(torch.zeros(X_DIM))

    def forward(self, x0, xl):
        return x0 * (xl @ self.weight)[:, None] + self.bias + xl


# ---- data and timing ---------------------------------------------------------------------
def make_batches(n, rows, tasks, gen):
    out = []
    for _ in range(n):
        cat = torch.stack(
            [torch.randint(0, v, (rows,), generator=gen) for v in VOCABS], dim=1
        )
        click = (torch.rand(rows, generator=gen) < CLICK_RATE).float()
        labels = [click]
        for _ in range(1, tasks):
            labels.append(click * (torch.rand(rows, generator=gen) < 0.25).float())
        out.append((cat, torch.stack(labels, 1)))
    return out


def make_optimisers(model, variant):
    if variant.startswith("dense"):
        fused = variant.startswith("dense-fused")
        kw = {"foreach": variant == "dense-foreach", "fused": fused}
        if not kw["fused"]:
            kw.pop("fused")
        return [torch.optim.Adam(model.parameters(), lr=LR, **kw)]
    kw = {"fused": True} if variant.startswith("sparse-fused") else {}
    return [torch.optim.SparseAdam(model.table_params(), lr=LR),
            torch.optim.Adam(model.other_params(), lr=LR, **kw)]


def train_step(model, opts, cat, labels):
    for o in opts:
        o.zero_grad(set_to_none=True)
    logits, rq_loss = model(cat)
    loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(0).sum()
    loss = loss + ALPHA * rq_loss
    loss.backward()
    for o in opts:
        o.step()
    return loss


def timed(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def build(kind, variant, batch, args):
    """A variant's model and optimisers (seed --seed) and its --n-batches training batches
    (seed --seed + 1), plus the generator that made them."""
    torch.manual_seed(args.seed)
    model = Model(kind, args.tasks, sparse=variant.startswith("sparse"),
                  rq_distinct=args.rq == "distinct", factored=variant.endswith("-factored"))
    opts = make_optimisers(model, variant)
    gen = torch.Generator().manual_seed(args.seed + 1)
    batches = make_batches(args.n_batches, batch, args.tasks, gen)
    return model, opts, batches, gen


def bench(kind, variant, batch, args):
    model, opts, batches, gen = build(kind, variant, batch, args)
    it = iter(range(10**9))

    def step():
        cat, labels = batches[next(it) % len(batches)]
        train_step(model, opts, cat, labels)

    t_train = timed(step, args.warmup, args.steps)
    infer_cat = make_batches(1, args.infer_batch, args.tasks, gen)[0][0]

    def infer():
        with torch.no_grad():
            model(infer_cat)

    t_infer = timed(infer, 1, args.infer_reps)
    med, med_i = statistics.median(t_train), statistics.median(t_infer)
    return {
        "model": kind, "variant": variant, "batch": batch, "threads": args.threads,
        "rq": args.rq if kind.startswith("hmdn-") else "-",
        "train_samples_per_s": batch / med, "train_ms_per_step": 1e3 * med,
        "train_ms_min": 1e3 * min(t_train), "train_ms_max": 1e3 * max(t_train),
        "train_samples_per_s_best_step": batch / min(t_train),
        "infer_batch": args.infer_batch, "infer_samples_per_s": args.infer_batch / med_i,
        "infer_ms": 1e3 * med_i,
        "params": sum(p.numel() for p in model.parameters()),
        "loadavg_1min": os.getloadavg()[0],
    }


def serve(args, variants):
    """--serve: one model and optimiser per variant at one batch size, warmed up, then one
    JSON line per request read from stdin: `train VARIANT N` / `infer VARIANT N` run N steps
    of that variant (inference: a no_grad forward on a training batch), each timed, and reply
    {"op", "variant", "batch", "step_s": [...]}; `quit` or end of input stops. A line it
    cannot read gets {"error": "line L: ..."}. benches/records/paired.py drives this and
    `hmdn-cpu bench --serve` in alternating short bursts."""
    if len(args.batch) != 1:
        sys.exit("--serve takes exactly one --batch")
    batch = args.batch[0]
    state = {}
    for v in variants:
        model, opts, batches, _ = build(args.model, v, batch, args)
        state[v] = {"model": model, "opts": opts, "batches": batches, "k": 0}
        for i in range(args.warmup):
            train_step(model, opts, *batches[i % len(batches)])
        with torch.no_grad():
            model(batches[0][0])

    def reply(obj):
        print(json.dumps(obj), flush=True)

    reply({"ready": True, "model": args.model, "batch": batch, "threads": args.threads,
           "variants": variants, "torch": torch.__version__, "rq": args.rq,
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)")})
    for lineno, line in enumerate(sys.stdin, 1):
        words = line.split()
        if not words:
            continue
        if words == ["quit"]:
            break
        if (len(words) != 3 or words[0] not in ("train", "infer") or words[1] not in state
                or not words[2].isdigit()):
            reply({"error": f"line {lineno}: expected `train|infer VARIANT N` with VARIANT "
                            f"one of {variants}, or `quit`"})
            continue
        op, v, n = words[0], words[1], int(words[2])
        st = state[v]
        times = []
        for _ in range(n):
            cat, labels = st["batches"][st["k"] % len(st["batches"])]
            st["k"] += 1
            t0 = time.perf_counter()
            if op == "train":
                train_step(st["model"], st["opts"], cat, labels)
            else:
                with torch.no_grad():
                    st["model"](cat)
            times.append(time.perf_counter() - t0)
        reply({"op": op, "variant": v, "batch": batch, "step_s": times})


def main():
    ap = argparse.ArgumentParser(description="PyTorch CPU baseline (aliccp-shape workload)")
    ap.add_argument("--model", choices=MODELS, default="hmdn-mmoe")
    ap.add_argument("--batch", type=int, nargs="+", default=[1024], help="one or more sizes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10, help="timed training steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--variant", choices=VARIANTS + ["all"], nargs="+", default=["all"],
                    help="one or more variants, or all")
    ap.add_argument("--infer-batch", type=int, default=4096)
    ap.add_argument("--infer-reps", type=int, default=5)
    ap.add_argument("--tasks", type=int, default=1, choices=[1, 2])
    ap.add_argument("--n-batches", type=int, default=4, help="distinct pre-generated batches")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rq", choices=["distinct", "rowwise"], default="distinct",
                    help="hmdn-*: quantize once per distinct distribution key of the batch "
                         "(as hmdn-cpu does; default) or every row")
    ap.add_argument("--json", action="store_true", help="one JSON document on stdout")
    ap.add_argument("--serve", action="store_true",
                    help="answer timed `train|infer VARIANT N` requests on stdin, one JSON line "
                         "each (see serve(); driven by benches/records/paired.py)")
    ap.add_argument("--no-flush-denormal", action="store_true",
                    help="keep IEEE subnormals (default: torch.set_flush_denormal(True), the "
                         "PyTorch counterpart of hmdn-cpu's Adam storing subnormal moments as 0)")
    args = ap.parse_args()

    # Weights whose gradient stays zero (dead ReLU units) have Adam's first moment decay into
    # the subnormal range after ~600 steps, where every operation on it takes the CPU's slow
    # microcoded path. hmdn-cpu stores such moments as zero; PyTorch's way out is flushing
    # subnormals process-wide (FTZ/DAZ). On by default, so that long runs compare like for like.
    torch.set_flush_denormal(not args.no_flush_denormal)
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)
    variants = VARIANTS if "all" in args.variant else list(dict.fromkeys(args.variant))
    if args.serve:
        serve(args, variants)
        return
    env = {
        "torch": torch.__version__, "threads": args.threads, "cpu": platform.processor()
        or platform.machine(), "loadavg_start": os.getloadavg()[0],
        "workload": "aliccp-shape", "tasks": args.tasks, "rq": args.rq,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
    }
    results = []
    for batch in args.batch:
        for v in variants:
            r = bench(args.model, v, batch, args)
            results.append(r)
            if not args.json:
                print(f"{r['model']:<12} batch={batch:<5} threads={args.threads} {v:<13} "
                      f"train {r['train_samples_per_s']:>9.0f} samples/s "
                      f"({r['train_ms_per_step']:.1f} ms/step; fastest step {r['train_ms_min']:.1f} ms "
                      f"= {r['train_samples_per_s_best_step']:.0f}/s, slowest "
                      f"{r['train_ms_max']:.1f})   infer@{args.infer_batch} "
                      f"{r['infer_samples_per_s']:>9.0f} samples/s   load {r['loadavg_1min']:.1f}",
                      flush=True)
        best = max((r for r in results if r["batch"] == batch),
                   key=lambda r: r["train_samples_per_s"])
        if not args.json:
            print(f"{args.model:<12} batch={batch:<5} best: {best['variant']} "
                  f"{best['train_samples_per_s']:.0f} samples/s train", flush=True)
    env["loadavg_end"] = os.getloadavg()[0]
    if args.json:
        json.dump({"env": env, "results": results}, sys.stdout, indent=1)
        print()
    else:
        print(f"# torch {env['torch']}, OMP_WAIT_POLICY {env['omp_wait_policy']}, rq {args.rq}, "
              f"load average {env['loadavg_start']:.2f} -> {env['loadavg_end']:.2f}")


if __name__ == "__main__":
    main()
