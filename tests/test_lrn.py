"""The fast LRN computes the paper's formula (§3.3), forward and gradient."""

import pytest
import torch
from torch import nn

from alexnet.model.lrn import (
    LocalResponseNorm,
    local_response_norm,
    reference_local_response_norm,
    windowed_local_response_norm,
)
from alexnet.model.lrn_cpu import cpu_local_response_norm

PAPER = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)


def loop_lrn(a: torch.Tensor, size=5, alpha=1e-4, beta=0.75, k=2.0, groups=1) -> torch.Tensor:
    """The formula as written: b[i] = a[i] / (k + alpha * sum_{j in clipped window} a[j]^2)^beta."""
    out = torch.empty_like(a)
    per_group = a.shape[1] // groups
    for i in range(a.shape[1]):
        first = (i // per_group) * per_group
        lo, hi = max(first, i - size // 2), min(first + per_group - 1, i + size // 2)
        s = (a[:, lo : hi + 1] ** 2).sum(dim=1)
        out[:, i] = a[:, i] / (k + alpha * s) ** beta
    return out


def activations(shape, dtype=torch.float32, seed=0, channels_last=True):
    g = torch.Generator().manual_seed(seed)
    # Scale 30: large enough that alpha * sum(a^2) is comparable to k, so the window matters.
    x = torch.randn(shape, generator=g, dtype=torch.float64).mul(30).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("channels_last", [True, False])
def test_forward_matches_the_formula_and_torch(groups, channels_last):
    x = activations((2, 12, 5, 4), torch.float64, channels_last=channels_last)
    got = local_response_norm(x, groups=groups, **PAPER)
    torch.testing.assert_close(got, loop_lrn(x, groups=groups), rtol=1e-12, atol=1e-12)
    torch_lrn = nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)
    expected = torch.cat([torch_lrn(part) for part in x.chunk(groups, dim=1)], dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # the window really matters at this scale (not just a ~k^-beta rescaling)
    assert not torch.allclose(got, x / 2.0**0.75, rtol=1e-2)


def test_groups_normalise_each_tower_alone():
    x = activations((1, 8, 3, 3), torch.float64)
    y = local_response_norm(x, groups=2, **PAPER)
    x2 = x.clone()
    x2[:, 4:] *= 100  # tower B's channels only
    torch.testing.assert_close(local_response_norm(x2, groups=2, **PAPER)[:, :4], y[:, :4])


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("groups", [1, 2])
def test_gradcheck_float64(relu, groups):
    x = activations((2, 10, 3, 3), torch.float64, seed=1)
    x = x + torch.sign(x) * 0.5  # keep away from ReLU's kink, where finite differences lie
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda t: local_response_norm(t, groups=groups, relu=relu, **PAPER), (x,), eps=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("parallel", [True, False])
def test_gradients_match_torch_across_blocks(parallel):
    threads = torch.get_num_threads()
    x = activations((3, 16, 5, 5), torch.float32, seed=2).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    grad = torch.randn(3, 16, 5, 5)
    # Blocks of 7 pixels: several blocks, a ragged last one, shared over the threads when parallel.
    out = cpu_local_response_norm(x, 5, 1e-4, 0.75, 2.0, groups=2, relu=True, block_pixels=7, parallel=parallel)
    out.backward(grad)
    ref = torch.cat([nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0)(p) for p in torch.relu(x_ref).chunk(2, dim=1)], 1)
    ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    assert torch.get_num_threads() == threads  # the block threads hand the intra-op threads back


def test_bf16_sums_in_float32_and_keeps_dtype():
    x = activations((2, 16, 4, 4), torch.float32, seed=3)
    exact = loop_lrn(x.double(), groups=2)
    xb = x.to(torch.bfloat16).requires_grad_(True)
    y = local_response_norm(xb, groups=2, **PAPER)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), exact, rtol=2e-2, atol=1e-2)
    y.float().sum().backward()
    assert xb.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("groups", [1, 2])
def test_gpu_path_is_the_same_formula(relu, groups):
    # windowed_local_response_norm is what CUDA tensors run; here it is checked on the CPU
    # against the formula, gradcheck, and the CPU layer's analytic gradient.
    x = activations((2, 10, 3, 3), torch.float64, seed=4)
    x = (x + torch.sign(x) * 0.5).requires_grad_(True)
    expected = loop_lrn(torch.relu(x) if relu else x, groups=groups)
    got = windowed_local_response_norm(x, groups=groups, relu=relu, **PAPER)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda t: windowed_local_response_norm(t, groups=groups, relu=relu, **PAPER), (x,), eps=1e-6, atol=1e-7
    )
    grad = torch.randn(x.shape, dtype=torch.float64)
    (g_windowed,) = torch.autograd.grad(got, x, grad)
    (g_fast,) = torch.autograd.grad(local_response_norm(x, groups=groups, relu=relu, **PAPER), x, grad)
    torch.testing.assert_close(g_windowed, g_fast, rtol=1e-10, atol=1e-12)
    xb = x.detach().float().to(torch.bfloat16)
    assert windowed_local_response_norm(xb, groups=groups, **PAPER).dtype == torch.bfloat16


@pytest.mark.parametrize("relu", [False, True])
def test_module_impls_agree(relu):
    x = activations((2, 12, 4, 4), torch.float32)
    fast = LocalResponseNorm(groups=2, impl="fast", relu=relu)(x)
    ref = LocalResponseNorm(groups=2, impl="torch", relu=relu)(x)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    expected = loop_lrn(torch.relu(x).double() if relu else x.double(), groups=2)
    torch.testing.assert_close(fast.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_module_under_export_runs_the_formula_at_any_batch_size():
    # The CPU kernel loops over pixel blocks in Python, which would fix an exported graph to one
    # batch size; under torch.export the module runs the reference formula instead.
    layer = LocalResponseNorm(groups=2, relu=True)
    batch = torch.export.Dim("batch", min=2)
    exported = torch.export.export(layer, (activations((2, 8, 3, 3)),), dynamic_shapes=({0: batch},))
    x = activations((5, 8, 3, 3), seed=5)
    torch.testing.assert_close(exported.module()(x), layer(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer(x), reference_local_response_norm(torch.relu(x), groups=2), rtol=1e-5, atol=1e-6)


def test_module_shows_the_papers_constants():
    assert repr(LocalResponseNorm(groups=2, relu=True)) == (
        "LocalResponseNorm(relu=True, size=5, alpha=0.0001, beta=0.75, k=2.0, groups=2, impl=fast)"
    )


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="groups"):
        local_response_norm(torch.zeros(1, 5, 2, 2), groups=2)
    with pytest.raises(ValueError, match="N, C, H, W"):
        local_response_norm(torch.zeros(5, 2, 2))
    with pytest.raises(ValueError, match="impl"):
        LocalResponseNorm(impl="cuda")


def test_unknown_gpu_kernel_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown GPU LRN kernel 'fused'; allowed: triton, compiled, eager"):
        LocalResponseNorm(gpu="fused")
    with pytest.raises(ValueError, match="unknown GPU LRN kernel"):
        local_response_norm(torch.ones(1, 5, 2, 2), gpu="fused")
