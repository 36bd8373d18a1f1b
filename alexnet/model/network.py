"""The 2012 network (§3, Figure 2 of docs/paper.md): five convolutional and three fully connected layers.

Two towers (§3.2): each tower holds half the kernels of every layer. conv2, conv4 and
conv5 see only their own tower's half of the layer below; conv3 sees both towers' conv2;
fc6, fc7 and fc8 see all of the layer below. alexnet/model/towers.py holds the split layers
(state_dict keys `conv2.tower_a.weight`, ..., `fc7.tower_b.bias`, `fc8.weight` whatever the
placement) and the activations passed between them.

Placement: one forward pass for one device and two. On one device the two towers' activations
are one tensor and each split convolution runs as one grouped convolution; on two devices
(`place`) each tower's layers, and its half of fc6 and fc7, live on its own device and the
activations cross only where the paper connects the towers: into conv3 and into each fully
connected layer. Both compute the same function (tests/test_model.py).

Layouts (ModelParams.layout): "two_towers" (the paper); "one_tower_full" (towers=1): one tower of
FULL width (96-256-384-384-256 kernels, 4096-unit fc6/fc7, no grouping), the same kernel counts
without the split; "one_tower_half" (towers=1, width=half): the paper's own §3.2 baseline, half
the kernels in conv1-conv4 (48-128-192-192), conv5 and the fully connected layers at full size.

Switches for the study of §3 (alexnet/study/): activation relu | tanh (§3.1), and the normalisation,
norm lrn | none | batchnorm (in the LRN's places) | batchnorm_every_conv (after every convolution, before
its nonlinearity) (§3.3). The paper's choices build exactly the modules, in the order, they always
did: same init draws, same keys. Figure 1's small network is alexnet/model/figure1.py.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from alexnet.config.sections import ModelParams
from alexnet.core.geometry import POOL_WINDOWS, pooled_size
from alexnet.model.lrn import IMPLS, LocalResponseNorm
from alexnet.model.towers import TowerConv2d, TowerLinear, Towers

# §3.3: k=2, n=5, alpha=1e-4 (multiplying the plain sum), beta=0.75.
LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 2.0
TOWER_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


class AlexNet(nn.Module):
    """Krizhevsky et al. 2012, Figure 2. forward(x) -> logits (N, num_classes), pre-softmax."""

    def __init__(
        self,
        num_classes: int = 1000,
        towers: int = 2,
        lrn_impl: str = "fast",
        pooling: str = "overlapping",
        crop_size: int = 224,
        init: str = "paper",
        dropout: float = 0.5,
        channels_last: bool = True,
        lrn_gpu: str = "triton",
        activation: str = "relu",
        norm: str = "lrn",
        width: str = "full",
    ):
        super().__init__()
        _check_switches(towers, activation, norm, width, lrn_impl, pooling)
        self.towers, self.channels_last, self.norm = towers, channels_last, norm
        side = pooled_size(crop_size, pooling)
        # §3.2's one-tower baseline halves conv1-conv4 only; every other layout keeps the paper's counts.
        k1, k2, k3, k4 = (48, 128, 192, 192) if width == "half" else (96, 256, 384, 384)
        make = _Layers(towers, activation, norm, lrn_impl, lrn_gpu, pooling)
        # Registered in Figure 2's order (the order the layers draw their default init from torch's
        # generator before _init_weights); only conv*, fc* and batch norms hold parameters.
        self.conv1 = make.conv(3, k1, 11, stride=4, padding=2, connects="both")  # (N, 96, 55, 55)
        self.relu_norm1, self.pool1 = make.act_norm(k1, lrn_place=True), make.pool()  # (N, 96, 27, 27)
        self.conv2 = make.conv(k1, k2, 5, padding=2)  # own tower: 5x5x48 -> (N, 256, 27, 27)
        self.relu_norm2, self.pool2 = make.act_norm(k2, lrn_place=True), make.pool()  # (N, 256, 13, 13)
        self.conv3 = make.conv(k2, k3, 3, padding=1, connects="both")  # both towers: 3x3x256 -> 13x13
        self.relu3 = make.act_norm(k3)
        self.conv4 = make.conv(k3, k4, 3, padding=1)  # own tower: 3x3x192
        self.relu4 = make.act_norm(k4)
        self.conv5 = make.conv(k4, 256, 3, padding=1)  # own tower: 3x3x192 -> (N, 256, 13, 13)
        self.relu5, self.pool5 = make.act_norm(256), make.pool()  # (N, 256, 6, 6) for 224 crops
        self.fc6 = make.linear(256 * side * side, 4096)  # all of pool5: 9216 = 6x6x256 for 224 crops
        self.relu6, self.drop6 = make.act(), nn.Dropout(dropout)  # §4.2
        self.fc7 = make.linear(4096, 4096)
        self.relu7, self.drop7 = make.act(), nn.Dropout(dropout)
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
        if len(devices) == 2 and self.norm.startswith("batchnorm"):
            raise ValueError(f"norm={self.norm} runs on one device: its statistics span both towers' channels")
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


NORMS = ("lrn", "none", "batchnorm", "batchnorm_every_conv")


def _check_switches(towers: int, activation: str, norm: str, width: str, lrn_impl: str, pooling: str) -> None:
    if activation not in ("relu", "tanh"):
        raise ValueError(f"activation must be 'relu' or 'tanh', got {activation!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}")
    if width not in ("full", "half") or (width == "half" and towers != 1):
        raise ValueError(f"width must be 'full', or 'half' with towers=1; got {width!r} with towers={towers}")
    if towers not in (1, 2):
        raise ValueError(f"towers must be 1 or 2, got {towers}")
    if lrn_impl not in IMPLS:
        raise ValueError(f"lrn_impl must be 'fast' or 'torch', got {lrn_impl!r}")
    if pooling not in POOL_WINDOWS:
        raise ValueError(f"pooling must be 'overlapping' or 'non_overlapping', got {pooling!r}")


class _Layers:
    """Makes the layers of one configuration: split or whole, the activation, the normalisation, the pooling."""

    def __init__(self, towers: int, activation: str, norm: str, lrn_impl: str, lrn_gpu: str, pooling: str):
        self.towers, self.activation, self.norm = towers, activation, norm
        self.lrn_impl, self.lrn_gpu, self.pooling = lrn_impl, lrn_gpu, pooling

    def conv(self, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, connects: str = "own") -> nn.Module:
        if self.towers == 1:
            return nn.Conv2d(cin, cout, k, stride, padding)
        return TowerConv2d(cin, cout, k, stride, padding, connects)

    def linear(self, fin: int, fout: int) -> nn.Module:
        return nn.Linear(fin, fout) if self.towers == 1 else TowerLinear(fin, fout)

    def act(self) -> nn.Module:
        return nn.ReLU() if self.activation == "relu" else nn.Tanh()

    def act_norm(self, channels: int, lrn_place: bool = False) -> nn.Module:
        """What follows a convolution: its nonlinearity, and the normalisation where `norm` puts one.

        §3.3: after conv1's and conv2's ReLU (`lrn_place`), the LRN within each tower's channels, fused
        with the ReLU in one pass. Batch normalisation is per channel, so the towers held in one tensor
        need no grouping: in the LRN's places after the nonlinearity, or after every convolution before it.
        """
        if self.norm == "batchnorm_every_conv":
            return nn.Sequential(nn.BatchNorm2d(channels), self.act())
        if not lrn_place or self.norm == "none":
            return self.act()
        if self.norm == "batchnorm":
            return nn.Sequential(self.act(), nn.BatchNorm2d(channels))
        fused = self.activation == "relu"
        lrn_layer = LocalResponseNorm(LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K, groups=self.towers,
                                      impl=self.lrn_impl, relu=fused, gpu=self.lrn_gpu)
        return lrn_layer if fused else nn.Sequential(self.act(), lrn_layer)

    def pool(self) -> nn.Module:
        # §3.4: overlapping pooling, 3x3 windows 2 apart; or the 2x2 non-overlapping ablation.
        return nn.MaxPool2d(*POOL_WINDOWS[self.pooling])


def flatten(x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(x, 1)


def build_model(cfg: ModelParams, num_classes: int) -> nn.Module:
    """The network as the model section of params.yaml describes it, placed on cfg.devices."""
    if cfg.num_classes is not None and cfg.num_classes != num_classes:
        raise ValueError(f"model.num_classes={cfg.num_classes} but the data has {num_classes} classes")
    if cfg.arch == "figure1_cnn":
        from alexnet.model.figure1 import Figure1Net

        return Figure1Net(num_classes, cfg.crop_size, cfg.activation, cfg.init).to(cfg.devices[0])
    model = AlexNet(
        num_classes=num_classes,
        towers=cfg.towers,
        lrn_impl=cfg.lrn_impl,
        pooling=cfg.pooling,
        crop_size=cfg.crop_size,
        init=cfg.init,
        dropout=cfg.dropout,
        lrn_gpu=cfg.lrn_gpu,
        activation=cfg.activation,
        norm=cfg.norm,
        width=cfg.width,
    )
    return model.place(cfg.devices)


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager:
    """torch.autocast for `precision` ("fp32": a no-op, "bf16") on the device the input lives on."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    device_type = torch.device(device).type  # "cuda:1" -> "cuda"; covers every device of that type
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=precision == "bf16")
