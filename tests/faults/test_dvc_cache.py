"""Issue 11, item 3: an in-place write to a workspace output must not poison DVC's cache.

Real DVC in a throwaway git repo: a stage writes a folder of two files (like data/shards), a
user edits one of them in place, and we look at what DVC restores and what the cache holds.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("dvc", path=str(BIN)) is None and
                                                   shutil.which("dvc") is None, reason="dvc not installed")]

MAKE = """\
import os
os.makedirs("out", exist_ok=True)
for i in range(2):
    with open(f"out/shard-{i}.bin", "wb") as f:
        f.write(bytes([i + 1]) * 4096)
"""
MAKE_NESTED = """\
import os
os.makedirs("out/sub", exist_ok=True)
for name in ("member-0.csv", "sub/member-1.csv"):
    with open(f"out/{name}", "w") as f:
        f.write("epoch,loss\\n1,0.5\\n")
"""
GOOD = {f"shard-{i}.bin": hashlib.md5(bytes([i + 1]) * 4096).hexdigest() for i in range(2)}


def run(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(PROJECT), PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    result = subprocess.run(list(args), cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def project_cache_type() -> str:
    config = configparser.ConfigParser()
    config.read(PROJECT / ".dvc" / "config")
    return config["cache"]["type"].strip().strip('"')


def make_repo(tmp_path: Path, cache_type: str) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    run(repo, "git", "init", "-q")
    run(repo, "dvc", "init", "-q")
    run(repo, "dvc", "config", "core.analytics", "false")
    run(repo, "dvc", "config", "cache.type", cache_type)
    (repo / "make.py").write_text(MAKE)
    (repo / "dvc.yaml").write_text("stages:\n  make:\n    cmd: python make.py\n    deps: [make.py]\n    outs: [out]\n")
    run(repo, "dvc", "repro", "-q")
    # A fresh output stays a copy; the workspace is linked from the cache by a checkout (after a
    # clone and pull, a branch switch, or a repro that finds the stage in the run cache).
    run(repo, "dvc", "checkout", "--relink", "-q")
    return repo


def edit_in_place(path: Path) -> None:
    """Overwrite bytes in place, as root does (or a tool that puts the file's mode back).

    DVC leaves linked files read-only and re-hashes a cache object it finds writable, so the
    mode is restored: a read-only object is trusted by name, which is how the damage spreads.
    """
    mode = path.stat().st_mode
    path.chmod(mode | 0o200)
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"damage")
    path.chmod(mode)


def workspace(repo: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted((repo / "out").iterdir())}


def cache_is_sound(repo: Path) -> bool:
    objects = repo / ".dvc" / "cache" / "files" / "md5"
    return all(hashlib.md5(o.read_bytes()).hexdigest() == o.parent.name + o.name.removesuffix(".dir")
               for o in objects.glob("*/*"))


def test_project_cache_policy_never_links_the_workspace_to_the_cache():
    kinds = [k.strip() for k in project_cache_type().split(",")]
    assert "hardlink" not in kinds and "symlink" not in kinds, kinds


def test_with_the_project_cache_policy_an_in_place_edit_is_undone_by_repro(tmp_path):
    repo = make_repo(tmp_path, project_cache_type())
    edit_in_place(repo / "out" / "shard-0.bin")
    assert cache_is_sound(repo)
    assert "modified" in run(repo, "dvc", "status").stdout
    run(repo, "dvc", "repro", "-q")
    assert workspace(repo) == GOOD and cache_is_sound(repo)
    assert run(repo, sys.executable, "-m", "alexnet.verify", check=False).returncode == 0


def test_verify_finds_and_heals_a_cache_poisoned_through_a_hardlink(tmp_path):
    repo = make_repo(tmp_path, "hardlink")
    edit_in_place(repo / "out" / "shard-0.bin")
    assert not cache_is_sound(repo)  # the poisoning this guards against
    run(repo, "dvc", "repro", "-q")
    assert workspace(repo) != GOOD  # DVC alone restores the damage

    found = run(repo, sys.executable, "-m", "alexnet.verify", check=False)
    assert found.returncode == 1
    assert "DVC cache object damaged" in found.stdout and f"{GOOD['shard-0.bin']}" in found.stdout
    assert "out/shard-0.bin: md5" in found.stdout

    healed = run(repo, sys.executable, "-m", "alexnet.verify", "--repair", check=False)
    assert healed.returncode == 1 and "removed" in healed.stdout and cache_is_sound(repo)
    run(repo, "dvc", "repro", "-q")
    assert workspace(repo) == GOOD and cache_is_sound(repo)
    assert run(repo, sys.executable, "-m", "alexnet.verify", check=False).returncode == 0


def test_verify_names_a_shard_that_differs_from_its_manifest(tmp_path, tiny_prepared):
    from alexnet.config.sections import PreprocessParams
    from alexnet.core.layout import MANIFEST_FILE, MEAN_FILE
    from alexnet.data.preprocess import preprocess

    shards = tmp_path / "data" / "shards"
    preprocess(tiny_prepared, shards, PreprocessParams(stored_size=40, shard_size=8, workers=1), progress=False)
    assert run(tmp_path, sys.executable, "-m", "alexnet.verify", check=False).returncode == 0
    victims = [next(shards.glob("train-*[0-9].npy")), shards / MEAN_FILE]
    for victim in victims:
        edit_in_place(victim)
    found = run(tmp_path, sys.executable, "-m", "alexnet.verify", check=False)
    assert found.returncode == 1 and (shards / MANIFEST_FILE).is_file()
    for victim in victims:
        assert f"{victim.relative_to(tmp_path)}: sha256" in found.stdout, found.stdout


def test_verify_hashes_a_folder_output_that_dvc_does_not_cache(tmp_path):
    # reports/train is `cache: false`: dvc.lock records its md5 but the cache holds no listing.
    repo = tmp_path / "repo"
    repo.mkdir()
    run(repo, "git", "init", "-q")
    run(repo, "dvc", "init", "-q")
    run(repo, "dvc", "config", "core.analytics", "false")
    (repo / "make.py").write_text(MAKE_NESTED)
    (repo / "dvc.yaml").write_text("stages:\n  make:\n    cmd: python make.py\n    deps: [make.py]\n"
                                   "    outs:\n      - out:\n          cache: false\n")
    run(repo, "dvc", "repro", "-q")
    verify = (sys.executable, "-m", "alexnet.verify", "--root", str(repo), "--shards", "absent")
    healthy = run(tmp_path, *verify, check=False)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr

    with open(repo / "out" / "sub" / "member-1.csv", "a") as f:
        f.write("2,0.4\n")
    changed = run(tmp_path, *verify, check=False)
    assert changed.returncode == 1
    lines = changed.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{repo / 'out'}: folder md5 "), changed.stdout
    recorded = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["make"]["outs"][0]["md5"]
    assert f"differs from dvc.lock's {recorded}" in lines[0]
