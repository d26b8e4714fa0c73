"""MFCCs for one window, synchronised with the video window.

The audio window spans exactly the video window (frames / fps seconds). The hop is chosen
so that `steps` MFCC frames span it: hop = round(window_seconds * sample_rate / steps)
samples (410 samples = 25.6 ms at the defaults 128 frames, 25 fps, 200 steps, 16 kHz);
with centred frames librosa returns 1 + N // hop frames, which are trimmed at the end or
padded by repeating the last frame to exactly `steps`.
"""
from __future__ import annotations

import librosa
import numpy as np


def mfcc_hop(window_seconds: float, sample_rate: int, steps: int) -> int:
    """Hop length in samples so that `steps` frames span `window_seconds`."""
    return max(1, int(round(window_seconds * sample_rate / steps)))


def compute_mfcc(audio: np.ndarray, sample_rate: int, n_mfcc: int, steps: int) -> np.ndarray:
    """(steps, n_mfcc) float32 MFCCs of `audio` (mono float32, the whole window)."""
    hop = mfcc_hop(len(audio) / sample_rate, sample_rate, steps)
    n_fft = max(512, 1 << (hop - 1).bit_length())   # >= 32 ms at 16 kHz and never skips samples
    mfcc = librosa.feature.mfcc(y=np.asarray(audio, np.float32), sr=sample_rate, n_mfcc=n_mfcc,
                                n_fft=n_fft, hop_length=hop, n_mels=max(40, n_mfcc), center=True)
    mfcc = mfcc.T.astype(np.float32)
    if len(mfcc) >= steps:
        return np.ascontiguousarray(mfcc[:steps])
    return np.concatenate([mfcc, np.repeat(mfcc[-1:], steps - len(mfcc), axis=0)])


def waveform_to_int16(audio: np.ndarray) -> np.ndarray:
    """float audio in [-1, 1] -> int16, what the cache keeps (audio.npy)."""
    return np.clip(np.round(np.asarray(audio, np.float32) * 32767.0), -32768, 32767).astype(np.int16)
