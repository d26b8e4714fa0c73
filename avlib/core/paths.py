"""Where things live. Relative paths are taken from the repository root, so a notebook
gives the same answer whether Jupyter started it in notebooks/ or papermill in the root."""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]         # avlib/core/paths.py -> the repository
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


def default_cache_dir(dataset: str, frames: int, size: int, fps: float, n_mfcc: int, mfcc_steps: int,
                      data_dir: str | os.PathLike = "") -> Path:
    """The cache folder for one corpus and preprocessing configuration:
    cache/<dataset>[-<data folder>]-T<frames>-<size>px-... The data folder's name is added when
    it says more than the dataset does (data/synthetic-audioswap, data/my_folder_corpus), so two
    corpora of one dataset never share a cache (their clip paths can coincide)."""
    folder = Path(data_dir).name if data_dir else ""
    tag = dataset
    if folder and folder not in (dataset, "data", "FakeAVCeleb_v1.2"):
        tag = f"{dataset}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', folder)}"
    return resolve("cache") / f"{tag}-T{frames}-{size}px-{fps:g}fps-mfcc{n_mfcc}x{mfcc_steps}"


class DiskFullError(OSError):
    """A write failed because the disk (ENOSPC) or the quota (EDQUOT) is full. The message says
    how many bytes were needed and where; the previous complete file is untouched."""


DISK_FULL_ERRNOS = (errno.ENOSPC, getattr(errno, "EDQUOT", 122))


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` is an OSError for a full disk or quota."""
    return isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS


def disk_full_error(path: str | os.PathLike, needed: int, error: OSError, *, at_most: bool = False) -> DiskFullError:
    """The DiskFullError for a failed write of `needed` bytes to `path` (`at_most`: an upper bound)."""
    path = Path(path)
    what = "no space left on the device" if error.errno == errno.ENOSPC else "disk quota exceeded"
    try:
        free = f" ({shutil.disk_usage(path.parent).free:,} bytes free there)"
    except OSError:
        free = ""
    return DiskFullError(error.errno, f"{what}: writing {path}, needed {'up to ' if at_most else ''}{needed:,} bytes "
                                      f"in {path.parent}{free}; free space there (or point results_dir / cache_dir "
                                      f"elsewhere) and rerun: finished work is kept and the run resumes")


_UMASK_LOCK = threading.Lock()


def umask_mode(mode: int = 0o666) -> int:
    """`mode` less the process's umask: the permissions open() gives a new file (0o666) or
    mkdir a new folder (0o777). Temporary files and folders (mkstemp, mkdtemp) are private
    (0600, 0700); what is renamed into place gets these instead, so that a collaborator on a
    shared file system reads results, caches and checkpoints as the user's umask allows."""
    with _UMASK_LOCK:           # umask can only be read by setting it
        umask = os.umask(0o077)
        os.umask(umask)
    return mode & ~umask


def atomic_write_bytes(path: str | os.PathLike, data) -> None:
    """Write `data` (bytes or a buffer) to `path` through a temporary file in the same folder
    and os.replace, so `path` holds its old content or all of `data`, never a part; it gets
    the permissions the umask gives a new file.

    Raises DiskFullError (the temporary file removed) when the disk or the quota is full."""
    path = Path(path)
    view = memoryview(data).cast("B")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, umask_mode())
            _write_all(fd, view)
            os.fsync(fd)       # a full disk can surface only here (delayed allocation, NFS)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if is_disk_full(e):
            raise disk_full_error(path, len(view), e) from e
        raise


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]


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


def swap_folder(staging: Path, target: Path) -> None:
    """Put the complete folder `staging` in place of `target` (which may not exist): the old one
    is renamed aside first and removed only once the new one is in place."""
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old)
    else:
        staging.rename(target)
