#!/usr/bin/env bash
# The CUDA checks in one go, for a lent GPU (the docs/scale-out.md, "Model parallelism and GPUs"), within about 8 minutes:
#   1. benchmarks/gpu_train.py (issue 15's figures: the model step with the fused LRN, nn.LocalResponseNorm
#      and no LRN in fp32/TF32/bf16, the compiled model, the LRN kernels alone, and the real train loop
#      with the finish on the GPU, projected to ImageNet's 90 epochs),
#   2. the CUDA tests (two-tower placement, bf16, the GPU LRN, a bf16 member that resumes bit-identically,
#      the device finish bit-equal to the CPU's) and the Triton LRN kernels compiled for the GPU,
#   3. benchmarks/model.py on the GPU (TF32 default; the same step as gpu_train.py's, and the two-device placement).
# Each step has its own time limit, so one that hangs cannot eat the others' time; the machine
# is not reset or reconfigured. Logs and the JSON lines go to $OUT (default /tmp/gpu-check).
# Wheels in .whl/ (pydantic, if the machine lacks it) are installed into /tmp/site first.
#   SECONDS_LOOP=30 bash scripts/gpu_check.sh      # a shorter train loop
#   SKIP=tests,model bash scripts/gpu_check.sh     # rerun only the GPU benchmark
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
SKIP=${SKIP:-}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; python3 -c 'import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__)'; } 2>&1 | tee "$OUT/machine.txt"
if [[ ",$SKIP," != *",gpu_train,"* ]]; then
    # A JSON line after each part (step, LRN, loop, compiled step): stopped by its limit, it keeps the last one.
    timeout 300 python3 benchmarks/gpu_train.py --device cuda --compile --seconds "${SECONDS_LOOP:-40}" \
        2>&1 | tee "$OUT/gpu_train.log" || status=1
    grep '^{' "$OUT/gpu_train.log" | tail -n 1 > "$OUT/gpu_train.json"
fi
if [[ ",$SKIP," != *",tests,"* ]]; then
    timeout 120 python3 -m pytest -q -x -p no:cacheprovider tests/test_cuda.py tests/test_lrn_triton.py \
        "tests/test_device_finish.py::test_device_finish_on_a_gpu_gives_todays_batches" 2>&1 | tee "$OUT/pytest.log" || status=1
fi
if [[ ",$SKIP," != *",model,"* ]]; then
    timeout 60 python3 benchmarks/model.py --device cuda --repeats 2 --steps 10 --warmup 3 \
        --only paper_fast,paper_no_lrn,paper_fast_bf16,paper_two_devices \
        2>&1 | tee "$OUT/bench_model_cuda.log" || status=1
fi
exit $status
