"""`python -m alexnet.report`: a study's REPORT.md again from its outputs (alexnet/study/report.py).

    python -m alexnet.report --study reports/study [--params params.yaml | --study-file params/study.yaml]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alexnet.config.params import load_params
from alexnet.core.cli import exit_code
from alexnet.study.report import write_report
from alexnet.study.spec import load_study, variant_params


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="reports/study", help="the study's report folder (summary.json)")
    ap.add_argument("--params", default=None, help="a params file: also count the study model's own costs")
    ap.add_argument("--study-file", default=None, help="or the study file: its figures variant's model, as the "
                    "study stage counts it")
    args = ap.parse_args(argv)

    def work() -> None:
        params = load_params(args.params) if args.params else None
        if args.study_file:
            spec = load_study(args.study_file)
            params = variant_params(spec, spec.figures_variant, spec.seeds[0])
        print(f"report: wrote {write_report(Path(args.study), params)}")

    return exit_code("report", work)


if __name__ == "__main__":
    sys.exit(main())
