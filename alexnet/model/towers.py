"""The two towers of §3.2 (docs/paper.md): layers split in half, and the activations between them.

Each tower holds half the kernels of every layer. A layer's halves are its own nn.Conv2d /
nn.Linear, `tower_a` and `tower_b`, so the state_dict reads `conv2.tower_a.weight`, ...,
`fc7.tower_b.bias` whatever the placement.

`Towers` carries the activations through the network in one of two forms:
- one device: one tensor, tower A's channels then tower B's. A tower layer runs as one grouped
  convolution (or two GEMMs); the towers "meet" (conv3, fc6, fc7) for free, since every tower
  layer that should see both halves is given the whole tensor.
- two devices: one tensor per tower, each on its tower's device. The towers meet by copying each
  half to the other device and concatenating, as the paper's GPUs communicate only there.
Both forms compute the same function (tests/test_model.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class TowerConv2d(nn.Module):
    """A convolution split into two towers, `tower_a` and `tower_b`, half the kernels each.

    connects="own": each tower sees only its own half of the input channels (conv2, conv4, conv5);
    connects="both": each tower sees all input channels (conv1 on the image, conv3).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        connects: str = "own",
    ):
        super().__init__()
        if connects not in ("own", "both"):
            raise ValueError(f"connects must be 'own' or 'both', got {connects!r}")
        tower_in = in_channels // 2 if connects == "own" else in_channels
        self.tower_a = nn.Conv2d(tower_in, out_channels // 2, kernel_size, stride, padding)
        self.tower_b = nn.Conv2d(tower_in, out_channels // 2, kernel_size, stride, padding)
        self.connects = connects

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Both towers over one tensor (one device). Output channels: tower A's, then tower B's."""
        # One grouped convolution over the towers' weights, concatenated on the fly (conv weights
        # are small).
        a, b = self.tower_a, self.tower_b
        weight = torch.cat([a.weight, b.weight])
        bias = torch.cat([a.bias, b.bias])
        groups = 2 if self.connects == "own" else 1
        return F.conv2d(x, weight, bias, a.stride, a.padding, groups=groups)

    def extra_repr(self) -> str:
        return f"connects={self.connects}"


class TowerLinear(nn.Module):
    """A fully connected layer split into two towers, each with half the units, each seeing all inputs."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.tower_a = nn.Linear(in_features, out_features // 2)
        self.tower_b = nn.Linear(in_features, out_features // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Two GEMMs and a small concat of outputs, rather than concatenating fc6's large weights.
        return torch.cat([self.tower_a(x), self.tower_b(x)], dim=1)


class Towers:
    """The activations of both towers: one tensor on one device, or one tensor per tower on two devices."""

    def __init__(self, parts: tuple[torch.Tensor, ...], devices: tuple[str, ...]):
        self.parts, self.devices = parts, devices

    @classmethod
    def input(cls, x: torch.Tensor, devices: tuple[str, ...]) -> Towers:
        """The image batch, already on the first device, given to each tower."""
        if len(devices) == 1:
            return cls((x,), devices)
        return cls((x, x.to(devices[1], non_blocking=True)), devices)

    def layer(self, layer: nn.Module) -> Towers:
        """A tower layer (TowerConv2d / TowerLinear, or a plain layer of a one-tower net)."""
        if len(self.parts) == 1:
            return Towers((layer(self.parts[0]),), self.devices)
        a, b = self.parts
        return Towers((layer.tower_a(a), layer.tower_b(b)), self.devices)

    def each(self, *steps: Callable[[torch.Tensor], torch.Tensor]) -> Towers:
        """steps applied in turn within each tower (tower A's all first, so dropout draws in that order)."""
        parts = []
        for x in self.parts:
            for step in steps:
                x = step(x)
            parts.append(x)
        return Towers(tuple(parts), self.devices)

    def exchange(self) -> Towers:
        """The towers meet: each gets all channels, A's then B's (one device: they already have)."""
        if len(self.parts) == 1:
            return self
        (a, b), (dev_a, dev_b) = self.parts, self.devices
        return Towers(
            (
                torch.cat([a, b.to(dev_a, non_blocking=True)], dim=1),
                torch.cat([a.to(dev_b, non_blocking=True), b], dim=1),
            ),
            self.devices,
        )

    def joined(self) -> torch.Tensor:
        """All channels as one tensor, A's then B's, on the first device."""
        if len(self.parts) == 1:
            return self.parts[0]
        a, b = self.parts
        return torch.cat([a, b.to(self.devices[0], non_blocking=True)], dim=1)
