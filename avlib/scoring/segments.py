"""From a per-frame localiser to segments: per-frame P(fake) over a whole video from
overlapping windows, proposals [confidence, start, end], and a video-level score that a
single fake segment can move.

Proposals: the per-frame P(fake) (the larger of the visual and audio heads) is cut at several
thresholds; every run of frames above one is a candidate, scored by its mean P(fake) times
its contrast with the frames just outside it (a run that stands out from its surroundings is
surer than one inside a uniformly high stretch). Candidates found at several thresholds overlap, and
the benchmarks count every extra match of a true segment as a false positive, so they go
through Gaussian Soft-NMS (Bodla et al. 2017, as BMN and the LAV-DF and AV-Deepfake1M
baselines use): an overlapping candidate keeps its place for AR@N but loses confidence for
AP. Why thresholds and not boundary regression: the head already gives a frame-level signal
at the video's frame grid, and threshold-and-merge has no parameter to learn that a small
corpus could overfit; the thresholds are fixed, not tuned on the test.

Boundary alternatives: the benchmarks' AR@N keeps up to N proposals per video (50 for
AV-Deepfake1M, 100 for LAV-DF) and counts a true segment as recalled at IoU 0.9 or 0.95 only
when a proposal's ends are within a frame or two of its own; threshold crossings of a smooth
per-frame curve are often one or two frames off. After the primary proposals, the budget goes
to copies of the `boundary_of` strongest ones with each end moved by up to `boundary_shift`
frames (dense start/end pairs around a peak, as BMN-style proposal maps give), nearest first.
Each copy's confidence is its parent's times BOUNDARY_SCALE (1e-6) times exp(-moved^2 / 2), and at
most half the weakest primary's, so it ranks below every primary proposal of its video and AR@5..20
still sees the primaries first. AP ranks the proposals of all videos together: a copy can outrank
another video's primary only when Soft-NMS has left that one near zero, and a copy can itself be a
true positive at IoU 0.9 or 0.95, so AP can move, slightly (on the demo: AP@0.5 and AP@0.75
unchanged, AP@0.9 and AP@0.95 a little higher).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from avlib.dataio.decode import DecodeError
from avlib.dataio.stream import stream_windows
from avlib.dataio.video_cache import media_duration
from avlib.scoring.segment_metrics import iou_1d
from avlib.scoring.videos import window_starts

THRESHOLDS = tuple(np.round(np.arange(0.1, 0.95, 0.1), 2))
SOFT_NMS_SIGMA = 0.3
MAX_PROPOSALS = 100
BOUNDARY_SHIFT = 2          # frames each end of a boundary alternative may move
BOUNDARY_OF = 2             # the strongest proposals that get alternatives (the corpora have 1-2 segments a video)
BOUNDARY_SCALE = 1e-6


def frame_probabilities(model, video: np.ndarray, audio: np.ndarray, *, device="cpu", stride: int | None = None,
                        batch_size: int = 8, amp: bool = False) -> np.ndarray:
    """(T, 2) P(fake) per frame of a whole video (uint8 (T, H, W, 3), float audio at the model's
    sample rate) for the model's heads, each frame's value averaged over the windows that
    hold it. Videos shorter than a window are padded by repeating their last frame."""
    window, per_frame = model.frames, model.sample_rate / model.fps
    t = len(video)
    if t < window:
        video = np.concatenate([video, np.repeat(video[-1:], window - t, 0)])
    need = int(round(max(t, window) * per_frame))
    audio = np.pad(audio, (0, max(0, need - len(audio))))
    n_samples = int(round(window * per_frame))
    starts = window_starts(len(video), window, stride or max(1, window // 2))
    windows = ((s, video[s:s + window], audio[int(round(s * per_frame)):int(round(s * per_frame)) + n_samples], window)
               for s in (int(s) for s in starts))
    return _average_windows(model, windows, len(video), device=device, batch_size=batch_size, amp=amp)[:t]


def stream_frame_probabilities(model, path, *, size: int, device="cpu", stride: int | None = None,
                               batch_size: int = 8, amp: bool = False, threads: int = 0) -> tuple[np.ndarray, float]:
    """frame_probabilities of a video file, decoded once and in windows (avlib.dataio.stream), so
    that memory holds a batch of windows, not the video: ((T, 2) P(fake) per frame, the file's
    duration). T = ceil(duration x fps) frames on the model's grid, fewer when the last grid times
    lie past the file's last frame. Equal to frame_probabilities of decode_whole's arrays when
    every grid time has a frame (tested). Raises DecodeError, or ValueError for a file that states
    no duration."""
    window, fps, path = model.frames, model.fps, Path(path)
    duration = media_duration(path)
    if not duration:
        raise ValueError("the file states no duration")
    nominal = max(int(math.ceil(duration * fps - 1e-6)), window)
    starts = window_starts(nominal, window, stride or max(1, window // 2))
    clips = stream_windows(path, [s / fps for s in starts], frames=window, size=size, fps=fps,
                           sample_rate=model.sample_rate, threads=threads)
    windows = ((int(round(c.start_seconds * fps)), c.video, c.audio, int(c.valid_frames)) for c in clips)
    p, covered = _average_windows(model, windows, nominal, device=device, batch_size=batch_size, amp=amp,
                                  with_coverage=True)
    if covered == 0:
        raise DecodeError("no decodable video frame")
    return p[:covered], float(duration)


def _average_windows(model, windows, t: int, *, device, batch_size: int, amp: bool, with_coverage: bool = False):
    """(t, 2) mean P(fake) per frame over `windows`, an iterable of (start frame, video (window, H, W, 3)
    uint8, audio (samples,) float32, valid frames), scored `batch_size` at a time; with_coverage:
    also the end of the last valid frame."""
    total, count = np.zeros((t, 2)), np.zeros((t, 1))
    covered = 0

    def flush(chunk):
        v = torch.from_numpy(np.stack([w[1] for w in chunk])).to(device).permute(0, 4, 1, 2, 3).float().div_(255.0)
        a = torch.from_numpy(np.stack([w[2] for w in chunk]).astype(np.float32)).to(device)
        probs = torch.sigmoid(model(v, a)["logits"].float()).cpu().numpy()
        for (s, _, _, valid), p in zip(chunk, probs):
            end = min(s + valid, t)
            total[s:end] += p[:end - s]
            count[s:end] += 1

    chunk = []
    with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
        for w in windows:
            chunk.append(w)
            covered = max(covered, w[0] + w[3])
            if len(chunk) == batch_size:
                flush(chunk)
                chunk = []
        if chunk:
            flush(chunk)
    p = total / np.maximum(count, 1)
    return (p, min(covered, t)) if with_coverage else p


def propose(p: np.ndarray, fps: float, *, thresholds=THRESHOLDS, sigma: float = SOFT_NMS_SIGMA,
            max_proposals: int = MAX_PROPOSALS, boundary_shift: int = BOUNDARY_SHIFT,
            boundary_of: int = BOUNDARY_OF) -> np.ndarray:
    """(n, 3) proposals [confidence, start, end] (seconds) from per-frame P(fake) `p` (T,),
    highest confidence first: the primary proposals, then their boundary alternatives (module
    docstring; boundary_shift=0 gives none)."""
    p = np.asarray(p, float)
    candidates = {}
    for threshold in thresholds:
        above = np.concatenate([[False], p >= threshold, [False]])
        edges = np.flatnonzero(np.diff(above.astype(int)))
        for a, b in zip(edges[::2], edges[1::2]):
            inside = p[a:b].mean()
            around = np.concatenate([p[max(0, a - 3):a], p[b:b + 3]])
            contrast = inside - (around.mean() if len(around) else 0.0)
            candidates[(a, b)] = max(candidates.get((a, b), 0.0), inside * max(contrast, 0.05))
    if not candidates:
        return np.zeros((0, 3))
    rows = np.array([[c, a / fps, b / fps] for (a, b), c in candidates.items()])
    rows = soft_nms(rows, sigma)
    return np.concatenate([rows, boundary_alternatives(rows, fps, len(p), boundary_shift, boundary_of)])[:max_proposals]


def boundary_alternatives(rows: np.ndarray, fps: float, n_frames: int, shift: int, of: int) -> np.ndarray:
    """(m, 3) copies of the first `of` proposals of `rows` with start and end each moved by up to
    `shift` frames (within the video, non-empty, none equal to a proposal already there), nearest
    and strongest first, at BOUNDARY_SCALE times the parent's confidence."""
    seen = {(int(round(s * fps)), int(round(e * fps))) for _, s, e in rows}
    moves = sorted(((ds, de) for ds in range(-shift, shift + 1) for de in range(-shift, shift + 1)
                    if ds or de), key=lambda m: (m[0] ** 2 + m[1] ** 2, m))
    out = []
    for c, s, e in rows[:of]:
        a, b = int(round(s * fps)), int(round(e * fps))
        for ds, de in moves:
            na, nb = a + ds, b + de
            if 0 <= na < nb <= n_frames and (na, nb) not in seen:
                seen.add((na, nb))
                out.append([c * BOUNDARY_SCALE * np.exp(-(ds * ds + de * de) / 2.0), na / fps, nb / fps])
    if not out:
        return np.zeros((0, 3))
    out = np.array(out)
    out = out[np.argsort(-out[:, 0], kind="stable")]
    out[:, 0] = np.minimum(out[:, 0], 0.5 * rows[:, 0].min())      # below every primary, whatever Soft-NMS left
    return out


def soft_nms(rows: np.ndarray, sigma: float = SOFT_NMS_SIGMA) -> np.ndarray:
    """Gaussian Soft-NMS of proposals [confidence, start, end]: each pick decays the confidence
    of the others by exp(-IoU^2 / sigma). Returns them in pick order."""
    rows = rows.copy()
    out = []
    while len(rows):
        best = int(np.argmax(rows[:, 0]))
        pick = rows[best]
        out.append(pick)
        rows = np.delete(rows, best, axis=0)
        if len(rows):
            rows[:, 0] *= np.exp(-iou_1d(rows[:, 1:], pick[None, 1:])[:, 0] ** 2 / sigma)
    return np.array(out)


def proposal_modality(frame_p: np.ndarray, start: float, end: float, fps: float) -> str:
    """visual, audio or both: which heads are above 0.5 on average over the proposal's frames
    (the larger one when neither is)."""
    a, b = int(round(start * fps)), max(int(round(end * fps)), int(round(start * fps)) + 1)
    visual, audio = frame_p[a:b].mean(0)
    if visual >= 0.5 and audio >= 0.5:
        return "both"
    return "visual" if visual >= audio else "audio"


def video_scores(p: np.ndarray, fps: float, *, smooth_seconds: float = 0.2) -> dict:
    """Video-level P(fake) from per-frame P(fake) `p` (T,): `max` (the peak of p smoothed over
    `smooth_seconds`, so that one short fake segment decides) and `mean` (the mean over frames,
    what averaging window scores gives)."""
    k = max(1, int(round(smooth_seconds * fps)))
    smoothed = np.convolve(p, np.ones(k) / k, mode="valid") if len(p) >= k else p
    return {"max": float(np.max(smoothed)), "mean": float(np.mean(p))}
