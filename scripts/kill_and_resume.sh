#!/usr/bin/env bash
# Rehearse a crash: is a killed-and-rerun `dvc repro` bit-identical to an unbroken one?
#
#   scripts/kill_and_resume.sh [WORKDIR]      (about 2x the time of `make run`)
#
# Clones the committed HEAD twice into WORKDIR (default: a new temporary folder). Clone A runs
# `dvc repro` unbroken. In clone B, `dvc repro` is killed with SIGKILL to its whole process group
# (DVC, the stage, the Prefect server, the loader workers) mid-way through member-0's epoch 4,
# then `dvc repro` runs again and resumes from the checkpoint. Then the members' weights (a
# sha256 over every tensor) and reports/metrics.json of A and B are compared; exit 0 if equal.
# Uses the python/dvc on PATH (e.g. after `make test`: PATH=$PWD/.venv/bin:$PATH).
set -euo pipefail
repo=$(git rev-parse --show-toplevel)
work=${1:-$(mktemp -d -t kill-and-resume-XXXX)}
mkdir -p "$work" && cd "$work"
rm -rf A B
git clone -q "$repo" A
git clone -q "$repo" B

echo "A: unbroken dvc repro ($(date +%T))"
(cd A && PREFECT_HOME="$work/A/.prefect-home" dvc repro >"$work/A.log" 2>&1)

echo "B: dvc repro, killed mid-epoch ($(date +%T))"
cd B
PREFECT_HOME="$work/B/.prefect-home" setsid dvc repro >"$work/B1.log" 2>&1 &
pid=$!
until grep -q "member-0 epoch 3:" "$work/B1.log" 2>/dev/null; do
  kill -0 "$pid" 2>/dev/null || { echo "the first run of B ended before epoch 3; see $work/B1.log"; exit 1; }
  sleep 1
done
sleep 6  # into epoch 4
kill -9 -- "-$pid"
wait "$pid" 2>/dev/null || true
echo "killed; checkpoints: $(ls checkpoints)"

echo "B: dvc repro again ($(date +%T))"
PREFECT_HOME="$work/B/.prefect-home" dvc repro >"$work/B2.log" 2>&1
grep -ao "resuming from [^ ]* after epoch [0-9]*" "$work/B2.log" | head -3
cd "$work"

weights() {
  python - "$1" <<'PY'
import hashlib, sys
from pathlib import Path
import torch
for f in sorted(Path(sys.argv[1], "models").glob("member-*/model.pt")):
    state = torch.load(f, map_location="cpu", weights_only=True)["model"]
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode() + str(state[name].dtype).encode())
        h.update(state[name].contiguous().view(torch.uint8).numpy().tobytes())
    print(f.parent.name, h.hexdigest()[:16])
PY
}
weights A >A.weights
weights B >B.weights
paste A.weights B.weights
cmp -s A.weights B.weights && cmp -s A/reports/metrics.json B/reports/metrics.json \
  && echo "identical: weights and metrics ($(date +%T))" || { echo "DIFFERENT"; exit 1; }
