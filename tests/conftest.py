"""Shared fixtures: small real media files made with PyAV, and tiny caches."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


def face_frames(n: int, h: int = 64, w: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Moving-gradient RGB frames whose brightness encodes the frame number (frame i -> 4 i)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 40, (h, w, 3)).astype(np.int32)
    return [np.clip(base + 4 * i, 0, 255).astype(np.uint8) for i in range(n)]


def tone(seconds: float, rate: int = 16000, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    y = (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([y] * channels) if channels > 1 else y


@pytest.fixture
def make_video(tmp_path):
    """make_video(name, n_frames=50, fps=25, seconds=None, audio=True, ...) -> Path of a real encoded file."""
    from avlib.media import write_video

    def make(name: str = "clip.mp4", n_frames: int = 50, fps: float = 25.0, *, audio: bool = True,
             h: int = 64, w: int = 64, rate: int = 16000, channels: int = 1, **kwargs):
        frames = face_frames(n_frames, h, w) if n_frames else None
        sound = tone(n_frames / fps if n_frames else 2.0, rate, channels=channels) if audio else None
        return write_video(tmp_path / name, frames, fps, sound, rate, **kwargs)

    return make
