"""A study's plots: errors against chance and the deltas against the paper's, Figure 1, and the curves of
the runs that did not train. Drawn by the report stage from the runs' files, never from a model."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alexnet.core.plots import pyplot, save
from alexnet.study.stats import interval_of


def errors_plot(table: Mapping[str, Any], claims: Sequence[Mapping[str, Any]], chance: float, metric: str,
                path: Path) -> None:
    """Left: each variant's error (95 % CI over the seeds that trained) against chance. Right: each claim's
    paired difference to its baseline (Holm-level CI) with the paper's effect marked."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 1]})
    names = [v for v in table if metric in table[v]]
    ivs = [interval_of(table[v][metric]) for v in names]
    left.errorbar(range(len(names)), [iv.mean * 100 for iv in ivs], capsize=3, fmt="o",
                  yerr=[iv.half_width * 100 if iv.n > 1 else 0 for iv in ivs])
    left.axhline(chance * 100, color="grey", ls=":", lw=1, label=f"chance ({chance:.0%})")
    left.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    left.set_ylabel(f"{metric}, % (95 % CI)")
    left.legend(fontsize=7)
    tested = [c for c in claims if "mean" in c]
    for i, c in enumerate(tested):
        right.errorbar([i], [c["mean"] * 100], yerr=[[(c["mean"] - c["low"]) * 100], [(c["high"] - c["mean"]) * 100]],
                       fmt="o", color="C0", capsize=3)
        right.plot([i], [c["paper"] * 100], marker="*", color="C3", ms=10, ls="none",
                   label="the paper's effect" if i == 0 else None)
    right.axhline(0, color="grey", lw=0.8)
    right.set_xticks(range(len(tested)), [f"{c['variant']}\n({c['metric'].replace('_err', '')})" for c in tested],
                     rotation=30, ha="right", fontsize=7)
    right.set_ylabel("variant minus baseline, points (Holm-level CI)")
    if tested:
        right.legend(fontsize=7)
    fig.tight_layout()
    save(fig, path)


def figure1_plot(curves: Mapping[str, Sequence[float]], fast: str, slow: str, target: float, path: Path) -> None:
    """Training error by epoch, every seed of both nonlinearities, and the target line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, errs in sorted(curves.items()):
        variant = name.split("/")[0]
        ax.plot(range(1, len(errs) + 1), [e * 100 for e in errs], "-" if variant == fast else "--", lw=1,
                color="C0" if variant == fast else "C3", alpha=0.8)
    ax.plot([], [], "-", color="C0", label=fast)
    ax.plot([], [], "--", color="C3", label=slow)
    ax.axhline(target * 100, color="grey", lw=0.8, ls=":", label=f"target {target:.0%}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training error, %")
    ax.set_title(f"Figure 1: {fast} (solid) vs {slow} (dashed), every seed", fontsize=9)
    ax.legend(fontsize=7)
    save(fig, path)


def failed_runs_plot(curves: Mapping[str, Sequence[Mapping[str, float]]], path: Path) -> None:
    """The training loss by epoch of every run that did not train (a loss that became non-finite stops)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for label, history in sorted(curves.items()):
        losses = [h["train_loss"] for h in history if math.isfinite(h.get("train_loss", math.nan))]
        ax.plot(range(1, len(losses) + 1), losses, marker=".", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.set_title("Runs that did not train", fontsize=9)
    if curves:
        ax.legend(fontsize=6)
    save(fig, path)
