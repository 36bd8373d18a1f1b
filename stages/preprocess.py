"""Stage preprocess: the prepared index -> shards of stored SxS images, mean.npy, pca.json.

    python -m stages.preprocess --params params.yaml --prepared data/prepared --out data/shards
"""

from __future__ import annotations

import argparse
import sys

from alexnet.config import Params
from alexnet.preprocess import preprocess
from alexnet.shards import ShardsError
from stages import run_stage

# dvc.yaml's params for this stage; tests/test_dvc_yaml.py checks them against what its code reads.
PARAMS = ("data", "preprocess")
FLAGS = (
    ("--prepared", "the prepare stage's output folder"),
    ("--out", "output folder (shards, manifest.json, mean.npy, pca.json)"),
)


def work(params: Params, args: argparse.Namespace) -> None:
    preprocess(args.prepared, args.out, params.preprocess)


def main(argv: list[str] | None = None) -> int:
    return run_stage("preprocess", __doc__, FLAGS, work, argv, (ShardsError,))


if __name__ == "__main__":
    sys.exit(main())
