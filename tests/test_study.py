"""The study of issue 14: the study file, the table maths, and the flow end to end on tiny data.

The end-to-end test (slow) runs 2 variants x 2 seeds through flows/study.py against Prefect's
test server and a temporary MLflow SQLite store, one run failing once after its first epoch.
"""

import csv
import json
from pathlib import Path

import pytest
import yaml

from alexnet.config.params import ParamsError
from alexnet.study.spec import StudySpec, epochs_to_reach, figure1, load_study, summarise, variant_params
from tests.tiny import tiny_params


def write_study(tmp_path: Path, **spec) -> Path:
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(tiny_params(epochs=2)))
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"base": str(base), **spec}))
    return path


def test_variants_are_overrides_of_the_base_with_the_seed(tmp_path):
    spec = load_study(write_study(tmp_path, seeds=[3, 4], overrides={"train": {"epochs": 1}},
                                  variants={"baseline": {}, "tanh": {"model": {"activation": "tanh"}}}))
    p = variant_params(spec, "tanh", 4)
    assert (p.model.activation, p.train.seed, p.train.epochs, p.ensemble.members) == ("tanh", 4, 1, 1)
    assert p.model.crop_size == 64  # from the base
    assert variant_params(spec, "baseline", 3).model.activation == "relu"


@pytest.mark.parametrize("spec,message", [
    ({"variants": {"tanh": {}}}, "no 'baseline'"),
    ({"variants": {"baseline": {}, "x": {"data": {"source": "folder"}}}}, "variants.x: changes data"),
    ({"seeds": [1, 1]}, "seeds repeat"),
    ({"colour": 1}, "colour"),
    ({"variants": {"baseline": {}, "bad": {"model": {"norm": "layer"}}}}, "(?s)variants.bad .*model.norm"),
])
def test_a_bad_study_file_fails_naming_the_key(tmp_path, spec, message):
    with pytest.raises(ParamsError, match=message):
        load_study(write_study(tmp_path, **spec))


def test_summary_pairs_each_variant_with_the_baseline_seed_by_seed():
    rows = [{"variant": v, "seed": s, "center_top1_err": e, "center_top5_err": e / 2, "ten_crop_top1_err": e,
             "ten_crop_top5_err": e / 2, "train_top1_err": e - 0.1, "train_minus_val": -0.1}
            for v, d in (("baseline", 0.0), ("no_lrn", 0.02)) for s, e in ((0, 0.40 + d), (1, 0.50 + d), (2, 0.45 + d))]
    table = summarise(rows, ["baseline", "no_lrn"])
    diff = table["no_lrn"]["center_top1_err_vs_baseline"]
    assert diff["mean"] == pytest.approx(0.02) and diff["half_width"] == pytest.approx(0.0, abs=1e-12)
    assert table["no_lrn"]["center_top1_err"]["half_width"] > 0.1  # seeds vary, the paired difference does not
    assert "center_top1_err_vs_baseline" not in table["baseline"]


def test_figure1_counts_epochs_to_the_target_and_their_ratio():
    assert epochs_to_reach([0.9, 0.5, 0.24, 0.1], 0.25) == 3
    assert epochs_to_reach([0.9, 0.5], 0.25) is None
    hist = {("baseline", 0): [0.5, 0.2], ("tanh", 0): [0.9, 0.8, 0.6, 0.5, 0.3, 0.2],
            ("baseline", 1): [0.5, 0.3, 0.2], ("tanh", 1): [0.9, 0.8, 0.7, 0.5, 0.4, 0.2]}
    fig = figure1(hist, 0.25)
    assert fig["epochs"] == {"baseline/seed-0": 2, "baseline/seed-1": 3, "tanh/seed-0": 6, "tanh/seed-1": 6}
    assert fig["ratio"]["mean"] == pytest.approx((3 + 2) / 2) and fig["seeds_with_both"] == 2


def test_figure1_counts_a_tanh_run_that_never_reached_the_target_as_slower():
    from alexnet.study.report import figure1_claim

    ours = {"baseline/seed-0": 7, "baseline/seed-1": 7, "baseline/seed-2": 8,
            "tanh/seed-0": None, "tanh/seed-1": None, "tanh/seed-2": 12}
    verdict, text = figure1_claim({"epochs": ours, "target_train_err": 0.6,
                                   "ratio": {"mean": 1.5, "low": float("-inf"), "high": float("inf"), "n": 1,
                                             "confidence": 0.95}})
    assert verdict == "within noise"  # 3 of 3 seeds slower: p = 1/8, not below 0.05
    assert "tanh slower in 3 of 3 seeds (2 never reached 0.6)" in text and "p = 0.125" in text
    five = {**{f"baseline/seed-{s}": 5 for s in range(5)}, **{f"tanh/seed-{s}": None for s in range(5)}}
    assert figure1_claim({"epochs": five, "target_train_err": 0.6})[0] == "reproduced"  # p = 1/32
    flipped = {**{f"baseline/seed-{s}": 9 for s in range(5)}, **{f"tanh/seed-{s}": 4 for s in range(5)}}
    assert figure1_claim({"epochs": flipped, "target_train_err": 0.6})[0] == "opposite"
    never = {"baseline/seed-0": None, "tanh/seed-0": None}
    assert figure1_claim({"epochs": never, "target_train_err": 0.6})[0] == "not reached"


def test_the_shipped_study_files_are_valid():
    for path in ("params/study.yaml", "params/study-imagenette.yaml"):
        spec = StudySpec.model_validate(yaml.safe_load(Path(path).read_text()))
        assert set(spec.variants) == {"baseline", "no_lrn", "batchnorm", "non_overlapping_pool", "one_tower",
                                      "no_dropout", "no_augmentation", "tanh"}
        assert len(spec.seeds) >= 3
    assert variant_params(load_study("params/study.yaml"), "one_tower", 0).model.layout == "one_tower_half"


# ---- end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from prefect.testing.utilities import prefect_test_harness

    from alexnet.study.runs import StudyPaths
    from flows.study import study

    root = tmp_path_factory.mktemp("study")
    raw = tiny_params(epochs=2)
    raw["tracking"] = {"uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "test-study"}
    (root / "base.yaml").write_text(yaml.safe_dump(raw))
    (root / "study.yaml").write_text(yaml.safe_dump({
        "name": "tiny", "base": str(root / "base.yaml"), "seeds": [0, 1], "retries": 1,
        "variants": {"baseline": {}, "tanh": {"model": {"activation": "tanh"}}}}))
    spec = load_study(root / "study.yaml")
    fired = []

    def fail_once(variant, seed, row):
        if (variant, seed, int(row["epoch"])) == ("tanh", 1, 1) and not fired:
            fired.append(1)
            raise RuntimeError("tanh seed 1 fails once after epoch 1")

    paths = StudyPaths(root=root, work=root / "work", out=root / "reports" / "study")
    with prefect_test_harness(server_startup_timeout=180):
        result = study(spec, paths, on_epoch=fail_once)
    return {"root": root, "result": result, "out": paths.out, "fired": fired, "paths": paths}


@pytest.mark.slow
def test_one_parent_and_a_child_per_variant_and_seed(finished):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{finished['root'] / 'mlflow.db'}")
    exp = client.get_experiment_by_name("test-study")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].data.tags["study"] == "tiny"
    assert sorted((r.data.tags["variant"], r.data.tags["seed"]) for r in children) == [
        ("baseline", "0"), ("baseline", "1"), ("tanh", "0"), ("tanh", "1")]
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all("ten_crop.top1_err" in r.data.metrics for r in children)  # evaluate's names: compare shows them


@pytest.mark.slow
def test_the_failed_run_was_retried_and_resumed(finished):
    assert finished["fired"] == [1]
    with open(finished["out"] / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(r["epochs"] == "2" for r in rows)


@pytest.mark.slow
def test_the_overfitting_gap_is_measured_as_val_is(finished):
    """train - val: the training images' error in eval mode on centre crops (as val's), not the error
    of augmented batches with dropout, which would make the variants without them look overfitted."""
    from alexnet.evaluation.members import LoadedMember
    from alexnet.study.spec import variant_params

    with open(finished["out"] / "results.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["variant"] == "baseline")
    spec, paths = load_study(finished["root"] / "study.yaml"), finished["paths"]
    model = paths.run_dir("baseline", int(row["seed"])) / "models" / "member-0" / "model.pt"
    params = variant_params(spec, "baseline", int(row["seed"]))
    member = LoadedMember(model, params)
    val = member.errors(paths.shards, split="val")
    assert val["top1_err"] == pytest.approx(float(row["center_top1_err"]), abs=1e-9)  # the same measurement
    train = member.errors(paths.shards)["top1_err"]
    assert float(row["train_top1_err"]) == pytest.approx(train, abs=1e-9)
    assert float(row["train_minus_val"]) == pytest.approx(train - val["top1_err"], abs=1e-9)


@pytest.mark.slow
def test_the_table_figures_and_report_are_written(finished):
    out = finished["out"]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["table"]) == {"baseline", "tanh"}
    assert summary["table"]["tanh"]["ten_crop_top1_err_vs_baseline"]["n"] == 2
    for name in ("table.md", "errors.png", "figure1.png", "figure1.csv", "REPORT.md",
                 "figures/figure3_conv1_kernels.png", "figures/figure4_neighbours.png", "figures/figures.json"):
        assert (out / name).is_file(), name
    report = (out / "REPORT.md").read_text()
    assert "60,965,224" not in report  # per-layer counts are shown, not a total claim
    assert "| conv1 | 34,944 |" in report and "into conv3" in report
    # The verdict cells of the claims table, not the legend (which names every verdict): the tanh row's
    # verdict is one of the vocabulary, read from its own cell.
    claims = report.split("## Claims", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in claims.splitlines() if line.startswith("| §")]
    tanh = [r for r in rows if "tanh" in r[0]]
    assert tanh and tanh[-1][-1] in {"within noise", "reproduced", "opposite", "one run", "not reached"}, rows


@pytest.mark.slow
def test_the_report_command_rewrites_the_stages_report_from_the_study_file(finished, tmp_path):
    import shutil

    from alexnet.report import main

    copy = tmp_path / "study"
    shutil.copytree(finished["out"], copy)
    (copy / "REPORT.md").unlink()
    assert main(["--study", str(copy), "--study-file", str(finished["root"] / "study.yaml")]) == 0
    assert (copy / "REPORT.md").read_text() == (finished["out"] / "REPORT.md").read_text()


def test_the_study_stage_lists_its_code_and_stays_out_of_the_default_repro():
    import subprocess
    import sys

    sys.path.insert(0, "scripts")
    from dvc_deps import import_closure

    for pipeline, name, files in (("study/dvc.yaml", "study", {"params.yaml", "params/study.yaml"}),
                                  ("study/imagenette/dvc.yaml", "study-imagenette",
                                   {"params/study-imagenette.yaml", "params/imagenette.yaml"})):
        stage = yaml.safe_load(Path(pipeline).read_text())["stages"][name]
        code = {d for d in stage["deps"] if d.endswith(".py")}
        assert code == set(import_closure("stages.study")), f"{pipeline}: run scripts/dvc_deps.py --write"
        assert files <= set(stage["deps"]), pipeline
    dvc = Path(sys.executable).parent / "dvc"  # this venv's, whatever PATH says
    listed = subprocess.run([str(dvc), "stage", "list"], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "train" in listed and "study" not in listed  # `dvc repro` at the root never runs the study


def test_report_counts_come_from_the_model():
    from alexnet.config.sections import ModelParams
    from alexnet.study.report import crossing_bytes, layer_costs

    rows = layer_costs(ModelParams())
    assert sum(r["params"] for r in rows) == 60_965_224  # the paper configuration's count
    by = {r["layer"]: r for r in rows}
    assert by["conv1"]["macs"] == 55 * 55 * 96 * 3 * 11 * 11  # each output: one 11x11x3 kernel
    assert by["conv2"]["macs"] == 27 * 27 * 256 * 48 * 5 * 5  # own tower: 48 input channels
    assert by["fc6"]["macs"] == 9216 * 4096
    cross = {c["where"]: c["bytes"] for c in crossing_bytes(rows, 224)}
    assert cross["into conv3 (both)"] == 256 * 13 * 13 * 4 and cross["into fc8 (tower B to A)"] == 2048 * 4
    half = {r["layer"]: r for r in layer_costs(ModelParams(towers=1, width="half"))}
    assert half["conv2"]["macs"] == 27 * 27 * 128 * 48 * 5 * 5 and half["fc6"]["params"] == by["fc6"]["params"]


def test_the_stage_refuses_a_bad_study_file_in_one_line(tmp_path, capsys):
    from stages.study import main

    path = write_study(tmp_path, variants={"baseline": {}, "x": {"model": {"activation": "gelu"}}})
    assert main(["--study", str(path), "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("study: ") and "variants.x" in err and "model.activation" in err
    assert not (tmp_path / "w").exists()  # nothing ran
