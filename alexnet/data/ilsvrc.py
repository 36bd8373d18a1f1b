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
Paths, as the index and the quality report show them (each member under its own path in the tar):
    ILSVRC2012_img_train.tar/n01440764.tar/n01440764_10026.JPEG
    ILSVRC2012_img_val.tar/ILSVRC2012_val_00000001.JPEG
Every member that is not a folder is returned: a symlink, hard link, device or pipe member with the
reason it is not read, and the images of a second tar of one class (n01440764.tar and
sub/n01440764.tar) reported by name, the first indexed (see _one_tar_per_class).
"""

from __future__ import annotations

import io
import re
import tarfile
from dataclasses import replace
from pathlib import Path, PurePosixPath

from alexnet.core.layout import TRAIN, VAL
from alexnet.data.sources import OS_ARTIFACT, ClassInfo, FoundFile, display_path, is_os_artifact, is_utf8

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
RELEASE_FILES = (TRAIN_TAR, VAL_TAR, DEVKIT)
GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"
META = "data/meta.mat"
LINK_IN_TAR = "link inside tar"
CLASS_TAR_TWICE = "class tar twice"
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


def _not_a_file(info: tarfile.TarInfo, rel: str, split: str) -> FoundFile:
    # A link member holds no bytes of its own, and every image is read as a byte range of the tar: a
    # hard link's target is an earlier member (indexed under its own name), a symlink's may lie
    # outside the tar. So a link is reported, as a device or pipe member is, never followed.
    if info.issym() or info.islnk():
        kind = "symlink" if info.issym() else "hard link"
        detail = f"a {kind} inside the tar (-> {display_path(info.linkname)}), not an image file"
        return FoundFile(display_path(rel), split, None, detail, reason=LINK_IN_TAR)
    return FoundFile(display_path(rel), split, None, "a device or pipe inside the tar, not an image file",
                     reason="not a regular file")


def _entries(archive: tarfile.TarFile, base: int, prefix: str, split: str) -> list[FoundFile]:
    """Every member of a tar whose data starts at `base` (folders are not files), its class not yet
    decided: a regular file located by (offset, size), anything else reported with its reason."""
    found = []
    for info in archive:
        rel = f"{prefix}/{info.name}"
        if info.isfile():
            offset = base + info.offset_data
            found.append(_odd(rel, split, offset, info.size) or FoundFile(rel, split, None, None, offset, info.size))
        elif not info.isdir():
            found.append(_not_a_file(info, rel, split))
    return found


ClassTar = tuple[str, list[FoundFile]]  # (member name of a per-class tar, its entries)


def _class_tars(path: Path, outer: tarfile.TarFile, found: list[FoundFile]) -> dict[str, list[ClassTar]]:
    """{wnid: the tars of that class} of the train tar at `path`; its other members are appended to
    `found` with the reason they are not images."""
    per_class: dict[str, list[ClassTar]] = {}
    for info in outer:
        rel = f"{TRAIN_TAR}/{info.name}"
        if not info.isfile():
            if not info.isdir():
                found.append(_not_a_file(info, rel, TRAIN))
            continue
        if not is_utf8(info.name):  # as a class folder so named of the extracted tree
            raise ValueError(f"{path}: {display_path(info.name)}: a member whose name is not UTF-8")
        odd = _odd(rel, TRAIN, info.offset_data, info.size)
        if odd is not None:
            found.append(odd)
            continue
        if PurePosixPath(info.name).suffix != ".tar":
            found.append(FoundFile(rel, TRAIN, None, "unknown class: not a per-class tar", info.offset_data, info.size))
            continue
        try:
            with tarfile.open(fileobj=outer.extractfile(info), mode="r:") as inner:
                entries = _entries(inner, info.offset_data, rel, TRAIN)
        except tarfile.TarError as err:
            raise ValueError(f"{path}: {info.name} is not an uncompressed tar ({err})") from None
        per_class.setdefault(PurePosixPath(info.name).stem, []).append((info.name, entries))
    return per_class


def _one_tar_per_class(path: Path, wnid: str, tars: list[ClassTar]) -> list[FoundFile]:
    """The entries of the class, labelled: those of its tar in the release's place (<wnid>.tar at the
    top; else the first by name), and those of any other tar of the class reported, each by name.

    The release has one tar per class; a second (a repack, a copy, a partial download) may repeat
    the first's images or hold others, which cannot be told apart without decoding both. Indexing
    both could train on each image twice, and dropping one silently loses its images (both
    happened before: the later tar replaced the earlier, under the wrong name). So one is indexed
    and every image of the others is in the quality report, which data.on_bad_image=fail stops on.
    """
    (kept_name, kept), *others = sorted(tars, key=lambda t: (t[0].count("/"), t[0]))
    # ImageNet's labels are positions among its sorted wnids: a missing class would shift every
    # label after it (alexnet/data/sources.py refuses an empty class folder of the extracted tree too).
    if not any(f.offset is not None and not f.ignored for f in kept):
        raise ValueError(f"{path}: {kept_name} holds no images; ImageNet's labels are positions "
                         "among its sorted wnids, so a missing class would shift every label after it")
    out = [replace(f, wnid=wnid) if f.problem is None else f for f in kept]
    for name, entries in others:
        detail = (f"a second tar of class {wnid}: {TRAIN_TAR}/{kept_name} is indexed, {name} is not; "
                  "the release has one tar per class, so merge them or remove one")
        out += [replace(f, problem=detail, reason=CLASS_TAR_TWICE) if f.problem is None else f for f in entries]
    return out


def scan(root: Path) -> tuple[list[ClassInfo], list[FoundFile]]:
    """The classes and every image of the release at `root`, located inside the tars."""
    for name in RELEASE_FILES:
        if not (root / name).is_file():
            raise FileNotFoundError(f"data.root {str(root)!r}: no {name} (data.layout=tars reads the "
                                    f"official release: {', '.join(RELEASE_FILES)})")
    leaves, truth = read_devkit(root / DEVKIT)
    words = dict(leaves.values())
    found: list[FoundFile] = []
    with tarfile.open(root / TRAIN_TAR, "r:") as outer:
        per_class = _class_tars(root / TRAIN_TAR, outer, found)
    if not per_class:
        raise FileNotFoundError(f"{root / TRAIN_TAR}: no per-class tars inside")
    wnids = sorted(per_class)
    for wnid in wnids:
        found += _one_tar_per_class(root / TRAIN_TAR, wnid, per_class[wnid])
    classes = [ClassInfo(i, w, words.get(w, w)) for i, w in enumerate(wnids)]
    with tarfile.open(root / VAL_TAR, "r:") as val:
        val_entries = _entries(val, 0, VAL_TAR, VAL)
    for f in val_entries:
        if f.problem is None:
            wnid, problem = _val_class(PurePosixPath(f.path).name, truth, leaves, set(wnids))
            f = replace(f, wnid=wnid, problem=problem)
        found.append(f)
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
