"""What the LRN of a trained network does to its activations (§3.3): the spread of its scale factor.

LRN multiplies each activation a by (k + alpha * sum of a^2 over the 5 neighbouring channels)^-beta.
If that factor hardly varies over images, positions and channels, the layer is a constant gain and
the next convolution could absorb it; if it varies, it normalises: strong responses damp their
neighbours. This measures the factor's distribution on val images through hooks on the network's
LRN layers, computing it from the layer's own input with its own k, alpha, beta and groups.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from alexnet.model.lrn import LocalResponseNorm


def lrn_scale(layer: LocalResponseNorm, x: torch.Tensor) -> torch.Tensor:
    """The factor d^-beta the layer applies to every activation of input x (N, C, H, W), float32."""
    a = nn.functional.relu(x) if layer.relu else x
    parts = []
    for part in a.float().chunk(layer.groups, dim=1):  # each tower's channels on their own
        sq = part.square().unsqueeze(1)  # (N, 1, C, H, W)
        window = nn.functional.avg_pool3d(sq, (layer.size, 1, 1), stride=1, padding=(layer.size // 2, 0, 0),
                                          count_include_pad=True) * layer.size
        parts.append(window.squeeze(1))
    d = layer.k + layer.alpha * torch.cat(parts, dim=1)
    return d.pow(-layer.beta)


@torch.no_grad()
def lrn_scale_spread(model: nn.Module, batches: Iterable[tuple[torch.Tensor, Any]], max_images: int = 500
                     ) -> dict[str, dict[str, float]]:
    """Per LRN layer of `model`: the 5th, 50th and 95th percentile of its factor over up to `max_images`
    val images, their 95/5 ratio and coefficient of variation, and k^-beta (the factor at no activity)."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, LocalResponseNorm)}
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: seen[name].append(
        lrn_scale(mod, inp[0]).flatten()[::97])) for name, m in layers.items()]  # a fixed sample of positions
    model.eval()
    try:
        count = 0
        for x, _ in batches:
            model(x)
            count += x.shape[0]
            if count >= max_images:
                break
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name, values in seen.items():
        v = torch.cat(values).double()
        q = torch.quantile(v, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)).tolist()
        layer = layers[name]
        out[name] = {"p05": q[0], "p50": q[1], "p95": q[2], "ratio_95_5": q[2] / q[0],
                     "cv": float(v.std() / v.mean()), "at_rest": layer.k ** -layer.beta}
    return out
