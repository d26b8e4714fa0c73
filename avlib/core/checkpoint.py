"""Checkpoints: written atomically, read with weights_only=True (never a pickle fallback)."""
from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import torch

from avlib.core.paths import atomic_write_bytes


class CheckpointError(RuntimeError):
    """A checkpoint file is truncated, corrupt, unsafe, or from another configuration."""


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """torch.save `state` (plain data and tensors only) to `path` atomically: `path` keeps its
    previous complete version until the new one is whole.

    Raises avlib.core.paths.DiskFullError, naming the bytes needed and the folder, when the disk or
    quota is full (no temporary file is left)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getbuffer())      # a view: no second copy of a 384 MB checkpoint


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint with weights_only=True.

    Raises FileNotFoundError if absent, CheckpointError if truncated, corrupt, or if it
    holds objects other than tensors and plain data (such a pickle is refused unrun).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused, it holds objects other than tensors and plain data "
                              f"({_first_line(e)})") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint ({_first_line(e)})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(state).__name__}")
    return state


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def load_state_dict(path: str | os.PathLike) -> dict:
    """A model state dict from a weights file (.pt/.pth, or the 'model' entry of a full checkpoint)."""
    state = load_checkpoint(path)
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return state
