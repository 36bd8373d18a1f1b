"""The network's feature-map sizes as plain arithmetic (§3.5), so params can be checked without torch."""

from __future__ import annotations

# §3.4: overlapping pooling (3x3 windows, stride 2), or the non-overlapping 2x2 ablation.
POOL_WINDOWS = {"overlapping": (3, 2), "non_overlapping": (2, 2)}


def pooled_size(crop_size: int, pooling: str = "overlapping") -> int:
    """Side of pool5's feature map for a square crop (6 for 224, both poolings)."""
    kernel, stride = POOL_WINDOWS[pooling]
    side = (crop_size + 2 * 2 - 11) // 4 + 1  # conv1: 11x11, stride 4, padding 2 -> 55 for 224
    for _ in range(3):  # pool1, pool2, pool5 (conv2..conv5 keep the size)
        side = (side - kernel) // stride + 1
    if side < 1:
        raise ValueError(f"crop_size={crop_size} is too small for the network (pool5 would be empty)")
    return side
