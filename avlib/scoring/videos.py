"""Whole videos scored window by window: every window of every file, decoded once per file in
worker processes ahead of the model, windows batched across the files of a run, each video's
result handed back as soon as its last window is scored.

The workers are a DataLoader's (avlib.dataio.loader.stream_loader: an IterableDataset dealing the
files out among them, a few windows each ahead of the model): what 03 and 04 use for caches,
here for files. With workers=0 the same code runs in the calling process.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
from torch.utils.data import IterableDataset, get_worker_info

from avlib.core.runtime import usable_cores
from avlib.dataio.features import compute_mfcc
from avlib.dataio.inputs import InputLimits, check_input
from avlib.dataio.loader import stream_loader
from avlib.dataio.stream import stream_windows
from avlib.models.detector import video_to_model_input
from avlib.scoring.scorer import is_sync_model


def window_starts(duration: float | None, window_seconds: float, stride: float,
                  max_windows: int | None = None) -> list[float]:
    """Start times of windows that cover the whole of `duration`: one every `stride` seconds,
    and the last aligned to the end (overlapping the one before) so that no second is left out;
    the first `max_windows` only when a cap is asked for. At least one window."""
    if not duration or duration <= window_seconds:
        return [0.0]
    n = int(np.floor((duration - window_seconds) / stride + 1e-9)) + 1
    starts = [round(i * stride, 3) for i in range(n)]
    last = round(duration - window_seconds, 3)
    if starts[-1] < last - 1e-3:
        starts.append(last)
    return starts[:max_windows] if max_windows else starts


@dataclass(frozen=True)
class WindowPlan:
    """How a run cuts videos into windows: the model's window (`cfg`: frames, size, fps,
    sample_rate, MFCC settings, face_crop, as the checkpoint's preprocessing recorded them),
    the stride between window starts (None: one window length), an optional cap."""
    cfg: dict
    stride: float | None = None
    max_windows: int | None = None
    limits: InputLimits = InputLimits()

    @property
    def seconds(self) -> float:
        return self.cfg["frames"] / self.cfg["fps"]


class VideoWindows(IterableDataset):
    """Every window of each file, as dicts: video (T, H, W, 3) uint8, mfcc (S, n_mfcc), audio
    (N,) float32, and the file's index, the window's start, its valid frames, whether it has
    audio, the file's duration, and `last` on a file's final window. A file that cannot be
    scored gives one dict with its `error` instead. Each DataLoader worker takes every n-th file,
    and decodes with its share of the cores that `model_cores` (what the model computes on) leaves."""

    def __init__(self, paths: list[Path], plan: WindowPlan, *, model_cores: int = 0):
        self.paths, self.plan, self.model_cores = list(paths), plan, model_cores

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        mine = range(len(self.paths)) if info is None else range(info.id, len(self.paths), info.num_workers)
        # in the calling process, FFmpeg's threads (the model waits for the decoder there anyway); in a
        # worker, its share of the cores the model leaves: on a GPU all of them, so the one worker of a
        # single long file decodes with every core (with one thread it ran at 0.44 of the in-process
        # speed on a 16-core machine: python -m avlib.bench predict --device cuda --workers 8, 300 s at
        # 224x224); on a CPU the model takes every core, and each worker decodes with one thread
        threads = 0 if info is None else max(1, (usable_cores() - self.model_cores) // info.num_workers)
        for index in mine:
            yield from self._windows(index, threads)

    def _windows(self, index: int, threads: int = 1) -> Iterator[dict]:
        cfg, path = self.plan.cfg, self.paths[index]
        rate = cfg.get("sample_rate", 16000)
        try:
            duration = check_input(path, self.plan.limits)
            starts = window_starts(duration, self.plan.seconds, self.plan.stride or self.plan.seconds,
                                   self.plan.max_windows)
            previous = None
            for clip in stream_windows(path, starts, frames=cfg["frames"], size=cfg["size"], fps=cfg["fps"],
                                       sample_rate=rate, face_crop=cfg.get("face_crop", False), threads=threads,
                                       max_pixels=self.plan.limits.max_side ** 2):
                if previous is not None:
                    yield previous
                previous = {"index": index, "video": clip.video, "audio": clip.audio,
                            "mfcc": compute_mfcc(clip.audio, rate, cfg["n_mfcc"], cfg["mfcc_steps"]),
                            "start": clip.start_seconds, "valid_frames": clip.valid_frames,
                            "has_audio": clip.has_audio, "duration": duration if duration else math.nan,
                            "last": False, "error": ""}
            if previous is None:
                raise ValueError("no window could be decoded")
        except Exception as e:  # noqa: BLE001 - one unreadable file must not stop the others; it is reported
            yield {"index": index, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                   "last": True}
            return
        yield {**previous, "last": True}


def score_windows(model, items: list[dict], plan: WindowPlan, device, *, amp: bool = False) -> list[dict]:
    """One row per window of `items` (VideoWindows dicts, of any files): start, end, p_fake,
    has_audio, valid_frames, and for a sync model the offset (frames, ms; positive when the
    audio lags the video), its confidence and the sync score. One forward pass for all."""
    sync = is_sync_model(model)
    video = torch.from_numpy(np.ascontiguousarray(np.stack([i["video"] for i in items]).transpose(0, 4, 1, 2, 3)))
    inputs = [video_to_model_input(video, device), torch.from_numpy(np.stack([i["mfcc"] for i in items])).to(device)]
    if sync:
        inputs.append(torch.from_numpy(np.stack([i["audio"] for i in items]).astype(np.float32)).to(device))
    with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
        out = model(*inputs, with_sync=True) if sync else model(*inputs)
    logits, sync_out = out if sync else (out, None)
    probs = torch.softmax(logits.float(), 1)[:, 1].cpu().numpy()
    rows = []
    for k, item in enumerate(items):
        row = {"start": item["start"], "end": round(item["start"] + plan.seconds, 3), "p_fake": float(probs[k]),
               "has_audio": item["has_audio"], "valid_frames": item["valid_frames"], "duration": item["duration"]}
        if sync_out is not None:
            offset = int(sync_out["offset"][k])
            row.update(offset_frames=offset, offset_ms=round(1000.0 * offset / plan.cfg["fps"], 1),
                       offset_confidence=round(float(sync_out["confidence"][k]), 4),
                       sync_score=round(float(sync_out["score"][k]), 4))
        rows.append(row)
    return rows


def score_videos(model, paths: list[Path], plan: WindowPlan, device, *, batch_size: int = 16, workers: int = 0,
                 amp: bool = False, on_video: Callable[[Path, pd.DataFrame | None, str], None]) -> None:
    """Score every window of every file of `paths`, `batch_size` windows at a time across files,
    decoding in `workers` processes (0: here). Calls on_video(path, windows, error) once per
    file as soon as its last window is scored (windows: score_windows' rows as a DataFrame, or
    None with the reason it could not be scored), in the order files complete."""
    model_cores = 0 if torch.device(device).type == "cuda" else torch.get_num_threads()
    loader = stream_loader(VideoWindows(paths, plan, model_cores=model_cores), workers=min(workers, len(paths)))
    rows: dict[int, list[dict]] = {}
    batch: list[dict] = []

    def run(batch):
        finished = []
        for item, row in zip(batch, score_windows(model, batch, plan, device, amp=amp)):
            rows.setdefault(item["index"], []).append(row)
            if item["last"]:
                finished.append(item["index"])
        for index in finished:
            on_video(paths[index], pd.DataFrame(rows.pop(index)), "")

    for item in loader:
        if item["error"]:                 # a file that failed part-way: its windows so far are dropped
            rows.pop(item["index"], None)
            batch = [b for b in batch if b["index"] != item["index"]]
            on_video(paths[item["index"]], None, item["error"])
            continue
        batch.append(item)
        if len(batch) == batch_size:
            run(batch)
            batch = []
    if batch:
        run(batch)
