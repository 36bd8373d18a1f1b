"""Stage prepare: find, decode-check and index the images of data.source.

    python -m stages.prepare --params params.yaml --out data/prepared
"""

from __future__ import annotations

import argparse
import logging
import sys

from alexnet.config import ParamsError, load_params
from alexnet.prepare import BadImageError, prepare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    parser.add_argument("--out", required=True, help="output folder (index.parquet, classes.csv, ...)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        params = load_params(args.params)
        data = params.data
        prepare(args.out, data.source, data.root, data.synthetic.model_dump(), data.on_bad_image,
                workers=params.preprocess.workers)
    except (ParamsError, BadImageError, FileNotFoundError, ValueError) as err:
        print(f"prepare: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
