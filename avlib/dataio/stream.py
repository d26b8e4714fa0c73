"""Every window of a long video from one forward pass of the decoder.

decode_clip opens the file, seeks and decodes for each window it is asked for; over a whole
video that repeats the seek and the decoding around it once per window. stream_windows decodes
the file once, from its start, and hands out the windows as the decoding reaches their end,
each as decode_clip(path, offset=start) gives it (the same frame picked for each grid time, the
same audio samples; audio resampled from another rate can differ in the last bits at a window's
edge, where decode_clip flushes its resampler). Memory holds the windows being filled and the
audio since the earliest of them, whatever the length of the video.
"""
from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from avlib.dataio.decode import SAMPLE_RATE, DecodedClip, DecodeError, _FramePicker, convert_frame, open_media

LEAD = 1.0          # seconds before a window's first grid time at which its picker starts to watch the frames


class _RollingAudio:
    """Mono float32 samples at `rate` from the resampled audio frames, with their start time;
    samples before a given time can be dropped, so a long track is never held whole."""

    def __init__(self, rate: int):
        self.rate = rate
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        self.start = None          # time of sample 0 of the track
        self.first = 0             # index (from the track's start) of the first sample kept
        self.chunks: deque[np.ndarray] = deque()
        self.n = 0                 # samples seen since the track's start

    @property
    def end_time(self) -> float:
        return -np.inf if self.start is None else self.start + self.n / self.rate

    def add(self, frame) -> None:
        if self.start is None:
            self.start = frame.time if frame.time is not None else 0.0
        self._append(self.resampler.resample(frame))

    def flush(self) -> None:
        self._append(self.resampler.resample(None))

    def _append(self, frames) -> None:
        for out in frames:
            chunk = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
            self.chunks.append(chunk)
            self.n += len(chunk)

    def drop_before(self, t: float) -> None:
        """Forget whole chunks that end before time `t`."""
        if self.start is None:
            return
        keep_from = int(np.floor((t - self.start) * self.rate))
        while self.chunks and self.first + len(self.chunks[0]) <= keep_from:
            self.first += len(self.chunks.popleft())

    def window(self, t0: float, n_samples: int) -> np.ndarray | None:
        """Samples from t0 for n_samples (silence where the track has none); None if no audio."""
        if self.start is None or not self.chunks:
            return None if self.start is None else np.zeros(n_samples, np.float32)
        offset = int(round((t0 - self.start) * self.rate)) - self.first
        samples = np.concatenate(self.chunks)
        out = np.zeros(n_samples, np.float32)
        src = samples[max(offset, 0): max(offset, 0) + n_samples - max(-offset, 0)]
        out[max(-offset, 0): max(-offset, 0) + len(src)] = src
        return out


def stream_windows(path: str | Path, starts: list[float], *, frames: int = 128, size: int = 112, fps: float = 25.0,
                   sample_rate: int = SAMPLE_RATE, face_crop: bool = False, threads: int = 1,
                   max_pixels: int = 0) -> Iterator[DecodedClip]:
    """The window of `frames` / `fps` seconds at each of `starts` (seconds from the first video
    frame, ascending), in order, decoding `path` once. A window past the last frame is not
    yielded. Raises DecodeError with a one-line reason for an unusable file."""
    container = open_media(Path(path), max_pixels)
    try:
        if not container.streams.video:
            raise DecodeError("no video stream (audio-only file)")
        vstream = container.streams.video[0]
        if threads == 1:
            vstream.codec_context.thread_count = 1
        else:                     # 0: FFmpeg picks (one per core); n > 1: n threads
            vstream.thread_type = "AUTO"
            if threads > 1:
                vstream.codec_context.thread_count = threads
        astream = container.streams.audio[0] if container.streams.audio else None
        yield from _stream(container, vstream, astream, sorted(float(s) for s in starts), frames, size, fps,
                           sample_rate, face_crop)
    finally:
        container.close()


def _stream(container, vstream, astream, starts, frames, size, fps, sample_rate, face_crop):
    seconds, n_samples = frames / fps, int(round(frames / fps * sample_rate))
    duration = container.duration / av.time_base if container.duration else None
    v0 = float(vstream.start_time * vstream.time_base) if vstream.start_time is not None else 0.0
    pending = deque()                # (start, picker), in order
    upcoming = deque(starts)
    last = [None, None]              # the frame converted last and its image: overlapping windows take
                                     # the same frames, each converted once

    def convert(frame):
        if last[0] is not frame:
            last[0], last[1] = frame, convert_frame(frame, size, face_crop)
        return last[1]

    audio = _RollingAudio(sample_rate) if astream is not None else None
    streams = [vstream] + ([astream] if astream is not None else [])

    def clip(start, picker, has_audio_track):
        samples = audio.window(v0 + start, n_samples) if has_audio_track else None
        return DecodedClip(picker.video(), samples if samples is not None else np.zeros(n_samples, np.float32),
                           picker.valid, samples is not None, start, duration)

    for packet in container.demux(streams):
        try:
            decoded = packet.decode()
        except av.error.FFmpegError:
            continue                 # a damaged packet; concealment goes on with the next one
        for frame in decoded:
            if packet.stream.type == "video":
                t = frame.time if frame.time is not None else 0.0
                while upcoming and t >= v0 + upcoming[0] - LEAD:
                    start = upcoming.popleft()
                    pending.append((start, _FramePicker(v0 + start + np.arange(frames) / fps, size, face_crop,
                                                        convert)))
                for _, picker in pending:
                    picker.add(frame)
            elif audio is not None:
                audio.add(frame)
        while pending and pending[0][1].done and (audio is None or audio.end_time >= v0 + pending[0][0] + seconds):
            start, picker = pending.popleft()
            yield clip(start, picker, audio is not None)
        if audio is not None:
            earliest = pending[0][0] if pending else (upcoming[0] if upcoming else None)
            if earliest is not None:
                audio.drop_before(v0 + earliest - LEAD)
    if audio is not None:
        audio.flush()
    for start, picker in pending:    # windows that reach the end of the file
        if picker.prev is None or v0 + start > picker.prev[0] + (picker.step or 0.0) / 2 + 1e-6:
            continue                 # it starts after the last frame (a container longer than its video)
        picker.finish()
        if picker.valid:
            yield clip(start, picker, audio is not None)
