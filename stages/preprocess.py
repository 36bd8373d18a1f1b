"""Stage preprocess: the prepared index -> shards of stored SxS images, mean.npy, pca.json.

    python -m stages.preprocess --params params.yaml --prepared data/prepared --out data/shards
"""

from __future__ import annotations

import argparse
import sys

from alexnet.config import load_params
from alexnet.preprocess import preprocess
from alexnet.shards import ShardsError
from stages import run_stage

# dvc.yaml's params for this stage; tests/test_dvc_yaml.py checks them against what its code reads.
PARAMS = ("preprocess",)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    parser.add_argument("--prepared", required=True, help="the prepare stage's output folder")
    parser.add_argument("--out", required=True, help="output folder (shards, manifest.json, mean.npy, pca.json)")
    args = parser.parse_args(argv)

    def work() -> None:
        preprocess(args.prepared, args.out, load_params(args.params).preprocess)

    return run_stage("preprocess", work, (ShardsError,))


if __name__ == "__main__":
    sys.exit(main())
