"""Using the trained model: a photo gets the shards' own pixels, `alexnet.predict` answers per image, the logged
pyfunc loads without this repository and answers the same, MLflow's real model server serves it (4xx for bad
input, and goes on), and each dataset keeps its own champion."""

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from alexnet.config.params import parse_params
from alexnet.core.layout import CLASSES_FILE, INDEX_FILE, VAL
from alexnet.core.processes import free_port
from alexnet.data.shards import ShardSet
from alexnet.loading.loader import EvalLoader
from alexnet.serving.bundle import classifier_from_training, save_bundle, save_pyfunc
from alexnet.training.member import train_member
from tests.tiny import tiny_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """Two tiny members trained on tests/tiny.py's data, their params file, and the classifier over them."""
    root = tmp_path_factory.mktemp("trained")
    raw = tiny_params(epochs=2)
    raw["ensemble"] = {"members": 2}
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    params = parse_params(raw)
    for i in range(2):
        train_member(i, params, prepared_dir=data / "prepared", shards_dir=data / "shards", models_dir=root / "models",
                     history_dir=root / "history", checkpoints_dir=root / "checkpoints", progress=False)
    classifier = classifier_from_training(params, root / "models", data / "shards", data / "prepared" / CLASSES_FILE)
    return {"root": root, "params": params, "classifier": classifier, "data": data}


def val_files(data: Path) -> list[Path]:
    index = pd.read_parquet(data / "prepared" / INDEX_FILE)
    return [data / "prepared" / "images" / p for p in index[index["split"] == VAL]["path"]]


def test_a_photo_gets_the_shards_own_pixels_and_the_loaders_views(trained):
    data, classifier = trained["data"], trained["classifier"]
    files, shards = val_files(data), ShardSet(data / "shards", VAL)
    patches = np.stack([classifier.patch(f) for f in files])  # grayscale, CMYK, a PNG named .JPEG among them
    assert np.array_equal(patches, shards.read(np.arange(len(files))))
    params = trained["params"]
    with EvalLoader(data / "shards", VAL, batch_size=len(files), crop_size=params.model.crop_size, ten_crop=True,
                    workers=1, divisor=params.model.input_scale) as loader:
        (batch, _), = list(loader)
    assert torch.equal(classifier.inputs(patches, "ten"), batch)
    assert torch.equal(classifier.inputs(patches, "center")[:, 0], batch[:, 4])  # view 4 is the centre


def test_predict_answers_each_image_and_names_the_one_it_cannot_read(trained, tmp_path, capsys):
    from alexnet.predict import main

    files = [str(f) for f in val_files(trained["data"])[:2]]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a JPEG")
    args = ["--model", str(trained["root"] / "models"), "--params", str(trained["root"] / "params.yaml"),
            "--shards", str(trained["data"] / "shards"), "--prepared", str(trained["data"] / "prepared"), "--top", "2"]
    assert main([files[0], str(broken), files[1], *args]) == 2  # the others still answered
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == files and all(line.count(" n0") == 2 for line in lines)
    assert err.strip().splitlines()[-1].startswith(f"{broken}: cannot be read: cannot identify image file")
    assert main([files[0], *args, "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    expected = trained["classifier"].classify([files[0]], 2, "ten")[0]
    assert answer == {"image": files[0], "top": expected}


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory):
    root = tmp_path_factory.mktemp("pyfunc")
    save_bundle(trained["classifier"], root / "bundle", views="ten")
    save_pyfunc(root / "bundle", root / "model")
    return root / "model"


@pytest.mark.slow
def test_the_logged_model_loads_without_this_repository_and_answers_the_same(trained, saved, tmp_path):
    files = [str(f) for f in val_files(trained["data"])[:3]]
    script = (
        "import base64, json, sys\n"
        "import mlflow.pyfunc, pandas as pd\n"
        "m = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "import alexnet\n"
        "assert alexnet.__file__.startswith(sys.argv[1]), alexnet.__file__  # the model's own copy\n"
        "images = [base64.b64encode(open(f, 'rb').read()).decode() for f in sys.argv[2:]]\n"
        "out = m.predict(pd.DataFrame({'image': images}), params={'top': 3})\n"
        "print(json.dumps([list(map(list, (r.wnids, r.probabilities))) for r in out.itertuples()]))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    proc = subprocess.run([sys.executable, "-I", "-c", script, str(saved), *files], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    want = trained["classifier"].classify(files, 3, "ten")
    for (wnids, probs), top in zip(got, want):
        assert wnids == [c["wnid"] for c in top]
        assert probs == pytest.approx([c["probability"] for c in top], abs=1e-5)


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.mark.slow
def test_mlflows_own_server_answers_photos_and_refuses_bad_ones_and_keeps_serving(trained, saved, tmp_path):
    from PIL import Image

    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", str(saved),
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                              # the server execs `uvicorn` from PATH: this interpreter's
                              env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    url = f"http://127.0.0.1:{port}/invocations"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the model server did not start"
                time.sleep(1)
        files = [str(f) for f in val_files(trained["data"])[:2]]
        images = [base64.b64encode(Path(f).read_bytes()).decode() for f in files]
        body = json.dumps({"dataframe_records": [{"image": i} for i in images], "params": {"top": 3}}).encode()
        assert len(body) < 20_000  # a request for a photo is kilobytes, not a tensor of megabytes
        status, answer = _post(url, body)
        assert status == 200
        want = trained["classifier"].classify(files, 3, "ten")
        assert [p["wnids"] for p in answer["predictions"]] == [[c["wnid"] for c in top] for top in want]
        huge = tmp_path / "huge.png"
        Image.new("L", (10_000, 9_000)).save(huge)  # 90 million pixels: over the decompression-bomb guard
        bad = [b"{}", json.dumps({"dataframe_records": [{"image": "not base64!"}]}).encode(),
               json.dumps({"dataframe_records": [{"image": base64.b64encode(b"GIF89a nonsense").decode()}]}).encode(),
               json.dumps({"dataframe_records": [{"image": base64.b64encode(huge.read_bytes()).decode()}]}).encode()]
        for request in bad:
            status, answer = _post(url, request)
            assert 400 <= status < 500 and answer.get("message"), (request[:60], status, answer)
        assert "pixels" in _post(url, bad[-1])[1]["message"]
        assert _post(url, body)[0] == 200  # still serving
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
        server.wait(timeout=30)


def test_evaluate_model_on_a_labelled_folder_reports_what_it_left_out(trained, tmp_path, capsys):
    from alexnet.evaluate_model import main

    folder = tmp_path / "photos"
    index = pd.read_parquet(trained["data"] / "prepared" / INDEX_FILE)
    for path, wnid in index[index["split"] == VAL][["path", "wnid"]].itertuples(index=False):
        (folder / wnid).mkdir(parents=True, exist_ok=True)
        (folder / wnid / Path(path).name).symlink_to(trained["data"] / "prepared" / "images" / path)
    (folder / "n99999999").mkdir()  # a class the model does not know
    (folder / "n99999999" / "x.jpg").write_bytes(b"x")
    broken = folder / index["wnid"].iloc[0] / "broken.jpg"
    broken.write_bytes(b"not an image")
    out = tmp_path / "result.json"
    assert main(["--model", str(trained["root"] / "models"), "--data", str(folder), "--out", str(out),
                 "--params", str(trained["root"] / "params.yaml"), "--shards", str(trained["data"] / "shards"),
                 "--prepared", str(trained["data"] / "prepared")]) == 0
    result = json.loads(out.read_text())
    assert result["images"] == int((index["split"] == VAL).sum()) and result["unreadable"] == [str(broken)]
    assert result["unknown_classes"] == [str(folder / "n99999999")]
    classifier = trained["classifier"]
    files = [str(f) for f in val_files(trained["data"])]
    labels = index[index["split"] == VAL]["wnid"].tolist()
    top1 = sum(t[0]["wnid"] != w for t, w in zip(classifier.classify(files, 5, "center"), labels)) / len(files)
    assert result["center"]["top1_err"] == pytest.approx(top1)
    assert "n99999999: not a class of this model" in capsys.readouterr().err
