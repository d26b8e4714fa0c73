"""Stage 1: index -> split -> decode + MFCC -> cache, in parallel worker processes, each clip
written atomically, bad files listed in failures.csv with a one-line reason."""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import sys
import time
from pathlib import Path

import cv2
import librosa
import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from avlib.core.paths import is_disk_full, write_csv
from avlib.core.progress import ProgressLines
from avlib.dataio import cache
from avlib.dataio.decode import SAMPLE_RATE, decode_clip
from avlib.dataio.features import compute_mfcc, waveform_to_int16
from avlib.dataio.splits import assign_splits, split_summary


def settings(*, frames: int, size: int, fps: float, n_mfcc: int, mfcc_steps: int, window: str = "start",
             skip_silence: bool = False, face_crop: bool = False, sample_rate: int = SAMPLE_RATE) -> dict:
    """The preprocessing settings recorded in the cache manifest."""
    return dict(frames=frames, size=size, fps=float(fps), n_mfcc=n_mfcc, mfcc_steps=mfcc_steps,
                sample_rate=sample_rate, window=window, skip_silence=skip_silence, face_crop=face_crop)


def process_file(path: str | Path, config: dict) -> tuple[np.ndarray, np.ndarray, dict, np.ndarray]:
    """Decode one file and compute its features: (video (3,T,H,W) uint8, mfcc (S,n) float32, meta,
    waveform (N,) int16 of the same seconds). Raises DecodeError (or an FFmpeg/OS error) for
    unusable files."""
    clip = decode_clip(path, frames=config["frames"], size=config["size"], fps=config["fps"],
                       sample_rate=config["sample_rate"], window=config["window"],
                       skip_silence=config["skip_silence"], face_crop=config["face_crop"],
                       threads=config.get("threads", 0))
    mfcc = compute_mfcc(clip.audio, config["sample_rate"], config["n_mfcc"], config["mfcc_steps"])
    meta = dict(valid_frames=int(clip.valid_frames), has_audio=bool(clip.has_audio),
                start_seconds=round(float(clip.start_seconds), 3), **shortcut_features(clip.audio, config["sample_rate"]))
    return clip.video.transpose(3, 0, 1, 2), mfcc, meta, waveform_to_int16(clip.audio)


def shortcut_features(audio: np.ndarray, sample_rate: int) -> dict:
    """What a shortcut detector would look at: seconds of leading silence in the window (more
    than 40 dB below its loudest part; the whole window if silent) and its RMS level in dB."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
    if not np.any(audio):
        lead = len(audio) / sample_rate
    else:
        _, (begin, _) = librosa.effects.trim(audio, top_db=40, frame_length=512, hop_length=128)
        lead = begin / sample_rate
    return {"lead_silence": round(float(lead), 4), "audio_rms_db": round(20 * np.log10(rms + 1e-8), 2)}


def worker_context():
    """The multiprocessing context for decoding workers.

    fork when torch is not loaded in this process (the 01_preprocess kernel, the CLI): the
    workers start at once with everything imported. Otherwise forkserver with the decoding
    stack preloaded: plain fork hangs once a parent has run torch's OpenMP threads, and the
    fork server starts clean, imports once (about 2 s), and forks
    each worker from there."""
    methods = mp.get_all_start_methods()
    if "fork" in methods and "torch" not in sys.modules:
        return mp.get_context("fork")
    if "forkserver" not in methods:
        return mp.get_context("spawn")
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["avlib.dataio.preprocess", "avlib.dataio.synthetic", "librosa", "cv2", "av"])
    return context


def _worker_init() -> None:
    """One thread per worker process: BLAS (librosa's mel filterbank), OpenCV and the decoder
    would otherwise each start a thread per core and the workers would fight over the cores."""
    cv2.setNumThreads(1)
    threadpool_limits(1)


def _process_task(task: tuple) -> tuple[str, str | None]:
    """Cache one clip; returns (clip_id, None) or (clip_id, reason). Runs in a worker process."""
    src, rel, cid, config, cache_dir = task
    try:
        video, mfcc, meta, waveform = process_file(src, config)
        cache.write_clip(Path(cache_dir), cid, video, mfcc, meta, waveform)
        return cid, None
    except Exception as e:  # noqa: BLE001 - one bad file must not stop the run; the reason is kept
        if is_disk_full(e):
            raise               # a full disk is no fault of the file: stop, keeping the clips written so far
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no message'}"[:300]
        cache.write_failure(Path(cache_dir), cid, rel, reason)
        return cid, reason


def in_shard(cid: str, shard: int, num_shards: int) -> bool:
    return int(hashlib.sha1(cid.encode()).hexdigest()[:8], 16) % num_shards == shard


def split_and_record(records: pd.DataFrame, cache_dir: Path, *, val_fraction: float, test_fraction: float,
                     seed: int) -> pd.DataFrame:
    """Assign identity-disjoint splits and clip ids, and save them in the cache as records.csv."""
    records = assign_splits(records, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    records["clip_id"] = [cache.clip_id(p) for p in records["path"]]
    write_csv(Path(cache_dir) / "records.csv", records)
    return records


def preprocess(records: pd.DataFrame, data_dir: str | Path, cache_dir: str | Path, config: dict, *,
               workers: int = 2, shard: int = 0, num_shards: int = 1, val_fraction: float = 0.15,
               test_fraction: float = 0.15, seed: int = 0, progress: bool = True) -> dict:
    """Split `records`, cache every clip of this shard that is not cached yet, rebuild
    index.csv and failures.csv, and return the report (counts, failures, speed, bytes)."""
    t_start = time.perf_counter()
    cache_dir = cache.open_cache(cache_dir, config)
    records = split_and_record(records, cache_dir, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    data_dir = Path(data_dir)
    worker_config = {**config, "threads": 1}    # one decoding thread per clip: parallelism comes from the workers
    tasks = [(str(data_dir / r.path), r.path, r.clip_id, worker_config, str(cache_dir))
             for r in records.itertuples() if in_shard(r.clip_id, shard, num_shards)
             and not cache.is_cached(cache_dir, r.clip_id)]
    failed_now = 0
    bar = ProgressLines("preprocess", len(tasks), enabled=progress)
    if workers > 1 and len(tasks) > 1:
        with worker_context().Pool(min(workers, len(tasks)), initializer=_worker_init) as pool:
            for _, reason in pool.imap_unordered(_process_task, tasks):
                failed_now += reason is not None
                bar.update()
    else:

        with threadpool_limits(1):      # measured: 2x faster than letting BLAS and FFmpeg thread here
            for task in tasks:
                failed_now += _process_task(task)[1] is not None
                bar.update()
    seconds = time.perf_counter() - t_start
    index, failures = cache.rebuild_tables(cache_dir, records)
    sizes = [cache.clip_bytes(cache_dir, c) for c in index["clip_id"][:200]]
    return {
        "cache_dir": str(cache_dir),
        "settings": config,
        "clips_indexed": int(len(records)),
        "clips_cached": int(len(index)),
        "clips_failed": int(len(failures)),
        "processed_this_run": len(tasks),
        "failed_this_run": failed_now,
        "shard": shard, "num_shards": num_shards,
        "per_split": split_summary(index) if len(index) else {},
        "failures_by_reason": failures["reason"].str.split(":").str[0].value_counts().to_dict() if len(failures) else {},
        "seconds": round(seconds, 2),
        "clips_per_second": round(len(tasks) / seconds, 2) if tasks else None,
        "bytes_per_clip": int(np.mean(sizes)) if sizes else None,
        "without_audio": int((~index["has_audio"].astype(bool)).sum()) if len(index) else 0,
        "short_clips": int((index["valid_frames"] < config["frames"]).sum()) if len(index) else 0,
    }


def write_dummy_cache(cache_dir: str | Path, config: dict, *, n: int = 48, seed: int = 0,
                      val_fraction: float = 0.15, test_fraction: float = 0.15, real_only: bool = False) -> dict:
    """Random tensors of the right shapes, written through the same cache (dataset=dummy, for CI);
    `real_only`: every clip labelled real."""
    t_start = time.perf_counter()
    cache_dir = cache.open_cache(cache_dir, config)
    rng = np.random.default_rng(seed)
    cats = ["RVRA", "RVFA", "FVRA", "FVFA"]
    records = pd.DataFrame([dict(path=f"dummy/{i:05d}.mp4", label=int(i % 4 != 0) if i % 2 else 0,
                                 dataset="dummy", category="RVRA", method="dummy", identity=f"id{i // 2:05d}",
                                 race="", gender="", age="", skin_type="") for i in range(n)])
    if real_only:
        records["label"] = 0
    records["category"] = [cats[0] if lab == 0 else cats[1 + i % 3] for i, lab in enumerate(records["label"])]
    records = split_and_record(records, cache_dir, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    shape = (3, config["frames"], config["size"], config["size"])
    for cid in records["clip_id"]:
        if not cache.is_cached(cache_dir, cid):
            video = rng.integers(0, 256, shape, dtype=np.uint8)
            mfcc = rng.normal(0, 1, (config["mfcc_steps"], config["n_mfcc"])).astype(np.float32)
            n_samples = int(round(config["frames"] / config["fps"] * config["sample_rate"]))
            waveform = rng.integers(-3000, 3000, n_samples, dtype=np.int16)
            cache.write_clip(cache_dir, cid, video, mfcc, dict(valid_frames=config["frames"], has_audio=True, start_seconds=0.0,
                                                               lead_silence=0.0, audio_rms_db=-20.0), waveform)
    index, failures = cache.rebuild_tables(cache_dir, records)
    return {"cache_dir": str(cache_dir), "settings": config, "clips_indexed": n, "clips_cached": len(index),
            "clips_failed": len(failures), "per_split": split_summary(index),
            "seconds": round(time.perf_counter() - t_start, 2)}
