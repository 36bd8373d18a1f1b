"""The small network of the paper's Figure 1 (§3.1): ReLU against tanh on 32x32 images.

The paper says only "a four-layer convolutional neural network" on CIFAR-10. The four layers here
are those of the cuda-convnet network of that time for 32x32 images (docs/paper.md §3.1): three
5x5 convolutions of 32, 32 and 64 kernels, each followed by the nonlinearity and a 3x3 max pool
with stride 2, and one fully connected layer to the classes. No normalisation, no dropout:
Figure 1 measures how fast the nonlinearity lets the network fit its training set.
"""

from __future__ import annotations

import math

import torch
from torch import nn

KERNELS = (32, 32, 64)


class Figure1Net(nn.Module):
    """conv1..conv3 (5x5, padding 2) + nonlinearity + max pool 3/2, then fc4. forward(x) -> logits (N, classes)."""

    def __init__(self, num_classes: int = 10, crop_size: int = 32, activation: str = "relu", init: str = "kaiming"):
        super().__init__()
        if activation not in ("relu", "tanh"):
            raise ValueError(f"activation must be 'relu' or 'tanh', got {activation!r}")
        layers: list[nn.Module] = []
        channels, side = 3, crop_size
        for i, kernels in enumerate(KERNELS, 1):
            layers += [nn.Conv2d(channels, kernels, 5, padding=2), nn.ReLU() if activation == "relu" else nn.Tanh(),
                       nn.MaxPool2d(3, 2)]
            channels, side = kernels, (side - 3) // 2 + 1  # 32 -> 15 -> 7 -> 3
            if side < 1:
                raise ValueError(f"crop_size={crop_size} is too small for Figure 1's network (pool{i} is empty)")
        self.features = nn.Sequential(*layers)  # (N, 64, 3, 3) for 32x32 inputs
        self.fc4 = nn.Linear(channels * side * side, num_classes)
        self._init_weights(init)

    def _init_weights(self, scheme: str) -> None:
        """"kaiming": He-normal weights (fan_in), zero biases, the same for both nonlinearities (the
        learning rate is chosen per nonlinearity instead); "paper": N(0, 0.01) weights, zero biases."""
        if scheme not in ("paper", "kaiming"):
            raise ValueError(f"init must be 'paper' or 'kaiming', got {scheme!r}")
        for layer in [*(m for m in self.features if isinstance(m, nn.Conv2d)), self.fc4]:
            fan_in = layer.weight[0].numel()
            nn.init.normal_(layer.weight, 0.0, 0.01 if scheme == "paper" else math.sqrt(2.0 / fan_in))
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc4(torch.flatten(self.features(x), 1))
