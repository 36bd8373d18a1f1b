"""Checkpoints: written atomically, read with weights_only=True (no pickled code runs on load)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from alexnet.atomic import atomic_path


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` to a temporary file and rename it over `path`: a kill leaves the old one."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by save_checkpoint; tensors, numbers, strings and containers only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint there")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or foreign files
        raise ValueError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from err


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
