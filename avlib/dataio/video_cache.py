"""Whole videos at the model's frame rate and size, with a per-frame fake mask: the cache that
temporal localisation trains and evaluates on.

The clip cache (avlib.dataio.cache) keeps one window per video, which is what a clip
classifier needs. Localisation needs every frame of a video and which of them are fake, so
each video is decoded once, whole, on the model's time grid, and kept with its mask:

    cache_dir/manifest.json          fps, size, sample_rate (a cache holds one setting)
    cache_dir/videos/<clip_id>.npz   video uint8 (T, H, W, 3), audio int16 (N,),
                                     mask uint8 (T, 2): frame t's visual and audio fake flags
    cache_dir/index.csv              the indexer's records that are cached, with clip_id and frames
    cache_dir/failures.csv           the records of files that could not be decoded, with the reason

Each entry keeps a fingerprint of its source (size, modification time, fake periods): a video
regenerated or relabelled since is decoded again, never reused with other labels.

Frame t covers [t / fps, (t + 1) / fps); it is fake in a modality when its centre lies inside
one of that modality's fake periods. Entries are written atomically (temporary file, then
rename), so a killed run leaves only complete videos; a rerun decodes only what is missing.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import av
import numpy as np
import pandas as pd

from avlib.core.paths import is_disk_full, read_json, umask_mode, write_csv, write_json
from avlib.core.progress import ProgressLines
from avlib.dataio.cache import CacheError, clip_id
from avlib.dataio.decode import decode_clip, open_media
from avlib.dataio.features import waveform_to_int16
from avlib.dataio.preprocess import worker_context

MODALITIES = ("visual", "audio")


def frame_mask(periods: list[tuple[float, float]], n_frames: int, fps: float) -> np.ndarray:
    """(n_frames,) bool: frames whose centre lies in any [start, end) period (seconds)."""
    centres = (np.arange(n_frames) + 0.5) / fps
    mask = np.zeros(n_frames, bool)
    for start, end in periods:
        mask |= (centres >= start) & (centres < end)
    return mask


def periods_of(record, modality: str) -> list[tuple[float, float]]:
    """A record's fake periods of one modality (its JSON column), as (start, end) tuples."""
    text = record.get(f"{modality}_fake_periods", "") or "[]"
    return [(float(a), float(b)) for a, b in json.loads(text)]


def open_video_cache(cache_dir: str | Path, settings: dict) -> Path:
    """Create or reopen `cache_dir` for `settings` (fps, size, sample_rate); raises CacheError
    when it holds videos made with other settings."""
    cache_dir = Path(cache_dir)
    (cache_dir / "videos").mkdir(parents=True, exist_ok=True)
    manifest = {k: settings[k] for k in ("fps", "size", "sample_rate")}
    path = cache_dir / "manifest.json"
    if path.exists() and read_json(path) != manifest:
        raise CacheError(f"{cache_dir} holds videos made with {read_json(path)}, not {manifest}: use another "
                         f"cache_dir or delete it")
    write_json(path, manifest)
    for stale in (cache_dir / "videos").glob(".tmp-*"):
        stale.unlink()
    return cache_dir


def cache_videos(records: pd.DataFrame, data_dir: str | Path, cache_dir: str | Path, *, fps: float, size: int,
                 sample_rate: int = 16000, progress: bool = True, workers: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decode every record's video whole (one pass) into the cache, `workers` videos at a time in
    worker processes; returns (index, failures) in the records' order and writes both as CSV. A
    file that cannot be decoded is listed with its reason and the others go on; a full disk stops
    the run, keeping the videos cached so far."""
    settings = dict(fps=float(fps), size=int(size), sample_rate=int(sample_rate))
    cache_dir = open_video_cache(cache_dir, settings)
    jobs = [(record, str(data_dir), str(cache_dir), settings) for record in records.to_dict("records")]
    results: list = [None] * len(jobs)
    todo = [i for i, job in enumerate(jobs) if not _is_cached(job)]      # the rest is read here, not decoded
    bar = ProgressLines("decode videos", len(jobs), enabled=progress)
    with contextlib.ExitStack() as stack:
        if workers > 1 and len(todo) > 1:
            pool = ProcessPoolExecutor(min(workers, len(todo)), mp_context=worker_context())
            # on an error (a full disk) the queued videos are dropped, not decoded before it surfaces
            stack.callback(pool.shutdown, wait=True, cancel_futures=True)
            decoded = pool.map(_cache_one, [jobs[i] for i in todo], chunksize=4)
        else:
            decoded = map(_cache_one, [jobs[i] for i in todo])
        for i, result in zip(todo, decoded):
            results[i] = result
            bar.update()
    for i in sorted(set(range(len(jobs))) - set(todo)):
        results[i] = _cache_one(jobs[i])
        bar.update()
    rows = [row for row, _ in results if row is not None]
    failures = [failure for row, failure in results if row is None]
    index = pd.DataFrame(rows)
    fails = pd.DataFrame(failures, columns=list(records.columns) + ["reason"])
    write_csv(cache_dir / "index.csv", index)
    write_csv(cache_dir / "failures.csv", fails)
    return index, fails


def _is_cached(job) -> bool:
    """Whether the job's video is in the cache with the fingerprint of its file and labels."""
    record, data_dir, cache_dir, _ = job
    try:
        mark = fingerprint(Path(data_dir) / record["path"], record)
    except Exception:  # noqa: BLE001 - a missing file or malformed fake periods: _cache_one reports it
        return False
    return stored_fingerprint(Path(cache_dir) / "videos" / f"{clip_id(record['path'])}.npz") == mark


def _cache_one(job) -> tuple[dict | None, dict | None]:
    """(index row, None) for a video cached (or already there), (None, failure row) for one that
    cannot be decoded."""
    record, data_dir, cache_dir, settings = job
    cid = clip_id(record["path"])
    target = Path(cache_dir) / "videos" / f"{cid}.npz"
    source = Path(data_dir) / record["path"]
    try:
        mark = fingerprint(source, record)
        if stored_fingerprint(target) != mark:        # new, or its file or labels changed since
            _write_entry(target, source, record, settings, mark)
        with np.load(target) as entry:
            frames = int(entry["mask"].shape[0])
        return {**record, "clip_id": cid, "frames": frames}, None
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - one unusable file must not stop the others; it is listed
        if is_disk_full(e):
            raise           # no fault of the file: stop, keeping the videos cached so far
        return None, {**record, "reason": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}


def fingerprint(path: Path, record: dict) -> str:
    """What a cached entry was made from: the file's size and modification time and the
    record's fake periods. An entry whose fingerprint differs (the corpus was regenerated, the
    labels changed) is decoded again rather than reused with other labels."""
    stat = path.stat()
    return json.dumps([stat.st_size, stat.st_mtime_ns] + [periods_of(record, m) for m in MODALITIES])


def stored_fingerprint(target: Path) -> str | None:
    if not target.exists():
        return None
    try:
        with np.load(target) as entry:
            return str(entry["source"]) if "source" in entry.files else None
    except (OSError, ValueError):
        return None             # unreadable: made again


def _write_entry(target: Path, path: Path, record: dict, settings: dict, mark: str) -> None:
    fps = settings["fps"]
    video, audio = decode_whole(path, fps=fps, size=settings["size"], sample_rate=settings["sample_rate"])
    t = len(video)
    if t < 2:
        raise ValueError(f"only {t} decodable frame(s)")
    mask = np.stack([frame_mask(periods_of(record, m), t, fps) for m in MODALITIES], axis=1).astype(np.uint8)
    audio = waveform_to_int16(audio[: int(round(t / fps * settings["sample_rate"]))])
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, video=video, audio=audio, mask=mask, source=np.array(mark))
        os.chmod(tmp, umask_mode())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def decode_whole(path: Path, *, fps: float, size: int, sample_rate: int, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Every frame of a file on the grid of `fps` (uint8 (T, size, size, 3)) and its audio (float32
    at `sample_rate`), in one decoding pass. The length is the container's own duration (AV-
    Deepfake1M's metadata derives one from a frame count at 25 fps, which is not every file's
    rate). Raises DecodeError, or ValueError for a file that states no duration."""
    duration = media_duration(path)
    if not duration:
        raise ValueError("the file states no duration")
    clip = decode_clip(path, frames=int(math.ceil(duration * fps - 1e-6)), size=size, fps=fps,
                       sample_rate=sample_rate, offset=0.0, threads=threads)
    return clip.video[:int(clip.valid_frames)], clip.audio


def media_duration(path: Path) -> float | None:
    """The container's duration in seconds (None when it states none)."""
    container = open_media(path)
    try:
        return container.duration / av.time_base if container.duration else None
    finally:
        container.close()


def read_video_entry(cache_dir: str | Path, cid: str) -> dict:
    """video (T, H, W, 3) uint8, audio (N,) float32 in [-1, 1], mask (T, 2) uint8 of one video."""
    with np.load(Path(cache_dir) / "videos" / f"{cid}.npz") as entry:
        return {"video": entry["video"], "audio": entry["audio"].astype(np.float32) / 32768.0, "mask": entry["mask"]}


def read_video_index(cache_dir: str | Path) -> pd.DataFrame:
    path = Path(cache_dir) / "index.csv"
    if not path.is_file():
        raise CacheError(f"no index.csv in {cache_dir}: cache the videos first (avlib.dataio.video_cache.cache_videos)")
    return pd.read_csv(path, dtype={"identity": str, "path": str, "clip_id": str}, keep_default_na=False)
