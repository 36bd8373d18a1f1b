"""Weights and checkpoints: written atomically with a recorded sha256, verified before every load.

Each file gets a sidecar `<file>.sha256` in `sha256sum` format (so `sha256sum -c` checks it by
hand), written atomically after the file itself. A load hashes the file first and refuses it by
name if the sidecar is missing or does not match; only then does `torch.load(weights_only=True)`
read it (tensors, numbers, strings and containers: no pickled code runs on load).

Training checkpoints keep the previous epoch's file as `<file>.prev` (with its own sidecar): a
checkpoint that fails verification is set aside as `<file>.corrupt-<n>` and training resumes from
`.prev` (resume is exact, so the weights equal an unbroken run's), or starts over if that fails too.
The cost is a second checkpoint on disk per member.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from alexnet.core.atomic import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

SHA256_SUFFIX = ".sha256"
PREVIOUS_SUFFIX = ".prev"
CORRUPT_SUFFIX = ".corrupt-"


class IntegrityError(ValueError):
    """A file's bytes do not match its recorded sha256 (or none is recorded); the message names it."""


def sidecar(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SHA256_SUFFIX)


def previous(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + PREVIOUS_SUFFIX)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def recorded_sha256(path: str | Path) -> str | None:
    """The digest in `path`'s sidecar, or None if there is no readable one."""
    try:
        text = sidecar(path).read_text()
    except (OSError, UnicodeDecodeError):
        return None
    digest = text.split(maxsplit=1)[0] if text.strip() else ""
    return digest if len(digest) == 64 else None


def _record(path: Path, digest: str) -> None:
    atomic_write_text(sidecar(path), f"{digest}  {path.name}\n")


def verify_file(path: str | Path) -> None:
    """Raise IntegrityError naming `path` unless its bytes match the sha256 recorded beside it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    expected = recorded_sha256(path)
    if expected is None:
        raise IntegrityError(f"{path}: no recorded sha256 ({sidecar(path).name} missing or unreadable); "
                             f"refusing unverified weights: rerun the stage that writes it")
    actual = sha256_file(path)
    if actual != expected:
        raise IntegrityError(f"{path}: sha256 {actual[:12]}... does not match the recorded {expected[:12]}...; "
                             f"the file is damaged: rerun the stage that writes it")


def _save(path: Path, write: Callable[[IO[bytes]], None], before_replace: Callable[[], None] | None = None) -> None:
    with atomic_path(path) as tmp:
        # Through a Python file object, so a full disk surfaces as OSError(ENOSPC) behind torch's
        # 'enforce fail' and atomic_path turns it into a DiskFullError naming `path`.
        with open(tmp, "wb") as f:
            write(f)
        digest = sha256_file(tmp)
        if before_replace is not None:
            before_replace()
    _record(path, digest)


def save_weights(path: str | Path, obj: dict[str, Any]) -> None:
    """torch.save `obj` to `path` atomically, then record its sha256 beside it."""
    _save(Path(path), lambda f: torch.save(obj, f))


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` over `path` atomically and record its sha256; the old file becomes `.prev`.

    Order, so that a kill at any point leaves one verifiable checkpoint: the old file's digest is
    recorded for `.prev` first, then the old file is renamed to `.prev`, then the new file takes
    `path`, and last its sidecar is written (until then `path` fails verification and `.prev` is used).
    """
    path = Path(path)

    def keep_previous() -> None:
        digest = recorded_sha256(path)
        if path.exists() and digest is not None:
            _record(previous(path), digest)
            os.replace(path, previous(path))

    _save(path, lambda f: torch.save(state, f), keep_previous)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Verify `path` against its recorded sha256, then load it with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint there")
    verify_file(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # torch's message ends by suggesting weights_only=False, which would run whatever code the file
        # holds: this project never does that, and a file of its own never needs it.
        raise ValueError(f"{path}: not a weights file this project wrote: it holds pickled objects that a "
                         "weights-only load refuses (tensors, numbers, strings and containers only); it was "
                         "not loaded") from None
    except Exception as err:  # torch raises several types for corrupt or foreign files
        raise ValueError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from err


def set_aside(path: Path) -> Path:
    """Rename a refused file (and its sidecar) to `<file>.corrupt-<n>`, n the first free number."""
    n = 1
    while (target := path.with_name(f"{path.name}{CORRUPT_SUFFIX}{n}")).exists():
        n += 1
    os.replace(path, target)
    if sidecar(path).exists():
        os.replace(sidecar(path), sidecar(target))
    return target


def load_resumable(path: str | Path, name: str = "train") -> dict[str, Any] | None:
    """The newest verified checkpoint at `path` or its `.prev`, or None to start over.

    A file that fails verification or loading is set aside, and one log line says what happens next.
    """
    path = Path(path)
    refused: list[str] = []
    for candidate in (path, previous(path)):
        if not candidate.exists():
            continue
        try:
            state = load_checkpoint(candidate)
        except ValueError as err:  # IntegrityError, or bytes that match but do not load
            refused.append(f"{err} -> set aside as {set_aside(candidate).name}")
            continue
        if refused:
            log.warning("%s: checkpoint refused: %s; resuming from the previous epoch's checkpoint %s",
                        name, "; ".join(refused), candidate)
        return state
    if refused:
        log.warning("%s: checkpoint refused: %s; no verified checkpoint left, training starts over",
                    name, "; ".join(refused))
    return None


def rng_state() -> dict[str, Any]:
    """Every RNG the training step draws from (dropout uses torch's global generators)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
