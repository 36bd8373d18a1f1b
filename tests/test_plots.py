"""`dvc plots show` after `make run` reports no failure: every plot that any dvc.yaml of the project declares
is a file the default pipeline (./dvc.yaml, what `make run` reproduces) writes, or one git tracks. A plot of
another pipeline (the study's figures, say) is missing after `make run`, and DVC then ends with
"failed to load some plots"."""

import os
import subprocess
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]


def _entries(plots) -> list[str]:
    """The files of a plots list: `- path`, `- path: {props}`, or `- id: {y: {path: column}}`."""
    files = []
    for entry in plots or []:
        for key, props in (entry.items() if isinstance(entry, dict) else [(entry, None)]):
            y = props.get("y") if isinstance(props, dict) else None
            files += list(y) if isinstance(y, dict) else [key]
    return files


def declared_plots(root: Path) -> dict[str, str]:
    """{plot file relative to root: the dvc.yaml declaring it} over every dvc.yaml git knows."""
    found = {}
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*dvc.yaml"], cwd=root,
                            check=True, capture_output=True, text=True).stdout.split()
    for name in listed:
        spec, here = YAML(typ="safe").load((root / name).read_text()) or {}, (root / name).parent
        for plot in _entries(spec.get("plots")):
            found[os.path.relpath(os.path.normpath(here / plot), root)] = name
        for stage in (spec.get("stages") or {}).values():
            wdir = here / stage.get("wdir", ".")
            for plot in _entries(stage.get("plots")):
                found[os.path.relpath(os.path.normpath(wdir / plot), root)] = name
    return found


def default_pipeline_outputs(root: Path) -> set[str]:
    spec = YAML(typ="safe").load((root / "dvc.yaml").read_text())
    outs = set()
    for stage in spec["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            outs.update(_entries(stage.get(kind)))
    return {os.path.normpath(o) for o in outs}


def missing_after_make_run(root: Path) -> list[str]:
    outs = default_pipeline_outputs(root)
    tracked = set(subprocess.run(["git", "ls-files"], cwd=root, check=True, capture_output=True,
                                 text=True).stdout.split())
    return sorted(f"{plot} (declared in {where})" for plot, where in declared_plots(root).items()
                  if not any(plot == o or plot.startswith(o + "/") for o in outs)
                  and plot not in tracked and not any(t.startswith(plot + "/") for t in tracked))


def test_every_declared_plot_exists_after_make_run():
    assert missing_after_make_run(ROOT) == []


def test_a_plot_of_another_pipeline_is_found(tmp_path):
    # As study/dvc.yaml once declared its figures, which only `dvc repro study/dvc.yaml` makes.
    (tmp_path / "study").mkdir()
    (tmp_path / "dvc.yaml").write_text("stages:\n  s:\n    cmd: echo\n    plots:\n      - reports/train\n")
    (tmp_path / "study" / "dvc.yaml").write_text(
        "stages:\n  t:\n    cmd: echo\n    outs:\n      - ../reports/study\n"
        "plots:\n  - ../reports/study/figure1.csv:\n      x: epoch\n  - ../reports/train\n"
        "  - errors:\n      y:\n        ../reports/study/errors.csv: err\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    assert missing_after_make_run(tmp_path) == ["reports/study/errors.csv (declared in study/dvc.yaml)",
                                                "reports/study/figure1.csv (declared in study/dvc.yaml)"]
