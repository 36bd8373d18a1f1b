"""The paper's LRN (§3.3) as two fused Triton kernels: one pass forward, one pass backward.

    b[i] = a[i] d[i]^-beta,   d[i] = k + alpha * S[i],   S[i] = sum_{j in window(i)} a[j]^2
    dL/da[m] = g[m] d[m]^-beta - 2 alpha beta a[m] * sum_{i in window(m)} g[i] a[i] d[i]^(-beta-1)

(the window is symmetric, so "i whose window holds m" is "i in window(m)"), with a = ReLU(x)
when relu=True and the window clipped at the edges of each group of channels (one tower's
kernels, §3.2). Same formula and conventions as alexnet.model.lrn: alpha multiplies the plain sum.

Why: on a GPU the layer is memory-bound, and the windowed formula in tensor ops reads and
writes the activations once per op. Here each program loads a tile of pixels x all channels
of one group once, squares it, builds the window sums by gathering shifted columns of the
tile in registers (tl.gather along the channel axis: warp shuffles, not memory), and writes
the output once. The sums accumulate in float32 (float64 for float64 inputs) whatever the
input dtype; the output has the input's dtype. No atomics: every output element is written
by exactly one program, in a fixed order of adds, so the result is the same run after run.

Memory: the forward saves only x (the input, in its own dtype). The backward recomputes S, d
and d^-beta from it, so both passes touch each element the minimum number of times
(forward: read x, write b; backward: read x and g, write dx) and the layer keeps no float32
copies alive between forward and backward (alexnet.model.lrn's CPU path keeps two: d^-beta and
b/d). The price is recomputing one window sum and one power per element in the backward,
which is cheap next to the memory traffic it saves.

The kernels are wrapped with triton.jit on first use, not at import, because triton.jit
decides between compiling and interpreting (TRITON_INTERPRET=1) when it wraps: a process
that imported this module before setting the variable still gets the mode it asks for.
"""

# Kernel annotations stay strings (tl.constexpr is not evaluated at import), so this module
# imports without Triton; triton_available() then says False.
from __future__ import annotations

import contextlib

import torch
from torch.autograd.function import once_differentiable

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU-only install: callers fall back to alexnet.model.lrn
    triton = tl = None

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
# Elements per program (pixels x the group's channels, padded to a power of two) and warps per
# program: 8 elements a thread per tile. Compiled for sm_90 this keeps the backward under 80
# registers a thread, with no spills; tune on a GPU, not here.
TILE_ELEMENTS = 2048
NUM_WARPS = 8


def _interpreting() -> bool:
    return triton is not None and bool(triton.knobs.runtime.interpret)  # TRITON_INTERPRET, read now


def triton_available(x: torch.Tensor) -> bool:
    """Whether triton_local_response_norm can run on x: Triton importable and a CUDA tensor,
    or a CPU tensor with TRITON_INTERPRET=1 (Triton's interpreter); dtype float32/bf16/fp16/fp64."""
    if triton is None or x.dtype not in SUPPORTED_DTYPES:
        return False
    if x.device.type == "cuda":
        return True
    return x.device.type == "cpu" and _interpreting()


# The two kernels open alike (the tile's pixels and channels, its mask, the loads): kept in each, not
# in a shared @triton.jit helper, so that each kernel reads top to bottom as the launch runs it and
# the interpreter tests (TRITON_INTERPRET=1) step through one function per pass.
def _lrn_forward_kernel(
    x_ptr, out_ptr,
    hw, per_group,
    sxn, sxc, sxp, son, soc, sop,
    alpha, beta, k,
    HALF: tl.constexpr, RELU: tl.constexpr, BETA_075: tl.constexpr, ACC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    # Program (pixel block, image, group): a (BLOCK_P, BLOCK_C) tile of one image's pixels x the
    # group's channels. s*n, s*c, s*p: strides of image, channel, pixel (h * W + w).
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.arange(0, BLOCK_C)
    mask = (p < hw)[:, None] & (c < per_group)[None, :]
    image = tl.program_id(1).to(tl.int64)
    channel = (tl.program_id(2) * per_group + c).to(tl.int64)[None, :]
    x = tl.load(x_ptr + image * sxn + (p * sxp)[:, None] + channel * sxc, mask=mask, other=0.0)
    a = x.to(ACC)
    if RELU:
        a = tl.maximum(a, 0.0)
    sq = a * a  # zero outside the tile's valid channels and pixels
    # Window sum, centre first, then -1, +1, -2, +2, ...: a fixed order, so a fixed result.
    s = sq
    for j in tl.static_range(1, HALF + 1):
        for shift in tl.static_range(-1, 2, 2):
            src = c + shift * j
            inside = (src >= 0) & (src < per_group)
            idx = tl.broadcast_to(tl.minimum(tl.maximum(src, 0), BLOCK_C - 1)[None, :], (BLOCK_P, BLOCK_C))
            s += tl.where(inside[None, :], tl.gather(sq, idx, axis=1), 0.0)
    d = k + alpha * s
    if BETA_075:  # d^-0.75 = d^-0.5 d^-0.25: two hardware square roots, not exp2(log2())
        if ACC == tl.float64:  # the GPU's float64 rsqrt is approximate; its sqrt and division are exact
            r = 1.0 / tl.sqrt(d)
        else:
            r = tl.math.rsqrt(d)
        scale = r * tl.sqrt(r)
    else:
        scale = tl.exp2(-beta * tl.log2(d))
    b = a * scale
    if out_ptr.dtype.element_ty == tl.bfloat16:
        # float32 -> bf16 rounded to nearest even, spelled out in bits: .to(tl.bfloat16) rounds so on
        # a GPU but truncates in Triton's interpreter (whose "rtne" mode also drops the carry into
        # the exponent), and the CPU tests must check the numbers a GPU computes.
        bits = b.to(tl.uint32, bitcast=True)
        bits += 0x7FFF + ((bits >> 16) & 1)
        b = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    tl.store(out_ptr + image * son + (p * sop)[:, None] + channel * soc, b, mask=mask)


def _lrn_backward_kernel(
    x_ptr, g_ptr, dx_ptr,
    hw, per_group,
    sxn, sxc, sxp, sgn, sgc, sgp, sdn, sdc, sdp,
    alpha, beta, k,
    HALF: tl.constexpr, RELU: tl.constexpr, BETA_075: tl.constexpr, ACC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.arange(0, BLOCK_C)
    mask = (p < hw)[:, None] & (c < per_group)[None, :]
    image = tl.program_id(1).to(tl.int64)
    channel = (tl.program_id(2) * per_group + c).to(tl.int64)[None, :]
    x = tl.load(x_ptr + image * sxn + (p * sxp)[:, None] + channel * sxc, mask=mask, other=0.0).to(ACC)
    g = tl.load(g_ptr + image * sgn + (p * sgp)[:, None] + channel * sgc, mask=mask, other=0.0).to(ACC)
    a = x
    if RELU:
        a = tl.maximum(x, 0.0)
    # Forward recomputed: S, d, d^-beta (same order of adds as the forward).
    sq = a * a
    s = sq
    for j in tl.static_range(1, HALF + 1):
        for shift in tl.static_range(-1, 2, 2):
            src = c + shift * j
            inside = (src >= 0) & (src < per_group)
            idx = tl.broadcast_to(tl.minimum(tl.maximum(src, 0), BLOCK_C - 1)[None, :], (BLOCK_P, BLOCK_C))
            s += tl.where(inside[None, :], tl.gather(sq, idx, axis=1), 0.0)
    d = k + alpha * s
    # d^-beta and d^(-beta-1) without a division (a float32 division is a dozen instructions)
    if BETA_075:
        if ACC == tl.float64:
            r = 1.0 / tl.sqrt(d)
        else:
            r = tl.math.rsqrt(d)
        scale = r * tl.sqrt(r)
        scale_over_d = scale * (r * r)
    else:
        log_d = tl.log2(d)
        scale = tl.exp2(-beta * log_d)
        scale_over_d = tl.exp2((-beta - 1.0) * log_d)
    # t[i] = g[i] a[i] d[i]^(-beta-1) = g b / d, then its window sum around every channel.
    t = g * a * scale_over_d
    ts = t
    for j in tl.static_range(1, HALF + 1):
        for shift in tl.static_range(-1, 2, 2):
            src = c + shift * j
            inside = (src >= 0) & (src < per_group)
            idx = tl.broadcast_to(tl.minimum(tl.maximum(src, 0), BLOCK_C - 1)[None, :], (BLOCK_P, BLOCK_C))
            ts += tl.where(inside[None, :], tl.gather(t, idx, axis=1), 0.0)
    dx = g * scale - (2.0 * alpha * beta) * a * ts
    if RELU:  # ReLU's gradient: 0 where the input was cut (x <= 0), as torch.relu's
        dx = tl.where(x > 0.0, dx, 0.0)
    if dx_ptr.dtype.element_ty == tl.bfloat16:  # round to nearest even, as in the forward
        bits = dx.to(tl.uint32, bitcast=True)
        bits += 0x7FFF + ((bits >> 16) & 1)
        dx = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    tl.store(dx_ptr + image * sdn + (p * sdp)[:, None] + channel * sdc, dx, mask=mask)


_kernels: dict[bool, tuple] = {}


def _jitted(interpret: bool) -> tuple:
    """(forward, backward) kernels for the compiled or interpreted mode, wrapped once per mode."""
    if interpret not in _kernels:
        with triton.knobs.runtime.scope():
            triton.knobs.runtime.interpret = interpret
            _kernels[interpret] = (triton.jit(_lrn_forward_kernel), triton.jit(_lrn_backward_kernel))
    return _kernels[interpret]


def _pixel_strides(t: torch.Tensor) -> tuple[int, int, int] | None:
    """(image, channel, pixel) strides when pixel h * W + w sits at h * W * s + w * s, else None."""
    n, c, h, w = t.shape
    sn, sc, sh, sw = t.stride()
    if w == 1:
        return sn, sc, sh
    if h == 1 or sh == w * sw:
        return sn, sc, sw
    return None


def _flat(t: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """t and its (image, channel, pixel) strides; a channels_last copy when its pixels do not line up."""
    strides = _pixel_strides(t)
    if strides is None:
        t = t.contiguous(memory_format=torch.channels_last)
        strides = _pixel_strides(t)
    return t, strides


def _launch(kernel, x, tensors, strides, size, alpha, beta, k, groups, relu):
    """kernel over x's shape: one program per (block of pixels, image, group); strides per tensor."""
    n, c, h, w = x.shape
    per_group = c // groups
    block_c = triton.next_power_of_2(per_group)
    block_p = max(1, min(triton.next_power_of_2(h * w), TILE_ELEMENTS // block_c))
    grid = (triton.cdiv(h * w, block_p), n, groups)
    accumulate = tl.float64 if x.dtype == torch.float64 else tl.float32
    # Triton launches on the current CUDA device: make it x's (a tensor on cuda:1 while cuda:0 is current).
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        kernel[grid](
            *tensors, h * w, per_group, *(s for triple in strides for s in triple), alpha, beta, k,
            HALF=size // 2, RELU=relu, BETA_075=beta == 0.75, ACC=accumulate,
            BLOCK_P=block_p, BLOCK_C=block_c, num_warps=NUM_WARPS,
        )  # fmt: skip


class _TritonLRN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, size, alpha, beta, k, groups, relu):
        x, x_strides = _flat(x)
        out = torch.empty_like(x)  # x's memory format (channels_last stays channels_last)
        if x.numel():
            forward_kernel, _ = _jitted(x.device.type != "cuda" or _interpreting())
            _launch(forward_kernel, x, [x, out], [x_strides, _pixel_strides(out)], size, alpha, beta, k, groups, relu)
        ctx.save_for_backward(x)
        ctx.args = (size, alpha, beta, k, groups, relu)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        size, alpha, beta, k, groups, relu = ctx.args
        grad_out, g_strides = _flat(grad_out)
        grad_in = torch.empty_like(x)
        if x.numel():
            _, backward_kernel = _jitted(x.device.type != "cuda" or _interpreting())
            strides = [_pixel_strides(x), g_strides, _pixel_strides(grad_in)]
            _launch(backward_kernel, x, [x, grad_out, grad_in], strides, size, alpha, beta, k, groups, relu)
        return grad_in, None, None, None, None, None, None


# The dispatcher's signature and checks again (alexnet/model/lrn.py): this is an entry point of its own,
# called directly by the tests and benchmarks, and lrn.py imports this module, not the other way round.
def triton_local_response_norm(
    x: torch.Tensor,
    size: int = 5,
    alpha: float = 1e-4,
    beta: float = 0.75,
    k: float = 2.0,
    groups: int = 1,
    relu: bool = False,
) -> torch.Tensor:
    """LRN(x) (or LRN(ReLU(x)) when relu) over the channels of (N, C, H, W) x, in Triton kernels."""
    if x.dim() != 4:
        raise ValueError(f"triton_local_response_norm expects (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] % groups:
        raise ValueError(f"{x.shape[1]} channels do not split into {groups} groups")
    if size % 2 != 1:
        raise ValueError(f"size must be odd (a window centred on each channel), got {size}")
    if not triton_available(x):
        raise RuntimeError(
            f"the Triton LRN cannot run on a {x.dtype} {x.device.type} tensor here (Triton "
            f"{'missing' if triton is None else 'present'}; CPU tensors need TRITON_INTERPRET=1)"
        )
    return _TritonLRN.apply(x, size, float(alpha), float(beta), float(k), groups, relu)
