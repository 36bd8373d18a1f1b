"""prepare: every file found is indexed or reported with a reason; fail mode names the file."""

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from alexnet.config.sections import DataParams
from alexnet.data.prepare import BadImageError, prepare
from stages.prepare import main as prepare_main


def jpeg_bytes(mode="RGB", size=(60, 40), fmt="JPEG") -> bytes:
    rng = np.random.default_rng(sum(size))
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB").convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def write(path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def quirky_imagenet(tmp_path):
    """ILSVRC layout with every quirk; flat val labelled by LOC_val_solution.csv in root's parent."""
    root = tmp_path / "ilsvrc"
    tr = root / "train"
    write(tr / "n02" / "n02_1.JPEG", jpeg_bytes())
    write(tr / "n02" / "n02_gray.JPEG", jpeg_bytes("L"))
    write(tr / "n02" / "n02_cmyk.JPEG", jpeg_bytes("CMYK"))
    write(tr / "n02" / "n02_png.JPEG", jpeg_bytes(fmt="PNG"))
    write(tr / "n02" / "n02_palette.JPEG", jpeg_bytes("P", fmt="PNG"))
    write(tr / "n02" / "n02_truncated.JPEG", jpeg_bytes(size=(200, 150))[:1500])
    write(tr / "n02" / "n02_empty.JPEG", b"")
    write(tr / "n02" / "notes.txt", b"not an image at all\n")
    write(tr / "n01" / "n01_1.JPEG", jpeg_bytes(size=(30, 50)))
    write(tr / "stray.JPEG", jpeg_bytes())  # not in a class folder
    va = root / "val"
    write(va / "ILSVRC2012_val_00000001.JPEG", jpeg_bytes())
    write(va / "ILSVRC2012_val_00000002.JPEG", jpeg_bytes())
    write(va / "ILSVRC2012_val_00000003.JPEG", jpeg_bytes())  # wnid not a class
    write(va / "ILSVRC2012_val_00000004.JPEG", jpeg_bytes())  # no CSV entry
    write(va / "n03" / "x.JPEG", jpeg_bytes())  # unknown class folder
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n"
        "ILSVRC2012_val_00000001,n01 10 20 30 40\n"
        "ILSVRC2012_val_00000002,n02 1 2 3 4 n02 5 6 7 8\n"
        "ILSVRC2012_val_00000003,n99 1 2 3 4\n")
    (root / "LOC_synset_mapping.txt").write_text("n01 tench, Tinca tinca\nn02 goldfish\n")
    return root


def test_every_file_is_indexed_or_reported(tmp_path, quirky_imagenet):
    out = tmp_path / "prepared"
    dataset = prepare(out, DataParams(source="imagenet", root=quirky_imagenet), workers=2, progress=False)
    index = pd.read_parquet(out / "index.parquet")
    report = pd.read_csv(out / "quality_report.csv")
    found = [p for split in ("train", "val") for p in (quirky_imagenet / split).rglob("*") if p.is_file()]
    assert len(found) == len(index) + len(report) == 15
    reasons = dict(zip(report["path"], report["reason"], strict=True))
    assert reasons == {
        "train/n02/n02_truncated.JPEG": "truncated",
        "train/n02/n02_empty.JPEG": "zero bytes",
        "train/n02/notes.txt": "not an image",
        "train/stray.JPEG": "unknown class",
        "val/ILSVRC2012_val_00000003.JPEG": "unknown class",
        "val/ILSVRC2012_val_00000004.JPEG": "unknown class",
        "val/n03/x.JPEG": "unknown class",
    }
    rows = index.set_index("path")
    # Usable quirks are indexed, with what they are; conversion to RGB happens in preprocess.
    assert (rows.loc["train/n02/n02_gray.JPEG", "mode"], rows.loc["train/n02/n02_cmyk.JPEG", "mode"]) == ("L", "CMYK")
    assert rows.loc["train/n02/n02_png.JPEG", "format"] == "PNG"
    assert rows.loc["train/n02/n02_palette.JPEG", "mode"] == "P"
    assert tuple(rows.loc["train/n01/n01_1.JPEG", ["width", "height", "label"]]) == (30, 50, 0)
    # Labels: sorted wnid order; flat val from the CSV's first wnid.
    assert rows.loc["val/ILSVRC2012_val_00000001.JPEG", "label"] == 0
    assert rows.loc["val/ILSVRC2012_val_00000002.JPEG", "wnid"] == "n02"
    assert list(index["split"]) == ["train"] * 6 + ["val"] * 2
    assert dataset["splits"] == {"train": {"found": 10, "indexed": 6, "reported": 4, "ignored": 0},
                                 "val": {"found": 5, "indexed": 2, "reported": 3, "ignored": 0}}
    classes = pd.read_csv(out / "classes.csv")
    assert list(classes["name"]) == ["tench, Tinca tinca", "goldfish"] and list(classes["label"]) == [0, 1]
    saved = json.loads((out / "dataset.json").read_text())
    assert saved["source"] == "imagenet" and saved["num_classes"] == 2
    assert (out / saved["root"]).resolve() == quirky_imagenet.resolve()


def test_fail_mode_names_each_bad_file(tmp_path, quirky_imagenet):
    with pytest.raises(BadImageError) as err:
        prepare(tmp_path / "p", DataParams(source="imagenet", root=quirky_imagenet, on_bad_image="fail"),
                progress=False)
    msg = str(err.value)
    assert "train/n02/n02_truncated.JPEG: truncated" in msg and "train/n02/n02_empty.JPEG: zero bytes" in msg
    assert "7 unusable file(s)" in msg
    assert not (tmp_path / "p" / "index.parquet").exists()


def test_val_solution_in_root_and_val_in_class_folders(tmp_path):
    root = tmp_path / "r"
    write(root / "train" / "n05" / "a.JPEG", jpeg_bytes())
    write(root / "train" / "n04" / "a.JPEG", jpeg_bytes())
    write(root / "val" / "n05" / "v.JPEG", jpeg_bytes())
    write(root / "val" / "flat.JPEG", jpeg_bytes())
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\nflat,n04 1 2 3 4\n")
    prepare(tmp_path / "p", DataParams(source="imagenet", root=root), progress=False)
    index = pd.read_parquet(tmp_path / "p" / "index.parquet").set_index("path")
    assert index.loc["val/n05/v.JPEG", "label"] == 1 and index.loc["val/flat.JPEG", "label"] == 0
    assert pd.read_csv(tmp_path / "p" / "quality_report.csv").empty


def test_folder_source_uses_folder_names(tmp_path):
    root = tmp_path / "f"
    write(root / "train" / "dog" / "1.jpg", jpeg_bytes())
    write(root / "train" / "cat" / "1.png", jpeg_bytes(fmt="PNG"))
    write(root / "val" / "cat" / "2.jpg", jpeg_bytes())
    write(root / "val" / "cow" / "3.jpg", jpeg_bytes())
    dataset = prepare(tmp_path / "p", DataParams(source="folder", root=root), progress=False)
    assert [c["name"] for c in dataset["classes"]] == ["cat", "dog"]
    assert dataset["splits"]["val"] == {"found": 2, "indexed": 1, "reported": 1, "ignored": 0}


def test_synthetic_source_reports_only_the_truncated_file(tiny_prepared):
    report = pd.read_csv(tiny_prepared / "quality_report.csv")
    assert list(report["reason"]) == ["truncated"]
    dataset = json.loads((tiny_prepared / "dataset.json").read_text())
    assert dataset["root"] == "images"
    assert dataset["splits"]["train"] == {"found": 12, "indexed": 11, "reported": 1, "ignored": 0}
    index = pd.read_parquet(tiny_prepared / "index.parquet")
    assert set(index["mode"]) == {"RGB", "L", "CMYK"} and set(index["format"]) == {"JPEG", "PNG"}


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        prepare(tmp_path / "p", DataParams(source="folder", root=tmp_path / "nope"), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no train/ folder"):
        prepare(tmp_path / "p", DataParams(source="folder", root=tmp_path / "empty"), progress=False)


def test_stage_prints_one_line_per_problem_and_exits_nonzero(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  source: folder\n  on_bad_imag: skip\n")
    assert prepare_main(["--params", str(params), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "data.on_bad_imag: unknown key" in err and "Traceback" not in err
    params.write_text(f"data:\n  source: folder\n  root: {tmp_path / 'missing'}\n")
    assert prepare_main(["--params", str(params), "--out", str(tmp_path / "p")]) == 2
    assert "no such folder" in capsys.readouterr().err



POOL_UNDER_A_HANDLER = """
import os, signal, time
from alexnet.core.processes import fork_pool

def disposition(_):
    return signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

signal.signal(signal.SIGTERM, lambda *a: None)  # as Prefect's handler in a flow's process
with fork_pool(2) as pool:
    assert all(pool.map(disposition, range(4))), "a pool worker kept the parent's SIGTERM handler"
# Workers slow to start, as on a loaded machine: the pool's exit sends its SIGTERM before their
# initializer has run (the old pool, forked with SIGTERM open, then waited forever: seen).
os.register_at_fork(after_in_child=lambda: time.sleep(0.5))
for _ in range(2):
    with fork_pool(2):
        pass
"""


def test_pool_workers_obey_the_pools_sigterm_whatever_the_parent_handles():
    # A pool ends its workers with SIGTERM. Prefect installs a SIGTERM handler in a flow's process that
    # forked workers inherit; with it a worker stuck on the pool's queue outlived the pool's exit, which
    # then waited forever (a study's data step hung so, and a test worker of the suite). In a fresh
    # interpreter, in a session of its own: a hang is killed whole at the timeout and fails the test.
    import os
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", POOL_UNDER_A_HANDLER], stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError("a pool's exit waited on a worker that ignored its SIGTERM") from None
    assert proc.returncode == 0, stderr[-2000:]
