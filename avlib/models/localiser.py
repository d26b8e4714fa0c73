"""A per-frame detector for partial fakes: P(the lips are manipulated) and P(the voice is)
at every video frame of a window, from three kinds of per-frame evidence:

- sync: the sync branch (avlib.models.sync) compares each frame's mouth with the voice at
  offsets -k..k; its distribution over offsets and the agreement at offset 0 say, frame by
  frame, whether lips and voice still belong together. It learns on real frames only
  (InfoNCE over offsets), so it needs no fake to learn from, and a cloned word that the lips
  do not say shows up in it whatever the voice generator was;
- look: each frame and its difference from the one before through FrameDiffEncoder's CNN,
  max-pooled over space (a re-rendered mouth flickers against its neighbours);
- sound: log-mel at 4 steps per frame through a second WaveEncoder (vocoder artifacts).

A temporal head (dilated 1-D convolutions, about +-0.6 s of context at 25 fps) turns the
concatenated evidence into two logits per frame. `sync_evidence=False` feeds zeros in place of
the sync evidence, for the ablation that measures its share.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from avlib.models.detector import FrameDiffEncoder
from avlib.models.sync import SyncBranch, WaveEncoder

HEADS = ("visual", "audio")


class FrameLocaliser(nn.Module):
    """(video (B, 3, T, H, W) float in [0, 1], waveform (B, N)) -> dict(logits (B, T, 2): visual
    and audio fake logits per frame, log_p (B, T, 2k+1): the sync branch's offset distribution)."""

    def __init__(self, *, fps: float, frames: int, sample_rate: int = 16000, width: int = 16, hidden: int = 64,
                 sync_evidence: bool = True):
        super().__init__()
        self.fps, self.frames, self.sample_rate = float(fps), int(frames), int(sample_rate)
        self.sync_evidence = bool(sync_evidence)
        self.sync = SyncBranch(fps=fps, frames=frames, sample_rate=sample_rate)
        self.look = FrameDiffEncoder(out_features=1, width=width).frames      # the per-frame CNN only
        self.sound = WaveEncoder(fps, frames, sample_rate, dim=32)
        k = self.sync.k
        channels = 4 * width + 32 + (2 * k + 1) + 1
        layers, cin = [], channels
        for dilation in (1, 2, 4, 1):
            layers += [nn.Conv1d(cin, hidden, 3, padding=dilation, dilation=dilation), nn.BatchNorm1d(hidden),
                       nn.ReLU(inplace=True)]
            cin = hidden
        self.head = nn.Sequential(*layers, nn.Conv1d(hidden, len(HEADS), 1))

    def frame_features(self, video: torch.Tensor) -> torch.Tensor:
        b, _, t, h, w = video.shape
        diff = torch.cat([torch.zeros_like(video[:, :, :1]), video[:, :, 1:] - video[:, :, :-1]], dim=2)
        x = torch.cat([video, 4 * diff], dim=1).transpose(1, 2).reshape(b * t, 6, h, w)
        return self.look(x).amax(dim=(2, 3)).view(b, t, -1).transpose(1, 2).float()     # (B, 4 width, T)

    def forward(self, video: torch.Tensor, waveform: torch.Tensor) -> dict:
        v, a = self.sync.embed(video, waveform)
        logits, cosine = self.sync.compare(v, a)
        log_p = torch.log_softmax(logits, dim=-1)
        k = self.sync.k
        evidence = torch.cat([log_p.clamp_min(-20.0), cosine[..., k:k + 1]], dim=-1).transpose(1, 2)   # (B, 2k+2, T)
        if not self.sync_evidence:
            evidence = torch.zeros_like(evidence)
        features = torch.cat([self.frame_features(video), self.sound(waveform).float(), evidence], dim=1)
        return {"logits": self.head(features).transpose(1, 2), "log_p": log_p}


def localiser_loss(out: dict, mask: torch.Tensor, *, sync_weight: float = 0.5) -> tuple[torch.Tensor, dict]:
    """Per-frame binary cross-entropy of both heads against `mask` (B, T, 2), plus InfoNCE over
    offsets on the frames that are real in both modalities (the sync branch learns from real
    frames only). Returns (loss, parts)."""
    logits = out["logits"].float()
    frame = F.binary_cross_entropy_with_logits(logits, mask.float())
    real = (mask.sum(-1) == 0).float()                                       # (B, T)
    k = (out["log_p"].shape[-1] - 1) // 2
    nll0 = -out["log_p"][..., k]
    sync = (nll0 * real).sum() / real.sum().clamp_min(1.0)
    return frame + sync_weight * sync, {"frame": float(frame.detach()), "sync": float(sync.detach())}
