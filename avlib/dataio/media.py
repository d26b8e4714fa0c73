"""Write real encoded video files with PyAV (H.264/AAC by default): used by the synthetic
corpus and by the tests, which build every odd file they need on the fly."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterable

import av
import numpy as np

CODECS = {  # container suffix -> (video codec, audio codec)
    ".mp4": ("libx264", "aac"), ".mov": ("libx264", "aac"), ".mkv": ("libx264", "aac"),
    ".flv": ("flv", "aac"), ".avi": ("mpeg4", "mp3"), ".webm": ("libvpx", "libopus"),
}


def write_video(path: str | Path, frames: Iterable[np.ndarray] | None, fps: float = 25.0,
                audio: np.ndarray | None = None, sample_rate: int = 16000, *,
                timestamps: Iterable[float] | None = None, video_codec: str | None = None,
                audio_codec: str | None = None, pix_fmt: str = "yuv420p", crf: int = 23) -> Path:
    """Encode RGB uint8 frames (H, W, 3) and/or float audio in [-1, 1] ((n,) mono or (ch, n))
    into `path`. `timestamps` (seconds, increasing) gives a variable frame rate; frames=None
    writes an audio-only file. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    vcodec, acodec = CODECS.get(path.suffix.lower(), ("libx264", "aac"))
    vcodec, acodec = video_codec or vcodec, audio_codec or acodec
    frames = list(frames) if frames is not None else []
    with av.open(str(path), mode="w") as out:
        vs = as_ = None
        if frames:
            h, w = frames[0].shape[:2]
            rate = Fraction(fps).limit_denominator(1001)
            vs = out.add_stream(vcodec, rate=rate)
            vs.width, vs.height, vs.pix_fmt = w - w % 2, h - h % 2, pix_fmt
            vs.codec_context.thread_count = 1    # threaded encoders do not give the same bytes twice
            if vcodec == "libx264":
                # mbtree off: x264's macroblock-tree rate control gave different bytes for the
                # same frames from one call to the next inside a long-lived worker process
                # (seen 1 call in 3 under a fork server); without it every call matched.
                vs.options = {"crf": str(crf), "preset": "veryfast", "x264-params": "mbtree=0"}
            if timestamps is not None:
                vs.codec_context.time_base = Fraction(1, 1000)
        if audio is not None:
            audio = np.atleast_2d(np.asarray(audio, np.float32))
            layout = "mono" if audio.shape[0] == 1 else "stereo"
            as_ = out.add_stream(acodec, rate=sample_rate, layout=layout)
        if vs is not None:
            times = list(timestamps) if timestamps is not None else None
            for i, img in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img[:vs.height, :vs.width]), format="rgb24")
                if times is not None:
                    frame.pts, frame.time_base = int(round(times[i] * 1000)), Fraction(1, 1000)
                else:
                    frame.pts = i
                for packet in vs.encode(frame):
                    out.mux(packet)
            for packet in vs.encode():
                out.mux(packet)
        if as_ is not None:
            _encode_audio(out, as_, audio, sample_rate)
    return path


def _encode_audio(out, stream, audio: np.ndarray, sample_rate: int) -> None:
    fmt = stream.codec_context.codec.audio_formats[0].name if stream.codec_context.codec.audio_formats else "fltp"
    layout = "mono" if audio.shape[0] == 1 else "stereo"
    frame_size = stream.codec_context.frame_size or 1024
    resampler = av.AudioResampler(format=fmt, layout=layout, rate=sample_rate)
    pts = 0
    for start in range(0, audio.shape[1], frame_size):
        chunk = np.ascontiguousarray(audio[:, start:start + frame_size])
        src = av.AudioFrame.from_ndarray(chunk.reshape(1, -1) if layout == "mono" else chunk.T.reshape(1, -1).copy(),
                                         format="flt", layout=layout)
        src.sample_rate, src.pts = sample_rate, pts
        pts += chunk.shape[1]
        for frame in resampler.resample(src):
            for packet in stream.encode(frame):
                out.mux(packet)
    for frame in resampler.resample(None):
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
