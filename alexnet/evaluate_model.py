"""`python -m alexnet.evaluate_model --model URI --data FOLDER`: a trained model's top-1/top-5 error on any
labelled folder, centre crop and ten patches, without retraining (as torchvision's --test-only).

    python -m alexnet.evaluate_model --model models:/alexnet-ensemble.synthetic@champion --data photos/ \
        --out reports/photos.json

FOLDER holds one folder per class, named by the class's wnid (FOLDER/<wnid>/*), mapped through the
model's class table; a folder of a class the model does not know is reported and left out, and so
is an image that cannot be read. Prints the table and writes it as JSON (--out).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from alexnet.core.cli import exit_code


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="models/ or an MLflow model URI")
    ap.add_argument("--data", required=True, help="a folder of class folders named by wnid")
    ap.add_argument("--out", help="write the figures as JSON here")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--shards", default="data/shards")
    ap.add_argument("--prepared", default="data/prepared")
    ap.add_argument("--batch", type=int, default=32, help="images per request")
    args = ap.parse_args(argv)

    def work() -> None:
        from alexnet.core.atomic import atomic_write_json
        from alexnet.serving.evaluation import evaluate_folder
        from alexnet.serving.predictor import open_model

        model = open_model(args.model, args.params, args.shards, args.prepared)
        result = evaluate_folder(model, Path(args.data), args.batch)
        for line in result["unknown_classes"]:
            print(f"evaluate_model: {line}: not a class of this model; left out", file=sys.stderr)
        for answer in result["unreadable"]:
            print(f"evaluate_model: {answer}: cannot be read; left out", file=sys.stderr)
        print(f"{result['images']} images of {result['classes']} classes, model {model.source}")
        for view in ("center", "ten_crop"):
            print(f"{view:>8}: top-1 error {result[view]['top1_err']:.2%}, top-5 error {result[view]['top5_err']:.2%}")
        if args.out:
            atomic_write_json(Path(args.out), result)

    return exit_code("evaluate_model", work)


if __name__ == "__main__":
    sys.exit(main())
