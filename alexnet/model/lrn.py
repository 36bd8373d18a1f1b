"""Local response normalisation across channels (§3.3, docs/paper.md): the formula and its dispatch.

    b[i] = a[i] / (k + alpha * sum_{j=max(0, i-n/2)}^{min(N-1, i+n/2)} a[j]^2) ** beta

alpha multiplies the plain sum (the paper's convention), so the paper's layer
(k=2, n=5, alpha=1e-4, beta=0.75) equals nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2).

Four implementations of the same formula:
- CPU tensors: alexnet/model/lrn_cpu.py, a blocked kernel with an analytic backward (the fast path
  that training on a CPU runs).
- CUDA tensors, where Triton runs: alexnet/model/lrn_triton.py, one fused kernel pass forward and one
  backward, the window kept in registers (the layer is memory-bound, so passes are the cost).
- other devices, and CUDA without Triton: windowed_local_response_norm, `size` shifted adds in plain tensor ops that a
  GPU runs well, with autograd's backward (deterministic, unlike nn.LocalResponseNorm's
  avg_pool3d, whose CUDA backward refuses torch.use_deterministic_algorithms). On CUDA it is
  compiled by default: eagerly, each of its dozen elementwise ops reads and writes the whole
  activation and the layer is memory-bound; torch.compile fuses them into a few kernels.
- reference_local_response_norm: nn.functional.local_response_norm, the "torch" impl, and what
  the model runs under torch.export (plain ops, any batch size).

`groups` normalises each contiguous block of channels on its own (one tower's kernels, §3.2:
the window never crosses from one tower's channels into the other's). Sums accumulate in
float32 whatever the input dtype (bf16 under autocast); the output has the input's dtype.
relu=True computes LRN(ReLU(x)) without materialising ReLU(x): in the paper the normalisation
follows the ReLU of conv1 and conv2.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import nn

from alexnet.model.lrn_cpu import accumulation_dtype, cpu_local_response_norm
from alexnet.model.lrn_triton import triton_available, triton_local_response_norm

IMPLS = ("fast", "torch")
# How the fast layer runs on CUDA, best first; a layer that cannot run one moves to the next.
GPU_KERNELS = ("triton", "compiled", "eager")


def local_response_norm(
    x: torch.Tensor,
    size: int = 5,
    alpha: float = 1e-4,
    beta: float = 0.75,
    k: float = 2.0,
    groups: int = 1,
    relu: bool = False,
    gpu: str = "triton",
) -> torch.Tensor:
    """The paper's LRN over the channels of (N, C, H, W) x, the fast implementation for x's device.

    gpu: on CUDA, "triton" (the fused kernels), "compiled" (the windowed formula through
    torch.compile) or "eager" (that formula op by op); the same numbers up to rounding.
    """
    if x.dim() != 4:
        raise ValueError(f"local_response_norm expects (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] % groups:
        raise ValueError(f"{x.shape[1]} channels do not split into {groups} groups")
    if size % 2 != 1:
        raise ValueError(f"size must be odd (a window centred on each channel), got {size}")
    if gpu not in GPU_KERNELS:
        raise ValueError(f"unknown GPU LRN kernel {gpu!r}; allowed: {', '.join(GPU_KERNELS)}")
    if x.device.type == "cpu":
        return cpu_local_response_norm(x, size, alpha, beta, k, groups, relu)
    # Under a whole-model torch.compile, inductor fuses the windowed formula with its neighbours.
    if x.device.type == "cuda" and gpu == "triton" and triton_available(x) and not torch.compiler.is_compiling():
        return triton_local_response_norm(x, size, alpha, beta, k, groups, relu)
    if x.device.type == "cuda" and gpu in ("triton", "compiled"):
        return _compiled_windowed_lrn()(x, size, alpha, beta, k, groups, relu)
    return windowed_local_response_norm(x, size, alpha, beta, k, groups, relu)


@functools.cache
def _compiled_windowed_lrn():
    return torch.compile(windowed_local_response_norm, fullgraph=True)


# The same signature as local_response_norm: one layer, three implementations (the CPU kernel's and the
# Triton kernels' are in lrn_cpu.py and lrn_triton.py), each callable alone by tests and benchmarks.
def windowed_local_response_norm(
    x: torch.Tensor,
    size: int = 5,
    alpha: float = 1e-4,
    beta: float = 0.75,
    k: float = 2.0,
    groups: int = 1,
    relu: bool = False,
) -> torch.Tensor:
    """The same layer as `size` shifted adds of the squared activations (the GPU path).

    Sums in float32 under autocast (bf16 input), output in the input's dtype. Backward is
    autograd's: slices and zero padding, which are deterministic on CUDA.
    """
    a = torch.relu(x) if relu else x
    acc = a.to(accumulation_dtype(a.dtype))
    n, c, h, w = a.shape
    per_group, half = c // groups, size // 2
    # (N, groups, C/groups, H, W), zero-padded by `half` channels on each side of every group:
    # the clipped window, never crossing from one tower's channels into the other's.
    squares = nn.functional.pad((acc * acc).view(n, groups, per_group, h, w), (0, 0, 0, 0, half, half))
    window = squares[:, :, :per_group]
    for j in range(1, size):
        window = window + squares[:, :, j : j + per_group]
    d = window.reshape(n, c, h, w).mul(alpha).add(k)
    return (acc * d.pow(-beta)).to(x.dtype)


def reference_local_response_norm(
    x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0, groups: int = 1
) -> torch.Tensor:
    """The same layer through nn.functional.local_response_norm (float32 inside), per group of channels."""
    # nn.LocalResponseNorm divides alpha by the window size: give it size * alpha.
    parts = [
        nn.functional.local_response_norm(part.float(), size, alpha * size, beta, k).to(x.dtype)
        for part in x.chunk(groups, dim=1)
    ]
    return parts[0] if groups == 1 else torch.cat(parts, dim=1)


class LocalResponseNorm(nn.Module):
    """§3.3 LRN as a layer: b = a / (k + alpha * window sum of a^2) ** beta over `size` channels.

    groups: blocks of channels normalised on their own (the towers held in one tensor).
    impl: "fast" (the kernel for the input's device) or "torch" (nn.functional.local_response_norm).
    relu: the layer's input is a convolution's output and the layer applies ReLU first, in the
    same pass (the paper's conv1 and conv2: ReLU, then the normalisation).
    gpu: how it runs on CUDA, one of GPU_KERNELS; a kernel that fails is dropped for the next one.
    Under torch.export the "fast" layer runs the "torch" formula: the CPU kernel's Python loop over
    pixel blocks would fix the exported graph to one batch size. Same numbers; export serves inference.
    """

    def __init__(
        self,
        size: int = 5,
        alpha: float = 1e-4,
        beta: float = 0.75,
        k: float = 2.0,
        groups: int = 1,
        impl: str = "fast",
        relu: bool = False,
        gpu: str = "triton",
    ):
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"unknown LRN impl {impl!r}; allowed: {', '.join(IMPLS)}")
        if gpu not in GPU_KERNELS:
            raise ValueError(f"unknown GPU LRN kernel {gpu!r}; allowed: {', '.join(GPU_KERNELS)}")
        self.size, self.alpha, self.beta, self.k, self.groups = size, alpha, beta, k, groups
        self.impl, self.relu, self.gpu = impl, relu, gpu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.impl == "torch" or torch.compiler.is_exporting():
            x = nn.functional.relu(x) if self.relu else x
            return reference_local_response_norm(x, self.size, self.alpha, self.beta, self.k, self.groups)
        while x.device.type == "cuda" and self.gpu != "eager":
            try:
                return local_response_norm(x, self.size, self.alpha, self.beta, self.k, self.groups, self.relu,
                                           gpu=self.gpu)
            except Exception as err:  # no Triton, an unsupported GPU: the same layer by the next kernel
                fallback = GPU_KERNELS[GPU_KERNELS.index(self.gpu) + 1]
                warnings.warn(f"GPU LRN kernel {self.gpu!r} unavailable, using {fallback!r} "
                              f"({type(err).__name__}: {err})", stacklevel=2)
                self.gpu = fallback
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k, self.groups, self.relu,
                                   gpu="eager")

    def extra_repr(self) -> str:
        relu = "relu=True, " if self.relu else ""
        return (f"{relu}size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, "
                f"groups={self.groups}, impl={self.impl}")
