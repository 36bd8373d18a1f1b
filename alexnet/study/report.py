"""A study's report (the report stage): REPORT.md, summary.json, table.md and the plots, from the runs' files.

Nothing here trains or loads a model: it reads what the runs stages wrote (alexnet/study/outputs.py)
and the study files that fixed the design before the runs, so editing it re-renders the report
and reruns nothing else (its own DVC stage). Every number it states comes with its n, its interval
and the power behind it; a run that did not train is named with its curve and counted nowhere.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alexnet.config.sections import ModelParams
from alexnet.core.atomic import atomic_write_json, atomic_write_text
from alexnet.core.layout import (
    ERRORS_PLOT,
    FIGURE1_CSV,
    FIGURE1_PLOT,
    FIGURE3_FILE,
    FIGURE4_FILE,
    FIGURES_DIR,
    FIGURES_JSON,
    STUDY_REPORT_FILE,
    STUDY_SUMMARY_FILE,
    STUDY_TABLE_FILE,
)
from alexnet.study.plots import errors_plot, failed_runs_plot, figure1_plot
from alexnet.study.results import PILOT_FILE, REGIME_FILE, read_results
from alexnet.study.sections import (
    costs_section,
    generalisation_section,
    lrn_section,
    parallelism_section,
    pooling_section,
)
from alexnet.study.spec import StudySpec, variant_params
from alexnet.study.stats import INCONCLUSIVE, SHOWN, interval_of
from alexnet.study.table import claim_rows, did_not_train, figure1, read_history, summarise

METRICS = ("center_top1_err", "center_top5_err", "ten_crop_top1_err", "ten_crop_top5_err", "train_top1_err",
           "train_minus_val")
FAILED_PLOT = "did_not_train.png"


def write_report(studies: Sequence[tuple[StudySpec, Path]], out: Path) -> Path:
    """Every file of the report folder from each (study file, its runs' folder); REPORT.md's path."""
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    text = [f"# The paper's claims, measured: {', '.join(spec.name for spec, _ in studies)}\n"]
    for spec, runs in studies:
        rows = read_results(runs / "results.csv")
        regime = json.loads((runs / REGIME_FILE).read_text())
        if spec.design.figure1:
            fig1 = figure1(spec, rows)
            summary["figure1"] = {k: v for k, v in fig1.items() if k != "curves"}
            figure1_plot(fig1["curves"], spec.design.figure1.fast, spec.design.figure1.slow, fig1["target"],
                         out / FIGURE1_PLOT)
            atomic_write_text(out / FIGURE1_CSV, _curves_csv(fig1["curves"]))
            text += _regime(spec, regime, rows) + _figure1_section(spec, fig1, regime.get("tuned", {}))
        else:
            text += _claims_study(spec, rows, regime, runs, out, summary)
    atomic_write_json(out / STUDY_SUMMARY_FILE, summary)
    atomic_write_text(out / STUDY_REPORT_FILE, "\n".join(text))
    return out / STUDY_REPORT_FILE


def _claims_study(spec: StudySpec, rows: list[dict[str, Any]], regime: Mapping[str, Any], runs: Path, out: Path,
                  summary: dict[str, Any]) -> list[str]:
    pilot = json.loads((runs / PILOT_FILE).read_text()) if (runs / PILOT_FILE).is_file() else {}
    table = summarise(spec, rows, METRICS)
    claims = claim_rows(spec, rows, pilot.get("sd"))
    failed = {r["label"]: (r, did_not_train(r, spec.design)) for r in rows if did_not_train(r, spec.design)}
    classes = int(next((r["num_classes"] for r in rows if r.get("num_classes")), 10))
    errors_plot(table, claims, 1 - 1 / classes, spec.design.metric, out / ERRORS_PLOT)
    failed_runs_plot({label: read_history(r["history"]) for label, (r, _) in failed.items()}, out / FAILED_PLOT)
    atomic_write_text(out / STUDY_TABLE_FILE, table_markdown(table))
    figures = _figures(runs)
    summary.update(table=table, claims=claims, pilot=pilot, did_not_train={k: why for k, (_, why) in failed.items()},
                   figures=figures)
    study_model = variant_params(spec, next(iter(spec.variants)), spec.seeds[0]).model if spec.base.is_file() \
        else None
    lines = _regime(spec, regime, rows)
    lines += _claims_section(spec, claims, pilot)
    lines += _failed_section(failed)
    lines += variance_section(pilot, claims, spec.design.metric)
    lines += _figures_section(figures, runs)
    lines += lrn_section(claims, _median_lrn(figures))
    lines += parallelism_section(ModelParams(devices=("cpu", "cpu")))
    lines += costs_section(ModelParams(), study_model)
    lines += pooling_section(claims)
    lines += generalisation_section(regime)
    lines += ["## Per variant\n", table_markdown(table), f"![errors]({ERRORS_PLOT})\n"]
    return lines


def _regime(spec: StudySpec, regime: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    p = variant_params(spec, next(iter(spec.variants)), spec.seeds[0]) if spec.base.is_file() else None
    machine = regime.get("machine", {})
    lines = [f"## {spec.name}: the regime\n"]
    if p is not None:
        tr, m = p.train, p.model
        steps = f"lr x{tr.lr_factor} after epochs {list(tr.lr_steps)}" if tr.schedule == "step" else \
            f"plateau (patience {tr.lr_patience})"
        lines.append(f"- Data: `{p.data.root}` ({p.data.source}); {spec.train_per_class or 'every remaining'} training "
                     f"images per class, the first {spec.heldout_per_class} of each class held out to tune "
                     f"learning rates; every val image, measured once at the end of each run.")
        lines.append(f"- Network: {m.arch}, {m.layout}, stored {p.preprocess.stored_size} px, crops {m.crop_size} px; "
                     f"{tr.epochs} epochs, batch {tr.batch_size}, lr {tr.lr}, schedule {tr.schedule} ({steps}), "
                     f"warm-up {tr.warmup_epochs} epochs; precision {tr.precision} (pinned), deterministic "
                     f"{tr.deterministic}.")
    tuned = "; ".join(f"{v}: " + ", ".join(f"{k} = {x:g}{grid_edge(spec, v, k, x)}" for k, x in kv.items())
                      for v, kv in regime.get("tuned", {}).items())
    lines.append(f"- Tuned on the held-out slice: {tuned or 'nothing'}. Seeds per variant: "
                 + ", ".join(f"{v} {len({r['seed'] for r in rows if r['variant'] == v and not r.get('tuning')})}"
                             for v in spec.variants) + ".")
    cpu, torch_version = machine.get("cpu_capability", "?"), machine.get("torch", "?")
    lines.append(f"- Machine: CPU capability {cpu}, torch {torch_version}.\n")
    return lines


def grid_edge(spec: StudySpec, variant: str, key: str, value: float) -> str:
    """A value picked at the end of its grid: the best may lie beyond it, which the reader must know."""
    grid = spec.variants[variant].tune.get(key, []) if variant in spec.variants else []
    if len(grid) < 2 or min(grid) < value < max(grid):
        return ""
    return f" (the grid's {'lowest' if value == min(grid) else 'highest'} of {', '.join(f'{g:g}' for g in grid)})"


def _claims_section(spec: StudySpec, claims: Sequence[Mapping[str, Any]], pilot: Mapping[str, Any]) -> list[str]:
    d = spec.design
    lines = ["## Claims\n",
             f"Fixed before the runs: primary metric `{d.metric}`; each claim a paired t-test over seeds of the "
             f"variant minus its baseline; Holm's step-down over the {len(claims)} claims at alpha {d.alpha}; power "
             "and "
             f"the minimal detectable effect (MDE, at {d.power:.0%} power) at level alpha / {len(claims)}, from the "
             f"pilot's SD of paired differences ({_pts(pilot.get('sd'))}) for the primary metric, else from the "
             "claim's own runs. Verdicts: **effect shown** (the Holm-level interval excludes 0), **effects larger "
             "than X excluded** (it holds 0 and stays below the effect the study was designed to detect), "
             "**inconclusive** (neither), **did not train** (a run failed the training rule). A shown effect "
             "whose sign is not the paper's says so.\n",
             "| claim | paper | n | ours: variant minus baseline | p (Holm) | power at the paper's effect | MDE | "
             "verdict |", "|---|---:|---:|---|---:|---:|---:|---|"]
    for c in claims:
        ours = f"{c['mean'] * 100:+.2f} ({c['low'] * 100:+.2f} to {c['high'] * 100:+.2f})" if "mean" in c else "—"
        p = f"{c['p_holm']:.3f}" if "p_holm" in c else "—"
        lines.append(f"| {c['claim']} (`{c['variant']}`, {c['metric']}) | {c['paper'] * 100:+.1f} | {c['n']} | "
                     f"{ours} | {p} | {_pct(c.get('power'))} | {_pts(c.get('mde'))} | {verdict_with_direction(c)} |")
    notes = [f"- `{c['variant']}`: {c['note']}" for c in claims if c.get("note")]
    lines += ["", "Points of error (percentage points); intervals at each claim's Holm level."]
    return [*lines, *(["", "Said before the runs:", *notes] if notes else []), ""]


def verdict_with_direction(claim: Mapping[str, Any]) -> str:
    """The verdict, and for a shown effect whether it points the paper's way (the interval alone does not say)."""
    if claim["verdict"] != SHOWN:
        return claim["verdict"]
    return f"{SHOWN}, " + ("the paper's way" if claim["mean"] * claim["paper"] > 0 else "**against the paper**")


def _failed_section(failed: Mapping[str, tuple[Mapping[str, Any], str]]) -> list[str]:
    if not failed:
        return ["## Runs that did not train\n", "None: every run passed the training rule.\n"]
    lines = ["## Runs that did not train\n",
             "By rule (alexnet/study/table.py), left out of every interval, verdict and plot:\n"]
    lines += [f"- `{label}`: {why}" for label, (_, why) in sorted(failed.items())]
    return [*lines, "", f"![runs that did not train]({FAILED_PLOT})\n"]


def variance_section(pilot: Mapping[str, Any], claims: Sequence[Mapping[str, Any]], metric: str) -> list[str]:
    """The pilot's SD of paired differences beside the claims' own, on the primary metric only (a gap
    claim's SD is of another quantity and would pass for a lower spread)."""
    sds = [c["sd"] for c in claims if c.get("metric") == metric and c.get("sd") and math.isfinite(c["sd"])]
    return ["## Variance\n",
            f"SD of paired differences of the primary metric: the pilot ({', '.join(pilot.get('variants', []))} "
            f"against baseline, first {pilot.get('seeds', '?')} seeds) {_pts(pilot.get('sd'))}; over the runs of "
            f"the {len(sds)} claims on it {_pts(min(sds)) if sds else '—'} to {_pts(max(sds)) if sds else '—'}; "
            "the design this one replaced "
            f"(3 seeds, a val-driven plateau schedule, precision auto): {_pts(pilot.get('previous_sd'))}.\n"]


def _figures_section(figures: Sequence[Mapping[str, Any]], runs: Path) -> list[str]:
    if not figures:
        return []
    lines = ["## Figures 3 and 4, on every baseline seed\n",
             "| seed | colour specificity A | B | A minus B, permutation p | fc7 1-NN accuracy | 6-NN vote |",
             "|---:|---:|---:|---:|---:|---:|"]
    for f in figures:
        s = f["specialisation"]
        towers = s["towers"]
        lines.append(f"| {f['seed']} | {towers.get('tower_a', math.nan):.3f} | {towers.get('tower_b', math.nan):.3f} | "
                     f"{s['difference']:.3f}, p = {s['p']:.3f} | {f['knn']['k1']:.1%} | {f['knn']['k6']:.1%} |")
    shown = sum(1 for f in figures if f["specialisation"]["p"] is not None and f["specialisation"]["p"] < 0.05)
    knn = [f["knn"]["k1"] for f in figures]
    lines += ["", f"Figure 3 (the paper: tower A colour-agnostic, tower B colour-specific): the towers differ beyond "
              f"the permutation null (p < 0.05) in {shown} of {len(figures)} seeds. Figure 4 (fc7 neighbours share "
              f"the class): 1-NN accuracy over all {figures[0]['val_images']} val images "
              f"{sum(knn) / len(knn):.1%} on average against chance {figures[0]['chance']:.0%}. Pictures of the "
              "first seed (class names, not WordNet ids):\n",
              f"![Figure 3]({runs.name}/{FIGURES_DIR}/{FIGURE3_FILE})\n",
              f"![Figure 4]({runs.name}/{FIGURES_DIR}/{FIGURE4_FILE})\n"]
    return lines


def _figure1_section(spec: StudySpec, fig1: Mapping[str, Any], tuned: Mapping[str, Mapping[str, float]]
                     ) -> list[str]:
    f = spec.design.figure1
    lines = ["## Figure 1: ReLU against tanh, as the paper ran it\n",
             f"The four-layer network of Figure 1 (alexnet/model/figure1.py), no dropout, no augmentation, no weight "
             f"decay, each nonlinearity at the learning rate its tuning runs (trained on the held-out slice) reached "
             f"the target fastest with. Target {fig1['target']:.0%} training error"
             + (" (the fallback stated in the study file: the 25 % target was out of reach)" if fig1["fallback_used"]
                else "") + ". 32x32 Imagenette stands in for CIFAR-10, which is not available offline.\n",
             f"| seed | epochs, {f.fast} | epochs, {f.slow} | ratio |", "|---:|---:|---:|---:|"]
    for s in fig1["per_seed"]:
        lines.append(f"| {s['seed']} | {s['fast'] or 'never'} | {s['slow'] or 'never'} | "
                     f"{s['ratio']:.2f} |" if s["ratio"] else f"| {s['seed']} | {s['fast'] or 'never'} | "
                     f"{s['slow'] or 'never'} | — |")
    ratio = interval_of(fig1["ratio"]) if fig1.get("ratio") else None
    lines += ["", f"{f.slow} slower in {fig1['slower']} of {fig1['slower'] + fig1['faster']} seeds (ties left out); "
              f"one-sided sign test p = {fig1['p']:.4f}; the other way ({f.slow} faster), two-sided "
              f"p = {fig1['p_reverse']:.4f}"
              + (f"; ratio {ratio.mean:.2f} (95 % CI {ratio.low:.2f} to {ratio.high:.2f}, n = {ratio.n}) where both "
                 "reached it" if ratio and ratio.n > 1 else "")
              + f". The paper: about 6 times faster to 25 % on CIFAR-10. Verdict: "
              f"**{figure1_verdict(fig1['p'], fig1['p_reverse'], spec.design.alpha)}** at alpha {spec.design.alpha}.\n",
              f"![Figure 1]({FIGURE1_PLOT})\n"]
    edges = [f"{v}'s {k} = {x:g}{edge}" for v in (f.fast, f.slow) for k, x in tuned.get(v, {}).items()
             if (edge := grid_edge(spec, v, k, x))]
    if edges:  # the verdict holds at the picked rates; whether a rate beyond the grid changes it, these runs cannot say
        lines.insert(-1, "Read with care: " + "; ".join(edges) + ". The verdict holds at the rates the grid "
                     "picked; a rate beyond the grid may train that nonlinearity faster, which these runs cannot "
                     "say.\n")
    return lines


def figure1_verdict(p: float, reverse: float, alpha: float) -> str:
    """Shown the paper's way by the one-sided test, or against it by the two-sided one, else inconclusive."""
    if p < alpha:
        return f"{SHOWN}, the paper's way"
    return f"{SHOWN}, against the paper" if reverse < alpha else INCONCLUSIVE


def table_markdown(table: Mapping[str, Any]) -> str:
    """Per variant: seeds run and trained, each metric's mean ± half-width, the paired difference to baseline."""
    shown = ("center_top1_err", "ten_crop_top1_err", "ten_crop_top5_err", "train_minus_val")
    head = ["variant", "trained / run", *shown, *(f"Δ {k}" for k in shown)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v, e in table.items():
        cells = [v, f"{len(e['trained'])} / {len(e['seeds'])}"]
        cells += [interval_of(e[k]).text() if k in e else "—" for k in shown]
        cells += [interval_of(e[f"{k}_vs_baseline"]).text() if f"{k}_vs_baseline" in e else "—" for k in shown]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + ("\n\nErrors in percent, mean ± half-width of the 95 % t-interval over the seeds that "
                               "trained; Δ: the variant minus baseline on the same seeds. train_minus_val: the "
                               "training images' top-1 error measured as val's (centre crops, eval mode) minus the "
                               "centre val error; more negative is more overfitting.\n")


def _figures(runs: Path) -> list[dict[str, Any]]:
    path = runs / FIGURES_DIR / FIGURES_JSON
    return json.loads(path.read_text()) if path.is_file() else []


def _median_lrn(figures: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]] | None:
    per = [f["lrn"] for f in figures if f.get("lrn")]
    if not per:
        return None
    return {layer: {k: sorted(p[layer][k] for p in per)[len(per) // 2] for k in per[0][layer]} for layer in per[0]}


def _curves_csv(curves: Mapping[str, Sequence[float]]) -> str:
    lines = ["run,epoch,train_top1_err"]
    lines += [f"{name},{i + 1},{e:.6f}" for name, errs in sorted(curves.items()) for i, e in enumerate(errs)]
    return "\n".join(lines) + "\n"


def _pts(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x * 100:.2f} points"


def _pct(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.0%}"
