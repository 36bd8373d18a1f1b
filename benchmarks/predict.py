"""How fast is the model in use: MLflow's model server against the bare forward pass, and a cold `alexnet.predict`.

Two measurements in one run, on the trained ensemble of `make run` (models/, data/shards, data/prepared):

1. images/s of the registered pyfunc served by `mlflow models serve` (loopback, --env-manager local):
   one POST of --images val photos as base64 JPEGs, decoded, resized, cropped and classified by the
   server, against the same network's bare forward pass (the exported graph the server runs) on
   the same images already cut to its input, in this process. Target: ratio >= 0.8. The server
   runs beside this process on the same cores; each figure is the median of --repeats.
2. the wall time of `python -m alexnet.predict IMAGE` (a fresh process: imports, loading the
   members, one photo), the median of --repeats. Target: under 5 s with the default model.

Prints a table, then ONE JSON object as the last line.

    python benchmarks/predict.py                     # 64 photos, the headline view, 5 repeats
    python benchmarks/predict.py --views center --images 128
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from alexnet.config.params import load_params
from alexnet.core.layout import CLASSES_FILE, INDEX_FILE, VAL
from alexnet.core.processes import free_port
from alexnet.serving.bundle import classifier_from_training, save_bundle, save_pyfunc
from alexnet.serving.pyfunc import BUNDLE_FILE, MEAN_FILE, NETWORK_FILE, load_bundle


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--models", default="models")
    ap.add_argument("--shards", default="data/shards")
    ap.add_argument("--prepared", default="data/prepared")
    ap.add_argument("--images", type=int, default=64, help="photos in the batch request")
    ap.add_argument("--views", choices=("center", "ten"), help="default: the view of params' evaluate.ten_crop")
    ap.add_argument("--repeats", type=int, default=5)
    return ap.parse_args(argv)


def val_photos(prepared: Path, count: int) -> list[Path]:
    index = pd.read_parquet(prepared / INDEX_FILE)
    paths = index[index["split"] == VAL]["path"].tolist()
    root = Path(json.loads((prepared / "dataset.json").read_text())["root"])
    if not root.is_absolute() and (prepared / root).is_dir():  # the synthetic source draws its tree there
        root = prepared / root
    return [root / p for p in paths[:count]]


def serve(model: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", str(model),
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return server, f"http://127.0.0.1:{port}/invocations"
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the model server did not start") from None
            time.sleep(1)


def post(url: str, body: bytes) -> float:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        response.read()
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict:
    params = load_params(args.params)
    views = args.views or ("ten" if params.evaluate.ten_crop else "center")
    photos = val_photos(Path(args.prepared), args.images)
    classifier = classifier_from_training(params, Path(args.models), Path(args.shards),
                                          Path(args.prepared) / CLASSES_FILE)
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        bundle = Path(tmp) / "bundle"
        save_bundle(classifier, bundle, views)
        save_pyfunc(bundle, Path(tmp) / "model")
        exported = load_bundle(bundle / BUNDLE_FILE, bundle / NETWORK_FILE, bundle / MEAN_FILE)
        inputs = exported.inputs(np.stack([exported.patch(p) for p in photos]), views)
        with torch.no_grad():
            exported.network(inputs)  # warm-up
            bare = [len(photos) / _timed(lambda: exported.network(inputs)) for _ in range(args.repeats)]
        body = json.dumps({"dataframe_records": [{"image": base64.b64encode(p.read_bytes()).decode()} for p in photos],
                           "params": {"views": views}}).encode()
        server, url = serve(Path(tmp) / "model")
        try:
            post(url, body)  # warm-up
            served = [len(photos) / post(url, body) for _ in range(args.repeats)]
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=60)
    cmd = [sys.executable, "-m", "alexnet.predict", str(photos[0]), "--params", args.params, "--model", args.models,
           "--shards", args.shards, "--prepared", args.prepared, "--views", views]
    cold = [_timed(lambda: subprocess.run(cmd, check=True, capture_output=True)) for _ in range(args.repeats)]
    return {"benchmark": "predict", "views": views, "images": len(photos), "request_bytes": len(body),
            "served_img_s": statistics.median(served), "bare_img_s": statistics.median(bare),
            "served_vs_bare": statistics.median(s / b for s, b in zip(served, bare)),
            "cold_start_s": statistics.median(cold), "settings": vars(args), "cpus": os.cpu_count(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    r = run(parse_args(argv))
    print(f"{r['images']} val photos, views {r['views']}, median of {r['settings']['repeats']}; {r['cpus']} CPUs "
          f"({r['cpu_capability']}); one request {r['request_bytes'] / 1e3:.0f} kB")
    print(f"{'served (mlflow models serve, one batch request)':50s} {r['served_img_s']:8.1f} img/s")
    print(f"{'bare forward pass (the same graph, inputs ready)':50s} {r['bare_img_s']:8.1f} img/s   "
          f"ratio {r['served_vs_bare']:.2f} (target >= 0.8)")
    print(f"{'cold python -m alexnet.predict, one photo':50s} {r['cold_start_s']:8.2f} s       (target < 5 s)")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
