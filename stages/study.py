"""Stage study (study/dvc.yaml, not part of the default `dvc repro`): the paper's claims as a study.

    dvc repro study/dvc.yaml
    python -m stages.study --study params/study.yaml --work study/work --out reports/study

Trains every (variant, seed) of the study file through flows/study.py (retried tasks resume from
their checkpoints under --work), then writes the table, Figure 1, Figures 3 and 4 and REPORT.md
into --out. The study file names its base params file; the default pipeline is left alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alexnet.core.cli import exit_code, library_logs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="params/study.yaml", help="the study file")
    ap.add_argument("--work", required=True, help="data, checkpoints and models of the runs (kept: resumes)")
    ap.add_argument("--out", required=True, help="output: the table, plots, figures and REPORT.md")
    args = ap.parse_args(argv)
    library_logs()

    def work() -> None:
        from alexnet.study.runs import StudyPaths
        from alexnet.study.spec import load_study

        spec = load_study(args.study)  # every variant's params checked before any work
        from flows.server import own_api_server

        own_api_server()  # Prefect's temporary server as the stage's child: it dies with it, even on kill -9
        from flows.study import study

        study(spec, StudyPaths(root=Path.cwd(), work=Path(args.work), out=Path(args.out)))

    return exit_code("study", work)


if __name__ == "__main__":
    sys.exit(main())
