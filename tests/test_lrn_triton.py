"""The Triton LRN computes the paper's formula (§3.3), forward and gradient.

On the CPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set per test; the module
wraps its kernels when first called, so the order of imports does not matter: see
test_interpreter_mode_is_read_when_called). Where a CUDA device is present the same tests also
run the compiled kernels on it.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

triton = pytest.importorskip("triton", reason="Triton is not installed: the fused GPU LRN is not built here")

from alexnet.model.lrn_triton import triton_available, triton_local_response_norm  # noqa: E402

PAPER = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request, monkeypatch):
    """cpu: Triton's interpreter; cuda: the compiled kernels."""
    if request.param == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    else:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return request.param


def reference(x, size=5, alpha=1e-4, beta=0.75, k=2.0, groups=1, relu=False):
    """The formula in float64 tensor ops (autograd gives its gradient): the window sum of a^2 as
    `size` shifted slices of a copy zero-padded at the edges of every group."""
    a = x.double()
    a = a.relu() if relu else a
    n, c, h, w = a.shape
    per_group, half = c // groups, size // 2
    squares = F.pad((a * a).view(n, groups, per_group, h, w), (0, 0, 0, 0, half, half))
    s = sum(squares[:, :, j : j + per_group] for j in range(size)).reshape(n, c, h, w)
    return a * (k + alpha * s) ** -beta


def activations(shape, dtype=torch.float32, seed=0, channels_last=True, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    # Scale 30: alpha * sum(a^2) is then comparable to k, so the window matters.
    x = torch.randn(shape, generator=g, dtype=torch.float64).mul(30).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    return x.to(device)


def fused(groups=1, relu=False):
    return lambda t: triton_local_response_norm(t, groups=groups, relu=relu, **PAPER)


def formula(groups=1, relu=False):
    return lambda t: reference(t, groups=groups, relu=relu, **PAPER)


def forward_and_gradient(fn, x, grad_out):
    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    (dx,) = torch.autograd.grad(y, x, grad_out)
    return y, dx


def test_reference_is_the_paper_formula():
    """The test's reference equals the formula written as a loop, and torch's LRN given size * alpha."""
    x = activations((2, 9, 3, 4), torch.float64)
    loop = torch.empty_like(x)
    for i in range(9):
        lo, hi = max(0, i - 2), min(8, i + 2)
        loop[:, i] = x[:, i] / (2.0 + 1e-4 * (x[:, lo : hi + 1] ** 2).sum(dim=1)) ** 0.75
    torch.testing.assert_close(reference(x, **PAPER), loop, rtol=1e-13, atol=0)
    torch_lrn = F.local_response_norm(x, 5, alpha=5e-4, beta=0.75, k=2.0)
    torch.testing.assert_close(reference(x, **PAPER), torch_lrn, rtol=1e-12, atol=0)


# (shape, groups, relu, channels_last): odd channel counts and sizes, batch 1 and 3, the paper's
# towers (96 = 2 x 48 channels), each case a few programs so the interpreter stays quick.
CASES = [
    ((1, 7, 5, 7), 1, False, True),
    ((3, 13, 5, 7), 1, True, False),
    ((1, 48, 13, 13), 2, True, True),
    ((3, 96, 5, 7), 2, True, True),
    ((1, 96, 5, 7), 1, False, False),
    ((3, 14, 13, 13), 2, False, True),
]


@pytest.mark.parametrize("shape, groups, relu, channels_last", CASES)
def test_float32_forward_and_gradient_match_the_formula(device, shape, groups, relu, channels_last):
    x = activations(shape, channels_last=channels_last, device=device)
    grad_out = activations(shape, seed=1, channels_last=channels_last, device=device) / 30
    y, dx = forward_and_gradient(fused(groups, relu), x, grad_out)
    want_y, want_dx = forward_and_gradient(formula(groups, relu), x.double(), grad_out.double())
    assert y.dtype == dx.dtype == torch.float32
    # Same memory format as the input (the model's activations are channels_last).
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    assert y.is_contiguous(memory_format=memory_format) and dx.is_contiguous(memory_format=memory_format)
    # float32 sums and powers against float64: a few ulps.
    torch.testing.assert_close(y.double(), want_y, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(dx.double(), want_dx, rtol=2e-5, atol=1e-6)
    if relu:
        assert (dx[x <= 0] == 0).all()  # ReLU's gradient, fused


def test_same_layer_as_the_models_cpu_path(monkeypatch):
    """The model's call (conv1's towers: 96 channels in 2 groups, fused ReLU, channels_last) gives
    what alexnet.model.lrn's CPU layer gives, forward and gradient: the two are one layer."""
    from alexnet.model.lrn import local_response_norm

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = activations((2, 96, 5, 7))
    grad_out = activations((2, 96, 5, 7), seed=1) / 30
    y, dx = forward_and_gradient(fused(2, relu=True), x, grad_out)
    cpu_y, cpu_dx = forward_and_gradient(lambda t: local_response_norm(t, groups=2, relu=True, **PAPER), x, grad_out)
    torch.testing.assert_close(y, cpu_y, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(dx, cpu_dx, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize(
    "dtype, shape, groups, relu",
    [
        (torch.bfloat16, (3, 13, 5, 7), 1, False),
        (torch.bfloat16, (1, 96, 5, 7), 2, True),
        (torch.float16, (1, 96, 5, 7), 2, True),
    ],
)
def test_half_precision_is_the_formula_rounded_to_nearest(device, dtype, shape, groups, relu):
    """bf16/fp16 in and out, float32 inside: the float64 formula of the same (upcast) inputs,
    rounded to nearest; only values within float32 error of a rounding boundary may land one
    ulp off (a truncating conversion would put about half of them one ulp off)."""
    x = activations(shape, dtype, device=device)
    grad_out = (activations(shape, seed=1, device=device) / 30).to(dtype)
    y, dx = forward_and_gradient(fused(groups, relu), x, grad_out)
    assert y.dtype == dx.dtype == dtype
    want_y, want_dx = forward_and_gradient(formula(groups, relu), x.double(), grad_out.double())
    ulp = torch.finfo(dtype).eps  # relative spacing: one ulp at most
    for got, want in ((y, want_y), (dx, want_dx)):
        torch.testing.assert_close(got.double(), want, rtol=ulp, atol=1e-5)
        assert (got == want.to(dtype)).double().mean() > 0.99


@pytest.mark.parametrize("groups, relu", [(1, False), (2, True)])
def test_gradcheck_float64(device, groups, relu):
    x = activations((1, 6, 2, 2), torch.float64, seed=2, device=device)
    x = x + torch.sign(x) * 0.5  # away from ReLU's kink, where finite differences lie
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda t: triton_local_response_norm(t, groups=groups, relu=relu, **PAPER), (x,), eps=1e-6, atol=1e-7
    )


def test_windows_never_cross_towers(device):
    x = activations((1, 10, 3, 5), device=device)
    y = triton_local_response_norm(x, groups=2, **PAPER)
    x2 = x.clone()
    x2[:, 5:] *= 100  # tower B's channels only
    y2 = triton_local_response_norm(x2, groups=2, **PAPER)
    assert torch.equal(y2[:, :5], y[:, :5])
    assert not torch.allclose(y2[:, 5:], y[:, 5:] * 100)


def test_same_result_every_run(device):
    """No atomics: forward and backward are bit-identical run to run (train.deterministic)."""
    x = activations((3, 96, 5, 7), device=device)
    grad_out = activations((3, 96, 5, 7), seed=1, device=device)
    first = forward_and_gradient(fused(2, relu=True), x, grad_out)
    again = forward_and_gradient(fused(2, relu=True), x, grad_out)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_strided_input_and_gradient(device):
    """Any strides: a channel-sliced view in, a non-contiguous incoming gradient."""
    base = activations((2, 20, 5, 7), device=device)
    x = base[:, 3:16]  # 13 channels, a view with the parent's strides
    grad_out = activations((2, 7, 5, 13), seed=1, device=device).transpose(1, 3)
    y, dx = forward_and_gradient(fused(relu=True), x, grad_out)
    want_y, want_dx = forward_and_gradient(formula(relu=True), x.double(), grad_out.double())
    torch.testing.assert_close(y.double(), want_y, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(dx.double(), want_dx, rtol=2e-5, atol=1e-6)


def test_bad_input_is_refused_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ValueError, match=r"expects \(N, C, H, W\), got shape \(4, 5\)"):
        triton_local_response_norm(torch.zeros(4, 5))
    with pytest.raises(ValueError, match="7 channels do not split into 2 groups"):
        triton_local_response_norm(torch.zeros(1, 7, 2, 2), groups=2)
    with pytest.raises(ValueError, match="size must be odd"):
        triton_local_response_norm(torch.zeros(1, 8, 2, 2), size=4)


def test_availability(monkeypatch):
    x = torch.zeros(1, 4, 2, 2)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not triton_available(x)  # a CPU tensor needs the interpreter
    with pytest.raises(RuntimeError, match="CPU tensors need TRITON_INTERPRET=1"):
        triton_local_response_norm(x)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_available(x)
    assert triton_available(x.bfloat16())
    assert not triton_available(x.int())


def test_interpreter_mode_is_read_when_called(tmp_path):
    """A process that imported triton and this module before setting TRITON_INTERPRET=1 (another
    test module, the model) still runs the kernels in the interpreter: triton.jit wraps them then."""
    script = tmp_path / "late_env.py"
    script.write_text(
        "import os, torch, triton\n"
        "from alexnet.model.lrn_triton import triton_available, triton_local_response_norm\n"
        "x = torch.randn(2, 7, 3, 5, dtype=torch.float64)\n"
        "assert not triton_available(x)\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "y = triton_local_response_norm(x, relu=True)\n"
        "want = torch.nn.functional.local_response_norm(x.relu(), 5, alpha=5e-4, beta=0.75, k=2.0)\n"
        "torch.testing.assert_close(y, want, rtol=1e-12, atol=0)\n"
        "print('ok')\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_kernels_compile_for_hopper_without_spills(dtype, tmp_path):
    """Both kernels lower to sm_90 machine code (H100/H200) with the launch's tile and warps,
    specialised as a run on the paper's conv1 towers would be (48 channels a group, unit channel
    stride): no GPU needed, only Triton's bundled ptxas. Catches GPU-only compile failures."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from alexnet.model import lrn_triton

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cuobjdump.exists():
        pytest.skip(f"no {cuobjdump} in this Triton build")
    for kernel, pointers in ((lrn_triton._lrn_forward_kernel, 2), (lrn_triton._lrn_backward_kernel, 3)):
        jitted = triton.jit(kernel)
        names = jitted.arg_names
        constants = dict(HALF=2, RELU=True, BETA_075=True, ACC=triton.language.float32, BLOCK_C=64)
        constants["BLOCK_P"] = lrn_triton.TILE_ELEMENTS // 64
        constants.update({name: 1 for name in names if len(name) == 3 and name[0] == "s" and name[2] == "c"})
        signature = {
            name: "constexpr" if name in constants else f"*{dtype}" if i < pointers else
            "fp32" if name in ("alpha", "beta", "k") else "i32"
            for i, name in enumerate(names)
        }  # fmt: skip
        # Pointers, strides and channel counts divisible by 16, as the JIT sees them at the
        # paper's sizes (the pixel counts, 55 x 55 and 27 x 27, are not).
        unaligned = ("hw", "alpha", "beta", "k")
        aligned = [i for i, name in enumerate(names) if signature[name] != "constexpr" and name not in unaligned]
        source = ASTSource(
            fn=jitted,
            signature=signature,
            constexprs={(names.index(name),): value for name, value in constants.items()},
            attrs={(i,): [["tt.divisibility", 16]] for i in aligned},
        )
        options = dict(num_warps=lrn_triton.NUM_WARPS)
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
        ptx = compiled.asm["ptx"]
        assert "ld.global.v" in ptx, "loads along the channels should be vectorised"
        assert not re.search(r"\b(atom|red)\.", ptx), "no atomics: deterministic"
        cubin = tmp_path / f"{kernel.__name__}.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([str(cuobjdump), "--dump-resource-usage", str(cubin)], capture_output=True, text=True)
        assert re.search(r"\bSTACK:0\b", usage.stdout), f"register spills: {usage.stdout}"
