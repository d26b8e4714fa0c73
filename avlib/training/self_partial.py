"""Self-made partial fakes for training the localiser: a segment of a training window is
altered by a generic corruption, in the picture, the sound or both, and labelled fake there.

Why: a localiser trained only on the corpus's fakes learns those generators' artifacts (three
face-manipulation and three vocoder families in the demo) and misses a fake of an unseen family
whose lips follow its voice, where no sync evidence can help. Self-blended images (Shiohara &
Yamasaki, CVPR 2022) showed that training on generic blending artifacts made from real images
generalises to unseen generators; the same holds for a segment: what the head should learn is
"this stretch differs from the frames around it", not one generator's signature.

The corruptions are deliberately generic and not those of any corpus style: in a soft ellipse
around the lower middle of the frame, a Gaussian blur, a colour cast, or sensor noise; in the
sound, a random smooth equaliser curve, a low-pass, additive noise, or soft clipping. Each
keeps one setting over the whole segment (as a generator would), and the sound is cross-faded
in and out over 10 ms, as the corpus's clones are.
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy.signal import butter, sosfilt

VISUAL_OPS = ("blur", "colour", "noise")
AUDIO_OPS = ("equaliser", "lowpass", "noise", "clip")
MODALITIES = ("visual", "audio", "both")
FADE_SECONDS = 0.01


def plant(video: np.ndarray, audio: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *, fps: float,
          sample_rate: int, seconds=(0.2, 2.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Copies of one window (video (T, H, W, 3) uint8, audio (N,) float32, mask (T, 2) visual/audio
    fake per frame) with one segment of `seconds` (snapped to frames, inside the window) corrupted
    in a random modality and marked fake in the mask."""
    t = len(video)
    low, high = (max(1, int(round(s * fps))) for s in seconds)
    length = int(rng.integers(min(low, t), min(high, t) + 1))
    a = int(rng.integers(0, t - length + 1))
    b = a + length
    modality = MODALITIES[int(rng.integers(len(MODALITIES)))]
    video, audio, mask = video.copy(), audio.copy(), mask.copy()
    if modality in ("visual", "both"):
        video[a:b] = corrupt_frames(video[a:b], rng)
        mask[a:b, 0] = 1
    if modality in ("audio", "both"):
        per_frame = sample_rate / fps
        s0, s1 = int(round(a * per_frame)), min(len(audio), int(round(b * per_frame)))
        if s1 > s0:
            audio[s0:s1] = corrupt_sound(audio[s0:s1], rng, sample_rate)
        mask[a:b, 1] = 1
    return video, audio, mask


def corrupt_frames(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """frames (n, H, W, 3) uint8 with one generic corruption inside a soft ellipse around the lower middle."""
    n, h, w, _ = frames.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = rng.uniform(0.35, 0.65) * w, rng.uniform(0.45, 0.75) * h
    rx, ry = rng.uniform(0.1, 0.25) * w, rng.uniform(0.08, 0.2) * h
    inside = (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1).astype(np.float32)
    region = cv2.GaussianBlur(inside, (0, 0), max(0.8, 0.15 * rx))[..., None]
    op = VISUAL_OPS[int(rng.integers(len(VISUAL_OPS)))]
    f = frames.astype(np.float32)
    if op == "blur":
        sigma = rng.uniform(0.8, 2.0)
        altered = np.stack([cv2.GaussianBlur(x, (0, 0), sigma) for x in f])
    elif op == "colour":
        altered = f * rng.uniform(0.85, 1.15, 3).astype(np.float32) + rng.uniform(-12, 12, 3).astype(np.float32)
    else:
        altered = f + rng.normal(0, rng.uniform(4, 10), f.shape).astype(np.float32)
    return np.clip(f * (1 - region) + altered * region, 0, 255).astype(np.uint8)


def corrupt_sound(x: np.ndarray, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """x (n,) float32 with one generic corruption, at the same loudness, cross-faded in and out."""
    x = x.astype(np.float64)
    op = AUDIO_OPS[int(rng.integers(len(AUDIO_OPS)))]
    if op == "equaliser":
        spectrum = np.fft.rfft(x)
        knots = rng.uniform(-9, 9, 8)                     # dB at 8 points over the band, smoothly joined
        gain_db = np.interp(np.linspace(0, 7, len(spectrum)), np.arange(8), knots)
        y = np.fft.irfft(spectrum * 10 ** (gain_db / 20), n=len(x))
    elif op == "lowpass":
        y = sosfilt(butter(6, rng.uniform(1500, 4000), btype="low", fs=sample_rate, output="sos"), x)
    elif op == "noise":
        level = np.sqrt(np.mean(x ** 2)) + 1e-6
        y = x + rng.normal(0, level * 10 ** (-rng.uniform(10, 25) / 20), len(x))
    else:
        peak = np.abs(x).max() + 1e-9
        y = np.tanh(x / peak * rng.uniform(3, 8)) * peak
    y *= (np.sqrt(np.mean(x ** 2)) + 1e-9) / (np.sqrt(np.mean(y ** 2)) + 1e-9)
    fade = np.ones(len(x))
    ramp = min(int(FADE_SECONDS * sample_rate), len(x) // 2)
    if ramp:
        fade[:ramp] = np.linspace(0, 1, ramp)
        fade[len(x) - ramp:] = np.linspace(1, 0, ramp)
    return (x * (1 - fade) + y * fade).astype(np.float32)
