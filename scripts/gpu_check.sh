#!/usr/bin/env bash
# The CUDA checks in one go, for a machine with a GPU (the README's "CUDA" section):
#   the CUDA tests (two-tower placement on [cuda:0, cuda:0] vs one device and the CPU, a checkpoint
#   from the GPU on the CPU, bf16, the GPU LRN compiled and eager (model.lrn_compile), a bf16 member
#   that resumes bit-identically),
#   the model and LRN tests, and the model benchmark on the GPU (TF32 default, then full fp32).
# Logs go to $OUT (default /tmp/gpu-check). Wheels in .whl/ (pydantic, if the machine lacks it)
# are installed into /tmp/site first.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c 'import torch; print(torch.__version__, torch.version.cuda)'; } 2>&1 | tee "$OUT/machine.txt"
# TESTS / REPEATS / ONLY narrow a rerun, e.g. TESTS=tests/test_cuda.py REPEATS=3 ONLY=paper_fast,paper_no_lrn
python3 -m pytest -q -p no:cacheprovider ${TESTS:-tests/test_cuda.py tests/test_model.py tests/test_lrn.py} 2>&1 | tee "$OUT/pytest.log" || status=1
python3 benchmarks/model.py --device cuda --repeats "${REPEATS:-5}" --steps 10 --warmup 3 ${ONLY:+--only "$ONLY"} 2>&1 | tee "$OUT/bench_model_cuda.log" || status=1
python3 benchmarks/model.py --device cuda --repeats "${REPEATS:-5}" --steps 10 --warmup 3 --no-tf32 \
    --only paper_fast,paper_fast_bf16,paper_no_lrn,paper_two_devices 2>&1 | tee "$OUT/bench_model_cuda_fp32.log" || status=1
exit $status
