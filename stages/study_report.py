"""Stage study-report: a study's REPORT.md and plots from its runs' files (alexnet/report.py does the work).

    python -m stages.study_report --study params/study-imagenette.yaml --runs reports/study-imagenette/runs \
        [--study params/study-figure1.yaml --runs reports/study-imagenette/figure1] --out reports/study-imagenette
"""

from __future__ import annotations

import sys

from alexnet.report import main

if __name__ == "__main__":
    sys.exit(main())
