"""Where a run computes and how exactly: the precision "auto" resolves to, determinism, threads."""

from __future__ import annotations

import os
import sys

import torch


def resolve_precision(precision: str, device: str) -> str:
    """"auto" -> "bf16" where the device computes bf16 natively, else "fp32".

    On a CPU without AVX-512 BF16/AMX (AVX2 only, say), oneDNN emulates bf16 and a training
    step runs many times slower than fp32 (the README's results log has the figure), so auto
    picks fp32 there.
    """
    if precision != "auto":
        return precision
    kind = torch.device(device).type
    if kind == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if kind == "cpu":
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    return "fp32"


def configure_determinism(deterministic: bool, threads: int | None, compiled: bool = False) -> None:
    """Threads and deterministic kernels for this process. `compiled`: the model may go through torch.compile
    (train.compile; or a GPU, where the LRN layer may compile: model.lrn_gpu), so inductor's switch is set too."""
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        # cuBLAS refuses deterministic mode unless its workspace is fixed before its first call
        # (https://docs.nvidia.com/cuda/cublas/#results-reproducibility); a user's setting wins.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only=False: an op with no deterministic kernel fails loudly instead of drifting.
    if compiled or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(deterministic)  # also sets inductor's own switch
    else:
        # The public call imports inductor's config (dynamo with it: over a second of every training
        # process's start) only to set inductor's switch, which an uncompiled model never reads. This is
        # the call it makes for eager kernels; torch is pinned (constraints.txt), and a test checks both.
        torch._C._set_deterministic_algorithms(deterministic, warn_only=False)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
