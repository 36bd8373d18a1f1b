"""The 2012 network (§3, Figure 2): five convolutional and three fully connected layers.

Two towers (§3.2): each tower holds half the kernels of every layer. conv2, conv4 and
conv5 see only their own tower's half of the layer below; conv3 sees both towers' conv2;
fc6, fc7 and fc8 see all of the layer below. Each tower's half of a layer is its own
nn.Conv2d / nn.Linear, so the state_dict reads `conv2.tower_a.weight`,
`conv2.tower_b.weight`, ..., `fc7.tower_b.bias`, `fc8.weight` whatever the placement.

Placement: on one device the two towers of a convolution run as one (grouped)
convolution built from the two towers' weights on the fly; on two devices (`place`)
each tower's layers, and its half of fc6 and fc7, live on its own device and the
activations cross only where the paper connects the towers: into conv3 and into each
fully connected layer. Both paths compute the same function (tests/test_model.py).

towers=1 is one tower of FULL width (96-256-384-384-256 kernels, 4096-unit fc6/fc7, no
grouping): the same kernel counts without the tower split. Note the paper's §3.2
ablation instead compares against a one-GPU net with HALF as many kernels per conv layer.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from alexnet.config import ModelParams
from alexnet.lrn import local_response_norm, reference_local_response_norm

# §3.3: k=2, n=5, alpha=1e-4 (multiplying the plain sum), beta=0.75.
LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 2.0


class TowerConv2d(nn.Module):
    """A convolution split into two towers (§3.2), `tower_a` and `tower_b`, half the kernels each.

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
        # Both towers on one device: one grouped convolution over the towers' weights, concatenated
        # on the fly (cheap: conv weights are small). Output channels: tower A's, then tower B's.
        a, b = self.tower_a, self.tower_b
        weight = torch.cat([a.weight, b.weight])
        bias = torch.cat([a.bias, b.bias])
        groups = 2 if self.connects == "own" else 1
        return F.conv2d(x, weight, bias, a.stride, a.padding, groups=groups)


class TowerLinear(nn.Module):
    """A fully connected layer split into two towers, each with half the units, each seeing all inputs."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.tower_a = nn.Linear(in_features, out_features // 2)
        self.tower_b = nn.Linear(in_features, out_features // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Two GEMMs and a small concat of outputs, rather than concatenating 151 MB of fc6 weights.
        return torch.cat([self.tower_a(x), self.tower_b(x)], dim=1)


def pooled_size(crop_size: int, pooling: str = "overlapping") -> int:
    """Side of pool5's feature map for a square crop (6 for 224, both poolings)."""
    kernel, stride = (3, 2) if pooling == "overlapping" else (2, 2)
    side = (crop_size + 2 * 2 - 11) // 4 + 1  # conv1: 11x11, stride 4, padding 2 -> 55 for 224
    for _ in range(3):  # pool1, pool2, pool5 (conv2..conv5 keep the size)
        side = (side - kernel) // stride + 1
    if side < 1:
        raise ValueError(f"crop_size={crop_size} is too small for the network (pool5 would be empty)")
    return side


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
    ):
        super().__init__()
        if towers not in (1, 2):
            raise ValueError(f"towers must be 1 or 2, got {towers}")
        if lrn_impl not in ("fast", "torch"):
            raise ValueError(f"lrn_impl must be 'fast' or 'torch', got {lrn_impl!r}")
        if pooling not in ("overlapping", "non_overlapping"):
            raise ValueError(f"pooling must be 'overlapping' or 'non_overlapping', got {pooling!r}")
        self.towers, self.lrn, self.lrn_impl, self.dropout = towers, lrn, lrn_impl, dropout
        self.pool_kernel = 3 if pooling == "overlapping" else 2  # §3.4: overlapping 3/2, or 2/2
        side = pooled_size(crop_size, pooling)
        self.channels_last = channels_last

        def conv(cin, cout, k, stride=1, padding=0, connects="own"):
            if towers == 1:
                return nn.Conv2d(cin, cout, k, stride, padding)
            return TowerConv2d(cin, cout, k, stride, padding, connects)

        def linear(fin, fout):
            return nn.Linear(fin, fout) if towers == 1 else TowerLinear(fin, fout)

        self.conv1 = conv(3, 96, 11, stride=4, padding=2, connects="both")  # (N, 96, 55, 55)
        self.conv2 = conv(96, 256, 5, padding=2)  # own tower: 5x5x48 -> (N, 256, 27, 27)
        self.conv3 = conv(256, 384, 3, padding=1, connects="both")  # both towers: 3x3x256 -> 13x13
        self.conv4 = conv(384, 384, 3, padding=1)  # own tower: 3x3x192
        self.conv5 = conv(384, 256, 3, padding=1)  # own tower: 3x3x192 -> (N, 256, 13, 13)
        self.fc6 = linear(256 * side * side, 4096)  # all of pool5: 9216 = 6x6x256 for 224 crops
        self.fc7 = linear(4096, 4096)
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
            for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
                getattr(self, name).tower_b.to(devices[1])
        self.devices = devices
        return self

    # ---- forward -----------------------------------------------------------------------------

    def _relu_norm_pool(self, x: torch.Tensor, groups: int, norm: bool) -> torch.Tensor:
        # ReLU, then §3.3 LRN within each tower's channels (norm), then §3.4 max-pool.
        # Under torch.export the formula runs as plain torch ops: the fast LRN's block loop would pin
        # the exported graph to one batch size. Same numbers, and export is for inference only.
        if norm and self.lrn and self.lrn_impl == "fast" and not torch.compiler.is_exporting():
            x = local_response_norm(x, LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K, groups=groups, relu=True)
        elif norm and self.lrn:
            x = reference_local_response_norm(F.relu(x), LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K, groups=groups)
        else:
            x = F.relu(x)
        return F.max_pool2d(x, self.pool_kernel, 2)

    def _fc7_one_device(self, x: torch.Tensor) -> torch.Tensor:
        groups = self.towers
        x = self._relu_norm_pool(self.conv1(x), groups, norm=True)  # (N, 96, 27, 27)
        x = self._relu_norm_pool(self.conv2(x), groups, norm=True)  # (N, 256, 13, 13)
        x = F.relu(self.conv3(x))  # (N, 384, 13, 13)
        x = F.relu(self.conv4(x))  # (N, 384, 13, 13)
        x = self._relu_norm_pool(self.conv5(x), groups, norm=False)  # (N, 256, 6, 6)
        x = torch.flatten(x, 1)  # (N, 9216), in (C, H, W) order
        x = F.dropout(F.relu(self.fc6(x)), self.dropout, self.training)  # (N, 4096)
        return F.dropout(F.relu(self.fc7(x)), self.dropout, self.training)  # (N, 4096)

    def _fc7_two_devices(self, x: torch.Tensor) -> torch.Tensor:
        dev_a, dev_b = self.devices
        layers = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")
        a_, b_ = ({n: getattr(self, n).tower_a for n in layers}, {n: getattr(self, n).tower_b for n in layers})

        def exchange(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # The towers meet: each gets both halves, concatenated on its own device.
            return (
                torch.cat([a, b.to(dev_a, non_blocking=True)], dim=1),
                torch.cat([a.to(dev_b, non_blocking=True), b], dim=1),
            )

        a, b = x, x.to(dev_b, non_blocking=True)
        a = self._relu_norm_pool(a_["conv1"](a), 1, norm=True)  # (N, 48, 27, 27) per tower
        b = self._relu_norm_pool(b_["conv1"](b), 1, norm=True)
        a = self._relu_norm_pool(a_["conv2"](a), 1, norm=True)  # (N, 128, 13, 13)
        b = self._relu_norm_pool(b_["conv2"](b), 1, norm=True)
        a, b = exchange(a, b)  # conv3 sees both towers: (N, 256, 13, 13) on each device
        a, b = F.relu(a_["conv3"](a)), F.relu(b_["conv3"](b))  # (N, 192, 13, 13)
        a, b = F.relu(a_["conv4"](a)), F.relu(b_["conv4"](b))  # (N, 192, 13, 13)
        a = self._relu_norm_pool(a_["conv5"](a), 1, norm=False)  # (N, 128, 6, 6)
        b = self._relu_norm_pool(b_["conv5"](b), 1, norm=False)
        a, b = exchange(torch.flatten(a, 1), torch.flatten(b, 1))  # (N, 9216): all of pool5
        for fc in ("fc6", "fc7"):
            a = F.dropout(F.relu(a_[fc](a)), self.dropout, self.training)  # (N, 2048) per tower
            b = F.dropout(F.relu(b_[fc](b)), self.dropout, self.training)
            if fc == "fc6":
                a, b = exchange(a, b)  # fc7 sees all of fc6: (N, 4096)
        return torch.cat([a, b.to(dev_a, non_blocking=True)], dim=1)  # (N, 4096) on the first device

    def features_fc7(self, x: torch.Tensor) -> torch.Tensor:
        """The 4096-d fc7 activations (after ReLU and, in training mode, dropout), on the first device."""
        x = x.to(self.devices[0], non_blocking=True)  # a no-op when it is already there
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if len(self.devices) == 2:
            return self._fc7_two_devices(x)
        return self._fc7_one_device(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc8(self.features_fc7(x))  # (N, num_classes); softmax lives in the loss


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
    )
    return model.place(cfg.devices)


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager:
    """torch.autocast for `precision` ("fp32": a no-op, "bf16") on the device the input lives on."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    device_type = torch.device(device).type  # "cuda:1" -> "cuda"; covers every device of that type
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=precision == "bf16")
