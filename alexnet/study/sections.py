"""The sections of a study's REPORT.md that answer what people ask about AlexNet with this project's own
measurements and the network's own arithmetic: where the parameters and the work are (conv against
fully connected), how the model parallelism of §3.2 works and what crosses between the devices,
LRN against batch normalisation, overlapping pooling, and what the study can say beyond its data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from alexnet.config.sections import ModelParams

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


def parallelism_section(paper: ModelParams) -> list[str]:
    """§3.2: which layers cross between the two devices, the bytes per image, and why the split."""
    rows = layer_costs(paper)
    crossing = crossing_bytes(rows, paper.crop_size)
    total = sum(r["bytes"] for r in crossing)
    lines = ["## How the model parallelism works (§3.2)\n",
             "Each device holds one tower: half the kernels of every layer. The towers meet only where the "
             "paper connects them: conv3 and the fully connected layers see both towers' outputs; conv2, conv4 "
             "and conv5 see only their own tower's half of the layer below. Forward, per image (fp32, the "
             "paper's 224 crops; the backward pass sends the same amounts back):\n",
             "| where | values | bytes |", "|---|---:|---:|"]
    lines += [f"| {r['where']} | {r['values']:,} | {r['bytes']:,} |" for r in crossing]
    lines += [f"| **all** | | {total:,} |\n",
              f"About {total / 1e6:.2f} MB an image each way, {total * 128 / 1e6:.0f} MB for a batch of 128: "
              "the split was a way to fit a 60-million-parameter network into two 3 GB GPUs of 2012, with "
              "the crossings limited to the layers where the paper's design wants the towers to mix. "
              "The one-tower net of the same width (`model.towers: 1`) computes the same function shape "
              "without any crossing; the half-kernel one-tower net is the paper's own comparison.\n"]
    return lines


def costs_section(paper: ModelParams, study: ModelParams | None) -> list[str]:
    lines = ["## Where the parameters and the work are: conv against fully connected\n",
             "The paper's configuration (224 crops, 1000 classes), counted from the model itself:\n",
             _layers_md(layer_costs(paper)), "", _shares(layer_costs(paper)) + "\n"]
    if study is not None and study.arch == "alexnet":
        rows = layer_costs(study, 10)
        lines += [f"The study's network ({study.layout}, {study.crop_size} px crops, 10 classes):\n",
                  _layers_md(rows), "", _shares(rows) + "\n"]
    return lines


def lrn_section(claims: Sequence[Mapping[str, Any]], lrn: Mapping[str, Any] | None) -> list[str]:
    """LRN against batch normalisation, in plain words, with the study's numbers."""
    lines = ["## LRN against batch normalisation\n",
             "Why the paper normalised: its ReLUs are unbounded, and §3.3 adds a form of lateral inhibition, "
             "each activation divided by the activity of its neighbouring channels at the same place, which "
             "the paper found lowered the error (1.4 points top-1 on ImageNet). Batch normalisation (2015) "
             "normalises each channel by its mean and variance over the batch and learns a scale and shift; "
             "it makes training stable at higher learning rates and is usually put after each convolution, "
             "before the nonlinearity. The study tries it in both places, each at the learning rate its own "
             "tuning runs picked on the held-out slice, with a warm-up.\n"]
    for c in claims:
        if c["variant"].startswith("batchnorm") or c["variant"] == "no_lrn":
            lines.append(f"- {c['variant']} against the paper's LRN: {_claim_words(c)}")
    if lrn:
        lines += ["", "Is LRN more than a constant gain here? The factor it multiplies each activation by, over "
                  "val images, on every trained baseline seed (median of the seeds):\n",
                  "| layer | 5th percentile | median | 95th percentile | 95th / 5th | at no activity |",
                  "|---|---:|---:|---:|---:|---:|"]
        for layer, s in lrn.items():
            lines.append(f"| {layer} | {s['p05']:.3f} | {s['p50']:.3f} | {s['p95']:.3f} | {s['ratio_95_5']:.2f} | "
                         f"{s['at_rest']:.3f} |")
        spread = max(s["ratio_95_5"] for s in lrn.values())
        lines.append("\n" + ("The factor varies little: here LRN acts close to a constant gain, which the next "
                               "convolution can absorb." if spread < 1.1 else
                               f"The factor varies by up to {spread:.2f}x between the 5th and 95th percentile: "
                               "strong responses do damp their neighbours, so LRN is more than a constant gain.")
                     + "\n")
    return lines


def pooling_section(claims: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["## Overlapping pooling (§3.4)\n",
             "Overlapping 3x3 windows 2 apart against 2x2 windows 2 apart. The crops were chosen so that both "
             "leave the same pool5 map, so fc6 has the same inputs in both and only the pooling differs. The "
             "paper's 0.4 points were stated in advance to be out of reach on this hardware:"]
    lines += [f"- {c['variant']}: {_claim_words(c)}" for c in claims if c["variant"] == "non_overlapping_pool"]
    return [*lines, ""]


def generalisation_section(regime: Mapping[str, Any]) -> list[str]:
    study = regime.get("study", {})
    return ["## Does any of this generalise beyond this dataset?\n",
            f"What this study can say: on Imagenette (10 easy, distinct ImageNet classes), with "
            f"{study.get('train_per_class') or 'all'} training images per class, small crops and a short schedule, "
            "whether each of the paper's choices changes the error of this network by more than the bound given. "
            "What it cannot say: whether the paper's effects hold at ImageNet's scale (1000 classes, 1.2 million "
            "images, 90 epochs, 224 crops). An effect of 1-2 points on ImageNet can vanish or grow on a 10-class "
            "problem whose error is dominated by too little data; a bound here is a bound for this regime only, "
            "and no verdict here confirms or refutes the paper at its own scale.\n"]


def _claim_words(c: Mapping[str, Any]) -> str:
    if "mean" not in c:
        return f"{c['verdict']} ({', '.join(c.get('not_trained') or []) or 'too few seeds'})."
    ci = f"{c['low'] * 100:+.2f} to {c['high'] * 100:+.2f}"
    return f"{c['mean'] * 100:+.2f} points ({1 - c['level']:.2%} CI {ci}, n = {c['n']}): **{c['verdict']}**."
