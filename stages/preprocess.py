"""Stage preprocess: the prepared index -> shards of stored SxS images, mean.npy, pca.json.

    python -m stages.preprocess --params params.yaml --prepared data/prepared --out data/shards
"""

from __future__ import annotations

import argparse
import logging
import sys

from alexnet.config import ParamsError, load_params
from alexnet.preprocess import preprocess
from alexnet.shards import ShardsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    parser.add_argument("--prepared", required=True, help="the prepare stage's output folder")
    parser.add_argument("--out", required=True, help="output folder (shards, manifest.json, mean.npy, pca.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        p = load_params(args.params).preprocess
        preprocess(args.prepared, args.out, stored_size=p.stored_size, fmt=p.format,
                   jpeg_quality=p.jpeg_quality, shard_size=p.shard_size, workers=p.workers)
    except (ParamsError, ShardsError, FileNotFoundError, ValueError) as err:
        print(f"preprocess: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
