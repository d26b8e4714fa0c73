"""One writer per folder. 01_preprocess (its cache and run folder), 03_train and 04_evaluate (the
run folder) hold a lock while they write; a second writer stops at once with a message naming
the holder. Readers (05_plots, avlib.predict) take none.

The lock is filelock's SoftFileLock: a marker file created exclusively (O_CREAT | O_EXCL). Unlike
flock, that works between hosts on a shared file system (NFS, Lustre, GPFS), where flock may be
missing or local to each client. A marker left by a killed process on this host is recognised
(its PID is gone, or belongs to a process started later) and taken over. A holder on another
host cannot be probed from here: the message says so, and which files to delete if it is gone.
Beside the marker, a JSON record says who holds the lock: host, PID, when that process
started, stage, notebook and command line.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import psutil
from filelock import SoftFileLock, Timeout

from avlib.core.paths import write_json

LOCK_STEM = ".avlib-writer"


class LockedError(RuntimeError):
    """Another process is writing to the folder; the message names it and what to do."""


def lock_files(folder: str | os.PathLike, part: str = "") -> tuple[Path, Path]:
    """(marker, record) paths of the writer lock of `folder` (`part` names a lock of one part of it)."""
    stem = LOCK_STEM + (f"-{part}" if part else "")
    return Path(folder) / f"{stem}.lock", Path(folder) / f"{stem}.json"


def holder_record(stage: str) -> dict:
    """Who this process is: host, pid, process start time, lock time, stage, notebook, command."""
    me = psutil.Process()
    in_kernel = "ipykernel" in sys.modules
    try:   # a notebook kernel's own command line is only `ipykernel_launcher -f ...`; its parent says more
        command = ((in_kernel and me.parent()) or me).cmdline()
    except psutil.Error:
        command = sys.argv
    return {"host": socket.gethostname(), "pid": os.getpid(), "process_started": _iso(me.create_time()),
            "locked_at": _iso(time.time()), "stage": stage,
            "notebook": os.environ.get("JPY_SESSION_NAME") or (f"notebooks/{stage}.ipynb" if in_kernel else ""),
            "command": " ".join(command)[:300]}


@contextmanager
def writer_lock(folder: str | os.PathLike, stage: str, *, part: str = "", timeout: float = 0.0,
                enabled: bool = True, log=print):
    """Hold the writer lock of `folder` (created if missing) while the body runs; yields this
    holder's record (None when enabled=False: a process that writes nothing, e.g. a DDP rank > 0).

    Waits up to `timeout` seconds for another holder to finish (0: not at all). Raises
    LockedError naming the holder when the lock stays taken, NotADirectoryError when `folder`
    is a file. A lock left by a dead process on this host is taken over, with a note to `log`."""
    if not enabled:
        yield None
        return

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    marker, record_path = lock_files(folder, part)
    lock = SoftFileLock(marker, timeout=timeout, blocking=timeout > 0)
    try:
        lock.acquire()
    except Timeout:
        raise LockedError(_held_message(folder, lock, record_path, stage)) from None
    record = {}
    try:
        record = holder_record(stage)
        left = read_record(record_path)     # a holder that finished removed its record: this one died
        if left:
            log(f"note: took over the writer lock of {folder} from {describe(left)}; that process is no "
                f"longer running (killed?). Files it finished are kept; a half-written one is ignored.")
        write_json(record_path, record)
        yield record
    finally:
        try:
            if record and (read_record(record_path) or {}).get("pid") == record["pid"]:
                record_path.unlink(missing_ok=True)
        finally:
            lock.release()


def read_record(path: Path) -> dict | None:
    """The holder record at `path`, or None when absent or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def describe(record: dict) -> str:
    """One line naming a holder: stage, notebook, host, PID, start time, command."""
    where = f" (notebook {record['notebook']})" if record.get("notebook") else ""
    return (f"{record.get('stage', '?')}{where} on host {record.get('host', '?')}, PID {record.get('pid', '?')}, "
            f"process started {record.get('process_started', '?')}, writing since {record.get('locked_at', '?')}, "
            f"command `{record.get('command', '?')}`")


def _held_message(folder: Path, lock, record_path: Path, stage: str) -> str:
    record = read_record(record_path)
    for _ in range(20):      # the holder may have created its marker but not yet its record
        if record and record.get("pid") == lock.pid:
            break
        time.sleep(0.05)
        record = read_record(record_path)
    known = bool(record) and record.get("pid") == lock.pid
    holder = describe(record) if known else f"PID {lock.pid or '?'} (no details recorded)"
    text = (f"{stage} cannot write to {folder}: another process is writing there, {holder}. Two writers "
            f"would mix their files (one would resume from the other's checkpoint). Wait for it to finish "
            f"or stop it; to run both, give this one another run_name (or cache_dir).")
    if known and record.get("host") != socket.gethostname():
        return text + (f" That process runs on another host, which this host ({socket.gethostname()}) cannot "
                       f"check: if it is no longer running there, delete {lock.lock_file} and {record_path}, "
                       f"then rerun.")
    if known:
        return text + f" It runs on this host: `kill {record['pid']}` stops it (a stopped run can be resumed)."
    return text + f" If no process is writing there, delete {lock.lock_file} and rerun."


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")
