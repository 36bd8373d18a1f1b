"""Check the pipeline's outputs and DVC's cache against their recorded hashes; optionally repair
(`python -m alexnet.verify`).

Three checks, one line per problem, exit 1 if any:
  - every DVC cache object against its own name (the md5 of its bytes): an object that no
    longer matches was damaged in place (e.g. through a hardlink from the workspace), and DVC
    would restore that damage on every checkout and never rebuild it (it trusts the name);
  - every output recorded in dvc.lock against its md5 there (a folder file by file through its
    listing in the cache; a folder with `cache: false` has none, so it is hashed whole, as DVC does);
  - the shards, mean.npy and pca.json against the sha256 in their manifest.json.
--repair deletes the damaged cache objects (and only them): `dvc repro` then rebuilds what they
held, and `dvc checkout` restores the rest. A damaged workspace file is never overwritten here.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

from alexnet.core.layout import DVC_LOCK_FILE, MANIFEST_FILE
from alexnet.data.shards import ShardsError, check_file, read_manifest

_CHUNK = 1 << 22


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def cache_dir(root: Path) -> Path:
    """DVC's md5 object folder for the repo at root (honours cache.dir in .dvc/config)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return Path(repo.cache.local.path)


def bad_cache_objects(objects: Path) -> Iterator[tuple[Path, str]]:
    """(object, its actual md5) for every object whose bytes no longer hash to its name."""
    for prefix in sorted(p for p in objects.iterdir() if p.is_dir() and len(p.name) == 2):
        for obj in sorted(prefix.iterdir()):
            if not obj.is_file() or obj.name.startswith("."):
                continue  # DVC's own temp files
            name = prefix.name + obj.name.removesuffix(".dir")
            actual = md5_of(obj)
            if actual != name:
                yield obj, actual


def dir_md5(folder: Path) -> str:
    """The md5 DVC records for a folder output: that of its listing, the JSON of every file's md5 and
    posix path relative to the folder, sorted by path (dvc_data's Tree.as_bytes), plus ".dir"."""
    entries = [{"md5": md5_of(file), "relpath": file.relative_to(folder).as_posix()}
               for file in folder.rglob("*") if file.is_file()]
    listing = json.dumps(sorted(entries, key=lambda e: e["relpath"]), sort_keys=True)
    return hashlib.md5(listing.encode("utf-8"), usedforsecurity=False).hexdigest() + ".dir"


def _file_problems(path: Path, md5: str) -> Iterator[str]:
    if not path.is_file():
        yield f"{path}: missing (dvc.lock records md5 {md5})"
    elif (actual := md5_of(path)) != md5:
        yield f"{path}: md5 {actual} differs from dvc.lock's {md5}"


def _folder_problems(path: Path, md5: str, objects: Path) -> Iterator[str]:
    listing = objects / md5[:2] / md5[2:]
    if listing.is_file() and md5_of(listing) == md5.removesuffix(".dir"):
        for entry in json.loads(listing.read_text()):
            yield from _file_problems(path / entry["relpath"], entry["md5"])
        return
    # No sound listing in the cache: an output with `cache: false` (reports/train) never has one, and
    # a damaged listing is named among the cache objects. The folder is hashed as DVC hashes it, so a
    # healthy run passes and a changed folder is named (which of its files changed needs the listing).
    if not path.is_dir():
        yield f"{path}: missing (dvc.lock records md5 {md5})"
    elif (actual := dir_md5(path)) != md5:
        yield f"{path}: folder md5 {actual} differs from dvc.lock's {md5} (a file in it was changed, added or removed)"


def lock_problems(root: Path, objects: Path) -> Iterator[str]:
    """Outputs in dvc.lock whose workspace bytes differ from the md5 recorded there."""
    lock_path = root / DVC_LOCK_FILE
    if not lock_path.is_file():
        return
    lock = yaml.safe_load(lock_path.read_text()) or {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            path, md5 = root / out["path"], str(out.get("md5", ""))
            if md5.endswith(".dir"):
                yield from _folder_problems(path, md5, objects)
            elif md5:
                yield from _file_problems(path, md5)


def shard_problems(shards: Path) -> Iterator[str]:
    """Files of the shards folder that differ from manifest.json (size or sha256)."""
    if not (shards / MANIFEST_FILE).is_file():
        return
    try:
        manifest = read_manifest(shards)
    except ShardsError as err:
        yield str(err)
        return
    records = [record for split in manifest["splits"].values() for entry in split["shards"]
               for record in (entry, entry["labels"])]
    records += list((manifest.get("stats") or {}).values())  # mean.npy, pca.json
    for record in records:
        try:
            check_file(shards / record["file"], record, verify=True)
        except ShardsError as err:
            yield str(err)


def verify(root: Path, shards: Path, repair: bool) -> int:
    """Print one line per problem; repair deletes damaged cache objects. Returns the exit code."""
    problems = 0
    objects = cache_dir(root) if (root / ".dvc").is_dir() else None
    if objects is not None and objects.is_dir():
        for obj, actual in bad_cache_objects(objects):
            problems += 1
            action = "removed" if repair else "run with --repair to remove it"
            if repair:
                obj.unlink()
            print(f"{obj}: DVC cache object damaged (its bytes hash to {actual}); {action}")
    if objects is not None:
        for line in lock_problems(root, objects):
            problems += 1
            print(line)
    for line in shard_problems(shards):
        problems += 1
        print(line)
    if not problems:
        print("verify: outputs, shards and DVC cache match their recorded hashes")
        return 0
    hint = "now run `dvc repro` (rebuilds what the removed objects held) and `dvc checkout`" if repair else \
        "run `python -m alexnet.verify --repair`, then `dvc repro`"
    print(f"verify: {problems} problem(s); {hint}", file=sys.stderr)
    return 1
