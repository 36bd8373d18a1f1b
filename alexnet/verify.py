"""`python -m alexnet.verify`: the pipeline's outputs and DVC's cache against their recorded hashes.

`--help` shows alexnet/pipeline/verify.py's account.

    python -m alexnet.verify [--repair] [--root .] [--shards data/shards]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alexnet.core.cli import exit_code
from alexnet.pipeline.verify import __doc__ as verify_doc
from alexnet.pipeline.verify import verify


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=verify_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=".", help="the project (DVC repo) root (default: .)")
    ap.add_argument("--shards", default="data/shards", help="the preprocess output, relative to --root")
    ap.add_argument("--repair", action="store_true", help="delete damaged DVC cache objects")
    args = ap.parse_args(argv)
    root = Path(args.root)
    return exit_code("verify", lambda: verify(root, root / args.shards, args.repair))


if __name__ == "__main__":
    sys.exit(main())
