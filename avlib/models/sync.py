"""Audio-visual synchrony: a branch that embeds the mouth region and the waveform per video
frame, compares every video step with the audio at every offset within +-k frames, and turns
that into a per-step offset distribution, clip-level sync features, a real-only sync score
and an offset estimate. Its objective is InfoNCE over temporal offsets on real clips (the true
offset, 0, is the positive), as in AVH-Align; the score is the same quantity per clip, so it
needs no fake to learn from.

Conventions: similarity[b, t, j] compares video frame t with audio frame t + offsets[j];
a positive offset means the audio lags the video. Offsets outside the window are masked.

- visual: the lower-central part of each frame (where the mouth of a face-centred crop is;
  downsampled to at most 48 x 64), through a small (2+1)D CNN that keeps every frame: (B, D, T);
- audio: log-mel frames from the waveform at exactly 4 per video frame (10 ms at 25 fps,
  hop = sample_rate / fps / 4), standardised per clip and band, a 1-D CNN that reduces 4 -> 1:
  (B, D, T);
- k = round(0.6 s * fps), so the search covers about +-0.6 s at any frame rate (+-15 frames at
  25 fps, as SyncNet, AVAD and AVH-Align use).
"""
from __future__ import annotations

import math

import librosa
import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, roc_auc_score

from avlib.core.errors import ParameterError

MIN_SYNC_FPS = 10.0          # syllables come at up to ~5 Hz: fewer than 10 frames/s cannot follow the lips
SYNC_SECONDS = 0.6           # offsets searched on each side
AUDIO_STEPS_PER_FRAME = 4    # audio feature frames per video frame (10 ms at 25 fps)
N_MELS = 40
SYNC_FEATURES = ("agreement_at_0", "log_p_at_0", "best_offset_mean", "best_offset_sd", "entropy", "peak_gain")


def sync_offsets(fps: float) -> int:
    """k, the largest offset searched (frames): round(0.6 s x fps). Raises ParameterError
    naming `fps` when the frame rate is too low to follow lips."""
    if not isinstance(fps, (int, float)) or fps < MIN_SYNC_FPS:
        raise ParameterError(f"parameter `fps` is {fps!r}: a sync model needs at least {MIN_SYNC_FPS:g} frames/s to "
                             f"follow the lips (syllables come at up to 5 Hz); rerun 01_preprocess with fps >= "
                             f"{MIN_SYNC_FPS:g} (25 is what SyncNet-style models use)")
    return max(1, int(round(SYNC_SECONDS * fps)))


def check_sync_window(frames: int, fps: float) -> int:
    """k for a window of `frames` at `fps`; raises ParameterError when the window is too short
    to compare a step with offsets on both sides (frames must exceed 2k)."""
    k = sync_offsets(fps)
    if frames <= 2 * k:
        raise ParameterError(f"parameter `frames` is {frames}: a sync model at fps {fps:g} compares each frame with "
                             f"the audio +-{k} frames away, so it needs frames > {2 * k} "
                             f"(e.g. {2 * k + 8}, or more for a steadier score)")
    return k


class MouthEncoder(nn.Module):
    """(B, 3, T, H, W) float video in [0, 1] -> (B, dim, T): one embedding per frame of the mouth region."""
    # The lower-central part of a face-centred square crop; FakeAVCeleb's and the synthetic corpus's
    # mouths lie in it with room for head motion.
    ROWS, COLS = (0.5, 0.95), (0.2, 0.8)

    def __init__(self, dim: int = 64, max_size: tuple[int, int] = (48, 64)):
        super().__init__()
        self.max_size = tuple(max_size)      # larger crops are downsampled (a 112-pixel frame's is 50 x 67); never upsampled

        def block(cin, cout, stride):
            return nn.Sequential(
                nn.Conv3d(cin, cout, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False),
                nn.BatchNorm3d(cout), nn.ReLU(inplace=True),
                nn.Conv3d(cout, cout, (3, 1, 1), padding=(1, 0, 0), bias=False),
                nn.BatchNorm3d(cout), nn.ReLU(inplace=True))

        # (16, 32, 64) channels learned the offsets of tests/test_sync.py too slowly
        self.net = nn.Sequential(block(3, 32, 1), block(32, 48, 2), block(48, dim, 2))
        self.head = nn.Conv1d(dim, dim, 3, padding=1)

    def crop(self, video: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = video.shape
        r0, r1 = int(self.ROWS[0] * h), max(int(self.ROWS[0] * h) + 1, int(round(self.ROWS[1] * h)))
        c0, c1 = int(self.COLS[0] * w), max(int(self.COLS[0] * w) + 1, int(round(self.COLS[1] * w)))
        frames = video[..., r0:r1, c0:c1].float()
        size = (min(r1 - r0, self.max_size[0]), min(c1 - c0, self.max_size[1]))
        if size != (r1 - r0, c1 - c0):
            frames = frames.permute(0, 2, 1, 3, 4).reshape(b * t, c, r1 - r0, c1 - c0)
            frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=True)
            frames = frames.reshape(b, t, c, *size).permute(0, 2, 1, 3, 4)
        # per-clip standardisation: lighting and skin colour are not what synchrony is about
        return (frames - frames.mean(dim=(2, 3, 4), keepdim=True)) / (frames.std(dim=(2, 3, 4), keepdim=True) + 1e-3)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = self.net(self.crop(video).contiguous(memory_format=torch.channels_last_3d))
        return self.head(x.mean(dim=(3, 4)))


class WaveEncoder(nn.Module):
    """(B, N) waveform -> (B, dim, T): log-mel at 4 frames per video frame, reduced to one per frame."""

    def __init__(self, fps: float, frames: int, sample_rate: int = 16000, dim: int = 64):
        super().__init__()

        self.frames, self.sample_rate = frames, sample_rate
        self.hop = max(1, int(round(sample_rate / fps / AUDIO_STEPS_PER_FRAME)))
        self.n_fft = max(512, 1 << (2 * self.hop - 1).bit_length())
        mel = librosa.filters.mel(sr=sample_rate, n_fft=self.n_fft, n_mels=N_MELS)
        self.register_buffer("mel", torch.from_numpy(mel).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.net = nn.Sequential(
            nn.Conv1d(N_MELS, 64, 3, padding=1, bias=False), nn.BatchNorm1d(64), nn.ReLU(inplace=True),
            nn.Conv1d(64, 64, 3, padding=1, bias=False), nn.BatchNorm1d(64), nn.ReLU(inplace=True),
            nn.Conv1d(64, dim, AUDIO_STEPS_PER_FRAME, stride=AUDIO_STEPS_PER_FRAME, bias=False),
            nn.BatchNorm1d(dim), nn.ReLU(inplace=True))
        self.head = nn.Conv1d(dim, dim, 3, padding=1)

    def log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, N_MELS, 4T) log-mel, standardised per clip and band."""
        with torch.autocast(waveform.device.type, enabled=False):
            spec = torch.stft(waveform.float(), self.n_fft, self.hop, window=self.window, center=True,
                              return_complex=True).abs().pow(2)
            steps = AUDIO_STEPS_PER_FRAME * self.frames
            if spec.shape[-1] < steps:
                spec = F.pad(spec, (0, steps - spec.shape[-1]), mode="replicate")
            logmel = torch.log(self.mel @ spec[..., :steps] + 1e-6)
            return (logmel - logmel.mean(-1, keepdim=True)) / (logmel.std(-1, keepdim=True) + 1e-3)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(self.log_mel(waveform)))


class SyncBranch(nn.Module):
    """Mouth and voice embeddings per frame, their similarity at offsets -k..k, and what follows."""

    def __init__(self, *, fps: float, frames: int, sample_rate: int = 16000, dim: int = 64):
        super().__init__()
        self.k = check_sync_window(frames, fps)
        self.fps = float(fps)
        self.visual = MouthEncoder(dim)
        self.audio = WaveEncoder(fps, frames, sample_rate, dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.register_buffer("offsets", torch.arange(-self.k, self.k + 1), persistent=False)

    def similarity(self, video: torch.Tensor, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, T, 2k+1) with invalid offsets at -inf, cosine similarity (B, T, 2k+1) with NaN there)."""
        return self.compare(*self.embed(video, waveform))

    def embed(self, video: torch.Tensor, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-length mouth and voice embeddings per frame, each (B, D, T), in fp32."""
        with torch.autocast(video.device.type, enabled=False):
            return F.normalize(self.visual(video).float(), dim=1), F.normalize(self.audio(waveform).float(), dim=1)

    def compare(self, v: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """similarity() from embed()'s output."""
        with torch.autocast(v.device.type, enabled=False):
            t = v.shape[-1]
            windows = F.pad(a, (self.k, self.k)).unfold(2, 2 * self.k + 1, 1)        # (B, D, T, 2k+1)
            cosine = torch.einsum("bdt,bdtj->btj", v, windows)
            steps = torch.arange(t, device=v.device)[:, None] + self.offsets[None, :]
            valid = (steps >= 0) & (steps < t)
            logits = (cosine * self.logit_scale.exp().clamp(max=100.0)).masked_fill(~valid, float("-inf"))
            return logits, cosine.masked_fill(~valid, float("nan"))

    def forward(self, video: torch.Tensor, waveform: torch.Tensor) -> dict:
        """dict(logits, log_p (B, T, 2k+1), features (B, len(SYNC_FEATURES)), score (B,), offset (B,),
        confidence (B,)). score: mean over frames of -log p(offset 0), high = out of sync."""
        logits, cosine = self.similarity(video, waveform)
        log_p = torch.log_softmax(logits, dim=-1)
        return {"logits": logits, "log_p": log_p, **clip_statistics(log_p, cosine, self.offsets)}


def clip_statistics(log_p: torch.Tensor, cosine: torch.Tensor, offsets: torch.Tensor) -> dict:
    """Clip-level sync features, score, offset and confidence from the per-step distributions."""
    k = (len(offsets) - 1) // 2
    p = log_p.exp()
    nll0 = -log_p[..., k]
    per_step_best = offsets[p.argmax(-1)].float()                               # (B, T)
    entropy = -(p * log_p.masked_fill(p == 0, 0)).sum(-1)
    mean_cos = torch.nanmean(cosine, dim=1)                                     # (B, 2k+1): over time
    best = mean_cos.argmax(-1)
    peak_gain = mean_cos.max(-1).values - mean_cos[:, k]
    features = torch.stack([torch.nanmean(cosine[..., k], dim=1), -nll0.mean(1), per_step_best.mean(1),
                            per_step_best.std(1, unbiased=False), entropy.mean(1), peak_gain], dim=1)
    # SyncNet's confidence: median minus minimum distance, i.e. peak minus median similarity
    confidence = mean_cos.max(-1).values - mean_cos.median(-1).values
    return {"features": features, "score": nll0.mean(1), "offset": offsets[best], "confidence": confidence}


def sync_loss(log_p: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE over offsets: mean of -log p(offset 0) over the frames of real clips (label 0).

    A batch without real clips gives a zero that still reaches every parameter (several
    processes must see the same graph)."""
    k = (log_p.shape[-1] - 1) // 2
    nll = -log_p[..., k].mean(1)                                               # (B,)
    if labels is None:
        return nll.mean()
    real = (labels == 0).float()
    return (nll * real).sum() / real.sum().clamp_min(1.0)


SYNC_COLUMNS = ("sync_score", "sync_offset", "sync_confidence")


def sync_score_report(pred, fps: float | None = None) -> dict:
    """metrics.json's `sync_score`: how well the real-only sync score (column sync_score, high =
    out of sync; no fake label was used to learn it) separates fakes from real clips: AUC and
    AP overall and per category and method (each group against all real clips), and how often
    real clips are found in sync (offset 0)."""

    def separation(scores, labels) -> dict:
        if len(np.unique(labels)) < 2:
            return {"n": int(len(labels)), "auc": float("nan"), "ap": float("nan")}
        return {"n": int(len(labels)), "auc": float(roc_auc_score(labels, scores)),
                "ap": float(average_precision_score(labels, scores))}

    labels, scores = pred["label"].to_numpy(), pred["sync_score"].to_numpy()
    real = pred[pred["label"] == 0]
    report = {"what": "mean over frames of -log p(offset 0) from the sync branch, trained on real clips only; "
                      "high = lips and voice disagree",
              **separation(scores, labels), "per_category": {}, "per_method": {}}
    for column in ("category", "method"):
        for group, rows in pred[pred["label"] == 1].groupby(column):
            both = pd.concat([real, rows], ignore_index=True)
            report[f"per_{column}"][str(group)] = separation(both["sync_score"].to_numpy(), both["label"].to_numpy())
    if len(real):
        report["real_in_sync"] = float((real["sync_offset"] == 0).mean())
        report["real_median_abs_offset_frames"] = float(real["sync_offset"].abs().median())
        if fps:
            report["real_median_abs_offset_ms"] = 1000.0 * report["real_median_abs_offset_frames"] / fps
    return report
