"""Where things live. Relative paths are taken from the repository root, so a notebook
gives the same answer whether Jupyter started it in notebooks/ or papermill in the root."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"


def resolve(path: str | os.PathLike) -> Path:
    """Return `path` as an absolute Path; a relative one is taken from the repository root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


def portable(path: str | os.PathLike) -> str:
    """`path` relative to the repository root when it lies inside it (what results files record),
    else absolute."""
    p = resolve(path).resolve()
    try:
        return p.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(p)


def run_dir(results_dir: str | os.PathLike, run_name: str) -> Path:
    """Return (and create) results/<run_name>/."""
    d = resolve(results_dir) / run_name
    d.mkdir(parents=True, exist_ok=True)
    return d


def default_cache_dir(dataset: str, frames: int, size: int, fps: float, n_mfcc: int, mfcc_steps: int) -> Path:
    """The cache folder for one preprocessing configuration: cache/<dataset>-T<frames>-<size>px-..."""
    return resolve("cache") / f"{dataset}-T{frames}-{size}px-{fps:g}fps-mfcc{n_mfcc}x{mfcc_steps}"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj) -> None:
    """Write `obj` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=_plain) + "\n").encode())


def write_csv(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame as CSV, atomically."""
    atomic_write_bytes(path, frame.to_csv(index=False).encode())


def read_json(path: str | os.PathLike):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _plain(obj):
    """JSON fallback for numpy scalars and Paths."""
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
