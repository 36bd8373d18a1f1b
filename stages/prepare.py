"""Stage prepare: find, decode-check and index the images of data.source.

    python -m stages.prepare --params params.yaml --out data/prepared
"""

from __future__ import annotations

import argparse
import sys

from alexnet.config.sections import Params
from alexnet.data.prepare import prepare
from stages import run_stage

FLAGS = (("--out", "output folder (index.parquet, classes.csv, ...)"),)


def work(params: Params, args: argparse.Namespace) -> None:
    prepare(args.out, params.data, workers=params.preprocess.workers)


def main(argv: list[str] | None = None) -> int:
    return run_stage("prepare", __doc__, FLAGS, work, argv)


if __name__ == "__main__":
    sys.exit(main())
