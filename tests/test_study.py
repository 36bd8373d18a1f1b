"""The study: the study file, the training rule, the claims' table on hand-made results, and the runs end to end.

The end-to-end tests (slow) run a tiny study on a synthetic folder tree through flows/study.py against
Prefect's test server and a temporary MLflow SQLite store: a tuned variant, a pilot, one run failing
once after its first epoch (retried, resumed), one whose loss becomes non-finite (a row that says so).
"""

import csv
import json
import math
from pathlib import Path

import pytest
import yaml

from alexnet.config.params import ParamsError
from alexnet.study.spec import Design, StudySpec, load_study, seeds_of, variant_params
from alexnet.study.stats import DID_NOT_TRAIN, EXCLUDED, INCONCLUSIVE, SHOWN
from alexnet.study.table import claim_rows, did_not_train, epochs_to_reach, figure1, summarise
from tests.tiny import sqlite_store, tiny_params

ROOT = Path(__file__).resolve().parents[1]
V1_RESULTS = Path(__file__).parent / "data" / "study-v1-results.csv"


def write_study(tmp_path: Path, **spec) -> Path:
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(tiny_params(epochs=2)))
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"base": str(base), **spec}))
    return path


def test_variants_are_params_over_the_base_with_their_seeds_and_tuned_values(tmp_path):
    spec = load_study(write_study(tmp_path, seeds=[3, 4], overrides={"train": {"epochs": 1}},
                                  heldout_per_class=1, variants={
                                      "baseline": {}, "tanh": {"params": {"model": {"activation": "tanh"}}, "seeds": 2},
                                      "bn": {"params": {"model": {"norm": "batchnorm"}},
                                             "tune": {"train.lr": [0.01, 0.1]}}}))
    p = variant_params(spec, "tanh", 1, tuned={"train.lr": 0.05})
    assert (p.model.activation, p.train.seed, p.train.epochs, p.train.lr, p.ensemble.members) == ("tanh", 1, 1, 0.05, 1)
    assert seeds_of(spec, "tanh") == [0, 1] and seeds_of(spec, "baseline") == [3, 4]
    assert variant_params(spec, "baseline", 3).model.crop_size == 64  # from the base


@pytest.mark.parametrize("spec,message", [
    ({"variants": {"tanh": {}}}, "no 'baseline'"),
    ({"variants": {"baseline": {}, "x": {"params": {"data": {"source": "folder"}}}}}, "variants.x: changes data"),
    ({"variants": {"baseline": {}, "x": {"tune": {"train.lr": [0.1, 1]}}}}, "needs heldout_per_class"),
    ({"claims": [{"variant": "no_lrn", "section": "§3.3", "says": "x", "effect": 0.01}]}, "not variants"),
    ({"colour": 1}, "colour"),
    ({"variants": {"baseline": {}, "bad": {"params": {"model": {"norm": "layer"}}}}}, "(?s)variants.bad .*model.norm"),
])
def test_a_bad_study_file_fails_naming_the_key(tmp_path, spec, message):
    with pytest.raises(ParamsError, match=message):
        load_study(write_study(tmp_path, **spec))


def test_the_shipped_study_files_are_valid_and_pre_register_their_design():
    spec = load_study(ROOT / "params/study-imagenette.yaml")
    assert {c.variant for c in spec.claims} == set(spec.variants) - {"baseline"}
    assert len(seeds_of(spec, "one_tower")) >= 12 and len(seeds_of(spec, "batchnorm")) >= 5
    assert spec.variants["batchnorm"].tune and spec.heldout_per_class > 0
    params = variant_params(spec, "non_overlapping_pool", 0)
    from alexnet.core.geometry import pooled_size

    # both poolings leave pool5 the same size: fc6 has the same inputs in both
    assert pooled_size(params.model.crop_size, "overlapping") == pooled_size(params.model.crop_size, "non_overlapping")
    assert params.train.schedule == "step" and params.train.precision != "auto"
    fig1 = load_study(ROOT / "params/study-figure1.yaml")
    assert fig1.design.figure1.target_train_err == 0.25 and len(fig1.seeds) >= 6
    assert variant_params(fig1, "tanh", 0).model.arch == "figure1_cnn"
    assert load_study(ROOT / "params/study.yaml").claims


# ---- the training rule and the claims' table, on hand-made results ----------------------------


def test_the_old_batchnorm_rows_did_not_train():
    with open(V1_RESULTS) as f:
        rows = list(csv.DictReader(f))
    verdicts = {(r["variant"], r["seed"]): did_not_train(r, Design(), num_classes=10) for r in rows}
    assert all(verdicts[("batchnorm", s)] and "within 1% of chance (90.0%)" in verdicts[("batchnorm", s)]
               for s in "012")
    assert not any(v for (variant, _), v in verdicts.items() if variant != "batchnorm")


def _row(variant, seed, err, **kw):
    return {"label": f"{variant}/seed-{seed}", "variant": variant, "seed": seed, "tuning": False,
            "num_classes": 10, "final_train_loss": 1.0, "center_top1_err": err, "ten_crop_top1_err": err,
            "train_minus_val": -0.05, "history": "", **kw}


def _spec(claims, seeds=12):
    variants = {"baseline": {}, **{c["variant"]: {} for c in claims}}
    return StudySpec(seeds=list(range(seeds)), variants=variants, claims=[
        {"section": "§x", "says": c["variant"], **{k: v for k, v in c.items() if k != "diffs"}} for c in claims])


def test_each_verdict_from_a_hand_made_table():
    base = [0.40, 0.45, 0.42, 0.48, 0.44, 0.41, 0.46, 0.43, 0.47, 0.40, 0.42, 0.45]
    wobble = [0.004, -0.003, 0.002, -0.004, 0.003, -0.002, 0.001, -0.001, 0.003, -0.003, 0.002, -0.002]
    big = [0.03 + w for w in wobble]  # 3 points, tight: shown
    tiny = wobble  # centred on 0, within 0.3 points: the designed 1.7 is excluded
    wide = [0.05 * (-1) ** s + w for s, w in enumerate(wobble)]  # +-5 points: neither
    claims = [{"variant": "big", "effect": 0.017}, {"variant": "tiny", "effect": 0.017},
              {"variant": "wide", "effect": 0.017}, {"variant": "failed", "effect": 0.017}]
    rows = [_row("baseline", s, e) for s, e in enumerate(base)]
    for name, diffs in (("big", big), ("tiny", tiny), ("wide", wide)):
        rows += [_row(name, s, e + d) for s, (e, d) in enumerate(zip(base, diffs))]
    rows += [_row("failed", s, 0.9) for s in range(12)]  # chance: did not train
    out = {c["variant"]: c for c in claim_rows(_spec(claims), rows, pilot_sd=None)}
    assert out["big"]["verdict"] == SHOWN and out["big"]["p_holm"] < 0.05
    bound = max(-out["tiny"]["low"], out["tiny"]["high"])
    assert bound < 0.017 and out["tiny"]["verdict"] == EXCLUDED.format(f"{bound * 100:.1f} points")
    assert out["wide"]["verdict"] == INCONCLUSIVE
    assert out["failed"]["verdict"] == DID_NOT_TRAIN and len(out["failed"]["not_trained"]) == 12
    # Holm over the three tested claims: the smallest p at alpha/3, then alpha/2, then alpha
    assert sorted(c["level"] for c in out.values() if "level" in c) == pytest.approx([0.05 / 3, 0.05 / 2, 0.05])
    assert 0 < out["big"]["power"] <= 1 and out["big"]["mde"] > 0


def test_holm_keeps_a_claim_that_alone_would_pass():
    # p about 0.03 twice: alone each passes 0.05; Holm over two wants 0.025 first: neither is shown
    base = [0.40 + 0.01 * s for s in range(6)]
    noisy = [0.015, 0.032, -0.002, 0.02, 0.025, 0.003]  # p = 0.033
    rows = [_row("baseline", s, e) for s, e in enumerate(base)]
    rows += [_row(v, s, e + d) for v in ("a", "b") for s, (e, d) in enumerate(zip(base, noisy))]
    out = claim_rows(_spec([{"variant": "a", "effect": 0.05}, {"variant": "b", "effect": 0.05}], 6), rows, None)
    assert all(0.025 < c["p"] < 0.05 for c in out)
    assert all(c["verdict"] != SHOWN for c in out)


def test_runs_that_did_not_train_are_in_no_interval():
    rows = [_row("baseline", s, 0.4 + 0.01 * s) for s in range(3)] + [
        _row("bn", 0, 0.5), _row("bn", 1, 0.5, final_train_loss=math.nan), _row("bn", 2, math.nan, failure="nan loss")]
    table = summarise(_spec([{"variant": "bn", "effect": 0.01}], 3), rows, ["center_top1_err"])
    assert table["bn"]["trained"] == [0] and table["bn"]["center_top1_err"]["n"] == 1
    assert table["bn"]["center_top1_err_vs_baseline"]["n"] == 1


def test_figure1_counts_epochs_to_the_target_and_a_never_reached_run_as_slower(tmp_path):
    def history(label, errs):
        path = tmp_path / f"{label.replace('/', '_')}.csv"
        path.write_text("epoch,train_top1_err\n" + "".join(f"{i + 1},{e}\n" for i, e in enumerate(errs)))
        return {**_row(*label.split("/seed-"), 0.5), "seed": int(label.split("-")[-1]), "history": str(path)}

    assert epochs_to_reach([{"epoch": 1, "train_top1_err": 0.9}, {"epoch": 2, "train_top1_err": 0.2}], 0.25) == 2
    rows = [history(f"relu/seed-{s}", [0.6, 0.3, 0.2]) for s in range(6)]
    rows += [history(f"tanh/seed-{s}", [0.8, 0.5, 0.4, 0.3, 0.2, 0.1] if s < 5 else [0.9, 0.8]) for s in range(6)]
    spec = StudySpec(seeds=list(range(6)), variants={"relu": {}, "tanh": {}}, figures_variant="relu",
                     design={"pilot_variants": [], "figure1": {"fast": "relu", "slow": "tanh"}})
    fig = figure1(spec, rows)
    assert [(p["fast"], p["slow"]) for p in fig["per_seed"]] == [(3, 5)] * 5 + [(3, None)]
    assert fig["slower"] == 6 and fig["p"] == pytest.approx(1 / 64) and fig["ratio"]["mean"] == pytest.approx(5 / 3)
    assert fig["p_reverse"] == 1.0  # no seed the other way
    assert not fig["fallback_used"]


def test_the_report_names_a_shown_effect_against_the_paper_and_a_rate_at_its_grid_edge():
    from alexnet.study.report import figure1_verdict, grid_edge, verdict_with_direction

    assert verdict_with_direction({"verdict": SHOWN, "mean": 0.03, "paper": 0.017}) == f"{SHOWN}, the paper's way"
    assert verdict_with_direction({"verdict": SHOWN, "mean": -0.03, "paper": 0.017}).endswith("**against the paper**")
    assert verdict_with_direction({"verdict": INCONCLUSIVE, "mean": -0.03, "paper": 0.017}) == INCONCLUSIVE
    # Figure 1 with tanh faster in 8 of 8 seeds: the one-sided test fails, the reversal is shown (p = 2/256)
    assert figure1_verdict(1.0, 2 / 256, 0.05) == f"{SHOWN}, against the paper"
    assert figure1_verdict(1 / 64, 1.0, 0.05) == f"{SHOWN}, the paper's way"
    assert figure1_verdict(0.3, 0.6, 0.05) == INCONCLUSIVE
    spec = StudySpec(seeds=[0], variants={"baseline": {}, "relu": {"tune": {"train.lr": [0.003, 0.01, 0.03]}}},
                     heldout_per_class=1)
    assert "the grid's lowest" in grid_edge(spec, "relu", "train.lr", 0.003)
    assert "the grid's highest" in grid_edge(spec, "relu", "train.lr", 0.03)
    assert grid_edge(spec, "relu", "train.lr", 0.01) == ""


def test_the_variance_section_compares_sds_of_the_primary_metric_only():
    from alexnet.study.report import variance_section

    claims = [{"metric": "ten_crop_top1_err", "sd": 0.012}, {"metric": "ten_crop_top1_err", "sd": 0.017},
              {"metric": "train_minus_val", "sd": 0.0036}]
    text = "".join(variance_section({"sd": 0.0257, "variants": ["no_lrn"], "seeds": 3}, claims, "ten_crop_top1_err"))
    assert "2.57 points" in text and "the 2 claims on it 1.20 points to 1.70 points" in text and "0.36" not in text


# ---- end to end ---------------------------------------------------------------------------------


def tiny_study(root: Path, **extra) -> Path:
    """A folder tree of 3 synthetic classes, its base params and a study file with a tuned variant."""
    from alexnet.data.synthetic import generate

    generate(root / "tree", classes=3, train_per_class=14, val_per_class=6, min_side=64, max_side=96, seed=1)
    raw = tiny_params(epochs=3, lr=0.02)
    raw["data"] = {"source": "folder", "root": str(root / "tree")}
    raw["train"].update(schedule="step", lr_steps=[2], val_every=3)
    raw["train"].pop("lr_patience")
    raw["tracking"] = {"uri": sqlite_store(root), "experiment": "test-study"}
    (root / "base.yaml").write_text(yaml.safe_dump(raw))
    (root / "study.yaml").write_text(yaml.safe_dump({
        "name": "tiny", "base": str(root / "base.yaml"), "seeds": [0, 1], "retries": 1, "heldout_per_class": 2,
        "train_per_class": 12,
        "variants": {"baseline": {}, "no_lrn": {"params": {"model": {"norm": "none"}}},
                     "exploding": {"params": {"train": {"lr": 1e6}}, "seeds": 1},
                     "tuned": {"params": {"model": {"norm": "none"}}, "tune": {"train.lr": [0.001, 0.02]}}},
        "claims": [{"variant": "no_lrn", "section": "§3.3", "says": "LRN lowers the error", "effect": 0.014},
                   {"variant": "exploding", "section": "§5", "says": "x", "effect": 0.01}],
        "design": {"pilot_variants": ["baseline", "no_lrn"], "pilot_seeds": 2}, **extra}))
    return root / "study.yaml"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from prefect.testing.utilities import prefect_test_harness

    from alexnet.study.runs import StudyPaths
    from flows.study import study

    root = tmp_path_factory.mktemp("study")
    spec = load_study(tiny_study(root))
    fired = []

    def fail_once(variant, seed, row):
        if (variant, seed, int(row["epoch"])) == ("no_lrn", 1, 1) and not fired:
            fired.append(1)
            raise RuntimeError("no_lrn seed 1 fails once after epoch 1")

    paths = StudyPaths(root=root, work=root / "work", out=root / "reports" / "runs")
    with prefect_test_harness(server_startup_timeout=180):
        result = study(spec, paths, on_epoch=fail_once)
    return {"root": root, "result": result, "out": paths.out, "fired": fired, "paths": paths, "spec": spec}


@pytest.mark.slow
def test_every_run_trains_once_and_a_failed_one_resumes(finished):
    from mlflow.tracking import MlflowClient

    assert finished["fired"] == [1]
    with open(finished["out"] / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["label"] for r in rows) == ["baseline/seed-0", "baseline/seed-1", "exploding/seed-0",
                                                 "no_lrn/seed-0", "no_lrn/seed-1", "tune/tuned/train.lr=0.001",
                                                 "tune/tuned/train.lr=0.02", "tuned/seed-0", "tuned/seed-1"]
    client = MlflowClient(f"sqlite:///{finished['root'] / 'mlflow.db'}")
    experiments = [e for e in client.search_experiments() if e.name.startswith("test-study.")]  # .<dataset>
    assert len(experiments) == 1, [e.name for e in experiments]
    runs = client.search_runs([experiments[0].experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 9 and all(r.info.status == "FINISHED" for r in runs)


@pytest.mark.slow
def test_a_non_finite_loss_is_a_row_that_did_not_train_not_a_failed_study(finished):
    rows = {r["label"]: r for r in finished["result"]["rows"]}
    assert "became" in rows["exploding/seed-0"]["failure"] and math.isnan(rows["exploding/seed-0"]["center_top1_err"])
    assert did_not_train(rows["exploding/seed-0"], finished["spec"].design)


@pytest.mark.slow
def test_tuning_picks_on_the_held_out_slice_and_the_pilot_comes_first(finished):
    out = finished["out"]
    with open(out / "tuning.csv") as f:
        tuning = list(csv.DictReader(f))
    assert [(t["value"], t["judged_by"]) for t in tuning] == [("0.001", "heldout_error"), ("0.02", "heldout_error")]
    chosen = float(next(t["value"] for t in tuning if t["chosen"] == "True"))
    assert json.loads((out / "regime.json").read_text())["tuned"]["tuned"] == {"train.lr": chosen}
    pilot = json.loads((out / "pilot.json").read_text())
    assert pilot["variants"] == ["no_lrn"] and pilot["seeds"] == 2
    # the held-out slice is none of the study's training images, and val picked nothing
    heldout = {p.name for p in (finished["paths"].work / "data" / "heldout" / "tree" / "val").rglob("*.JPEG")}
    train = {p.name for p in (finished["paths"].work / "data" / "main" / "tree" / "train").rglob("*.JPEG")}
    assert len(heldout) == 6 and not heldout & train


@pytest.mark.slow
def test_a_rerun_reads_every_finished_run_back(finished):
    from alexnet.study.runs import run_study

    again = run_study(finished["spec"], finished["paths"])  # in order, no Prefect: the rows are cached
    assert [r["run_id"] for r in again["rows"]] == [r["run_id"] for r in finished["result"]["rows"]]


@pytest.mark.slow
def test_the_report_names_every_claim_with_n_power_and_a_verdict(finished, tmp_path):
    from alexnet.report import main

    assert main(["--study", str(finished["root"] / "study.yaml"), "--runs", str(finished["out"]),
                 "--out", str(tmp_path)]) == 0
    report = (tmp_path / "REPORT.md").read_text()
    claims = report.split("## Claims", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in claims.splitlines() if line.startswith("| §")]
    assert len(rows) == 2 and {r[-1].split(",")[0] for r in rows} <= {SHOWN, INCONCLUSIVE, DID_NOT_TRAIN} | {
        r[-1] for r in rows if r[-1].startswith("effects larger than")}
    assert next(r for r in rows if "exploding" in r[0])[-1] == DID_NOT_TRAIN
    assert "`exploding/seed-0`: " in report.split("## Runs that did not train", 1)[1]
    for name in ("summary.json", "table.md", "errors.png", "did_not_train.png"):
        assert (tmp_path / name).is_file(), name


def test_the_study_stages_list_their_code_and_stay_out_of_the_default_repro():
    import subprocess

    dvc = yaml.safe_load((ROOT / "study" / "dvc.yaml").read_text())
    runs, report = dvc["stages"]["runs"], dvc["stages"]["report"]
    assert "alexnet/training/member.py" in runs["deps"] and "alexnet/study/report.py" not in runs["deps"]
    assert "alexnet/study/report.py" in report["deps"] and "alexnet/training/member.py" not in report["deps"]
    out = subprocess.run(["dvc", "stage", "list"], cwd=ROOT, capture_output=True, text=True,
                         env={"PATH": str(Path(__import__("sys").executable).parent)}).stdout
    assert "study" not in out


def test_tuning_by_speed_prefers_the_target_then_the_fallback_then_the_lowest_error(tmp_path):
    from alexnet.study.table import tuning_score

    design = Design(pilot_variants=[], figure1={"target_train_err": 0.25, "fallback_train_err": 0.4})

    def run(errs):
        path = tmp_path / f"h{len(list(tmp_path.iterdir()))}.csv"
        path.write_text("epoch,train_top1_err\n" + "".join(f"{i + 1},{e}\n" for i, e in enumerate(errs)))
        return {**_row("relu", 0, 0.5), "history": str(path)}

    fast, slow = run([0.5, 0.3, 0.2]), run([0.6, 0.5, 0.4, 0.3, 0.24])
    fallback, nowhere_low, nowhere_high = run([0.6, 0.39, 0.3]), run([0.8, 0.5, 0.45]), run([0.9, 0.7, 0.6])
    scores = [tuning_score(r, "epochs_to_target", design) for r in (fast, slow, fallback, nowhere_low, nowhere_high)]
    assert scores == sorted(scores) and len(set(scores)) == 5 and all(math.isfinite(s) for s in scores)
