"""adapterkit side by side with peft and AdapterHub: training step, memory, inference, mixed-adapter batches.

Usage::

    python benchmarks/bench_peers.py [--rounds 3] [--steps 5] [--infer-repeats 10] [--batch 32] [--seq 64] [--threads 2]
        [--methods full lora ...] [--no-routing] [--peer-root .peer-envs] [--json FILE]
    python benchmarks/bench_peers.py --report FILE    # the tables of a run saved with --json

It builds (or reuses) the peers' environments with ``tools/peer_envs.py`` (``.peer-envs/peft``:
peft 0.21.2 on transformers 5; ``.peer-envs/adapters``: AdapterHub adapters 1.3.0 on transformers
4.57.6, which it needs), then runs every (library, method) in its own fresh worker process
(``peer_speed.py``) in its library's environment, one after another: ``minilm``'s folder loaded
by each library's own classes, the same head, the same fixed batch of token ids, the same steps
and threads (``peer_models.py`` says how each method is matched). A round runs every worker
once, the libraries of one method next to each other; rounds alternate the order. Absolute
figures are medians over rounds; a ratio between libraries is the median of each round's ratio
of two runs made one right after the other, so load that comes and goes on a shared machine
hits both sides of each ratio alike.

It prints, per library, each method's step time against the library's own full fine-tuning,
memory (``measure.py``: RSS peak growth, ``mallinfo2`` heap peak, saved activations) and
inference latency against transformers' plain model; then adapterkit's step time and inference
overhead against each peer's for the equivalent method (targets: step ratio <= 1.0 against the
faster peer, overhead no higher); then a batch of ``--rows`` rows routed to ``--adapters`` LoRA
adapters, adapterkit's ``Routed`` against peft's ``adapter_names=`` (``peer_routing.py``; target:
adapterkit 1.5x faster), with the same adapter weights in both and their outputs compared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

#: method -> the libraries that run it (adapterkit's form for each peer: peer_models.ADAPTERKIT_FORMS).
METHODS = {
    "full": ("adapterkit", "peft", "adapterhub"),
    "houlsby": ("adapterkit", "adapterhub"),
    "pfeiffer": ("adapterkit", "adapterhub"),
    "parallel": ("adapterkit", "adapterhub"),
    "lora": ("adapterkit", "peft", "adapterhub"),
    "prefix": ("adapterkit", "peft", "adapterhub"),
    "prompt": ("adapterkit", "peft", "adapterhub"),
}
#: adapterkit's form of a method where the peers' forms differ: {method: {peer: adapterkit form}}.
FORM_FOR_PEER = {"prefix": {"peft": "prefix-peft"}, "prompt": {"adapterhub": "prompt-adapterhub"}}
ENVIRONMENTS = {"peft": "peft", "adapterhub": "adapters"}


def adapterkit_forms(method: str, libraries: tuple[str, ...]) -> list[str]:
    """The adapterkit workers a method needs: its plain form and any peer-specific one."""
    forms = [method] + [FORM_FOR_PEER.get(method, {}).get(peer) for peer in libraries if peer != "adapterkit"]
    return list(dict.fromkeys(form for form in forms if form))


def peer_pythons(root: Path) -> dict[str, str]:
    """Build or reuse the peer environments; the python of each library's."""
    out = subprocess.run([sys.executable, str(REPO / "tools" / "peer_envs.py"), "--root", str(root)], check=True,
                         capture_output=True, text=True).stdout.split()
    found = {Path(python).parents[1].name: python for python in out}
    return {library: found[env] for library, env in ENVIRONMENTS.items()}


def worker_env(library: str, threads: int) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    env.pop("PYTHONPATH", None)
    if library == "adapterkit":
        env["PYTHONPATH"] = str(REPO / "src")  # this checkout's adapterkit, whatever the venv has installed
    return env


def run_worker(python: str, script: str, library: str, args: list[str], threads: int) -> dict:
    done = subprocess.run([python, str(HERE / script), *args], capture_output=True, text=True, env=worker_env(library, threads))
    if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"{script} {' '.join(args)} failed in {python} (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def overhead(rs: list[dict]) -> float:
    """Inference overhead over the plain model, percent (medians over rounds)."""
    return (med(rs, "infer_ms") / med(rs, "plain_ms") - 1) * 100


def ratio(a: list[dict] | None, b: list[dict] | None, key: str) -> str:
    """``a``'s median ``key`` over ``b``'s, or "-" where either is missing (a cut run)."""
    return f"{med(a, key) / med(b, key):.2f}x" if a and b else "-"


def speed_tables(runs: dict[tuple[str, str], list[dict]]) -> None:
    """Per library against its own full fine-tuning, then adapterkit against each peer."""
    print("\n### Each library against its own full fine-tuning and its own plain model")
    print("| library | method | trainable | step ms | speed-up vs own full | RSS peak MiB (vs full) | heap peak MiB (vs full) "
          "| saved activations MiB | inference ms (plain) | inference overhead |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (library, method), rs in runs.items():
        if not rs:
            continue  # a run cut before this worker
        full = runs.get((library, "full"))
        extra = infer = "-"
        if "infer_ms" in rs[0]:
            infer = f"{med(rs, 'infer_ms'):.1f} ({med(rs, 'plain_ms'):.1f})"
            extra = f"{overhead(rs):+.1f}%"
        print(f"| {library} | {method} | {rs[0]['trainable']:,} | {med(rs, 'step_ms'):.0f} | {ratio(full, rs, 'step_ms')} | "
              f"{med(rs, 'peak_mib'):.0f} ({ratio(rs, full, 'peak_mib')}) | {med(rs, 'heap_mib'):.0f} ({ratio(rs, full, 'heap_mib')}) | "
              f"{med(rs, 'saved_mib'):.0f} | {infer} | {extra} |")

    print("\n### adapterkit against each peer, equivalent method (ratio < 1: adapterkit faster; the ratio is the median of")
    print("### each round's ratio of the two runs, which ran one right after the other)")
    print("| method | peer | adapterkit form | adapterkit step ms | peer step ms | step ratio (per round) | heap peak ratio "
          "| inference overhead adapterkit / peer | target (step ratio <= 1.0, overhead <= peer's) |")
    print("|---|---|---|---|---|---|---|---|---|")
    missed = []
    for method, libraries in METHODS.items():
        for peer in libraries[1:]:
            form = FORM_FOR_PEER.get(method, {}).get(peer, method)
            ours, theirs = runs.get(("adapterkit", form)), runs.get((peer, method))
            if not ours or not theirs:
                continue
            per_round = [a["step_ms"] / b["step_ms"] for a, b in zip(ours, theirs)]
            met = statistics.median(per_round) <= 1.0
            overheads = "-"
            if "infer_ms" in ours[0]:
                overheads = f"{overhead(ours):+.1f}% / {overhead(theirs):+.1f}%"
                met = met and overhead(ours) <= overhead(theirs)
            if method == "full":
                met = None  # the reference, not an equivalent method: no target
            elif not met:
                missed.append(f"{method} vs {peer}")
            print(f"| {method} | {peer} | {form} | {med(ours, 'step_ms'):.0f} | {med(theirs, 'step_ms'):.0f} | "
                  f"{statistics.median(per_round):.2f} ({', '.join(f'{r:.2f}' for r in per_round)}) | "
                  f"{med(ours, 'heap_mib') / med(theirs, 'heap_mib'):.2f} | {overheads} | {'-' if met is None else 'met' if met else 'missed'} |")
    print(f"targets missed: {', '.join(missed)}" if missed else "targets met for every method and peer")


def routing_table(runs: dict[str, list[dict]], difference: float, effect: float) -> None:
    print(f"\n### {runs['adapterkit'][0]['rows']} rows x {runs['adapterkit'][0]['seq']} tokens routed to "
          f"{runs['adapterkit'][0]['adapters']} LoRA adapters (inference)")
    print("| library | mixed batch ms | one adapter ms | plain ms | mixed / one adapter |")
    print("|---|---|---|---|---|")
    for library, rs in runs.items():
        print(f"| {library} | {med(rs, 'routed_ms'):.1f} | {med(rs, 'one_ms'):.1f} | {med(rs, 'plain_ms'):.1f} | "
              f"{med(rs, 'routed_ms') / med(rs, 'one_ms'):.2f} |")
    per_round = [p["routed_ms"] / a["routed_ms"] for a, p in zip(runs["adapterkit"], runs["peft"])]
    target = "met" if statistics.median(per_round) >= 1.5 else "missed"
    print(f"adapterkit's mixed batch is {statistics.median(per_round):.2f}x as fast as peft's (target 1.5x: {target}) "
          f"(per round: {', '.join(f'{r:.2f}' for r in per_round)}); the two libraries' outputs differ by at most "
          f"{difference:.2e}, the adapters move each library's output from the plain model's by up to {effect:.2f}")


def measure(args: argparse.Namespace) -> dict:
    """Run every worker (see the module docstring); every figure, as written to ``--json``."""
    sys.path.insert(0, str(REPO / "src"))
    from adapterkit.bundled_models import resolve_model_path

    model_path = str(resolve_model_path(args.model))
    pythons = {"adapterkit": sys.executable, **peer_pythons(args.peer_root)}
    if "full" not in args.methods:
        args.methods.insert(0, "full")  # the reference of every library's speed-up
    jobs = [(library, form) for method in args.methods for library in METHODS[method]
            for form in (adapterkit_forms(method, METHODS[method]) if library == "adapterkit" else [method])]
    speed_args = [f"--model-path={model_path}", f"--batch={args.batch}", f"--seq={args.seq}", f"--steps={args.steps}",
                  f"--threads={args.threads}", f"--infer-repeats={args.infer_repeats}"]
    runs: dict[tuple[str, str], list[dict]] = {job: [] for job in jobs}
    routing: dict[str, list[dict]] = {"adapterkit": [], "peft": []}
    difference = effect = None

    def record() -> dict:
        """Every figure so far; written to ``--json`` after each worker, so a cut run keeps what it measured."""
        found = {"args": {k: v if isinstance(v, (int, list)) else str(v) for k, v in vars(args).items()},
                 "speed": [{"library": library, "method": method, "runs": rs} for (library, method), rs in runs.items()],
                 "routing": None if args.no_routing else {"runs": routing, "max_difference": difference, "max_adapter_effect": effect}}
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(found, indent=1))
        return found

    with tempfile.TemporaryDirectory(prefix="bench-peers-") as work:
        work = Path(work)
        if not args.no_routing:
            run_worker(sys.executable, "peer_routing.py", "adapterkit",
                       ["--prepare", str(work / "adapters"), f"--model-path={model_path}", f"--adapters={args.adapters}"], args.threads)
        for round_index in range(args.rounds):
            order = jobs if round_index % 2 == 0 else jobs[::-1]
            for library, method in order:
                result = run_worker(pythons[library], "peer_speed.py", library, [f"--library={library}", f"--method={method}", *speed_args], args.threads)
                runs[(library, method)].append(result)
                print(f"round {round_index + 1}: {library} {method}: step {result['step_ms']:.0f} ms", file=sys.stderr, flush=True)
                record()
            if args.no_routing:
                continue
            for library in ("adapterkit", "peft") if round_index % 2 == 0 else ("peft", "adapterkit"):
                out = work / f"{library}.safetensors"
                routing[library].append(run_worker(pythons[library], "peer_routing.py", library, [
                    f"--library={library}", f"--adapters-dir={work / 'adapters'}", f"--model-path={model_path}", f"--out={out}",
                    f"--rows={args.rows}", f"--seq={args.seq}", f"--repeats={args.infer_repeats}", f"--threads={args.threads}"], args.threads))
            ours, theirs = (load_file(work / f"{library}.safetensors") for library in ("adapterkit", "peft"))
            difference = max(difference or 0.0, (ours["routed"] - theirs["routed"]).abs().max().item())
            effect = min((out["routed"] - out["plain"]).abs().max().item() for out in (ours, theirs))
            record()
    return record()


def report(record: dict) -> None:
    """Print the tables of a :func:`measure` record."""
    a = record["args"]
    runs = {(entry["library"], entry["method"]): entry["runs"] for entry in record["speed"]}
    print(f"model={a['model']} batch={a['batch']} seq={a['seq']} steps={a['steps']} rounds={a['rounds']} "
          f"infer_repeats={a['infer_repeats']} threads={a['threads']}")
    print("versions: " + "; ".join(f"{library}: {rs[0]['versions']}" for (library, method), rs in runs.items() if method == "full" and rs))
    speed_tables(runs)
    if record["routing"] and all(record["routing"]["runs"].values()):
        routing_table(record["routing"]["runs"], record["routing"]["max_difference"], record["routing"]["max_adapter_effect"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--infer-repeats", type=int, default=10, help="forward passes per model and worker (inference)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--no-routing", action="store_true")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--adapters", type=int, default=16)
    parser.add_argument("--peer-root", type=Path, default=REPO / ".peer-envs")
    parser.add_argument("--json", type=Path, help="write every run's figures here (after each worker)")
    parser.add_argument("--report", type=Path, metavar="JSON", help="print the tables of a run saved with --json; run nothing")
    args = parser.parse_args()
    if args.report:
        record = json.loads(args.report.read_text())
    else:
        record = measure(args)
    report(record)


if __name__ == "__main__":
    main()
