import json

import numpy as np
import pytest
import torch

from alexnet.evaluation.reports import (
    ensemble_report,
    evaluate_ensemble,
    headline_view,
    load_probs,
    read_class_names,
    save_probs,
)
from alexnet.summary import summary_rows, summary_table


def _probs(logits):
    return torch.tensor(logits, dtype=torch.float32).softmax(dim=1)


def test_ensemble_is_the_mean_of_member_softmaxes_and_reports_every_member():
    labels = torch.tensor([0, 1, 2])
    a = _probs([[3, 0, 0], [0, 0, 3], [0, 0, 3]])  # right, wrong, right
    b = _probs([[0, 3, 0], [0, 3, 0], [0, 0, 3]])  # wrong, right, right
    metrics, ensemble = ensemble_report(
        {"member-0": {"center": a, "ten_crop": a}, "member-1": {"center": b, "ten_crop": b}}, labels
    )
    torch.testing.assert_close(ensemble["center"], (a + b) / 2)
    assert metrics["members"]["member-0"]["center"]["top1_err"] == pytest.approx(1 / 3)
    assert metrics["members"]["member-1"]["center"]["top1_err"] == pytest.approx(1 / 3)
    # Image 0: (a+b)/2 ties class 0 and 1 -> the pessimistic rule counts it wrong; image 1 likewise.
    assert metrics["ensemble"]["center"]["top1_err"] == pytest.approx(2 / 3)
    assert metrics["center"] == {k: v for k, v in metrics["ensemble"]["center"].items()}
    assert metrics["ensemble"]["members"] == 2
    assert metrics["images"] == 3


def test_views_missing_from_a_member_are_left_out():
    labels = torch.tensor([0, 1])
    p = _probs([[2, 0], [0, 2]])
    metrics, ensemble = ensemble_report({"m0": {"center": p, "ten_crop": p}, "m1": {"center": p}}, labels)
    assert set(ensemble) == {"center"}
    assert "ten_crop" not in metrics
    assert metrics["center"]["top1_err"] == 0.0


def test_evaluate_ensemble_writes_reports_from_saved_probabilities(tmp_path):
    labels = torch.tensor([0, 1, 1, 0])
    rng = np.random.default_rng(0)
    member_files = {}
    saved = {}
    for m in range(3):
        views = {}
        for view in ("center", "ten_crop"):
            p = torch.from_numpy(rng.dirichlet(np.ones(2), size=4).astype(np.float32))
            path = tmp_path / "pred" / f"member-{m}.{view}.npy"
            save_probs(path, p)
            views[view] = str(path)
            saved[(m, view)] = p
        member_files[f"member-{m}"] = views
    classes = tmp_path / "classes.csv"
    classes.write_text("label,wnid,name\n1,n2,dog\n0,n1,cat\n")
    assert read_class_names(classes) == ["cat", "dog"]
    metrics = evaluate_ensemble(member_files, labels, ["cat", "dog"], reports_dir=tmp_path / "reports",
                                metrics_path=tmp_path / "metrics.json")
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    ens = load_probs(tmp_path / "reports" / "predictions" / "ensemble.ten_crop.npy")
    torch.testing.assert_close(ens, sum(saved[(m, "ten_crop")] for m in range(3)) / 3)
    for name in ("confusion.png", "ensemble.png", "per_class.csv"):
        assert (tmp_path / "reports" / name).stat().st_size > 0
    assert (tmp_path / "reports" / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    per_class = (tmp_path / "reports" / "per_class.csv").read_text().splitlines()
    assert per_class[0] == "label,class,images,top1_acc" and per_class[1].startswith("0,cat,2,")
    # The summary table shows every member and the ensemble, as percentages.
    names = [row[""] for row in summary_rows(on_disk)]
    assert names == ["member-0", "member-1", "member-2", "ensemble"]
    table = summary_table(on_disk)
    assert f"{on_disk['ten_crop']['top1_err'] * 100:.2f}%" in table.splitlines()[-1]


def test_the_headline_view_is_ten_crop_when_evaluated():
    assert headline_view({"center": 0, "ten_crop": 0}) == "ten_crop"
    assert headline_view(["center"]) == "center"
