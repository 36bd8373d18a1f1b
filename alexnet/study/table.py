"""A study's results from its rows, by rule: which runs trained, intervals over seeds, each claim's test,
power and verdict, Figure 1's epochs to a training error. Pure functions of the rows and the study file.

The training rule (`did_not_train`): a run whose loss became non-finite, whose training loss ended
above ln(classes) (what predicting every class alike scores), or whose centre val error ended
within design.chance_margin of chance (1 - 1/classes) did not train. Such a run is named in the
report with its curve and counted nowhere: not in an interval, a paired difference or a plot.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alexnet.study.spec import BASELINE, Claim, Design, StudySpec, seeds_of
from alexnet.study.stats import (
    DID_NOT_TRAIN,
    differences,
    holm,
    mde,
    paired_p,
    power,
    sd,
    sign_test,
    t_interval,
    verdict,
)


def did_not_train(row: Mapping[str, Any], design: Design, num_classes: int | None = None) -> str | None:
    """Why the run did not train (see the module docstring), or None when it trained."""
    if row.get("failure"):
        return str(row["failure"])
    classes = int(num_classes or row["num_classes"])
    loss = row.get("final_train_loss")
    if loss is not None and (not math.isfinite(float(loss)) or float(loss) > math.log(classes)):
        return f"training loss ended at {float(loss):.3f}, above ln({classes}) = {math.log(classes):.3f} (chance's)"
    chance, err = 1 - 1 / classes, float(row["center_top1_err"])
    if not math.isfinite(err) or err >= chance - design.chance_margin:
        return f"val top-1 error {err:.1%} is within {design.chance_margin:.0%} of chance ({chance:.1%})"
    return None


def trained(rows: Sequence[Mapping[str, Any]], design: Design) -> dict[str, dict[int, Mapping[str, Any]]]:
    """The study's own runs that trained, by variant and seed (tuning runs left out)."""
    out: dict[str, dict[int, Mapping[str, Any]]] = {}
    for r in rows:
        if not r.get("tuning") and did_not_train(r, design) is None:
            out.setdefault(r["variant"], {})[int(r["seed"])] = r
    return out


def summarise(spec: StudySpec, rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> dict[str, Any]:
    """Per variant: the seeds run and trained, each metric's mean with its 95 % t-interval, and the
    paired difference to the baseline on the seeds both trained on."""
    ok = trained(rows, spec.design)
    base = ok.get(BASELINE, {})
    out: dict[str, Any] = {}
    for v in spec.variants:
        runs = ok.get(v, {})
        entry: dict[str, Any] = {"seeds": seeds_of(spec, v), "trained": sorted(runs)}
        for m in metrics:
            if runs:
                entry[m] = t_interval([float(r[m]) for r in runs.values()]).as_dict()
            if v != BASELINE and runs and set(runs) & set(base):
                diffs = differences({s: float(r[m]) for s, r in runs.items()},
                                    {s: float(r[m]) for s, r in base.items()})
                entry[f"{m}_vs_baseline"] = t_interval(diffs).as_dict()
        out[v] = entry
    return out


def claim_rows(spec: StudySpec, rows: Sequence[Mapping[str, Any]], pilot_sd: float | None) -> list[dict[str, Any]]:
    """Every claim of the study file: n, the difference, Holm's level and its interval, power and the
    minimal detectable effect at that level, and the verdict (alexnet/study/stats.py)."""
    ok, design = trained(rows, spec.design), spec.design
    tested: list[tuple[Claim, list[float]]] = []
    out = []
    for claim in spec.claims:
        runs, base = ok.get(claim.variant, {}), ok.get(claim.against, {})
        diffs = []
        if set(runs) & set(base):
            diffs = differences({s: float(r[claim.metric]) for s, r in runs.items()},
                                {s: float(r[claim.metric]) for s, r in base.items()})
        if len(diffs) < 2 or _failed(rows, claim, design):
            out.append({**_head(claim), "n": len(diffs), "verdict": DID_NOT_TRAIN, "not_trained":
                        _failed(rows, claim, design)})
            continue
        tested.append((claim, diffs))
        out.append({**_head(claim), "n": len(diffs)})
    family = holm([paired_p(d) for _, d in tested], design.alpha)
    m = max(len(tested), 1)
    for (claim, diffs), test in zip(tested, family):
        row = next(r for r in out if r["claim"] == _head(claim)["claim"])
        ci = t_interval(diffs, 1 - float(test["level"]))
        own_sd = sd(diffs)
        use_sd = pilot_sd if (pilot_sd and claim.metric == design.metric) else own_sd
        row.update(mean=ci.mean, low=ci.low, high=ci.high, level=test["level"], p=test["p"], p_holm=test["p_holm"],
                   sd=own_sd, sd_used=use_sd, sd_source="pilot" if use_sd is pilot_sd else "this claim's runs",
                   power=power(claim.effect, use_sd, len(diffs), design.alpha / m),
                   mde=mde(use_sd, len(diffs), design.alpha / m, design.power),
                   verdict=verdict(ci, claim.effect, bool(test["rejected"])))
    return out


def _head(claim: Claim) -> dict[str, Any]:
    return {"claim": f"{claim.section} {claim.says}", "variant": claim.variant, "against": claim.against,
            "metric": claim.metric, "paper": claim.effect, "note": claim.note}


def _failed(rows: Sequence[Mapping[str, Any]], claim: Claim, design: Design) -> list[str]:
    """The claim's runs (variant or baseline) that did not train: the claim gets no verdict."""
    return sorted(r["label"] for r in rows if not r.get("tuning") and r["variant"] in (claim.variant, claim.against)
                  and did_not_train(r, design) is not None)


def pilot_sd(spec: StudySpec, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The pilot's SD of paired differences of the primary metric (pooled over its variant pairs)."""
    ok, design = trained(rows, spec.design), spec.design
    variants = [v for v in design.pilot_variants if v != BASELINE]
    diffs: list[list[float]] = []
    for v in variants:
        seeds = sorted(set(ok.get(v, {})) & set(ok.get(BASELINE, {})))[: design.pilot_seeds]
        if len(seeds) >= 2:
            diffs.append([float(ok[v][s][design.metric]) - float(ok[BASELINE][s][design.metric]) for s in seeds])
    pooled = _pooled_sd(diffs)
    return {"variants": variants, "seeds": design.pilot_seeds, "metric": design.metric, "sd": pooled,
            "previous_sd": design.previous_sd}


def _pooled_sd(groups: Sequence[Sequence[float]]) -> float | None:
    dof = sum(len(g) - 1 for g in groups)
    if dof < 1:
        return None
    return math.sqrt(sum(sd(g) ** 2 * (len(g) - 1) for g in groups) / dof)


def read_history(path: str | Path) -> list[dict[str, float]]:
    if not Path(path).is_file():
        return []
    with open(path) as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def epochs_to_reach(history: Sequence[Mapping[str, float]], target: float) -> int | None:
    """The first epoch (1-based) whose training error is at or below target; None if never."""
    return next((int(h["epoch"]) for h in history if h["train_top1_err"] <= target), None)


def tuning_score(row: Mapping[str, Any], tune_by: str, design: Design, rule: bool = True) -> float:
    """Lower is better: the held-out error, or the epochs to Figure 1's target (its error breaking ties);
    inf for a run that did not train (unless rule=False) or never reached the target."""
    if rule and did_not_train(row, design) is not None:
        return math.inf
    if tune_by == "heldout_error":
        err = float(row["center_top1_err"])
        return err if math.isfinite(err) else math.inf
    # Fastest to the target; then, if no value got there, fastest to the fallback target; then the
    # lowest final training error: a grid where nothing reaches the target still picks its fastest.
    history = read_history(row["history"])
    if not history:
        return math.inf
    fig = design.figure1
    targets = [fig.target_train_err, fig.fallback_train_err] if fig else [0.25]
    final = history[-1]["train_top1_err"]
    for rank, target in enumerate(t for t in targets if t is not None):
        epochs = epochs_to_reach(history, target)
        if epochs is not None:
            return 1000 * rank + epochs + final / 10
    return 2000 + final


def figure1(spec: StudySpec, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Figure 1: per seed the epochs each nonlinearity takes to the target training error, their
    ratio (slow / fast), and the sign test that the slow one is slower (a seed where it never gets
    there while the fast one does counts as slower: censored at the last epoch)."""
    fig = spec.design.figure1
    ok = trained(rows, spec.design)
    hist = {(v, s): read_history(r["history"]) for v in (fig.fast, fig.slow) for s, r in ok.get(v, {}).items()}
    target = fig.target_train_err
    reached = any(epochs_to_reach(h, target) for (v, _), h in hist.items() if v == fig.fast)
    if not reached and fig.fallback_train_err is not None:
        target = fig.fallback_train_err  # stated in the study file before the runs
    per_seed, wins, losses = [], 0, 0
    for seed in sorted({s for _, s in hist}):
        fast, slow = (epochs_to_reach(hist.get((v, seed), []), target) for v in (fig.fast, fig.slow))
        per_seed.append({"seed": seed, "fast": fast, "slow": slow,
                         "ratio": slow / fast if fast and slow else None})
        if fast is not None and (slow is None or slow > fast):
            wins += 1
        elif fast is not None and slow is not None and slow < fast:
            losses += 1
    ratios = [p["ratio"] for p in per_seed if p["ratio"]]
    return {"target": target, "fallback_used": target != fig.target_train_err, "per_seed": per_seed,
            "slower": wins, "faster": losses, "p": sign_test(wins, losses),
            # the pre-registered test is one-sided, the paper's way; a reversal is tested two-sided
            "p_reverse": min(1.0, 2 * sign_test(losses, wins)),
            "ratio": t_interval(ratios).as_dict() if ratios else None,
            "curves": {f"{v}/seed-{s}": [h["train_top1_err"] for h in hh] for (v, s), hh in hist.items()}}
