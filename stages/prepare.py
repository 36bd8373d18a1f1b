"""Stage prepare: find, decode-check and index the images of data.source.

    python -m stages.prepare --params params.yaml --out data/prepared
"""

from __future__ import annotations

import argparse
import sys

from alexnet.config import load_params
from alexnet.prepare import BadImageError, prepare
from stages import run_stage

# dvc.yaml's params for this stage; tests/test_dvc_yaml.py checks them against what its code reads.
PARAMS = ("data",)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    parser.add_argument("--out", required=True, help="output folder (index.parquet, classes.csv, ...)")
    args = parser.parse_args(argv)

    def work() -> None:
        params = load_params(args.params)
        prepare(args.out, params.data, workers=params.preprocess.workers)

    return run_stage("prepare", work, (BadImageError,))


if __name__ == "__main__":
    sys.exit(main())
