"""`python -m alexnet.figures`: the paper's Figures 3 and 4 from any trained member.

`--help` shows alexnet/evaluation/figures.py's account.

    python -m alexnet.figures --model models/member-0/model.pt --params params.yaml \
        --shards data/shards --out reports/figures
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alexnet.config.params import load_params
from alexnet.core.cli import exit_code
from alexnet.evaluation.figures import __doc__ as figures_doc
from alexnet.evaluation.figures import write_figures
from alexnet.evaluation.members import load_member


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=figures_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a member's model.pt")
    ap.add_argument("--params", default="params.yaml", help="the params the member was trained with")
    ap.add_argument("--shards", default="data/shards", help="the shards folder it was trained on")
    ap.add_argument("--out", default="reports/figures", help="where the figures go")
    args = ap.parse_args(argv)

    def work() -> None:
        params = load_params(args.params)
        model = load_member(Path(args.model), params, devices=("cpu",))
        result = write_figures(model, Path(args.shards), Path(args.out), crop_size=params.model.crop_size,
                               divisor=params.model.input_scale)
        print(f"figures: wrote {args.out}: colour specificity {result['figure3']['colour_specificity']}")

    return exit_code("figures", work)


if __name__ == "__main__":
    sys.exit(main())
