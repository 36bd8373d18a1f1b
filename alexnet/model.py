"""The 2012 network (§3, Figure 2 of docs/paper.md): five convolutional and three fully connected layers.

Two towers (§3.2): each tower holds half the kernels of every layer. conv2, conv4 and
conv5 see only their own tower's half of the layer below; conv3 sees both towers' conv2;
fc6, fc7 and fc8 see all of the layer below. alexnet/towers.py holds the split layers
(state_dict keys `conv2.tower_a.weight`, ..., `fc7.tower_b.bias`, `fc8.weight` whatever the
placement) and the activations passed between them.

Placement: one forward pass for one device and two. On one device the two towers' activations
are one tensor and each split convolution runs as one grouped convolution; on two devices
(`place`) each tower's layers, and its half of fc6 and fc7, live on its own device and the
activations cross only where the paper connects the towers: into conv3 and into each fully
connected layer. Both compute the same function (tests/test_model.py).

towers=1 is one tower of FULL width (96-256-384-384-256 kernels, 4096-unit fc6/fc7, no
grouping): the same kernel counts without the tower split. Note the paper's §3.2
ablation instead compares against a one-GPU net with HALF as many kernels per conv layer.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from alexnet.config import ModelParams
from alexnet.geometry import POOL_WINDOWS, pooled_size
from alexnet.lrn import IMPLS, LocalResponseNorm
from alexnet.towers import TowerConv2d, TowerLinear, Towers

# §3.3: k=2, n=5, alpha=1e-4 (multiplying the plain sum), beta=0.75.
LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 2.0
TOWER_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


class AlexNet(nn.Module):
    """Krizhevsky et al. 2012, Figure 2. forward(x) -> logits (N, num_classes), pre-softmax."""

    def __init__(
        self,
        num_classes: int = 1000,
        towers: int = 2,
        lrn: bool = True,
        lrn_impl: str = "fast",
        pooling: str = "overlapping",
        crop_size: int = 224,
        init: str = "paper",
        dropout: float = 0.5,
        channels_last: bool = True,
        lrn_gpu: str = "triton",
    ):
        super().__init__()
        if towers not in (1, 2):
            raise ValueError(f"towers must be 1 or 2, got {towers}")
        if lrn_impl not in IMPLS:
            raise ValueError(f"lrn_impl must be 'fast' or 'torch', got {lrn_impl!r}")
        if pooling not in ("overlapping", "non_overlapping"):
            raise ValueError(f"pooling must be 'overlapping' or 'non_overlapping', got {pooling!r}")
        self.towers, self.channels_last = towers, channels_last
        side = pooled_size(crop_size, pooling)

        def conv(cin, cout, k, stride=1, padding=0, connects="own"):
            if towers == 1:
                return nn.Conv2d(cin, cout, k, stride, padding)
            return TowerConv2d(cin, cout, k, stride, padding, connects)

        def linear(fin, fout):
            return nn.Linear(fin, fout) if towers == 1 else TowerLinear(fin, fout)

        def relu_norm():
            # §3.3: ReLU, then the normalisation within each tower's channels, in one pass; ReLU alone
            # when model.lrn is off.
            if not lrn:
                return nn.ReLU()
            return LocalResponseNorm(LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K, groups=towers, impl=lrn_impl,
                                     relu=True, gpu=lrn_gpu)

        def pool():
            # §3.4: overlapping pooling, 3x3 windows 2 apart; or the 2x2 non-overlapping ablation.
            return nn.MaxPool2d(*POOL_WINDOWS[pooling])

        # Registered in Figure 2's order; only conv* and fc* hold parameters.
        self.conv1 = conv(3, 96, 11, stride=4, padding=2, connects="both")  # (N, 96, 55, 55)
        self.relu_norm1, self.pool1 = relu_norm(), pool()  # (N, 96, 27, 27)
        self.conv2 = conv(96, 256, 5, padding=2)  # own tower: 5x5x48 -> (N, 256, 27, 27)
        self.relu_norm2, self.pool2 = relu_norm(), pool()  # (N, 256, 13, 13)
        self.conv3 = conv(256, 384, 3, padding=1, connects="both")  # both towers: 3x3x256 -> 13x13
        self.relu3 = nn.ReLU()
        self.conv4 = conv(384, 384, 3, padding=1)  # own tower: 3x3x192
        self.relu4 = nn.ReLU()
        self.conv5 = conv(384, 256, 3, padding=1)  # own tower: 3x3x192 -> (N, 256, 13, 13)
        self.relu5, self.pool5 = nn.ReLU(), pool()  # (N, 256, 6, 6) for 224 crops
        self.fc6 = linear(256 * side * side, 4096)  # all of pool5: 9216 = 6x6x256 for 224 crops
        self.relu6, self.drop6 = nn.ReLU(), nn.Dropout(dropout)  # §4.2
        self.fc7 = linear(4096, 4096)
        self.relu7, self.drop7 = nn.ReLU(), nn.Dropout(dropout)
        self.fc8 = nn.Linear(4096, num_classes)  # on the first device
        self.devices: tuple[str, ...] = ("cpu",)
        self._init_weights(init)
        if channels_last:
            self.to(memory_format=torch.channels_last)

    # ---- initialisation ----------------------------------------------------------------------

    def _init_weights(self, scheme: str) -> None:
        """§5 ("paper"): weights N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6, fc7, else 0.

        "kaiming": He-normal weights (fan_out for convolutions, counting the kernels that each
        input unit actually feeds; fan_in for fc6, fc7), N(0, 0.01) for fc8, zero biases.
        """
        if scheme not in ("paper", "kaiming"):
            raise ValueError(f"init must be 'paper' or 'kaiming', got {scheme!r}")
        for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
            layer = getattr(self, name)
            parts = [layer] if isinstance(layer, (nn.Conv2d, nn.Linear)) else [layer.tower_a, layer.tower_b]
            for part in parts:
                if scheme == "paper":
                    nn.init.normal_(part.weight, 0.0, 0.01)
                    nn.init.constant_(part.bias, 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0)
                    continue
                if name == "fc8":
                    nn.init.normal_(part.weight, 0.0, 0.01)
                elif isinstance(part, nn.Linear):
                    nn.init.normal_(part.weight, 0.0, math.sqrt(2.0 / part.in_features))
                else:
                    kernels_fed = (
                        part.out_channels * len(parts)
                        if getattr(layer, "connects", "") == "both"
                        else part.out_channels
                    )
                    fan_out = kernels_fed * part.kernel_size[0] * part.kernel_size[1]
                    nn.init.normal_(part.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(part.bias)

    # ---- placement (§3.2) --------------------------------------------------------------------

    def place(self, devices: str | list[str] | tuple[str, ...]) -> AlexNet:
        """Move the model to one device, or split its towers over two (tower A + fc8 on the first)."""
        devices = (devices,) if isinstance(devices, str) else tuple(devices)
        if len(devices) not in (1, 2):
            raise ValueError(f"give one or two devices, got {list(devices)}")
        if len(devices) == 2 and self.towers != 2:
            raise ValueError("two devices need towers=2: each device holds one tower (§3.2)")
        self.to(devices[0])
        if len(devices) == 2:
            for name in TOWER_LAYERS:
                getattr(self, name).tower_b.to(devices[1])
        for module in self.modules():
            if isinstance(module, LocalResponseNorm):  # the towers one activation tensor holds
                module.groups = self.towers // len(devices)
        self.devices = devices
        return self

    # ---- forward -----------------------------------------------------------------------------

    def features_fc7(self, x: torch.Tensor) -> torch.Tensor:
        """The 4096-d fc7 activations (after ReLU and, in training mode, dropout), on the first device."""
        x = x.to(self.devices[0], non_blocking=True)  # a no-op when it is already there
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t = Towers.input(x, self.devices)  # (N, 3, 224, 224) for each tower
        t = t.layer(self.conv1).each(self.relu_norm1, self.pool1)  # (N, 96, 27, 27): 48 channels a tower
        t = t.layer(self.conv2).each(self.relu_norm2, self.pool2)  # (N, 256, 13, 13)
        t = t.exchange()  # conv3 sees both towers' conv2
        t = t.layer(self.conv3).each(self.relu3)  # (N, 384, 13, 13)
        t = t.layer(self.conv4).each(self.relu4)  # (N, 384, 13, 13)
        t = t.layer(self.conv5).each(self.relu5, self.pool5)  # (N, 256, 6, 6)
        t = t.each(flatten).exchange()  # (N, 9216) in (C, H, W) order: fc6 sees all of pool5
        t = t.layer(self.fc6).each(self.relu6, self.drop6)  # (N, 4096)
        t = t.exchange()  # fc7 sees all of fc6
        t = t.layer(self.fc7).each(self.relu7, self.drop7)  # (N, 4096)
        return t.joined()  # (N, 4096) on the first device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc8(self.features_fc7(x))  # (N, num_classes); softmax lives in the loss


def flatten(x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(x, 1)


def build_model(cfg: ModelParams, num_classes: int) -> AlexNet:
    """The network as the model section of params.yaml describes it, placed on cfg.devices."""
    if cfg.num_classes is not None and cfg.num_classes != num_classes:
        raise ValueError(f"model.num_classes={cfg.num_classes} but the data has {num_classes} classes")
    model = AlexNet(
        num_classes=num_classes,
        towers=cfg.towers,
        lrn=cfg.lrn,
        lrn_impl=cfg.lrn_impl,
        pooling=cfg.pooling,
        crop_size=cfg.crop_size,
        init=cfg.init,
        dropout=cfg.dropout,
        lrn_gpu=cfg.lrn_gpu,
    )
    return model.place(cfg.devices)


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager:
    """torch.autocast for `precision` ("fp32": a no-op, "bf16") on the device the input lives on."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    device_type = torch.device(device).type  # "cuda:1" -> "cuda"; covers every device of that type
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=precision == "bf16")
