"""The multi-domain table of Rebuffi et al. 2017 (the Visual Decathlon): one row per method, its
test accuracy on each domain, the parameters it trains per domain, what storing every domain
costs, and the Decathlon score.

**Decathlon score** (the Visual Decathlon Challenge's, defined by Rebuffi, Bilen & Vedaldi 2017,
arXiv:1705.08045): with ``E_d`` a method's test
error on domain ``d`` and ``E_d^max`` twice the baseline's error there,

    S = Σ_d α_d max(0, E_d^max - E_d)^γ,      γ = 2,  α_d = 1000 (E_d^max)^-γ

so a domain gives at most 1000 points (no error) and the baseline itself 250 per domain. The
paper's baseline is a fine-tuned network per domain; here it is the ``full`` fine-tuning runs
(``baseline``). A domain the baseline solves without a test error has no ``E^max`` and is left
out of every score (said under the table).

**Storage** for all domains: the frozen base once plus each domain's saved adapter (head
included); a run that saved a whole model (full fine-tuning) stores that model per domain.
"""

from __future__ import annotations

from collections.abc import Sequence

from .report import format_count, run_label
from .result import TrainingResult


def decathlon_score(errors: dict[str, float], baseline: dict[str, float]) -> float:
    """Σ over the domains of ``errors`` that the baseline does not solve exactly (module docstring)."""
    score = 0.0
    for domain, error in errors.items():
        worst = 2 * baseline[domain]
        if worst > 0:
            score += 1000 * max(0.0, worst - error) ** 2 / worst**2
    return score


def storage(results: Sequence[TrainingResult]) -> int:
    """Parameters stored for all of one method's domains (see the module docstring)."""
    base = results[0].base_params
    saved = [r.trainable_params if r.saved_params is None else r.saved_params for r in results]
    whole = all(s >= base for s in saved)
    return sum(saved) + (0 if whole else base)


def domains_table(results: Sequence[TrainingResult], baseline: str = "full") -> str:
    """A markdown table: methods x domains (test accuracy, %), mean, parameters trained per domain
    (mean; share of the base), total storage (and in base models), and the Decathlon score.

    Raises:
        ValueError: no ``baseline`` run, a run without a test accuracy (not classification), two
            runs of a method on one domain, or a method without a run on one of the baseline's domains.
    """
    by_method: dict[str, dict[str, TrainingResult]] = {}
    for result in results:
        if "accuracy" not in result.test_metrics:
            raise ValueError(
                f"run {run_label(result)!r} on {result.task!r} has no test accuracy ({result.kind}): the domains "
                "table compares classification runs; leave that run out"
            )
        runs = by_method.setdefault(run_label(result), {})
        if result.task in runs:  # one would silently replace the other
            raise ValueError(
                f"two {run_label(result)!r} runs on {result.task!r} ({runs[result.task].output_dir} and "
                f"{result.output_dir}): the table has one run per method and domain; leave one out"
            )
        runs[result.task] = result
    if baseline not in by_method:
        raise ValueError(
            f"the Decathlon score needs the baseline's runs ({baseline!r}); methods found: {sorted(by_method)}; "
            f"train a {baseline} run on every domain or compare against one of those (--baseline METHOD)"
        )
    domains = list(by_method[baseline])
    reference = {d: 1 - by_method[baseline][d].test_metrics["accuracy"] for d in domains}
    header = ["method", *domains, "mean", "params / domain", "storage, all domains", "score"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for method, runs in by_method.items():
        missing = [d for d in domains if d not in runs]
        if missing:
            raise ValueError(f"method {method!r} has no run on {missing}: every method needs every domain for the score")
        chosen = [runs[d] for d in domains]
        accuracy = [100 * r.test_metrics["accuracy"] for r in chosen]
        per_domain = sum(r.trainable_params for r in chosen) / len(chosen)
        base = chosen[0].base_params
        stored = storage(chosen)
        score = decathlon_score({d: 1 - runs[d].test_metrics["accuracy"] for d in domains}, reference)
        cells = [
            method,
            *(f"{a:.1f}" for a in accuracy),
            f"{sum(accuracy) / len(accuracy):.1f}",
            f"{format_count(round(per_domain))} ({100 * per_domain / base:.1f}%)",
            f"{format_count(stored)} ({stored / base:.2f}x)",
            f"{score:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    solved = [d for d, e in reference.items() if e == 0]
    if solved:
        lines.append(f"\n{baseline} makes no test error on {', '.join(solved)}: left out of the scores (no E^max).")
    return "\n".join(lines)
