"""Stage study (study/dvc.yaml, not part of the default `dvc repro`): the paper's claims as a study.

    dvc repro study/dvc.yaml
    python -m stages.study --study params/study.yaml --work study/work --out reports/study

Trains every (variant, seed) of the study file through flows/study.py (retried tasks resume from
their checkpoints under --work), then writes the table, Figure 1, Figures 3 and 4 and REPORT.md
into --out. The study file names its base params file; the default pipeline is left alone.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from alexnet.config import ParamsError
from alexnet.shards import ShardsError
from alexnet.tracking import TrackingUnavailable


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="params/study.yaml", help="the study file")
    ap.add_argument("--work", required=True, help="data, checkpoints and models of the runs (kept: resumes)")
    ap.add_argument("--out", required=True, help="output: the table, plots, figures and REPORT.md")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("alexnet").setLevel(logging.INFO)
    try:
        from alexnet.study import load_study
        from alexnet.study_runs import StudyPaths

        spec = load_study(args.study)  # every variant's params checked before any work
        from flows.server import own_api_server

        own_api_server()  # Prefect's temporary server as the stage's child: it dies with it, even on kill -9
        from flows.study import study

        study(spec, StudyPaths(root=Path.cwd(), work=Path(args.work), out=Path(args.out)))
    except (ParamsError, FileNotFoundError, ValueError, ShardsError, TrackingUnavailable) as err:
        print(f"study: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
