"""REPORT.md of a study: what people ask about AlexNet, answered with this project's measurements.

`python -m alexnet.report` writes it again from a study's outputs.

- Parameters and multiply-adds per layer, counted from the model itself (the paper's
  configuration, 224 crops, 1000 classes; and the study's own): conv against fully connected.
- Which layers cross between the two devices (§3.2) and how many bytes per image cross.
- Each claim: the paper's figure, ours with its interval and n, and the verdict of
  alexnet.study.stats.verdict: "within noise" is never read as agreement.
Reads summary.json (alexnet/study/files.py) and figures/figures.json (alexnet/evaluation/figures.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexnet.config.sections import ModelParams
from alexnet.core.atomic import atomic_write_text
from alexnet.core.layout import (
    ERRORS_PLOT,
    FIGURE1_PLOT,
    FIGURE3_FILE,
    FIGURE4_FILE,
    FIGURES_DIR,
    FIGURES_JSON,
    STUDY_REPORT_FILE,
    STUDY_SUMMARY_FILE,
    STUDY_TABLE_FILE,
)
from alexnet.study.spec import PAPER_CLAIMS, interval_of
from alexnet.study.stats import Interval, verdict

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
# Where the towers meet (§3.2): the layer whose input is gathered from both devices, and whether
# both towers send (an exchange) or only tower B sends to the first device (fc8 lives there).
CROSSINGS = {"conv3": "both", "fc6": "both", "fc7": "both", "fc8": "tower B to A"}


def layer_costs(cfg: ModelParams, num_classes: int = 1000) -> list[dict[str, Any]]:
    """Per learned layer: parameters, multiply-adds per image, input and output shapes (one image)."""
    from alexnet.model.network import AlexNet

    with torch.device("meta"):
        model = AlexNet(num_classes=num_classes, towers=cfg.towers, lrn_impl="torch", pooling=cfg.pooling,
                        crop_size=cfg.crop_size, activation=cfg.activation, norm=cfg.norm,
                        width=cfg.width, channels_last=False).eval()
    model.devices = ("meta",)  # shapes only: the input stays on the meta device
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    hooks = [getattr(model, n).register_forward_hook(
        lambda m, i, o, n=n: shapes.__setitem__(n, (tuple(i[0].shape[1:]), tuple(o.shape[1:])))) for n in LAYERS]
    model(torch.empty(1, 3, cfg.crop_size, cfg.crop_size, device="meta"))
    for h in hooks:
        h.remove()
    rows = []
    for name in LAYERS:
        layer = getattr(model, name)
        parts = [layer] if isinstance(layer, nn.Conv2d | nn.Linear) else [layer.tower_a, layer.tower_b]
        params = sum(p.numel() for p in layer.parameters())
        weights = sum(p.weight.numel() for p in parts)
        if isinstance(parts[0], nn.Conv2d):  # each output value: one kernel over its input window
            out = shapes[name][1]
            macs = out[1] * out[2] * weights
        else:
            macs = weights
        rows.append({"layer": name, "kind": "conv" if name.startswith("conv") else "fc", "params": params,
                     "macs": macs, "input": shapes[name][0], "output": shapes[name][1]})
    return rows


def crossing_bytes(rows: list[dict[str, Any]], crop_size: int, bytes_per_value: int = 4) -> list[dict[str, Any]]:
    """Forward bytes per image crossing between the two devices, layer by layer (fp32 by default)."""
    by = {r["layer"]: r for r in rows}
    out = [{"where": "input image to tower B", "values": 3 * crop_size * crop_size}]
    for layer, how in CROSSINGS.items():
        n = 1
        for d in by[layer]["input"]:
            n *= d
        # an exchange: each tower sends its half to the other, so the whole input crosses once
        out.append({"where": f"into {layer} ({how})", "values": n if how == "both" else n // 2})
    for r in out:
        r["bytes"] = r["values"] * bytes_per_value
    return out


def _layers_md(rows: list[dict[str, Any]]) -> str:
    lines = ["| layer | params | multiply-adds / image | output |", "|---|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['params']:,} | {r['macs']:,} | {'x'.join(map(str, r['output']))} |")
    for kind in ("conv", "fc"):
        p = sum(r["params"] for r in rows if r["kind"] == kind)
        m = sum(r["macs"] for r in rows if r["kind"] == kind)
        tp, tm = sum(r["params"] for r in rows), sum(r["macs"] for r in rows)
        lines.append(f"| **all {kind}** | {p:,} ({p / tp:.1%}) | {m:,} ({m / tm:.1%}) | |")
    return "\n".join(lines)


def _shares(rows: list[dict[str, Any]]) -> str:
    fc_params = sum(r["params"] for r in rows if r["kind"] == "fc") / sum(r["params"] for r in rows)
    conv_macs = sum(r["macs"] for r in rows if r["kind"] == "conv") / sum(r["macs"] for r in rows)
    return (f"The fully connected layers hold {fc_params:.1%} of the parameters; the convolutions do "
            f"{conv_macs:.1%} of the multiply-adds.")


def claims(summary: Mapping[str, Any], figures: Mapping[str, Any] | None) -> list[dict[str, str]]:
    """One row per claim: the paper's figure, ours (interval, n), the verdict."""
    table, out = summary.get("table", {}), []

    def diff(variant: str, key: str) -> Interval | None:
        d = table.get(variant, {}).get(f"{key}_vs_baseline")
        return interval_of(d) if d else None

    for variant, (claim, top1, top5) in PAPER_CLAIMS.items():
        for key, paper in (("ten_crop_top1_err", top1), ("ten_crop_top5_err", top5)):
            iv = diff(variant, key)
            out.append({"claim": f"{claim}: {variant} raises {key.split('_')[2]} error",
                        "paper": f"+{paper * 100:.1f} points",
                        "ours": iv.text() if iv else "not run", "verdict": verdict(iv, paper) if iv else "not run"})
    for variant, claim in (("no_dropout", "§4.2 dropout reduces overfitting"),
                           ("no_augmentation", "§4.1 augmentation reduces overfitting")):
        iv = diff(variant, "train_minus_val")
        out.append({"claim": f"{claim}: {variant} widens train - val (more negative)",
                    "paper": "substantial overfitting", "ours": iv.text() if iv else "not run",
                    "verdict": verdict(iv, -1.0) if iv else "not run"})
    iv = diff("batchnorm", "ten_crop_top1_err")
    out.append({"claim": "is LRN like batch normalisation? batchnorm minus LRN, top-1", "paper": "no claim (2015)",
                "ours": iv.text() if iv else "not run",
                "verdict": ("no difference shown" if iv and not iv.excludes_zero() and iv.n > 1 else
                            "differs" if iv and iv.n > 1 else "not run" if not iv else "one run")})
    ok, ours = figure1_claim(summary.get("figure1") or {})
    out.append({"claim": "§3.1 Figure 1: tanh needs more epochs than ReLU to a training error (ratio)",
                "paper": "about 6 (25 % on CIFAR-10)", "ours": ours, "verdict": ok})
    if figures:
        spec = figures["figure3"]["colour_specificity"]
        out.append({"claim": "Figure 3: one tower colour-agnostic, one colour-specific (energy off the grey axis)",
                    "paper": "A agnostic, B specific (untrained: about 0.67)",
                    "ours": ", ".join(f"{t} {v:.2f}" for t, v in spec.items()),
                    "verdict": "one member: no interval"})
        share = figures["figure4"]["same_class_share"]
        out.append({"claim": "Figure 4: fc7 nearest neighbours share the query's class", "paper": "mostly",
                    "ours": f"{share:.0%} of {len(figures['figure4']['queries'])} x 6", "verdict": "one member"})
    return out


def figure1_claim(fig1: Mapping[str, Any]) -> tuple[str, str]:
    """Figure 1's verdict and text: the ratio where both reached the target, and per seed whether tanh
    was slower. A seed where ReLU reached the target and tanh never did counts as slower (censored at
    the last epoch): dropping it would hide the strongest evidence. One-sided sign test over seeds."""
    if not fig1:
        return "not run", "not run"
    epochs = fig1.get("epochs", {})
    seeds = sorted({key.split("/seed-")[1] for key in epochs}, key=int)
    slower = faster = 0
    for seed in seeds:
        relu, tanh = epochs.get(f"baseline/seed-{seed}"), epochs.get(f"tanh/seed-{seed}")
        if relu is None:
            continue  # ReLU never reached it: no comparison
        if tanh is None or tanh > relu:
            slower += 1
        elif tanh < relu:
            faster += 1
    n = slower + faster
    ratio = interval_of(fig1["ratio"]) if fig1.get("ratio") else None
    parts = [f"ratio {ratio.mean:.2f} where both reached it (n={ratio.n})"] if ratio else []
    if n == 0:
        return "not reached", "; ".join([*parts, f"target {fig1.get('target_train_err', '?')} not reached by ReLU"])

    def at_least(k: int) -> float:  # P(k or more of n fair coin flips)
        return sum(math.comb(n, j) for j in range(k, n + 1)) / 2**n

    never = sum(1 for seed in seeds if epochs.get(f"tanh/seed-{seed}") is None)
    parts.append(f"tanh slower in {slower} of {n} seeds ({never} never reached {fig1.get('target_train_err')}), "
                 f"sign test p = {at_least(slower):.3f}")
    verdict_text = ("reproduced" if at_least(slower) < 0.05 else "opposite" if at_least(faster) < 0.05
                    else "within noise")
    return verdict_text, "; ".join(parts)


def write_report(study_dir: Path, params: Any | None = None) -> Path:
    """reports/study/REPORT.md from the study's files (params: the study's model, for its own costs)."""
    summary = json.loads((study_dir / STUDY_SUMMARY_FILE).read_text())
    figs_path = study_dir / FIGURES_DIR / FIGURES_JSON
    figures = json.loads(figs_path.read_text()) if figs_path.is_file() else None
    paper = layer_costs(ModelParams())
    subset = summary.get("train_per_class")
    parts = [f"# Study {summary['study']}: the paper's claims measured\n",
             f"Base params `{summary['base']}`, seeds {summary['seeds']}, variants {', '.join(summary['variants'])}"
             f"{f', training subset {subset} images per class' if subset else ''}.\n",
             "## Claims\n", "| claim | paper | ours (points, 95 % CI, n seeds) | verdict |", "|---|---|---|---|"]
    parts += [f"| {c['claim']} | {c['paper']} | {c['ours']} | {c['verdict']} |" for c in claims(summary, figures)]
    parts += ["\n\"within noise\": the interval includes zero, so this study shows no effect either way; it is "
              "not agreement with the paper. Verdicts compare signs only; the sizes are in the table.\n",
              "## Per variant\n", table.read_text() if (table := study_dir / STUDY_TABLE_FILE).is_file() else "",
              f"![errors]({ERRORS_PLOT})\n", f"![Figure 1]({FIGURE1_PLOT})\n"]
    if figures:
        parts += ["## Figures 3 and 4\n", f"![Figure 3]({FIGURES_DIR}/{FIGURE3_FILE})\n",
                  f"![Figure 4]({FIGURES_DIR}/{FIGURE4_FILE})\n"]
    parts += ["## Where the parameters and the work are (paper configuration, 224 crops, 1000 classes)\n",
              _layers_md(paper), "\n" + _shares(paper) + "\n"]
    if params is not None:
        parts += [f"### The study's model ({params.model.layout}, {params.model.crop_size} px crops, 1000 classes)\n",
                  _layers_md(layer_costs(params.model, 1000)), ""]
    cross = crossing_bytes(paper, 224)
    parts += ["## What crosses between the two devices (§3.2), forward, fp32, per image\n",
              "| where | values | bytes |", "|---|---:|---:|",
              *(f"| {c['where']} | {c['values']:,} | {c['bytes']:,} |" for c in cross),
              f"| **total** | | {sum(c['bytes'] for c in cross):,} |",
              "\nconv2, conv4 and conv5 read only their own tower: nothing crosses there. Backward, the "
              "gradients of the same tensors cross the other way (except the input image).\n"]
    path = study_dir / STUDY_REPORT_FILE
    atomic_write_text(path, "\n".join(parts))
    return path
