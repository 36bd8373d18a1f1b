"""The LRN's CPU kernel (§3.3, docs/paper.md): one autograd.Function over pixel blocks, in threads.

Why not nn.LocalResponseNorm: it builds the window sum with avg_pool3d over a padded copy and
lets autograd keep every intermediate, which costs more than half of the paper model's training
step on a small CPU (docs/results.md has the figures). Here the layer works on the
channels-last view (pixels, channels) in blocks of a few thousand pixels, so the intermediates
stay in cache and only the input, the output, two saved factors and the gradients go through
memory. The backward is analytic:

    d[i] = k + alpha * S[i],  S[i] = window sum of a^2 around i
    dL/da[m] = g[m] d[m]^-beta - 2 alpha beta a[m] * sum_{i: m in window(i)} g[i] a[i] d[i]^(-beta-1)

The window is symmetric, so the last sum is the same window sum applied to g * b / d. The
forward saves d^-beta and b/d (float32); the backward is then a few in-cache operations per
block. Blocks are shared out over torch's intra-op threads as whole runs (one thread each),
not parallelised op by op: see _run_rows.

alexnet/model/lrn.py holds the formula, its other implementations and the choice between them;
call it (local_response_norm) rather than this module.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.autograd.function import once_differentiable

# Pixels per block: 96 channels x 2048 pixels x 4 bytes = 768 KiB per float32 temporary.
BLOCK_PIXELS = 2048
MAX_THREADS = 8


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sums run in float32 whatever the input (bf16 under autocast); float64 stays float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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


def _blocks(first: int, last: int, block_pixels: int) -> Iterator[tuple[slice, int]]:
    """(slice, length) of each block of at most block_pixels pixel rows in [first, last)."""
    for start in range(first, last, block_pixels):
        stop = min(start + block_pixels, last)
        yield slice(start, stop), stop - start


def _forward_rows(xp, op, sp, rp, first, last, block_pixels, size, alpha, beta, k, relu):
    """Forward over pixel rows [first, last): out = a d^-beta; saves d^-beta and b / d."""
    acc = sp.dtype
    ws = _Workspace(min(block_pixels, last - first), xp.shape[1], xp.shape[2], size // 2, acc)
    for block, rows in _blocks(first, last, block_pixels):
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
            # `s.mul_(a > 0)` would make a bool tensor and promote it, several times slower.
            s.mul_(torch.gt(a, 0, out=ws.scratch[:rows]))


def _backward_rows(xp, gp, ip, sp, rp, first, last, block_pixels, size, alpha, beta, relu):
    """Backward over pixel rows [first, last): g d^-beta - 2 alpha beta a * window_sum(g b / d)."""
    acc = sp.dtype
    ws = _Workspace(min(block_pixels, last - first), xp.shape[1], xp.shape[2], size // 2, acc)
    for block, rows in _blocks(first, last, block_pixels):
        g = gp[block]
        torch.mul(g, rp[block], out=ws.interior(rows))  # g b / d
        window = ws.window_sum(rows)
        grad = torch.mul(g, sp[block], out=ip[block] if ip.dtype == acc else ws.scratch[:rows])
        grad.addcmul_(_activation(xp[block], relu, ws, rows), window, value=-2.0 * alpha * beta)
        if ip.dtype != acc:
            ip[block].copy_(grad)


# Block-level parallelism: each thread runs its share of the blocks with one intra-op thread,
# instead of every small op opening its own OpenMP region. On a busy CPU (a data loader, other
# jobs) per-op regions stall at their barriers and the layer slows down several fold; whole
# shares of blocks do not. torch ops release the GIL while they compute.
_POOL_LOCK = threading.Lock()


def _one_intra_op_thread() -> None:
    torch.set_num_threads(1)


@functools.cache
def _thread_pool(pid: int, workers: int) -> ThreadPoolExecutor:
    # Keyed by the process id: a forked child inherits the pool object but not its threads.
    return ThreadPoolExecutor(workers, "lrn", initializer=_one_intra_op_thread)


def _without_grad(work, first: int, last: int) -> None:
    with torch.no_grad():  # grad mode is per thread; the caller's forward/backward run without it
        work(first, last)


def _run_rows(work, rows: int, block_pixels: int, parallel: bool) -> None:
    """Call work(first, last) on shares of [0, rows), in parallel over torch's intra-op threads."""
    intra_op = torch.get_num_threads()
    threads = min(intra_op, MAX_THREADS, max(1, rows // block_pixels))
    if not parallel or threads == 1:
        work(0, rows)
        return
    with _POOL_LOCK:
        pool = _thread_pool(os.getpid(), threads - 1)
    # Shares of whole blocks, the caller's thread taking the first.
    blocks = -(-rows // block_pixels)
    bounds = [min(rows, (blocks * i // threads) * block_pixels) for i in range(threads + 1)]
    torch.set_num_threads(1)
    try:
        futures = [pool.submit(_without_grad, work, bounds[i], bounds[i + 1]) for i in range(1, threads)]
        work(bounds[0], bounds[1])
        for f in futures:
            f.result()
    finally:
        torch.set_num_threads(intra_op)


class _LRNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, size, alpha, beta, k, groups, relu, block_pixels, parallel):
        x = x.contiguous(memory_format=torch.channels_last)
        acc = accumulation_dtype(x.dtype)
        out = torch.empty_like(x)
        scale = torch.empty_like(x, dtype=acc)  # d^-beta (0 where ReLU cut the input)
        ratio = torch.empty_like(x, dtype=acc)  # b / d = a d^(-beta-1)
        xp, op, sp, rp = (_pixels(t, groups) for t in (x, out, scale, ratio))

        def work(i, j):
            _forward_rows(xp, op, sp, rp, i, j, block_pixels, size, alpha, beta, k, relu)

        _run_rows(work, xp.shape[0], block_pixels, parallel)
        ctx.save_for_backward(x, scale, ratio)
        ctx.args = (size, alpha, beta, groups, relu, block_pixels, parallel)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, scale, ratio = ctx.saved_tensors
        size, alpha, beta, groups, relu, block_pixels, parallel = ctx.args
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        grad_in = torch.empty_like(x)
        xp, gp, ip, sp, rp = (_pixels(t, groups) for t in (x, grad_out, grad_in, scale, ratio))

        def work(i, j):
            _backward_rows(xp, gp, ip, sp, rp, i, j, block_pixels, size, alpha, beta, relu)

        _run_rows(work, xp.shape[0], block_pixels, parallel)
        return grad_in, None, None, None, None, None, None, None, None


def cpu_local_response_norm(
    x: torch.Tensor,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    groups: int,
    relu: bool,
    block_pixels: int = BLOCK_PIXELS,
    parallel: bool = True,
) -> torch.Tensor:
    """The LRN of (N, C, H, W) CPU tensor x; arguments as alexnet.model.lrn.local_response_norm (checked there).

    block_pixels and parallel say only how the work is cut up (tests use small blocks).
    """
    return _LRNFunction.apply(x, size, alpha, beta, k, groups, relu, block_pixels, parallel)
