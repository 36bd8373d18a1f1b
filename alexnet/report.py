"""`python -m alexnet.report`: a study's REPORT.md, summary.json, table.md and plots from its runs' files.

    python -m alexnet.report --study params/study-imagenette.yaml --runs reports/study-imagenette/runs \
        [--study params/study-figure1.yaml --runs reports/study-imagenette/figure1] --out reports/study-imagenette

What a study's report stage runs (stages/study_report.py). It reads only what the runs stages wrote
and the study files, which fixed the design before the runs: an edit to the report code re-renders
the report and retrains nothing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from alexnet.core.cli import exit_code, library_logs


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", action="append", required=True, help="a study file (repeat, with its --runs)")
    ap.add_argument("--runs", action="append", required=True, help="that study's runs folder")
    ap.add_argument("--out", required=True, help="output: REPORT.md, summary.json, table.md, plots")
    args = ap.parse_args(argv)
    library_logs()

    def work() -> None:
        from alexnet.study.report import write_report
        from alexnet.study.spec import load_study

        if len(args.study) != len(args.runs):
            raise ValueError(f"{len(args.study)} --study but {len(args.runs)} --runs: give one runs folder per study")
        pairs = [(load_study(s), Path(r)) for s, r in zip(args.study, args.runs)]
        print(f"report: wrote {write_report(pairs, Path(args.out))}")

    return exit_code("report", work)


if __name__ == "__main__":
    sys.exit(main())
