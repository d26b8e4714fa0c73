"""Batched prediction shared by training (validation every epoch) and evaluation (04, the
external sets): one forward pass per batch, its loss, and P(fake) for every clip in loader order."""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from avlib.models.detector import video_to_model_input
from avlib.models.sync import sync_loss


def safe_auc(labels, probs) -> float:
    """ROC AUC, or NaN when only one class is present."""
    labels = np.asarray(labels)
    return float(roc_auc_score(labels, probs)) if len(np.unique(labels)) == 2 else float("nan")


def live_output() -> bool:
    """Whether someone watches the output as it comes: a terminal, or a notebook in a running
    Jupyter server (JPY_SESSION_NAME). A headless kernel (papermill) is neither: a progress
    widget saved there is a dead bar in the executed notebook."""
    return bool(os.environ.get("JPY_SESSION_NAME")) or sys.stderr.isatty()


def progress_bar(loader, desc: str, progress: bool):
    """`loader` wrapped in a progress bar over its batches where someone watches (live_output);
    else `loader` itself: headless runs print their epoch lines only."""
    return tqdm(loader, desc=desc, leave=False, disable=not (progress and live_output()), unit="batch")


def forward_batch(model, video, audio, labels, extra, *, criterion, objective: str, sync_weight: float,
             want_sync: bool = False, video_labels: torch.Tensor | None = None, video_weight: float = 0.0):
    """(logits, sync dict or None, loss) of one batch: cross-entropy, plus `sync_weight` x the
    InfoNCE offset loss on the batch's real clips, plus `video_weight` x the binary
    cross-entropy of the model's video head against `video_labels` (1: the video is
    manipulated); objective 'sync' trains the offset loss alone."""
    use_sync = objective == "sync" or sync_weight > 0 or want_sync
    use_video = video_weight > 0 and video_labels is not None and objective != "sync"
    out = model(video, audio, *extra, with_sync=use_sync, with_video=use_video)
    out = out if isinstance(out, tuple) else (out,)
    logits, sync = out[0].float(), (out[1] if use_sync else None)
    if objective == "sync":
        return logits, sync, sync_loss(sync["log_p"], labels)
    loss = criterion(logits, labels) if criterion is not None else None
    if sync_weight > 0 and loss is not None:
        loss = loss + sync_weight * sync_loss(sync["log_p"], labels)
    if use_video and loss is not None:
        loss = loss + video_weight * nn.functional.binary_cross_entropy_with_logits(out[-1].float(), video_labels.float())
    return logits, sync, loss


SYNC_OUTPUTS = ("score", "offset", "confidence")


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device, *, amp: bool = False, channels_last: bool = True,
            criterion: nn.Module | None = None, progress: bool = False, desc: str = "predict",
            sync: bool = False, objective: str = "classify") -> dict:
    """P(fake) for every clip in loader order: dict(probs, labels, loss, seconds, clips_per_s);
    with `sync` (a sync model), also sync_score, sync_offset (frames) and sync_confidence per clip
    and sync_loss (the offset loss on the real clips).
    `loss` is the cross-entropy (with `criterion`), or for objective 'sync' the offset loss."""
    model.eval()
    probs, labels_all, total_loss = [], [], 0.0
    sync_out = {k: [] for k in SYNC_OUTPUTS}
    sync_total, n_real = 0.0, 0
    start = time.perf_counter()
    for video, audio, labels, *extra in progress_bar(loader, desc, progress):
        video = video_to_model_input(video, device, channels_last=channels_last)
        audio, labels = audio.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        extra = [x.to(device, non_blocking=True) for x in extra]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits, sync_dict, loss = forward_batch(model, video, audio, labels, extra, criterion=criterion,
                                               objective=objective, sync_weight=0.0, want_sync=sync)
        if loss is not None:
            total_loss += loss.item() * len(labels)
        if sync_dict is not None:
            real = int((labels == 0).sum())
            sync_total += sync_loss(sync_dict["log_p"], labels).item() * real
            n_real += real
        probs.append(torch.softmax(logits, 1)[:, 1].cpu())
        labels_all.append(labels.cpu())
        for key in SYNC_OUTPUTS if sync_dict is not None else ():
            sync_out[key].append(sync_dict[key].float().cpu())
    seconds = time.perf_counter() - start
    probs = torch.cat(probs).numpy() if probs else np.zeros(0)
    labels_all = torch.cat(labels_all).numpy() if labels_all else np.zeros(0, int)
    out = dict(probs=probs, labels=labels_all, loss=total_loss / max(len(labels_all), 1),
               seconds=seconds, clips_per_s=len(labels_all) / seconds if seconds else float("nan"))
    if sync:
        out.update({f"sync_{k}": torch.cat(v).numpy() if v else np.zeros(0) for k, v in sync_out.items()})
        out["sync_loss"] = sync_total / n_real if n_real else float("nan")       # on the real clips
    return out
