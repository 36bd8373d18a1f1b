"""Stage study-runs (a study's dvc.yaml, not part of the default `dvc repro`): every run of a study file.

    python -m stages.study --study params/study-imagenette.yaml --work study/work-imagenette \
        --out reports/study-imagenette/runs

Tunes, pilots, trains and measures every (variant, seed) of the study file through flows/study.py
(retried tasks resume from their checkpoints under --work; finished runs are read back), and writes
the runs' files into --out: results.csv, the histories, tuning.csv, pilot.json, the figures and
regime.json. The report is its own stage (stages/study_report.py), so editing it retrains nothing.
Told to stop (SIGTERM, SIGINT, `dvc repro` gone) a run checkpoints after its current step and the
stage exits, naming the signal; one study per --work folder at a time (alexnet/core/locks.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alexnet.core import signals
from alexnet.core.cli import exit_code, library_logs
from alexnet.core.locks import exclusive

GRACE_S = 60.0  # the longest a step may take before a stopped stage exits without its checkpoint


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", required=True, help="the study file")
    ap.add_argument("--work", required=True, help="data, checkpoints and models of the runs (kept: resumes)")
    ap.add_argument("--out", required=True, help="output: the runs' files")
    args = ap.parse_args(argv)
    if argv is None:  # as a command; in-process callers keep their own handlers
        signals.install("study", GRACE_S)
    library_logs()

    def work() -> None:
        from alexnet.study.runs import StudyPaths
        from alexnet.study.spec import load_study

        spec = load_study(args.study)  # every variant's params checked before any work
        from flows.server import own_api_server

        ready = own_api_server()  # Prefect's temporary server as the stage's child: it dies with it, even on kill -9
        from flows.study import study  # imported while the server starts

        ready()
        with exclusive(Path(args.work), "study", wait_s=GRACE_S + 10):
            signals.run_beside(lambda: study(spec, StudyPaths(root=Path.cwd(), work=Path(args.work),
                                                              out=Path(args.out))))

    return exit_code("study", work)


if __name__ == "__main__":
    sys.exit(main())
