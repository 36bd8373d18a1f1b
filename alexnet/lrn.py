"""Local response normalisation across channels (§3.3), fast on CPU.

    b[i] = a[i] / (k + alpha * sum_{j=max(0, i-n/2)}^{min(N-1, i+n/2)} a[j]^2) ** beta

alpha multiplies the plain sum (the paper's convention), so the paper's layer
(k=2, n=5, alpha=1e-4, beta=0.75) equals nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2).

Why not nn.LocalResponseNorm: it builds the window sum with avg_pool3d over a padded copy
and lets autograd keep every intermediate; on a 2-core CPU it costs more than half of the
paper model's training step. Here the layer is one autograd.Function that works on the
channels-last view (pixels, channels) in blocks of a few thousand pixels, so the
intermediates stay in cache and only the input, the output, two saved factors and the
gradients go through memory. The backward is analytic:

    d[i] = k + alpha * S[i],  S[i] = window sum of a^2 around i
    dL/da[m] = g[m] d[m]^-beta - 2 alpha beta a[m] * sum_{i: m in window(i)} g[i] a[i] d[i]^(-beta-1)

The window is symmetric, so the last sum is the same window sum applied to g * b / d.
The forward saves d^-beta and b/d (float32); the backward is then a few in-cache
operations per block. Blocks are shared out over torch's intra-op threads as whole runs
(one thread each), not parallelised op by op: see _run_rows. Non-CPU tensors take
windowed_local_response_norm: the same formula in plain tensor ops that a GPU runs well,
with autograd's backward (deterministic, unlike nn.LocalResponseNorm's avg_pool3d, whose
CUDA backward refuses torch.use_deterministic_algorithms).

`groups` normalises each contiguous block of channels on its own (one tower's kernels,
§3.2: the window never crosses from one tower's channels into the other's). Sums
accumulate in float32 whatever the input dtype (bf16 under autocast); the output has the
input's dtype. relu=True computes LRN(ReLU(x)) without materialising ReLU(x) (the
model's conv1 and conv2 are followed by exactly that).
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn
from torch.autograd.function import once_differentiable

# Pixels per block: 96 channels x 2048 pixels x 4 bytes = 768 KiB per float32 temporary.
BLOCK_PIXELS = 2048


def _pixels(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, C, H, W) channels-last -> (N*H*W, groups, C/groups) view (no copy)."""
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n * h * w, groups, c // groups)


class _Workspace:
    """Per-call block buffers, reused across blocks so that nothing large is allocated per block."""

    def __init__(self, rows: int, groups: int, channels: int, half: int, dtype: torch.dtype):
        self.half, self.channels = half, channels
        # Zero borders of `half` channels on each side of every group: the clipped window.
        self.padded = torch.zeros(rows, groups, channels + 2 * half, dtype=dtype)
        self.pairs = torch.empty(rows, groups, channels + 2 * half - 1, dtype=dtype)
        self.sums = torch.empty(rows, groups, channels, dtype=dtype)
        self.scratch = torch.empty(rows, groups, channels, dtype=dtype)
        self.values = torch.empty(rows, groups, channels, dtype=dtype)

    def interior(self, rows: int) -> torch.Tensor:
        return self.padded[:rows, :, self.half : self.half + self.channels]

    def window_sum(self, rows: int) -> torch.Tensor:
        """Window sum of what was written into interior(rows), clipped at the group edges."""
        p, c, h = self.padded[:rows], self.channels, self.half
        if h == 2:  # n=5: pairs q[j] = p[j] + p[j+1]; S[i] = q[i] + q[i+2] + p[i+4] (three adds, not four)
            q = torch.add(p[..., :-1], p[..., 1:], out=self.pairs[:rows])
            s = torch.add(q[..., :c], q[..., 2 : c + 2], out=self.sums[:rows])
            return s.add_(p[..., 4 : c + 4])
        s = torch.add(p[..., :c], p[..., 1 : c + 1], out=self.sums[:rows])
        for j in range(2, 2 * h + 1):
            s.add_(p[..., j : c + j])
        return s


def _activation(x_block: torch.Tensor, relu: bool, ws: _Workspace, rows: int) -> torch.Tensor:
    # a (= ReLU(x) when relu) in the accumulation dtype for one block; a read-only view of x
    # when nothing changes.
    if x_block.dtype != ws.values.dtype:
        a = ws.values[:rows].copy_(x_block)
        return a.clamp_min_(0) if relu else a
    if relu:
        return torch.clamp_min(x_block, 0, out=ws.values[:rows])
    return x_block


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _blocks(first: int, last: int) -> Iterator[tuple[slice, int]]:
    """(slice, length) of each block of at most BLOCK_PIXELS pixel rows in [first, last)."""
    for start in range(first, last, BLOCK_PIXELS):
        stop = min(start + BLOCK_PIXELS, last)
        yield slice(start, stop), stop - start


def _forward_rows(xp, op, sp, rp, first, last, size, alpha, beta, k, relu):
    """Forward over pixel rows [first, last): out = a d^-beta; saves d^-beta and b / d."""
    acc = sp.dtype
    ws = _Workspace(min(BLOCK_PIXELS, last - first), xp.shape[1], xp.shape[2], size // 2, acc)
    for block, rows in _blocks(first, last):
        a = _activation(xp[block], relu, ws, rows)
        torch.mul(a, a, out=ws.interior(rows))
        d = ws.window_sum(rows).mul_(alpha).add_(k)
        if beta == 0.75:  # d^-0.75 = rsqrt(d sqrt(d)): hardware square roots, not exp(log())
            s = torch.sqrt(d, out=sp[block]).mul_(d).rsqrt_()
        else:
            s = torch.pow(d, -beta, out=sp[block])
        b = torch.mul(a, s, out=op[block] if op.dtype == acc else ws.scratch[:rows])
        torch.div(b, d, out=rp[block])
        if op.dtype != acc:
            op[block].copy_(b)
        if relu:
            # ReLU's gradient, folded into the saved factor. The 0/1 mask goes into a float buffer:
            # `s.mul_(a > 0)` makes a bool tensor and promotes it, 7x slower (375 vs 52 us a block).
            s.mul_(torch.gt(a, 0, out=ws.scratch[:rows]))


def _backward_rows(xp, gp, ip, sp, rp, first, last, size, alpha, beta, relu):
    """Backward over pixel rows [first, last): g d^-beta - 2 alpha beta a * window_sum(g b / d)."""
    acc = sp.dtype
    ws = _Workspace(min(BLOCK_PIXELS, last - first), xp.shape[1], xp.shape[2], size // 2, acc)
    for block, rows in _blocks(first, last):
        g = gp[block]
        torch.mul(g, rp[block], out=ws.interior(rows))  # g b / d
        window = ws.window_sum(rows)
        grad = torch.mul(g, sp[block], out=ip[block] if ip.dtype == acc else ws.scratch[:rows])
        grad.addcmul_(_activation(xp[block], relu, ws, rows), window, value=-2.0 * alpha * beta)
        if ip.dtype != acc:
            ip[block].copy_(grad)


# Block-level parallelism: each thread runs its share of the blocks with one intra-op thread,
# instead of every small op opening its own OpenMP region. On a busy 2-core machine (a data
# loader, other jobs) per-op regions stall at their barriers and the layer slows down several
# fold; whole shares of blocks do not. torch ops release the GIL while they compute.
PARALLEL_BLOCKS = True
_pool: ThreadPoolExecutor | None = None
_pool_pid = -1  # a forked child inherits the pool object but not its threads: it needs its own
_pool_lock = threading.Lock()


def _without_grad(work, first: int, last: int) -> None:
    with torch.no_grad():  # grad mode is per thread; the caller's forward/backward run without it
        work(first, last)


def _one_intra_op_thread() -> None:
    torch.set_num_threads(1)


def _run_rows(work, rows: int) -> None:
    """Call work(first, last) on shares of [0, rows), in parallel over torch's intra-op threads."""
    global _pool, _pool_pid
    intra_op = torch.get_num_threads()
    threads = min(intra_op, 8, max(1, rows // BLOCK_PIXELS))
    if not PARALLEL_BLOCKS or threads == 1:
        work(0, rows)
        return
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid() or _pool._max_workers < threads - 1:
            _pool = ThreadPoolExecutor(threads - 1, "lrn", initializer=_one_intra_op_thread)
            _pool_pid = os.getpid()
    # Shares of whole blocks, the caller's thread taking the first.
    blocks = -(-rows // BLOCK_PIXELS)
    bounds = [min(rows, (blocks * i // threads) * BLOCK_PIXELS) for i in range(threads + 1)]
    torch.set_num_threads(1)
    try:
        futures = [_pool.submit(_without_grad, work, bounds[i], bounds[i + 1]) for i in range(1, threads)]
        work(bounds[0], bounds[1])
        for f in futures:
            f.result()
    finally:
        torch.set_num_threads(intra_op)


class _LRNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, size, alpha, beta, k, groups, relu):
        x = x.contiguous(memory_format=torch.channels_last)
        acc = _accumulation_dtype(x.dtype)
        out = torch.empty_like(x)
        scale = torch.empty_like(x, dtype=acc)  # d^-beta (0 where ReLU cut the input)
        ratio = torch.empty_like(x, dtype=acc)  # b / d = a d^(-beta-1)
        xp, op, sp, rp = (_pixels(t, groups) for t in (x, out, scale, ratio))
        _run_rows(lambda i, j: _forward_rows(xp, op, sp, rp, i, j, size, alpha, beta, k, relu), xp.shape[0])
        ctx.save_for_backward(x, scale, ratio)
        ctx.args = (size, alpha, beta, groups, relu)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, scale, ratio = ctx.saved_tensors
        size, alpha, beta, groups, relu = ctx.args
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        grad_in = torch.empty_like(x)
        xp, gp, ip, sp, rp = (_pixels(t, groups) for t in (x, grad_out, grad_in, scale, ratio))
        _run_rows(lambda i, j: _backward_rows(xp, gp, ip, sp, rp, i, j, size, alpha, beta, relu), xp.shape[0])
        return grad_in, None, None, None, None, None, None


def local_response_norm(
    x: torch.Tensor,
    size: int = 5,
    alpha: float = 1e-4,
    beta: float = 0.75,
    k: float = 2.0,
    groups: int = 1,
    relu: bool = False,
) -> torch.Tensor:
    """The paper's LRN over the channels of (N, C, H, W) x; alpha multiplies the plain window sum."""
    if x.dim() != 4:
        raise ValueError(f"local_response_norm expects (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] % groups:
        raise ValueError(f"{x.shape[1]} channels do not split into {groups} groups")
    if size % 2 != 1:
        raise ValueError(f"size must be odd (a window centred on each channel), got {size}")
    if x.device.type == "cuda":
        return _gpu_local_response_norm(x, size, alpha, beta, k, groups, relu)
    if x.device.type != "cpu":
        return windowed_local_response_norm(x, size, alpha, beta, k, groups, relu)
    return _LRNFunction.apply(x, size, alpha, beta, k, groups, relu)


# On a GPU the layer is memory-bound: run eagerly, each of its ~12 elementwise ops reads and
# writes the whole activation, and the paper model's training step halves (5,983 vs 12,028
# img/s on an H100, batch 128, 224, TF32). torch.compile fuses the windowed formula into a few
# kernels, forward and backward. Set ALEXNET_LRN_COMPILE=0 to run it eagerly.
COMPILE_GPU = os.environ.get("ALEXNET_LRN_COMPILE", "1") != "0"
_compiled = None


def _gpu_local_response_norm(x, size, alpha, beta, k, groups, relu):
    global _compiled, COMPILE_GPU
    if COMPILE_GPU:
        if _compiled is None:
            _compiled = torch.compile(windowed_local_response_norm, fullgraph=True)
        try:
            return _compiled(x, size, alpha, beta, k, groups, relu)
        except Exception as err:  # no Triton, an unsupported GPU: same numbers, eagerly
            warnings.warn(f"compiled GPU LRN unavailable, running it eagerly ({type(err).__name__}: {err})",
                          stacklevel=2)
            COMPILE_GPU = False
    return windowed_local_response_norm(x, size, alpha, beta, k, groups, relu)


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
    acc = a.to(_accumulation_dtype(a.dtype))
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
    """§3.3 LRN as a module; impl "fast" (this file) or "torch" (nn.LocalResponseNorm), same formula."""

    def __init__(
        self,
        size: int = 5,
        alpha: float = 1e-4,
        beta: float = 0.75,
        k: float = 2.0,
        groups: int = 1,
        impl: str = "fast",
    ):
        super().__init__()
        if impl not in ("fast", "torch"):
            raise ValueError(f"unknown LRN impl {impl!r}; allowed: fast, torch")
        self.size, self.alpha, self.beta, self.k, self.groups, self.impl = size, alpha, beta, k, groups, impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.impl == "fast":
            return local_response_norm(x, self.size, self.alpha, self.beta, self.k, self.groups)
        return reference_local_response_norm(x, self.size, self.alpha, self.beta, self.k, self.groups)

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, "
            f"groups={self.groups}, impl={self.impl}"
        )
