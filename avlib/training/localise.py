"""Training the per-frame localiser (avlib.models.localiser) on a video cache with per-frame
masks (avlib.dataio.video_cache): random windows of whole videos, a frame-level loss, the
best epoch by frame-level AP on the validation videos.

Windows: each epoch draws `windows_per_video` windows from every training video. For a video
with fake segments, half of them are centred on one of its segments (at a random shift, so a
segment is seen at every position in the window and with real frames around it); the others
start anywhere. Without that, a 0.2 s segment in an 8 s video would sit in few windows.
"""
from __future__ import annotations

import copy
import time

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import average_precision_score
from torch.utils.data import Dataset

from avlib.dataio.loader import shuffled_loader
from avlib.dataio.video_cache import read_video_entry
from avlib.models.localiser import FrameLocaliser, localiser_loss
from avlib.scoring.segments import frame_probabilities


class LocalisationWindows(Dataset):
    """Random windows of the cached videos: (video (T, H, W, 3) uint8, audio (N,) float32,
    mask (T, 2) float32). Deterministic for a given seed and epoch (`set_epoch`)."""

    def __init__(self, cache_dir, index: pd.DataFrame, *, frames: int, fps: float, sample_rate: int,
                 windows_per_video: int = 4, seed: int = 0):
        self.cache_dir, self.clip_ids = cache_dir, list(index["clip_id"])   # each video read when drawn: memory holds a batch
        self.frames, self.per_frame = frames, sample_rate / fps
        self.windows_per_video, self.seed, self.epoch = windows_per_video, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.clip_ids) * self.windows_per_video

    def __getitem__(self, i: int):
        entry = read_video_entry(self.cache_dir, self.clip_ids[i // self.windows_per_video])
        rng = np.random.default_rng([self.seed, self.epoch, i])
        t, window = len(entry["mask"]), self.frames
        fake = np.flatnonzero(entry["mask"].any(1))
        if len(fake) and rng.random() < 0.5:
            centre = int(rng.choice(fake)) + int(rng.integers(-window // 3, window // 3 + 1))
            start = centre - window // 2
        else:
            start = int(rng.integers(0, max(1, t - window + 1)))
        start = int(np.clip(start, 0, max(0, t - window)))
        video, mask = entry["video"][start:start + window], entry["mask"][start:start + window]
        if len(video) < window:                # a video shorter than the window: repeat its last frame
            pad = window - len(video)
            video = np.concatenate([video, np.repeat(video[-1:], pad, 0)])
            mask = np.concatenate([mask, np.repeat(mask[-1:], pad, 0)])
        a = int(round(start * self.per_frame))
        n = int(round(window * self.per_frame))
        audio = entry["audio"][a:a + n]
        audio = np.pad(audio, (0, n - len(audio)))
        return torch.from_numpy(np.ascontiguousarray(video)), torch.from_numpy(audio), torch.from_numpy(mask.astype(np.float32))


def frame_ap(model, cache_dir, index: pd.DataFrame, *, device="cpu", amp: bool = False) -> float:
    """Frame-level average precision of max(visual, audio) P(fake) over every frame of `index`'s videos."""
    scores, labels = [], []
    model.eval()
    for cid in index["clip_id"]:
        entry = read_video_entry(cache_dir, cid)
        p = frame_probabilities(model, entry["video"], entry["audio"], device=device, amp=amp)
        scores.append(p.max(1))
        labels.append(entry["mask"].any(1))
    labels = np.concatenate(labels)
    return float(average_precision_score(labels, np.concatenate(scores))) if labels.any() else float("nan")


def train_localiser(cache_dir, index: pd.DataFrame, *, frames: int, fps: float, sample_rate: int = 16000,
                    epochs: int = 12, batch_size: int = 8, lr: float = 1e-3, seed: int = 0, device="cpu",
                    amp: bool = False, sync_evidence: bool = True, windows_per_video: int = 4,
                    workers: int = 0, log=print) -> tuple[FrameLocaliser, pd.DataFrame]:
    """Train on index's `train` videos, keep the epoch with the best frame-level AP on its `val`
    videos; returns (model in eval mode, history with one row per epoch). `workers` DataLoader
    processes read and cut the windows (each window depends only on the seed, the epoch and its
    index, so the batches are the same with any number)."""
    torch.manual_seed(seed)
    model = FrameLocaliser(fps=fps, frames=frames, sample_rate=sample_rate, sync_evidence=sync_evidence).to(device)
    train = index[index["split"] == "train"]
    val = index[index["split"] == "val"]
    if train.empty or val.empty:
        raise ValueError(f"localisation training needs train and val videos; the cache has "
                         f"{len(train)} train and {len(val)} val")
    data = LocalisationWindows(cache_dir, train, frames=frames, fps=fps, sample_rate=sample_rate,
                               windows_per_video=windows_per_video, seed=seed)
    loader = shuffled_loader(data, batch_size=batch_size, seed=seed, workers=workers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * len(loader))
    best, best_ap, history = None, -1.0, []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        data.set_epoch(epoch)
        model.train()
        losses = []
        for video, audio, mask in loader:
            video = video.to(device).permute(0, 4, 1, 2, 3).float().div_(255.0)
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
                out = model(video, audio.to(device))
            loss, parts = localiser_loss(out, mask.to(device))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"localiser: non-finite loss at epoch {epoch + 1} ({parts})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            schedule.step()
            losses.append(parts)
        ap = frame_ap(model, cache_dir, val, device=device, amp=amp)
        row = {"epoch": epoch + 1, "frame_loss": float(np.mean([p["frame"] for p in losses])),
               "sync_loss": float(np.mean([p["sync"] for p in losses])), "val_frame_ap": ap,
               "seconds": round(time.perf_counter() - t0, 1)}
        history.append(row)
        log(f"epoch {epoch + 1}/{epochs}: frame loss {row['frame_loss']:.3f}, sync loss {row['sync_loss']:.3f}, "
            f"val frame AP {ap:.3f} ({row['seconds']:.0f} s)")
        if ap > best_ap:
            best_ap, best = ap, copy.deepcopy(model.state_dict())
    model.load_state_dict(best)
    return model.eval(), pd.DataFrame(history)
