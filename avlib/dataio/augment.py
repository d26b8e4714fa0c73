"""Training-time augmentation of cached clips (03_train's `augment` and `self_blend`).

Two kinds, both applied to the uint8 video (3, T, H, W) of a training clip as it is loaded:
- `augment`: what a camera or an upload does to any clip, real or fake, so that the classifier
  cannot lean on one generator's look: `flip` (mirror the whole clip), `colour` (exposure,
  contrast and colour cast), `noise` (sensor grain, new every frame), `compress` (JPEG at a
  random quality, or a resampling blur). The label stays.
- `self_blend`: a real clip becomes a fake one by blending a restyled copy of its own lower face
  back into it through a soft elliptical mask whose position jitters from frame to frame. The
  idea is Self-Blended Images (Shiohara & Yamasaki, CVPR 2022), which taught face-swap
  detectors the one thing every face swap leaves, a blended region that does not quite fit
  its surroundings, instead of the fingerprints of the generators in the training set; it is
  the strongest known remedy for cross-generator failure on the visual side. Here in video:
  the jitter gives the frame-to-frame flicker of a per-frame swap. The audio stays the clip's
  own and stays in sync, so the sync branch's offset loss skips these clips (label 1).

Caveat for the synthetic corpus: its face-swap analogues all paste a re-rendered region through
a soft ellipse (avlib.dataio.synthetic_styles.fake_region), as real face swaps do. Self-blending
exploits that structure, so a held-out style tests generalisation across what is rendered
inside the region (blend, ghost, blocky, warp), not across ways of compositing it.

Every draw comes from the `rng` passed in: avlib.dataio.loader derives it from the epoch's seed and the
clip's index, so a resumed run augments exactly like an uninterrupted one.
"""
from __future__ import annotations

import cv2
import numpy as np

AUGMENTATIONS = ("flip", "colour", "noise", "compress")


def parse_augment(spec) -> tuple[str, ...]:
    """A tuple of augmentation names from a comma-separated string (or a sequence); '' and
    'none' give (). Raises ValueError naming the allowed names for an unknown or repeated one."""
    if spec is None:
        return ()
    names = tuple(s.strip() for s in spec.split(",") if s.strip()) if isinstance(spec, str) else tuple(spec)
    if names == ("none",):
        return ()
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown or len(set(names)) != len(names):
        raise ValueError(f"must be distinct names among {', '.join(AUGMENTATIONS)} (comma-separated), "
                         f"or none; got {spec!r}")
    return names


def _frames(video: np.ndarray) -> np.ndarray:
    """uint8 (3, T, H, W) -> float32 (T, H, W, 3), a new array."""
    return np.ascontiguousarray(video.transpose(1, 2, 3, 0), dtype=np.float32)


def _video(frames: np.ndarray) -> np.ndarray:
    """float (T, H, W, 3) -> uint8 (3, T, H, W), rounded and clipped."""
    return np.ascontiguousarray(np.clip(np.rint(frames), 0, 255).astype(np.uint8).transpose(3, 0, 1, 2))


def _resample(frames: np.ndarray, scale: float, up: int) -> np.ndarray:
    """Each frame (T, H, W, 3) shrunk by `scale` (area averaging) and enlarged back with `up`."""
    h, w = frames.shape[1:3]
    small = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    return np.stack([cv2.resize(cv2.resize(f, small, interpolation=cv2.INTER_AREA), (w, h), interpolation=up)
                     for f in frames])


def augment_clip(video: np.ndarray, names, rng: np.random.Generator) -> np.ndarray:
    """`video` (uint8, 3 x T x H x W) with the augmentations `names`, each drawn once per clip
    (grain: per frame). Returns a new uint8 array of the same shape."""
    if not names:
        return video
    frames = _frames(video)
    if "flip" in names and rng.random() < 0.5:
        frames = frames[:, :, ::-1]
    if "colour" in names:
        mean = frames.mean(axis=(0, 1, 2), keepdims=True)
        contrast, exposure = rng.uniform(0.75, 1.25), rng.uniform(0.8, 1.2)
        cast = rng.uniform(0.85, 1.15, 3).astype(np.float32)
        frames = ((frames - mean) * contrast + mean) * exposure * cast
    if "noise" in names:
        frames = frames + rng.uniform(0, 8) * rng.standard_normal(frames.shape, dtype=np.float32)
    if "compress" in names:
        frames = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
        if rng.random() < 0.5:
            quality = int(rng.integers(50, 96))
            frames = np.stack([cv2.imdecode(cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, quality])[1],
                                            cv2.IMREAD_UNCHANGED) for f in frames])
        else:
            frames = _resample(frames, rng.uniform(0.5, 0.9), cv2.INTER_LINEAR)
        frames = frames.astype(np.float32)
    return _video(frames)


def self_blend(video: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A pseudo-fake of a real clip (uint8, 3 x T x H x W): a restyled copy of the clip (blurred,
    sharpened or resampled; its colour shifted; slightly scaled and moved) blended back over the
    lower face through a soft ellipse that jitters every frame. Returns a new uint8 array."""
    frames = _frames(video)
    t, h, w, _ = frames.shape
    unit = h / 32.0                                    # sizes below are for a 32-pixel crop
    kind = rng.integers(3)
    if kind == 0:
        sigma = rng.uniform(0.5, 1.2) * unit
        source = np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in frames])
    elif kind == 1:
        amount = rng.uniform(0.6, 1.8)
        source = np.stack([f + amount * (f - cv2.GaussianBlur(f, (0, 0), unit)) for f in frames])
    else:
        scale = rng.uniform(0.35, 0.7)
        source = _resample(frames, scale, cv2.INTER_NEAREST if rng.random() < 0.5 else cv2.INTER_LINEAR)
    source = source * rng.uniform(0.9, 1.1, 3).astype(np.float32) + rng.normal(0, 10, 3).astype(np.float32)
    cx, cy = w * (0.5 + rng.normal(0, 0.03)), h * rng.uniform(0.55, 0.72)
    rx, ry = w * rng.uniform(0.2, 0.36), h * rng.uniform(0.16, 0.32)
    zoom = rng.uniform(1.0, 1.06)
    move = rng.normal(0, 0.5 * unit, 2)
    warp = cv2.getRotationMatrix2D((float(cx), float(cy)), 0.0, float(zoom))
    warp[:, 2] += move
    source = np.stack([cv2.warpAffine(f, warp, (w, h), borderMode=cv2.BORDER_REFLECT101) for f in source])
    edge, jitter = rng.uniform(0.1, 0.35), rng.uniform(0.1, 0.6) * unit
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty_like(frames)
    for k in range(t):
        jx, jy = rng.normal(0, jitter, 2)
        d = np.sqrt(((xx - cx - jx) / rx) ** 2 + ((yy - cy - jy) / ry) ** 2)
        mask = np.clip((1 + edge / 2 - d) / edge, 0, 1)[..., None]
        out[k] = frames[k] * (1 - mask) + source[k] * mask
    return _video(out)
