"""Inference speed of composition: Parallel + AdapterDrop, fusion pruning, per-sample routing.

Usage::

    python benchmarks/bench_composition.py parallel   [--model mpnet-base] [--tasks 8] [--drop 5] [--batch 8] [--seq 128]
    python benchmarks/bench_composition.py fusion     [--model mpnet-base] [--adapters 8] [--keep 2] [--batch 16] [--seq 128]
    python benchmarks/bench_composition.py routing    [--model mpnet-base] [--rows 64] [--adapters 16] [--seq 128]
    (any of them: --rounds N, --device cuda, --random-init to skip loading weights: timings do not depend on them)

Every configuration of one command runs in the same process on the same model and inputs;
rounds alternate the configurations and each figure is the median over rounds, so the ratios
printed compare like with like even on a busy machine. Outputs of the fast paths are checked
against the plain ones before timing.

* ``parallel``: ``--tasks`` Pfeiffer adapters with heads, one input batch of ``--batch`` rows:
  ``Parallel`` with adapters in all layers, ``AdapterDrop(Parallel, first=--drop)`` (the lower
  layers run once on the shared batch, the batch splits at layer ``--drop``), and one pass per
  task. The compute bound of the sharing: a layer costs the same per row wherever it is, so with
  L layers, T tasks and the first n dropped the work falls from ``L·T`` to ``n + (L-n)·T`` row-layers
  (12 layers, 8 tasks, 5 dropped: 96 / 61 = 1.57x, i.e. at most 57% faster); the measured bound
  replaces that count by timed plain passes of B and T·B rows: ``t(T·B) / ((n/L)·t(B) + ((L-n)/L)·t(T·B))``.
* ``fusion``: a fusion over ``--adapters`` adapters against the same fusion pruned to ``--keep``,
  both with adapterkit's fusion layer and with the paper's term-by-term formula (per-adapter keys
  and values, ``1 + 2N`` d×d products per token instead of 3).
* ``routing``: ``--rows`` rows routed round-robin to ``--adapters`` different adapters (one
  gathered batched operation per site), against the same batch through one adapter, a per-site
  Python loop over adapter groups (what peft's mixed batches do), and one pass per adapter.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Callable, Iterator

import torch

from adapterkit import AdapterModel, HeadConfig
from adapterkit.composition import AdapterDrop, Fuse, Parallel, Routed, Stack
from adapterkit.methods.fusion import FusionLayer

MPNET_BASE = dict(
    vocab_size=30527, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    max_position_embeddings=514, relative_attention_num_buckets=32, layer_norm_eps=1e-5,
)


def load(args) -> AdapterModel:
    if args.random_init:
        if args.model != "mpnet-base":
            raise SystemExit("--random-init builds mpnet-base's architecture only")
        from transformers import MPNetConfig, MPNetModel

        torch.manual_seed(0)
        model = AdapterModel(MPNetModel(MPNetConfig(**MPNET_BASE)))
    else:
        model = AdapterModel.from_pretrained(args.model)
    return model.to(args.device).eval()


def inputs(model: AdapterModel, rows: int, seq: int, device: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    vocab = model.parts.embeddings.num_embeddings
    ids = torch.randint(5, vocab, (rows, seq), generator=generator)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones(rows, seq, dtype=torch.long, device=device)}


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Trained-looking (non-zero) adapter weights: the up-projections start at zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator).to(p) * 0.02)


def add_adapters(model: AdapterModel, count: int, prefix: str, heads: bool = True) -> list[str]:
    """``count`` Pfeiffer adapters (reduction factor 16, as in AdapterFusion), with 2-way heads."""
    names = [f"{prefix}{i}" for i in range(count)]
    for i, name in enumerate(names):
        head = HeadConfig(num_labels=2, dropout=0.0) if heads else None
        model.add_adapter(name, "pfeiffer", head=head, reduction_factor=16.0)
        randomize(model.adapters[name], i)
        model.adapters[name].to(next(model.base.parameters()).device)
    return names


def time_configs(configs: dict[str, Callable[[], object]], rounds: int, device: str) -> dict[str, float]:
    """Median seconds per call of each configuration, rounds alternating the configurations."""
    times: dict[str, list[float]] = {name: [] for name in configs}
    with torch.inference_mode():
        for fn in configs.values():  # warm-up
            fn()
        for r in range(rounds):
            order = list(configs) if r % 2 == 0 else list(reversed(configs))
            for name in order:
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                configs[name]()
                if device == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def report(title: str, times: dict[str, float], rows: dict[str, int], extra: dict) -> None:
    print(f"\n{title}")
    print(f"{'configuration':<34} {'median s':>9} {'rows/s':>9}")
    for name, seconds in times.items():
        print(f"{name:<34} {seconds:>9.4f} {rows[name] / seconds:>9.1f}")
    for key, value in extra.items():
        print(f"{key}: {value}")
    print("json:", json.dumps({"bench": title.split(":")[0], "times_s": times, **extra}))


def describe(args, model) -> str:
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    weights = "random init" if args.random_init else "pretrained"
    return f"{args.model} ({model.parts.num_layers} layers, {weights}), {device}, torch {torch.__version__}"


# ----------------------------------------------------------------------------- parallel + AdapterDrop
def bench_parallel(args) -> None:
    model = load(args)
    tasks = add_adapters(model, args.tasks, "task")
    batch = inputs(model, args.batch, args.seq, args.device)
    wide = inputs(model, args.batch * args.tasks, args.seq, args.device)
    n, layers = args.drop, model.parts.num_layers
    all_layers, dropped = Parallel(*tasks), AdapterDrop(Parallel(*tasks), first=n)
    with torch.inference_mode():
        out, out_drop = model(**batch, adapters=all_layers), model(**batch, adapters=dropped)
        for t in tasks[:2]:
            assert torch.allclose(out[t].logits, model(**batch, adapters=t).logits, atol=1e-4)
            assert torch.allclose(out_drop[t].logits, model(**batch, adapters=AdapterDrop(t, first=n)).logits, atol=1e-4)
    configs = {
        f"Parallel, adapters in all {layers} layers": lambda: model(**batch, adapters=all_layers),
        f"Parallel, first {n} layers dropped": lambda: model(**batch, adapters=dropped),
        f"{args.tasks} separate passes, all layers": lambda: [model(**batch, adapters=t) for t in tasks],
        f"plain model, {args.batch} rows": lambda: model(**batch, adapters=None),
        f"plain model, {args.batch * args.tasks} rows": lambda: model(**wide, adapters=None),
    }
    t = time_configs(configs, args.rounds, args.device)
    names = list(configs)
    t_all, t_drop, t_sep, t_b, t_tb = (t[k] for k in names)
    analytic = layers * args.tasks / (n + (layers - n) * args.tasks)
    measured_bound = t_tb / ((n / layers) * t_b + ((layers - n) / layers) * t_tb)
    extra = {
        "setting": f"{args.tasks} tasks x {args.batch} rows x {args.seq} tokens; " + describe(args, model),
        "drop speedup vs Parallel all layers": f"{t_all / t_drop:.3f}x ({(t_all / t_drop - 1) * 100:.0f}% faster)",
        "drop speedup vs separate passes": f"{t_sep / t_drop:.3f}x ({(t_sep / t_drop - 1) * 100:.0f}% faster)",
        "Parallel all layers vs separate passes": f"{t_sep / t_all:.3f}x",
        "compute bound (row-layer count)": f"{analytic:.3f}x ({(analytic - 1) * 100:.0f}% faster)",
        "compute bound (timed plain passes)": f"{measured_bound:.3f}x ({(measured_bound - 1) * 100:.0f}% faster)",
        "share of the timed bound reached": f"{(t_all / t_drop - 1) / (measured_bound - 1) * 100:.0f}%",
    }
    rows = dict(zip(names, [args.batch * args.tasks] * 3 + [args.batch, args.batch * args.tasks]))
    report(f"parallel: {args.tasks} tasks in one pass with AdapterDrop", t, rows, extra)


# ----------------------------------------------------------------------------- fusion pruning
def paper_fuse(self: FusionLayer, h, outputs):
    """Pfeiffer et al. 2021 term by term: a key and a value per adapter output."""
    q = self.query(h)
    keys = torch.stack([z @ self.key.weight.T for z in outputs], dim=-2)
    values = torch.stack([self.value(z) for z in outputs], dim=-2)
    attention = torch.softmax((keys @ q.unsqueeze(-1)).squeeze(-1) / self.temperature, dim=-1)
    return (attention.unsqueeze(-2) @ values).squeeze(-2), attention


def bench_fusion(args) -> None:
    model = load(args)
    names = add_adapters(model, args.adapters, "src")
    model.add_adapter("fusion", "fusion", head=HeadConfig(num_labels=2, dropout=0.0), adapters=tuple(names))
    randomize(model.adapters["fusion"], 99)
    model.to(args.device)
    batch = inputs(model, args.batch, args.seq, args.device)
    full, pruned = Fuse(*names, fusion="fusion"), Fuse(*names[: args.keep], fusion="fusion")
    ours = FusionLayer.fuse

    def with_paper(setup):
        def run():
            FusionLayer.fuse = paper_fuse
            try:
                return model(**batch, adapters=setup)
            finally:
                FusionLayer.fuse = ours

        return run

    with torch.inference_mode():
        assert torch.allclose(with_paper(full)().logits, model(**batch, adapters=full).logits, atol=1e-3)
    configs = {
        f"fusion over {args.adapters} (adapterkit)": lambda: model(**batch, adapters=full),
        f"fusion over {args.keep} (adapterkit)": lambda: model(**batch, adapters=pruned),
        f"fusion over {args.adapters} (paper formula)": with_paper(full),
        f"fusion over {args.keep} (paper formula)": with_paper(pruned),
        "one adapter, no fusion": lambda: model(**batch, adapters=names[0]),
        "plain model": lambda: model(**batch, adapters=None),
    }
    t = time_configs(configs, args.rounds, args.device)
    k = list(configs)
    def faster(slow: str, fast: str) -> str:
        return f"{t[slow] / t[fast]:.3f}x ({(t[slow] / t[fast] - 1) * 100:.0f}% faster)"

    n, keep = args.adapters, args.keep
    extra = {
        "setting": f"{args.batch} rows x {args.seq} tokens; " + describe(args, model),
        f"pruning {n} -> {keep}, adapterkit": faster(k[0], k[1]),
        f"pruning {n} -> {keep}, paper formula": faster(k[2], k[3]),
        f"paper formula -> adapterkit, {n} adapters": faster(k[2], k[0]),
        f"paper formula, {n} adapters -> adapterkit, {keep} adapters": faster(k[2], k[1]),
    }
    report(f"fusion: pruning a fusion of {n} adapters to {keep}", t, dict.fromkeys(configs, args.batch), extra)


# ----------------------------------------------------------------------------- per-sample routing
@contextlib.contextmanager
def group_loop(model: AdapterModel, rows: list[str]) -> Iterator[None]:
    """The per-site Python loop over adapter groups of peft's mixed batches, for comparison: plain
    forward hooks on the adapted sites that run each adapter's own module on its rows, in a pass
    that otherwise runs no adapter."""
    names = tuple(dict.fromkeys(rows))
    groups = {n: torch.tensor([i for i, r in enumerate(rows) if r == n]) for n in names}
    sites = {site for name in names for site, _ in model.adapters[name].attachments()}

    def hook(site):
        def loop(module, args, out):
            result = out.clone()
            for name, index in groups.items():
                adapter = model.router.attached(site).get(name)
                if adapter is not None:
                    index = index.to(out.device)
                    result[index] = adapter(None, out[index])
            return result

        return loop

    handles = [site.output_module.register_forward_hook(hook(site)) for site in sites]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def bench_routing(args) -> None:
    model = load(args)
    names = add_adapters(model, args.adapters, "user", heads=False)  # compare hidden states
    batch = inputs(model, args.rows, args.seq, args.device)
    rows = [names[i % len(names)] for i in range(args.rows)]
    routed = Routed(rows)
    per_adapter = {n: {k: v[i :: len(names)] for k, v in batch.items()} for i, n in enumerate(names)}

    def hidden(setup):
        return model(**batch, adapters=setup).last_hidden_state

    def looped():
        with group_loop(model, rows):
            return hidden(None)

    with torch.inference_mode():
        assert torch.allclose(hidden(routed), looped(), atol=1e-3)
    configs = {
        f"{args.adapters} adapters, routed (gathered bmm)": lambda: hidden(routed),
        "1 adapter for every row": lambda: hidden(Stack(names[0])),
        f"{args.adapters} adapters, loop over groups": looped,
        f"{args.adapters} adapters, one pass per adapter": lambda: [
            model(**b, adapters=Stack(n)).last_hidden_state for n, b in per_adapter.items()
        ],
        "plain model": lambda: hidden(None),
    }
    t = time_configs(configs, args.rounds, args.device)
    k = list(configs)
    extra = {
        "setting": f"{args.rows} rows x {args.seq} tokens; " + describe(args, model),
        "routed throughput / one adapter": f"{t[k[1]] / t[k[0]]:.3f}",
        "routed throughput / loop over groups": f"{t[k[2]] / t[k[0]]:.3f}",
        "routed throughput / one pass per adapter": f"{t[k[3]] / t[k[0]]:.3f}",
    }
    report(f"routing: {args.rows} rows routed to {args.adapters} adapters", t, dict.fromkeys(configs, args.rows), extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bench", choices=("parallel", "fusion", "routing"))
    parser.add_argument("--model", default="mpnet-base")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--random-init", action="store_true", help="mpnet-base's architecture with random weights")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--drop", type=int, default=5)
    parser.add_argument("--batch", type=int, default=None, help="rows per task (parallel: 8) or in all (fusion: 16)")
    parser.add_argument("--adapters", type=int, default=None, help="fusion: 8, routing: 16")
    parser.add_argument("--keep", type=int, default=2)
    parser.add_argument("--rows", type=int, default=64)
    args = parser.parse_args()
    if args.bench == "parallel":
        args.batch = args.batch or 8
        bench_parallel(args)
    elif args.bench == "fusion":
        args.batch, args.adapters = args.batch or 16, args.adapters or 8
        bench_fusion(args)
    else:
        args.adapters = args.adapters or 16
        bench_routing(args)


if __name__ == "__main__":
    main()
