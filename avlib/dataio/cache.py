"""The clip cache: one folder per clip (uint8 video, float32 MFCC, meta.json), created by an
atomic rename, so a run killed at any moment leaves only complete clips or hidden temporary
folders that the next run removes.

cache_dir/manifest.json   the settings every clip was made with
cache_dir/records.csv     every indexed clip with its split
cache_dir/clips/<id>/     video.lz4 uint8 frames (T, H, W, 3), LZ4-framed, read as a (3, T, H, W) view;
                          mfcc.npy (S, n_mfcc) float32; audio.npy int16 (N,) the window's mono
                          waveform at the manifest's sample rate (manifest "waveform": true); meta.json
                          (older caches hold video.npy instead; both are read)
cache_dir/failures/<id>.json, failures.csv   files that could not be used, with a reason
cache_dir/index.csv       one row per cached clip: its record, split, valid_frames, has_audio
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import shutil
import tempfile
from pathlib import Path

import lz4.frame
import numpy as np
import pandas as pd

from avlib.core.paths import disk_full_error, is_disk_full, read_json, umask_mode, write_csv, write_json

# The video is stored LZ4-compressed (lossless) in LZ4's frame format, which records the content
# size: a cut file is an error, never a short clip.
# Why: uint8 video alone is exactly a quarter of the seed's float32 video, so with the float32
# MFCC beside it a raw cache is about a quarter of the seed's bytes; LZ4 in its fast mode takes
# a few ms per full-size clip each way, several times less than zlib. LZ4's content checksum
# would add about a quarter to that cost and was left off: like the .npy files before, a bit
# flipped on disk is not detected. Readers memory-map the compressed
# file (the page cache is shared by all loader workers) and decompress it into a fresh array.
# Frames are stored as decoded, (T, H, W, 3): no transposing copy when writing, and the (3, T, H,
# W) view readers get has the memory order of channels_last_3d, which the model runs in.
VIDEO_FILE, LEGACY_VIDEO_FILE = "video.lz4", "video.npy"
AUDIO_FILE = "audio.npy"      # int16 mono waveform of the window (absent from older caches; see read_waveform)
LZ4_LEVEL = -8          # LZ4 fast mode, acceleration 8: faster to write than acceleration 1, for files
                        # barely larger

META_COLUMNS = ("valid_frames", "has_audio", "start_seconds", "lead_silence", "audio_rms_db")
MANIFEST_KEYS = ("frames", "size", "fps", "n_mfcc", "mfcc_steps", "sample_rate", "window", "skip_silence", "face_crop")


class CacheError(RuntimeError):
    """The cache is missing, made with other settings, or holds an unusable entry."""


def clip_id(path: str) -> str:
    """A stable, file-system-safe id for a clip path: readable stem plus a hash of the path."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(path).stem).strip("_")[:40] or "clip"
    return f"{slug}-{hashlib.sha1(path.encode()).hexdigest()[:10]}"


def open_cache(cache_dir: str | Path, settings: dict) -> Path:
    """Create or reopen `cache_dir` for `settings`; raises CacheError if it holds clips made
    with other settings (mixing them would silently change the data)."""
    cache_dir = Path(cache_dir)
    if cache_dir.exists() and not cache_dir.is_dir():
        raise CacheError(f"parameter `cache_dir` ({cache_dir}) is a file, not a folder")
    (cache_dir / "clips").mkdir(parents=True, exist_ok=True)
    (cache_dir / "failures").mkdir(exist_ok=True)
    manifest = {k: settings[k] for k in MANIFEST_KEYS}
    path = cache_dir / "manifest.json"
    if path.exists():
        old = read_json(path)
        diff = [k for k in MANIFEST_KEYS if old.get(k) != manifest[k]]
        if diff:
            raise CacheError(f"{cache_dir} was made with other settings ({', '.join(f'{k}: {old.get(k)!r} vs {manifest[k]!r}' for k in diff)}); "
                             f"use another `cache_dir` or delete it")
    else:
        write_json(path, {**manifest, "waveform": bool(settings.get("waveform", True))})
    for stale in (cache_dir / "clips").glob(".tmp-*"):   # left by a run killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    return cache_dir


def read_manifest(cache_dir: str | Path) -> dict:
    path = Path(cache_dir) / "manifest.json"
    if not path.is_file():
        raise CacheError(f"no clip cache at {cache_dir} (manifest.json missing): run notebooks/01_preprocess.ipynb first")
    return read_json(path)


def is_cached(cache_dir: Path, cid: str) -> bool:
    return (Path(cache_dir) / "clips" / cid / "meta.json").is_file()


def write_clip(cache_dir: Path, cid: str, video: np.ndarray, mfcc: np.ndarray, meta: dict,
               waveform: np.ndarray | None = None) -> None:
    """Write one clip atomically: a hidden temporary folder, renamed into place when complete.
    `waveform` (int16 mono at the manifest's sample rate, the window's seconds) is kept as
    audio.npy, so that audio features at any rate can be derived without decoding again."""
    clips = Path(cache_dir) / "clips"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{cid}-", dir=clips))
    try:
        tmp.chmod(umask_mode(0o777))             # mkdtemp's folder is private; the clip's should not be
        (tmp / VIDEO_FILE).write_bytes(compress_video(video))
        np.save(tmp / "mfcc.npy", np.ascontiguousarray(mfcc, dtype=np.float32))
        if waveform is not None:
            np.save(tmp / AUDIO_FILE, np.ascontiguousarray(waveform, dtype=np.int16))
        with open(tmp / "meta.json", "w", encoding="utf-8") as f:
            json.dump(meta, f)
        # No fsync: a killed process loses nothing the kernel already holds, and fsync tripled
        # the write time. After an OS crash a clip could be short; read_clip's shape check
        # (np.load refuses a file shorter than its header says) rejects it.
        final = clips / cid
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as e:
        if is_disk_full(e):      # stops the run (preprocess lists other errors as failures); clips done stay
            needed = sum(a.nbytes for a in (video, mfcc, waveform) if a is not None)
            raise disk_full_error(clips / cid, needed, e, at_most=True) from e
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    (Path(cache_dir) / "failures" / f"{cid}.json").unlink(missing_ok=True)


def write_failure(cache_dir: Path, cid: str, path: str, reason: str) -> None:
    write_json(Path(cache_dir) / "failures" / f"{cid}.json", {"path": path, "reason": reason})


def compress_video(video: np.ndarray) -> bytes:
    """LZ4 frame of a (3, T, H, W) uint8 video, stored frame-major (T, H, W, 3)."""
    frames = np.ascontiguousarray(np.moveaxis(np.asarray(video, dtype=np.uint8), 0, -1))   # free for decoded frames
    return lz4.frame.compress(memoryview(frames).cast("B"), compression_level=LZ4_LEVEL,
                             store_size=True, content_checksum=False)


def read_video(path: Path, shape: tuple) -> np.ndarray:
    """The (3, T, H, W) uint8 video of one cache entry: decompressed from a memory-mapped
    video.lz4 into a fresh, writable array (a channels-last view), or (older caches) a
    read-only memory map of video.npy."""
    if path.name == LEGACY_VIDEO_FILE:
        return np.load(path, mmap_mode="r")

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        raw = lz4.frame.decompress(mapped, return_bytearray=True)
    video = np.frombuffer(raw, np.uint8)
    if video.size != int(np.prod(shape)):
        raise ValueError(f"{video.size} bytes of video, not {int(np.prod(shape))}")
    return np.moveaxis(video.reshape(*shape[1:], shape[0]), -1, 0)


def read_clip(cache_dir: Path, cid: str, manifest: dict) -> tuple[np.ndarray, np.ndarray]:
    """(video uint8, mfcc float32 memory map) of one clip; raises CacheError if either is
    missing, cut short, or has the wrong shape or dtype."""
    folder = Path(cache_dir) / "clips" / cid
    want_v = (3, manifest["frames"], manifest["size"], manifest["size"])
    want_a = (manifest["mfcc_steps"], manifest["n_mfcc"])
    video_path = folder / VIDEO_FILE
    if not video_path.is_file() and (folder / LEGACY_VIDEO_FILE).is_file():
        video_path = folder / LEGACY_VIDEO_FILE
    try:
        video = read_video(video_path, want_v)
        mfcc = np.load(folder / "mfcc.npy", mmap_mode="r")
    except (OSError, ValueError, RuntimeError) as e:     # lz4 reports a bad frame as RuntimeError
        raise CacheError(f"cache entry {folder} is unreadable: {e}; delete the folder and rerun 01_preprocess "
                         f"(only missing clips are redone); expected video {want_v} uint8") from e
    if video.shape != want_v or video.dtype != np.uint8 or mfcc.shape != want_a or mfcc.dtype != np.float32:
        raise CacheError(f"cache entry {folder} has video {video.shape} {video.dtype} and mfcc {mfcc.shape} "
                         f"{mfcc.dtype}; expected {want_v} uint8 and {want_a} float32")
    return video, mfcc


def has_waveform(manifest: dict) -> bool:
    """Whether the cache's clips keep their waveform (older caches do not)."""
    return bool(manifest.get("waveform", False))


def read_waveform(cache_dir: Path, cid: str, manifest: dict) -> np.ndarray:
    """(N,) int16 waveform of one clip, N = round(frames / fps * sample_rate); raises CacheError
    naming 01_preprocess when the cache predates waveforms or the file is missing or cut."""
    if not has_waveform(manifest):
        raise CacheError(f"the cache at {cache_dir} keeps no waveforms (made before sync models existed); "
                         f"a sync model needs them: rerun notebooks/01_preprocess.ipynb into a new cache_dir")
    want = int(round(manifest["frames"] / manifest["fps"] * manifest["sample_rate"]))
    path = Path(cache_dir) / "clips" / cid / AUDIO_FILE
    try:
        wave = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise CacheError(f"cache entry {path.parent} has no readable {AUDIO_FILE}: {e}; delete the folder and "
                         f"rerun notebooks/01_preprocess.ipynb (only missing clips are redone)") from e
    if wave.shape != (want,) or wave.dtype != np.int16:
        raise CacheError(f"{path} holds {wave.shape} {wave.dtype}; expected ({want},) int16")
    return wave


def clip_bytes(cache_dir: Path, cid: str) -> int:
    """Bytes one cached clip takes on disk (every file of its folder)."""
    return sum(f.stat().st_size for f in (Path(cache_dir) / "clips" / cid).iterdir() if f.is_file())


def rebuild_tables(cache_dir: Path, records: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write index.csv (records that are cached, with their meta) and failures.csv (the rest
    that failed) from what is on disk; returns both tables."""
    cache_dir = Path(cache_dir)
    rows, failures = [], []
    for rec in records.to_dict("records"):
        meta_path = cache_dir / "clips" / rec["clip_id"] / "meta.json"
        if meta_path.is_file():
            meta = read_json(meta_path)
            rows.append({**rec, **{k: meta.get(k) for k in META_COLUMNS}})
        elif (cache_dir / "failures" / f"{rec['clip_id']}.json").is_file():
            failures.append(read_json(cache_dir / "failures" / f"{rec['clip_id']}.json"))
    index = pd.DataFrame(rows, columns=list(records.columns) + list(META_COLUMNS))
    fails = pd.DataFrame(failures, columns=["path", "reason"])
    write_csv(cache_dir / "index.csv", index)
    write_csv(cache_dir / "failures.csv", fails)
    return index, fails


def read_index(cache_dir: str | Path) -> pd.DataFrame:
    path = Path(cache_dir) / "index.csv"
    if not path.is_file():
        raise CacheError(f"no index.csv in {cache_dir}: run notebooks/01_preprocess.ipynb first")
    return pd.read_csv(path, dtype={"identity": str, "path": str, "clip_id": str}, keep_default_na=False)
