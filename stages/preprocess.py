"""Stage preprocess: the prepared index -> shards of stored SxS images, mean.npy, pca.json.

    python -m stages.preprocess --params params.yaml --prepared data/prepared --out data/shards
"""

from __future__ import annotations

import argparse
import sys

from alexnet.config.sections import Params
from alexnet.data.budget import check_disk_for_shards
from alexnet.data.preprocess import preprocess
from stages import run_stage

FLAGS = (
    ("--prepared", "the prepare stage's output folder"),
    ("--out", "output folder (shards, manifest.json, mean.npy, pca.json)"),
)


def work(params: Params, args: argparse.Namespace) -> None:
    check_disk_for_shards(params.preprocess, args.prepared, args.out)  # before any image is read
    preprocess(args.prepared, args.out, params.preprocess)


def main(argv: list[str] | None = None) -> int:
    return run_stage("preprocess", __doc__, FLAGS, work, argv)


if __name__ == "__main__":
    sys.exit(main())
