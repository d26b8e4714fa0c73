"""What a scoring run accepts from a file it did not make: limits on the file's size, its frames'
size and its duration, checked from the size and stream header before any frame is decoded;
and the video files of the paths a user names."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import av

from avlib.dataio.decode import DecodeError
from avlib.dataio.indexers import VIDEO_EXTENSIONS


@dataclass(frozen=True)
class InputLimits:
    """What predict accepts from a file; each limit is a command-line flag."""
    max_file_mb: float = 4096.0     # --max-file-mb: size of the file, MiB
    max_side: int = 4096            # --max-side: width or height of a frame, pixels
    max_duration: float = 3600.0    # --max-duration: duration in the header, seconds


class InputRefused(ValueError):
    """A file is over one of the InputLimits; the message names the limit and its flag."""


def check_input(path: Path, limits: InputLimits) -> float | None:
    """Check `path` against `limits` from its size and stream header, decoding no frame beyond
    the limit; returns its duration in seconds (None when the header has none).

    Raises InputRefused naming the limit and its flag, DecodeError for unreadable files."""
    if not path.is_file():
        raise DecodeError("file not found")
    size_mb = path.stat().st_size / 2**20
    if size_mb > limits.max_file_mb:
        raise InputRefused(f"over --max-file-mb {limits.max_file_mb:g}: the file is {size_mb:,.1f} MiB "
                           f"(nothing was read)")
    side = limits.max_side
    try:     # H.264's probe decodes a frame: max_pixels makes it refuse one over the limit instead
        with av.open(str(path), options={"max_pixels": str(min(side * side, 2**31 - 1))}) as container:
            if not container.streams.video:
                raise DecodeError("no video stream (audio-only file)")
            header = container.streams.video[0].codec_context
            width, height = header.width, header.height
            duration = container.duration / av.time_base if container.duration else None
    except av.error.FFmpegError as e:
        raise DecodeError(f"not a readable media file ({str(e).splitlines()[0][:200]})") from e
    if max(width, height) > side:
        raise InputRefused(f"over --max-side {side}: frames of {width}x{height} pixels (from the stream header; "
                           f"no frame decoded)")
    if not width or not height:
        raise InputRefused(f"frame size unknown at --max-side {side}: the header gives none, and no frame of at "
                           f"most {side}x{side} pixels decodes to tell")
    if duration is not None and duration > limits.max_duration:
        raise InputRefused(f"over --max-duration {limits.max_duration:g}: the file lasts {duration:,.0f} s "
                           f"(no frame decoded)")
    return duration


def expand_paths(paths: list[str]) -> list[Path]:
    """Files as given, folders expanded to the video files below them (sorted)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in VIDEO_EXTENSIONS and f.is_file())
        else:
            out.append(p)
    return out


def parse_shard(text: str) -> tuple[int, int]:
    """An argparse type: 'K/N', the K-th (from 0) of N shards."""
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit() and 0 <= int(k) < int(n)):
        raise argparse.ArgumentTypeError(f"must be K/N with 0 <= K < N (e.g. 0/4 .. 3/4), got {text}")
    return int(k), int(n)


def take_shard(paths: list[Path], shard: tuple[int, int] | None) -> list[Path]:
    """The files of shard (K, N) (None: all): every N-th of the sorted list from the K-th, so that
    N array jobs on a cluster split a folder deterministically and together score all of it."""
    paths = sorted(paths, key=str)
    if shard is None:
        return paths
    k, n = shard
    return [p for i, p in enumerate(paths) if i % n == k]
