"""Decode one window of a video file with PyAV: `frames` RGB frames on a fixed-rate time grid
and the mono 16 kHz audio of exactly the same seconds, in one pass over the container.

Frames are chosen by timestamp (nearest decoded frame to each grid time), never by the
header's frame count, so 30 fps and variable-rate sources land on the same grid. Only the
window is kept in memory, so a long video costs no more than a short one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import librosa
import numpy as np

from avlib.dataio.face import crop_faces, square_resize

SAMPLE_RATE = 16000


class DecodeError(Exception):
    """The file cannot give a video window (unreadable, no video stream, no decodable frame)."""


@dataclass
class DecodedClip:
    video: np.ndarray        # (T, size, size, 3) uint8 RGB
    audio: np.ndarray        # (round(T / fps * sample_rate),) float32 mono, silence where missing
    valid_frames: int        # frames that came from the file; the rest repeat the last one
    has_audio: bool
    start_seconds: float     # window start, relative to the first video frame
    duration: float | None   # container duration when known


def decode_clip(path: str | Path, *, frames: int = 128, size: int = 112, fps: float = 25.0,
                sample_rate: int = SAMPLE_RATE, window: str = "start", skip_silence: bool = False,
                face_crop: bool = False, threads: int = 0, offset: float | None = None,
                max_pixels: int = 0) -> DecodedClip:
    """Decode the window of `frames` / `fps` seconds from `path`.

    window='start' begins at the first frame, 'center' centres the window in the clip;
    skip_silence moves the start past leading silence in the audio (a known FakeAVCeleb
    shortcut). threads=1 decodes in the calling thread (for worker pools); 0 lets FFmpeg
    choose. `offset` (seconds) places the window explicitly, overriding window/skip_silence.
    `max_pixels` > 0 makes the decoder refuse larger frames (FFmpeg's max_pixels) before
    allocating them, even where the stream changes size after its header.
    Raises DecodeError with a one-line reason for unusable files.
    """
    path = Path(path)
    container = open_media(path, max_pixels)
    try:
        return _decode(container, frames, size, fps, sample_rate, window, skip_silence, face_crop, path, threads,
                       offset)
    finally:
        container.close()


def open_media(path: Path, max_pixels: int = 0):
    """The PyAV container of `path`, its video decoder refusing frames over `max_pixels` (> 0).
    Raises DecodeError with a one-line reason for a missing, empty or unreadable file."""
    if not path.is_file():
        raise DecodeError("file not found")
    if path.stat().st_size == 0:
        raise DecodeError("empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as e:
        raise DecodeError(f"not a readable media file ({_short(e)})") from e
    if max_pixels and container.streams.video:
        container.streams.video[0].codec_context.options = {"max_pixels": str(min(max_pixels, 2**31 - 1))}
    return container


def _decode(container, frames, size, fps, sample_rate, window, skip_silence, face_crop, path, threads, offset=None):
    if not container.streams.video:
        raise DecodeError("no video stream (audio-only file)")
    vstream = container.streams.video[0]
    astream = container.streams.audio[0] if container.streams.audio else None
    if threads == 1:
        vstream.codec_context.thread_count = 1
    else:
        vstream.thread_type = "AUTO"
    seconds = frames / fps
    n_samples = int(round(seconds * sample_rate))
    duration = container.duration / av.time_base if container.duration else None
    v0 = float(vstream.start_time * vstream.time_base) if vstream.start_time is not None else 0.0

    start = 0.0
    if offset is not None:
        start = max(0.0, float(offset))
    else:
        if skip_silence and astream is not None:
            start = leading_silence_seconds(path, sample_rate)
        if window == "center" and duration:
            start += max(0.0, (duration - start - seconds) / 2)
    t0 = v0 + start
    if start > 1.0:
        try:
            container.seek(int((t0 - 0.5) * av.time_base), backward=True)
        except av.error.FFmpegError:
            container.seek(0)
    grid = t0 + np.arange(frames) / fps
    t_end = t0 + seconds

    picker = _FramePicker(grid, size, face_crop)
    audio = _AudioCollector(sample_rate) if astream is not None else None
    streams = [vstream] + ([astream] if astream is not None else [])
    errors = 0
    for packet in container.demux(streams):
        try:
            decoded = packet.decode()
        except av.error.FFmpegError:
            errors += 1          # a damaged packet; concealment goes on with the next one
            continue
        for frame in decoded:
            if packet.stream.type == "video":
                picker.add(frame)
            elif audio is not None:
                audio.add(frame)
        if picker.done and (audio is None or audio.end_time >= t_end):
            break
    picker.finish()
    if picker.valid == 0:
        raise DecodeError("no decodable video frame in the window" + (f" ({errors} damaged packets)" if errors else ""))
    samples = audio.window(t0, n_samples) if audio is not None else None
    has_audio = samples is not None
    if samples is None:
        samples = np.zeros(n_samples, np.float32)
    return DecodedClip(picker.video(), samples, picker.valid, has_audio, start, duration)


class _FramePicker:
    """Assigns to each grid time the decoded frame nearest to it (streaming, bounded memory)."""

    def __init__(self, grid: np.ndarray, size: int, face_crop: bool, convert=None):
        self.grid, self.size, self.face_crop = grid, size, face_crop
        # frame -> image; stream.py passes one that converts each frame once for overlapping windows
        self.convert = convert or (lambda frame: convert_frame(frame, size, face_crop))
        self.k = 0
        self.prev = None          # (time, av.VideoFrame)
        self.prev_array = None    # the converted image of prev, reused when a frame repeats
        self.images: list[np.ndarray] = []
        self.step = None
        self.count = 0

    @property
    def done(self) -> bool:
        return self.k >= len(self.grid)

    @property
    def valid(self) -> int:
        return len(self.images)

    def add(self, frame) -> None:
        t = frame.time if frame.time is not None else (self.prev[0] + (self.step or 0.04) if self.prev else 0.0)
        self.count += 1
        if self.prev is None:
            self.prev = (t, frame)
            return
        if t <= self.prev[0]:     # out-of-order or duplicate timestamp: keep the first
            return
        self.step = t - self.prev[0]
        midpoint = (self.prev[0] + t) / 2
        while not self.done and self.grid[self.k] < midpoint:
            self._take_prev()
        self.prev, self.prev_array = (t, frame), None

    def finish(self) -> None:
        if self.prev is None:
            return
        last_end = self.prev[0] + (self.step or 0.0) / 2 + 1e-6
        if self.count == 1:
            last_end = self.grid[0] + 1e-6   # a 1-frame clip covers one grid point
        while not self.done and self.grid[self.k] <= max(last_end, self.grid[0]):
            self._take_prev()

    def _take_prev(self) -> None:
        if self.prev_array is None:
            self.prev_array = self.convert(self.prev[1])
        self.images.append(self.prev_array)
        self.k += 1

    def video(self) -> np.ndarray:
        images = self.images
        if self.face_crop:
            images = crop_faces(images, self.size)
        video = np.stack(images)
        if len(video) < len(self.grid):  # short clip: repeat the last frame, valid_frames says so
            pad = np.repeat(video[-1:], len(self.grid) - len(video), axis=0)
            video = np.concatenate([video, pad])
        return video


class _AudioCollector:
    """Resamples every decoded audio frame to mono float32 at `rate`, keeping its start time."""

    def __init__(self, rate: int):
        self.rate = rate
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        self.start = None
        self.chunks: list[np.ndarray] = []
        self.n = 0

    @property
    def end_time(self) -> float:
        return -math.inf if self.start is None else self.start + self.n / self.rate

    def add(self, frame) -> None:
        if self.start is None:
            self.start = frame.time if frame.time is not None else 0.0
        for out in self.resampler.resample(frame):
            chunk = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
            self.chunks.append(chunk)
            self.n += len(chunk)

    def window(self, t0: float, n_samples: int) -> np.ndarray | None:
        """Samples from t0 for n_samples (silence where the track has none); None if no audio."""
        for out in self.resampler.resample(None):
            self.chunks.append(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))
        if not self.chunks:
            return None
        samples = np.concatenate(self.chunks)
        offset = int(round((t0 - self.start) * self.rate))
        out = np.zeros(n_samples, np.float32)
        src = samples[max(offset, 0): max(offset, 0) + n_samples - max(-offset, 0)]
        out[max(-offset, 0): max(-offset, 0) + len(src)] = src
        return out


def convert_frame(frame, size: int, face_crop: bool) -> np.ndarray:
    """A decoded frame as the cache keeps it: RGB, centre-square-cropped and resized to size x
    size, or (face_crop) only bounded in size, for the face crop that follows."""
    rgb = frame_to_rgb(frame)
    return limit_side(rgb, 4 * size) if face_crop else square_resize(rgb, size)


def frame_to_rgb(frame) -> np.ndarray:
    """RGB uint8 (H, W, 3) of a decoded frame. yuv420p (nearly every H.264 file) is converted
    by OpenCV, about twice as fast as FFmpeg's scaler here; other formats go through FFmpeg."""
    if frame.format.name == "yuv420p" and frame.width % 2 == 0 and frame.height % 2 == 0:
        return cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2RGB_I420)
    return frame.to_ndarray(format="rgb24")


def limit_side(rgb: np.ndarray, max_short_side: int) -> np.ndarray:
    """Downscale so the short side is at most `max_short_side` (bounds memory for face crops)."""
    h, w = rgb.shape[:2]
    scale = max_short_side / min(h, w)
    if scale >= 1:
        return rgb
    return cv2.resize(rgb, (int(round(w * scale)), int(round(h * scale))), interpolation=cv2.INTER_AREA)


def leading_silence_seconds(path: str | Path, sample_rate: int = SAMPLE_RATE, top_db: float = 40.0,
                            max_seconds: float = 10.0) -> float:
    """Seconds of silence (more than `top_db` below the loudest part of the first
    `max_seconds`) before the first sound; 0.0 when the file has no audio."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return 0.0
        collector = _AudioCollector(sample_rate)
        for frame in container.decode(audio=0):
            collector.add(frame)
            if collector.end_time - collector.start >= max_seconds:
                break
        samples = collector.window(collector.start or 0.0, int(max_seconds * sample_rate))
    if samples is None or not np.any(samples):
        return 0.0
    _, (begin, _) = librosa.effects.trim(samples, top_db=top_db, frame_length=512, hop_length=128)
    return begin / sample_rate


def _short(error: Exception) -> str:
    return str(error).splitlines()[0][:200]
