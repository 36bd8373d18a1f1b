"""The CUDA paths (§3.2 placement, bf16, the GPU LRN, deterministic training): skipped without a GPU.

CI has no GPU, so these run where one is lent (docs/results.md says when and on
what). They compare against the CPU, which the rest of the suite checks in depth.
"""

import copy
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from alexnet.model.lrn import LocalResponseNorm, local_response_norm
from alexnet.model.network import AlexNet, autocast
from alexnet.training.checkpoint import load_checkpoint
from tests.tiny import FAULT_LINE, build_tiny_data, tiny_params, train_command

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ROOT = Path(__file__).resolve().parents[1]
GPU = "cuda:0"


@pytest.fixture(autouse=True)
def no_tf32():
    # fp32 comparisons need fp32 arithmetic: cuDNN's convolutions default to TF32 (10-bit mantissa).
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _model(seed=0):
    torch.manual_seed(seed)
    model = AlexNet(num_classes=10, crop_size=99, init="kaiming")
    model.drop6.p = model.drop7.p = 0.0  # the paths draw different dropout masks; everything else must agree
    return model


def _images(n=4, seed=1):
    return torch.randn(n, 3, 99, 99, generator=torch.Generator().manual_seed(seed)).mul(50)


def test_two_devices_on_one_gpu_equal_one_device_and_the_cpu():
    cpu = _model()
    one = copy.deepcopy(cpu).place(GPU)
    two = copy.deepcopy(cpu).place([GPU, GPU])
    x, y = _images(), torch.tensor([0, 3, 4, 9])
    out_cpu, out_one, out_two = cpu(x), one(x), two(x)
    assert out_two.device == torch.device(GPU)
    torch.testing.assert_close(out_two, out_one, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_one.cpu(), out_cpu, rtol=1e-4, atol=1e-4)
    for out in (out_cpu, out_one, out_two):
        F.cross_entropy(out, y.to(out.device)).backward()
    grads_one, grads_two = dict(one.named_parameters()), dict(two.named_parameters())
    for name, p in cpu.named_parameters():
        torch.testing.assert_close(grads_two[name].grad, grads_one[name].grad, rtol=1e-4, atol=1e-5, msg=name)
        torch.testing.assert_close(grads_one[name].grad.cpu(), p.grad, rtol=1e-3, atol=1e-4, msg=name)


def test_a_checkpoint_trained_on_the_gpu_loads_on_the_cpu(tmp_path):
    two = _model().place([GPU, GPU])
    opt = torch.optim.SGD(two.parameters(), lr=0.01, momentum=0.9)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(two(_images()), torch.tensor([0, 3, 4, 9], device=GPU)).backward()
        opt.step()
    torch.save(two.state_dict(), tmp_path / "gpu.pt")
    cpu = _model(seed=5)
    cpu.load_state_dict(torch.load(tmp_path / "gpu.pt", map_location="cpu", weights_only=True))
    two.eval(), cpu.eval()
    with torch.no_grad():
        torch.testing.assert_close(cpu(_images(seed=2)), two(_images(seed=2)).cpu(), rtol=1e-4, atol=1e-4)


def test_bf16_autocast_on_the_gpu_stays_close_to_fp32():
    model = _model().place([GPU, GPU]).eval()
    x = _images()
    with torch.no_grad():
        with autocast(GPU, "bf16"):
            low = model(x)
        full = model(x)
    assert low.dtype == torch.bfloat16 and full.dtype == torch.float32
    torch.testing.assert_close(low.float(), full, rtol=0.1, atol=0.1)


def test_gpu_lrn_equals_the_cpu_lrn_and_is_deterministic():
    x = torch.randn(3, 96, 13, 13).mul(30).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(3, 96, 13, 13)
    results = []
    for device in ("cpu", GPU):
        xd = x.to(device).detach().requires_grad_(True)
        out = local_response_norm(xd, groups=2, relu=True)
        out.backward(grad.to(device))
        results.append((out.detach().cpu(), xd.grad.cpu()))
    (out_cpu, grad_cpu), (out_gpu, grad_gpu) = results
    torch.testing.assert_close(out_gpu, out_cpu, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_gpu, grad_cpu, rtol=1e-4, atol=1e-6)
    # nn.LocalResponseNorm's CUDA backward (avg_pool3d) refuses deterministic mode; ours must not.
    torch.use_deterministic_algorithms(True)
    try:
        xd = x.to(GPU).requires_grad_(True)
        local_response_norm(xd, groups=2, relu=True).sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)


def test_gpu_lrn_kernels_agree():
    # model.lrn_gpu chooses between them; the choice must not change a result beyond rounding.
    x = torch.randn(3, 96, 13, 13, device=GPU).mul(30).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(3, 96, 13, 13, device=GPU)
    results = []
    for kernel in ("triton", "compiled", "eager"):
        layer = LocalResponseNorm(groups=2, relu=True, gpu=kernel)
        xd = x.detach().clone().requires_grad_(True)
        out = layer(xd)
        out.backward(grad)
        assert layer.gpu == kernel, f"the {kernel} GPU LRN fell back to {layer.gpu}"
        results.append((out.detach(), xd.grad))
    for out, grad_x in results[1:]:
        torch.testing.assert_close(out, results[0][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad_x, results[0][1], rtol=1e-5, atol=1e-6)


def test_member_on_two_gpu_devices_in_bf16_resumes_bit_identical(tmp_path):
    """The params a GPU user sets (devices on the GPU, bf16, deterministic): a member that fails
    after epoch 1 and is rerun ends with exactly the weights of an unbroken run."""
    data = build_tiny_data(tmp_path / "data")
    raw = tiny_params(epochs=3, precision="bf16", workers=2)
    raw["model"]["devices"] = [GPU, GPU]
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))

    def run(out, fail_after=0):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        env.pop("CUBLAS_WORKSPACE_CONFIG", None)  # the library must set it itself
        return subprocess.run(train_command(params_file, data, tmp_path / out, fail_after), cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)

    unbroken = run("a")
    assert unbroken.returncode == 0, unbroken.stderr[-3000:]
    assert json.loads((tmp_path / "a" / "models" / "member-0" / "summary.json").read_text())["precision"] == "bf16"
    failed = run("b", fail_after=1)
    assert failed.returncode != 0 and FAULT_LINE.format(1) in failed.stderr, failed.stderr[-3000:]
    resumed = run("b", fail_after=1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_checkpoint(tmp_path / "a" / "models" / "member-0" / "model.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "models" / "member-0" / "model.pt")["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
