"""`python -m alexnet.predict IMAGE...`: what is in each photo, by the trained model.

    python -m alexnet.predict photo.jpg scan.png               # the train stage's models/, top 5
    python -m alexnet.predict photo.jpg --model champion --views ten --json   # the registry's champion

One line per image: its name, then the top classes (wnid, name, probability), most probable first;
with --json one JSON object per line. Any format Pillow reads (JPEG, PNG, grayscale, CMYK, ...): the
photo gets the preprocess stage's own §2 patch and the evaluate stage's views. A file that cannot be
read gets one line saying why, and the others are still answered; the exit code is then 2.
--model is the train stage's models folder (with --params, --shards and --prepared beside it: the
default, fast to start) or any MLflow model URI, e.g. the registry's `models:/<name>@champion`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from alexnet.core.cli import exit_code


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="*", help="image files")
    ap.add_argument("--model", default="models", help="models/ (default), an MLflow model URI, or champion: the "
                    "registry's champion for the dataset of --params")
    ap.add_argument("--champion-uri", action="store_true", help="print the champion's model URI and exit "
                    "(for `mlflow models serve -m`)")
    ap.add_argument("--params", default="params.yaml", help="the params the models/ were trained with")
    ap.add_argument("--shards", default="data/shards", help="their shards (the mean image)")
    ap.add_argument("--prepared", default="data/prepared", help="their prepared data (the class table)")
    ap.add_argument("--top", type=int, default=5, help="how many classes per image (default 5)")
    ap.add_argument("--views", choices=("center", "ten"), help="the centre crop or the ten patches (§4.1); "
                    "default: the view the model was measured on")
    ap.add_argument("--json", action="store_true", help="one JSON object per image")
    args = ap.parse_args(argv)

    def work() -> int:
        from alexnet.serving.predictor import champion_uri, open_model

        if args.champion_uri:
            print(champion_uri(args.params))
            return 0
        if not args.images:
            raise ValueError("no image given")
        model = open_model(args.model, args.params, args.shards, args.prepared)
        failed = 0
        for answer in model.top(args.images, args.top, args.views):
            failed += answer.error is not None
            if args.json:
                print(json.dumps({"image": answer.image, **({"top": answer.top} if answer.top is not None
                                                             else {"error": answer.error})}))
            elif answer.error is not None:
                print(f"{answer.image}: cannot be read: {answer.error}", file=sys.stderr)
            else:
                print(f"{answer.image}: " + ", ".join(f"{c['wnid']} {c['name']} {c['probability']:.3f}"
                                                      for c in answer.top))
        return 2 if failed else 0

    return exit_code("predict", work)


if __name__ == "__main__":
    sys.exit(main())
