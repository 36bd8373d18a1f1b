"""ILSVRC-2012 as it is downloaded, read inside its tars: nothing is ever extracted.

The release is three files in one folder (data.root):
    ILSVRC2012_img_train.tar       a tar of per-class tars n01440764.tar, ... (uncompressed),
                                   each holding that class's training JPEGs
    ILSVRC2012_img_val.tar         the validation JPEGs, flat: ILSVRC2012_val_00000001.JPEG, ...
    ILSVRC2012_devkit_t12.tar.gz   data/ILSVRC2012_validation_ground_truth.txt: one ILSVRC2012_ID
                                   per line, in val-file order (line i labels ILSVRC2012_val_<i>);
                                   data/meta.mat: `synsets`, mapping ILSVRC2012_ID to WNID and
                                   words; the classes are its leaves (num_children == 0)
A member of an uncompressed tar is stored as one contiguous byte range of the tar file, and a
member of an inner tar is a byte range of the inner tar, itself a range of the outer one. So
each image is located by (offset, size) in the outer tar file, read with one seek and one read
(`read_member`), in any order, from any process.

Classes are the per-class tars, sorted, and their names the synsets' words: the same labels
and names as the extracted tree (train/<wnid>/) with LOC_synset_mapping.txt.
Paths, as the index and the quality report show them:
    ILSVRC2012_img_train.tar/n01440764.tar/n01440764_10026.JPEG
    ILSVRC2012_img_val.tar/ILSVRC2012_val_00000001.JPEG
"""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path, PurePosixPath

from alexnet.core.layout import TRAIN, VAL
from alexnet.data.sources import OS_ARTIFACT, ClassInfo, FoundFile, display_path, is_os_artifact, is_utf8

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
RELEASE_FILES = (TRAIN_TAR, VAL_TAR, DEVKIT)
GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"
META = "data/meta.mat"
_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d+)\.JPEG$")


def is_release(root: Path) -> bool:
    """Whether `root` holds the three files of the official release."""
    return all((root / name).is_file() for name in RELEASE_FILES)


def read_member(archive: str | Path, offset: int, size: int) -> bytes:
    """The bytes of one member: `size` bytes at `offset` of the tar file `archive`."""
    with open(archive, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise OSError(f"{archive}: {size} bytes at offset {offset} expected, the file ends after {len(data)}")
    return data


def _devkit_file(devkit: Path, tar: tarfile.TarFile, name: str) -> bytes:
    # The devkit wraps data/ in a top folder (ILSVRC2012_devkit_t12/data/...): match the tail.
    for info in tar:
        if info.isfile() and (info.name == name or info.name.endswith("/" + name)):
            f = tar.extractfile(info)
            assert f is not None  # a regular file always has data
            return f.read()
    raise FileNotFoundError(f"{devkit}: no {name} inside")


def read_devkit(devkit: Path) -> tuple[dict[int, tuple[str, str]], list[int]]:
    """({ILSVRC2012_ID: (wnid, words)} of the leaf synsets, the val ground truth IDs in file order)."""
    from scipy.io import loadmat  # only the tar layout needs scipy

    with tarfile.open(devkit, "r:gz") as tar:
        meta_bytes = _devkit_file(devkit, tar, META)
    with tarfile.open(devkit, "r:gz") as tar:  # a gzip stream reads forward only: reopen
        truth_text = _devkit_file(devkit, tar, GROUND_TRUTH).decode()
    try:
        synsets = loadmat(io.BytesIO(meta_bytes), squeeze_me=True)["synsets"]
        leaves = {int(s["ILSVRC2012_ID"]): (str(s["WNID"]), str(s["words"]))
                  for s in synsets.reshape(-1) if int(s["num_children"]) == 0}
    except (KeyError, ValueError, TypeError, IndexError) as err:
        raise ValueError(f"{devkit}: {META} has no usable synsets (ILSVRC2012_ID, WNID, words, "
                         f"num_children): {err}") from None
    try:
        truth = [int(line) for line in truth_text.split()]
    except ValueError as err:
        raise ValueError(f"{devkit}: {GROUND_TRUTH}: {err}") from None
    return leaves, truth


def _members(archive: tarfile.TarFile, base: int) -> list[tuple[str, int, int]]:
    """(name, absolute offset, size) of the regular files of a tar whose data starts at `base`."""
    return [(info.name, base + info.offset_data, info.size) for info in archive if info.isfile()]


def _odd(rel: str, split: str, offset: int, size: int) -> FoundFile | None:
    """The FoundFile of a member that is an OS artifact (a tar made on a Mac holds ._* files) or
    has a name that is not UTF-8, as alexnet/data/sources.py treats such files of a tree; else None."""
    if is_os_artifact(PurePosixPath(rel).name):
        return FoundFile(display_path(rel), split, None, "ignored by name", offset, size, OS_ARTIFACT, True)
    if not is_utf8(rel):
        return FoundFile(display_path(rel), split, None, "the index stores names as UTF-8 text", offset, size,
                         "name not UTF-8")
    return None


def scan(root: Path) -> tuple[list[ClassInfo], list[FoundFile]]:
    """The classes and every image of the release at `root`, located inside the tars."""
    for name in RELEASE_FILES:
        if not (root / name).is_file():
            raise FileNotFoundError(f"data.root {str(root)!r}: no {name} (data.layout=tars reads the "
                                    f"official release: {', '.join(RELEASE_FILES)})")
    leaves, truth = read_devkit(root / DEVKIT)
    words = dict(leaves.values())
    found: list[FoundFile] = []
    per_class: dict[str, list[tuple[str, int, int]]] = {}
    with tarfile.open(root / TRAIN_TAR, "r:") as outer:
        for info in outer:
            if not info.isfile():
                continue
            inner_name = PurePosixPath(info.name)
            rel = f"{TRAIN_TAR}/{info.name}"
            if not is_utf8(info.name):  # as a class folder so named of the extracted tree
                raise ValueError(f"{root / TRAIN_TAR}: {display_path(info.name)}: a member whose name is not UTF-8")
            odd = _odd(rel, TRAIN, info.offset_data, info.size)
            if odd is not None:
                found.append(odd)
                continue
            if inner_name.suffix != ".tar":
                found.append(FoundFile(rel, TRAIN, None, "unknown class: not a per-class tar",
                                       info.offset_data, info.size))
                continue
            fileobj = outer.extractfile(info)
            try:
                with tarfile.open(fileobj=fileobj, mode="r:") as inner:
                    per_class[inner_name.stem] = _members(inner, info.offset_data)
            except tarfile.TarError as err:
                raise ValueError(f"{root / TRAIN_TAR}: {info.name} is not an uncompressed tar ({err})") from None
    if not per_class:
        raise FileNotFoundError(f"{root / TRAIN_TAR}: no per-class tars inside")
    wnids = sorted(per_class)
    for wnid in wnids:
        # ImageNet's labels are positions among its sorted wnids: a missing class would shift every
        # label after it (alexnet/data/sources.py refuses an empty class folder of the extracted tree too).
        if all(is_os_artifact(PurePosixPath(name).name) for name, _, _ in per_class[wnid]):
            raise ValueError(f"{root / TRAIN_TAR}: {wnid}.tar holds no images; ImageNet's labels are positions "
                             "among its sorted wnids, so a missing class would shift every label after it")
    classes = [ClassInfo(i, w, words.get(w, w)) for i, w in enumerate(wnids)]
    for wnid in wnids:
        for name, offset, size in per_class[wnid]:
            rel = f"{TRAIN_TAR}/{wnid}.tar/{name}"
            found.append(_odd(rel, TRAIN, offset, size) or FoundFile(rel, TRAIN, wnid, None, offset, size))
    with tarfile.open(root / VAL_TAR, "r:") as val:
        val_members = _members(val, 0)
    for name, offset, size in val_members:
        rel = f"{VAL_TAR}/{name}"
        odd = _odd(rel, VAL, offset, size)
        if odd is not None:
            found.append(odd)
            continue
        wnid, problem = _val_class(PurePosixPath(name).name, truth, leaves, set(wnids))
        found.append(FoundFile(rel, VAL, wnid, problem, offset, size))
    return classes, found


def _val_class(name: str, truth: list[int], leaves: dict[int, tuple[str, str]], known: set[str]
               ) -> tuple[str | None, str | None]:
    match = _VAL_NAME.match(name)
    if match is None:
        return None, f"unknown class: {name!r} is not named ILSVRC2012_val_<number>.JPEG"
    number = int(match.group(1))
    if not 1 <= number <= len(truth):
        return None, f"unknown class: {GROUND_TRUTH} has {len(truth)} lines, no line {number}"
    ilsvrc_id = truth[number - 1]
    if ilsvrc_id not in leaves:
        return None, f"unknown class: ILSVRC2012_ID {ilsvrc_id} is not a leaf synset of {META}"
    wnid = leaves[ilsvrc_id][0]
    if wnid not in known:
        return None, f"unknown class: {wnid!r} (ILSVRC2012_ID {ilsvrc_id}) has no per-class tar in {TRAIN_TAR}"
    return wnid, None
