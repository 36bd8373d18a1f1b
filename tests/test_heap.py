"""train.keep_freed_memory: large tensors come from the heap, and results do not change."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from alexnet.training.checkpoint import load_checkpoint
from tests.tiny import build_tiny_data, tiny_params, train_command

ROOT = Path(__file__).resolve().parents[1]
glibc_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt, Linux")

_WHERE = """
import torch
from alexnet.training.heap import keep_freed_memory

def in_heap(tensor):
    ptr = tensor.data_ptr()
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
            if lo <= ptr < hi:
                return True
    return False

big = 96 << 20  # over glibc's largest mmap threshold (32 MB)
print(in_heap(torch.empty(big, dtype=torch.uint8)), keep_freed_memory(), keep_freed_memory())
print(in_heap(torch.empty(big, dtype=torch.uint8)))
"""


@glibc_linux
def test_large_tensors_come_from_the_heap_once_asked():
    out = subprocess.run([sys.executable, "-c", _WHERE], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "True", "True"], out.stdout + out.stderr


@pytest.mark.slow
@glibc_linux
def test_where_malloc_keeps_memory_does_not_change_the_weights(tmp_path):
    data = build_tiny_data(tmp_path / "data")
    weights = []
    for keep in (False, True):
        raw = tiny_params(epochs=2, keep_freed_memory=keep, threads=2)
        params_file = tmp_path / f"params-{keep}.yaml"
        params_file.write_text(yaml.safe_dump(raw))
        out = tmp_path / f"out-{keep}"
        subprocess.run(train_command(params_file, data, out), cwd=ROOT, check=True, capture_output=True, text=True,
                       timeout=600)
        weights.append(load_checkpoint(out / "models" / "member-0" / "model.pt")["model"])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
