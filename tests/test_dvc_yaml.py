"""dvc.yaml lists what each stage really uses, so editing a module or a param reruns what it affects.

The deps and params are derived from the code by scripts/dvc_deps.py (see its docstring for the
rules); `python scripts/dvc_deps.py` prints them, for updating dvc.yaml after a change.
"""

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("dvc_deps", ROOT / "scripts" / "dvc_deps.py")
dvc_deps = sys.modules["dvc_deps"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dvc_deps)

STAGES = dvc_deps.stages()
FIX = "run `python scripts/dvc_deps.py` and update dvc.yaml"


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_code_deps_are_the_stages_import_closure(stage):
    listed = {d for d in stage.yaml_deps if dvc_deps.is_code(d)}
    derived = set(stage.code_deps)
    assert not derived - listed, f"dvc.yaml stage {stage.name} misses deps {sorted(derived - listed)}; {FIX}"
    assert not listed - derived, f"dvc.yaml stage {stage.name} lists unused deps {sorted(listed - derived)}; {FIX}"


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_dvc_yaml_declares_exactly_the_params_the_stage_reads(stage):
    declared = stage.yaml_params
    undeclared = [r for r in dvc_deps.minimal(stage.params_reads)
                  if not any(dvc_deps.covers(d, r) for d in declared)]
    assert not undeclared, f"stage {stage.name} reads params dvc.yaml does not list: {undeclared}; {FIX}"
    unread = [d for d in declared if not any(dvc_deps.covers(d, r) or dvc_deps.covers(r, d)
                                             for r in stage.params_reads)]
    assert not unread, f"dvc.yaml lists params stage {stage.name} never reads: {unread}; {FIX}"
    assert declared == dvc_deps.minimal(stage.params_reads), f"dvc.yaml stage {stage.name}: {FIX}"


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_every_params_argument_is_annotated_so_its_reads_are_seen(stage):
    untyped = dvc_deps.unannotated_params_args(stage.code_deps)
    assert not untyped, f"annotate these with their params class (Params, TrainParams, ...): {untyped}"


# The derivation itself, on a made-up project: each rule must be able to fail.

CONFIG = '''
from pydantic import BaseModel
class AugmentParams(BaseModel):
    flip: bool = True
class TrainParams(BaseModel):
    seed: int = 0
    augment: AugmentParams = AugmentParams()
class ModelParams(BaseModel):
    towers: int = 2
class Params(BaseModel):
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
def load_params(path): ...
'''


def make_project(root: Path, files: dict[str, str]) -> Path:
    for rel, text in {"alexnet/__init__.py": "", "alexnet/config/__init__.py": "", "alexnet/config/sections.py": CONFIG,
                      "alexnet/core/__init__.py": "", "alexnet/model/__init__.py": "", "stages/__init__.py": "",
                      "flows/__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    return root


def test_closure_follows_lazy_relative_and_from_package_imports_and_stops_outside(tmp_path):
    root = make_project(tmp_path, {
        "stages/s.py": "import os\nfrom alexnet.core import layout\ndef main():\n    from flows.f import run\n",
        "alexnet/core/layout.py": "from .atomic import write\n",
        "alexnet/core/atomic.py": "import numpy\n",
        "flows/f.py": "import alexnet.model.network as m\n",
        "alexnet/model/network.py": "",
        "alexnet/unused.py": "",
    })
    assert dvc_deps.import_closure("stages.s", root) == [
        "alexnet/__init__.py", "alexnet/core/__init__.py", "alexnet/core/atomic.py", "alexnet/core/layout.py",
        "alexnet/model/__init__.py", "alexnet/model/network.py", "flows/__init__.py", "flows/f.py",
        "stages/__init__.py", "stages/s.py"]


def test_params_reads_follow_types_aliases_and_whole_sections(tmp_path):
    root = make_project(tmp_path, {"alexnet/m.py": """
        from alexnet.config.sections import ModelParams, Params, TrainParams
        def a(params: Params):
            tr = params.train
            return tr.seed, tr.augment.flip
        def b(cfg: ModelParams, t: "TrainParams | None"):
            build(cfg)              # handed on whole: all of model
            return t.augment        # all of train.augment
        def c(path):
            x = object()
            x.model.towers          # not a params value: no read
            return load_params(path).train.model_dump()
        def d(params: Params):
            helper(params)          # whole Params handed on: the helper is scanned instead
    """})
    reads = dvc_deps.params_reads(["alexnet/m.py", "alexnet/config/sections.py"], root)
    assert reads == {"train.seed", "train.augment.flip", "model", "train.augment", "train"}
    assert dvc_deps.minimal(reads) == ["model", "train"]


def test_params_kept_on_self_are_followed_into_the_other_methods(tmp_path):
    root = make_project(tmp_path, {"alexnet/m.py": """
        from alexnet.config.sections import ModelParams, TrainParams
        class Trainer:
            model: ModelParams
            def __init__(self, train: TrainParams, params):
                self.train = train
            def step(self):
                return self.train.seed, self.model.towers
    """})
    assert dvc_deps.params_reads(["alexnet/m.py"], root) == {"train.seed", "model.towers"}
    assert dvc_deps.unannotated_params_args(["alexnet/m.py"], root) == ["alexnet/m.py:5 __init__(params)"]


def test_a_method_on_the_whole_params_reads_everything(tmp_path):
    root = make_project(tmp_path, {"alexnet/m.py": "def f(params: 'Params'):\n    return params.model_dump()\n"})
    assert dvc_deps.params_reads(["alexnet/m.py"], root) == {"*"}


def test_covers_is_by_dotted_prefix_not_by_text():
    assert dvc_deps.covers("train", "train.augment.flip") and dvc_deps.covers("ensemble.members", "ensemble.members")
    assert not dvc_deps.covers("ensemble.members", "ensemble") and not dvc_deps.covers("train", "training.x")


def test_a_stage_must_run_a_module():
    with pytest.raises(ValueError, match="does not run `python -m <module>`"):
        dvc_deps.entry_module("python stages/s.py")


def test_where_runs_are_logged_reruns_no_stage():
    # experiment_name(params.tracking, ...) hands the section on whole; tracking.uri is a runtime knob, so the
    # section counts as its other fields (a team pointing runs at its server must not retrain anything).
    import yaml

    for path in (ROOT / "dvc.yaml", *sorted((ROOT / "study").rglob("dvc.yaml"))):
        for name, spec in yaml.safe_load(path.read_text())["stages"].items():
            params = [p for p in spec.get("params") or [] if isinstance(p, str)]
            assert not {"tracking", "tracking.uri", "preprocess.workers"} & set(params), f"{path}: {name}: {params}"


def test_every_param_dvc_yaml_lists_is_in_params_yaml():
    # DVC refuses a stage whose listed param is absent ("Parameters ... are missing from 'params.yaml'"),
    # even where the params classes give it a default: a section expanded to fields must name only fields
    # params.yaml writes out.
    import yaml

    values = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, spec in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        for param in [p for p in spec.get("params") or [] if isinstance(p, str)]:
            node = values
            for part in param.split("."):
                assert isinstance(node, dict) and part in node, f"dvc.yaml: {name}: {param} is not in params.yaml"
                node = node[part]
