"""Partial fakes: real talking-face videos of the synthetic corpus in which one or more
segments of 0.2-2 s are replaced, written in AV-Deepfake1M's layout so that the
`avdeepfake1m` indexer reads them as it reads the real dataset.

    <root>/<split>_metadata.json      a list of entries: file, original, split, fake_segments,
                                      visual_fake_segments, audio_fake_segments, modify_type,
                                      audio_model, video_frames, audio_frames (+ style, our own)
    <root>/<split>/<identity>/<name>.mp4

Per identity: two real videos (sentences 0 and 1) and three fakes made from them, one of each
modify type, as AV-Deepfake1M makes its fakes from real VoxCeleb2 videos:
- audio_modified: in each segment the voice is a clone of the speaker (same pitch and formants,
  the style's vocoder artifacts) saying other syllables; the lips keep the original words;
- visual_modified: in each segment the lips are re-rendered to other words and the region
  carries the style's face-manipulation artifacts; the voice is the original;
- both_modified: the clone speaks in the segment and the lips are re-rendered to it.
Outside the segments every frame and every audio sample is the real video's, byte for byte
(before encoding; `render_partial` returns both for the test). Every video is rendered at
`fps` (25, as AV-Deepfake1M's are, whatever the style's own rate in the clip corpus: that
dataset's metadata and loaders take frame counts at 25 fps), and segment times are snapped to
its frame grid, so the metadata is exact in frames and in samples. Identities are
dealt to train/val/test (`val_identities`, `test_identities`), and to the styles in turn, so a
corpus of one style with every identity in `test` is a held-out-style set.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from avlib.core.paths import read_json, write_json
from avlib.core.progress import ProgressLines
from avlib.dataio.media import write_video
from avlib.dataio.preprocess import worker_context
from avlib.dataio.synthetic import (
    SAMPLE_RATE,
    CorpusSpec,
    _skin_shift,
    _speech_rng,
    envelope,
    identity_traits,
    real_speech,
    render_face,
    rerender_face,
    speak,
    syllables,
)
from avlib.dataio.synthetic_styles import STYLES, manipulate_face, parse_styles

MODIFY_TYPES = ("real", "audio_modified", "visual_modified", "both_modified")
SPLITS = ("train", "val", "test")
MARKER = ".avlib-synthetic-partial.json"
FADE_SECONDS = 0.01          # the clone is cross-faded in and out over 10 ms, inside the segment
SEGMENT_GAP = 0.3            # seconds between two segments of one video, and from either end


@dataclass(frozen=True)
class PartialSpec:
    identities: int = 24
    seconds: float = 8.0
    fps: float = 25.0
    size: int = 64
    seed: int = 0
    styles: tuple[str, ...] = ("studio",)
    val_identities: int = 4
    test_identities: int = 6
    max_segments: int = 2               # fake segments per fake video: 1..max_segments
    segment_seconds: tuple[float, float] = (0.2, 2.0)

    def __post_init__(self):
        if isinstance(self.styles, (str, list)):
            object.__setattr__(self, "styles", tuple(s.strip() for s in self.styles.split(","))
                               if isinstance(self.styles, str) else tuple(self.styles))
        object.__setattr__(self, "segment_seconds", tuple(float(s) for s in self.segment_seconds))

    def check(self) -> None:
        """Raises ValueError naming the parameter that cannot make a corpus."""
        try:
            parse_styles(self.styles)
        except ValueError as e:
            raise ValueError(f"parameter `styles`: {e}") from None
        if not isinstance(self.identities, int) or self.identities < max(1, len(self.styles)):
            raise ValueError(f"parameter `identities` must be an integer >= the number of styles "
                             f"({len(self.styles)}), got {self.identities!r}")
        if self.val_identities < 0 or self.test_identities < 0 or \
                self.val_identities + self.test_identities > self.identities:
            raise ValueError(f"parameters `val_identities` ({self.val_identities}) and `test_identities` "
                             f"({self.test_identities}) must be >= 0 and together at most `identities` "
                             f"({self.identities})")
        low, high = self.segment_seconds
        if not 0 < low <= high:
            raise ValueError(f"parameter `segment_seconds` must be (low, high) with 0 < low <= high, got "
                             f"{self.segment_seconds!r}")
        if self.max_segments < 1:
            raise ValueError(f"parameter `max_segments` must be >= 1, got {self.max_segments!r}")
        room = self.max_segments * (high + SEGMENT_GAP) + SEGMENT_GAP
        if self.seconds < room:
            raise ValueError(f"parameter `seconds` ({self.seconds}) is too short for {self.max_segments} segment(s) "
                             f"of up to {high} s with {SEGMENT_GAP} s around each: at least {room:g}")
        if self.size < 32:
            raise ValueError(f"parameter `size` must be >= 32 pixels, got {self.size!r}")

    def corpus(self) -> CorpusSpec:
        """The full-clip corpus whose identities, voices and faces these videos use."""
        return CorpusSpec(identities=max(2, self.identities), seconds=self.seconds, fps=self.fps, size=self.size,
                          seed=self.seed, styles=self.styles)


def identity_split(spec: PartialSpec, i: int) -> str:
    """train, val or test for identity number i, dealt within each style (identities go to the
    styles in turn): the first ceil(test_identities / styles) of each style to test, the next
    ceil(val_identities / styles) to val, the rest to train."""
    n_styles = len(spec.styles)
    rank = i // n_styles
    test, val = -(-spec.test_identities // n_styles), -(-spec.val_identities // n_styles)
    return "test" if rank < test else "val" if rank < test + val else "train"


def draw_segments(rng: np.random.Generator, spec: PartialSpec, fps: float) -> list[tuple[float, float]]:
    """1..max_segments non-overlapping segments (start, end) in seconds, snapped to the frame
    grid of a video at `fps`, at least SEGMENT_GAP apart and from either end."""
    n = int(rng.integers(1, spec.max_segments + 1))
    low, high = spec.segment_seconds
    lengths = [float(rng.uniform(low, high)) for _ in range(n)]
    free = spec.seconds - sum(lengths) - SEGMENT_GAP * (n + 1)
    cuts = np.sort(rng.uniform(0, max(free, 0.0), n))
    segments, t = [], SEGMENT_GAP
    for length, cut, before in zip(lengths, cuts, np.diff(np.concatenate([[0.0], cuts]))):
        start = t + before
        a, b = int(round(start * fps)), int(round((start + length) * fps))
        segments.append((round(a / fps, 4), round(max(b, a + 1) / fps, 4)))
        t = start + length + SEGMENT_GAP
    return segments


def plan_partial(spec: PartialSpec) -> list[dict]:
    """Every video of the corpus: one dict per metadata entry, with what rendering needs."""
    rng = np.random.default_rng([spec.seed, 17])
    rows = []
    for i in range(spec.identities):
        ident = f"id{10000 + i:05d}"
        style, split = spec.styles[i % len(spec.styles)], identity_split(spec, i)
        base = dict(identity=ident, style=style, split=split)
        for sentence in (0, 1):
            rows.append(dict(base, file=f"{ident}/{sentence:05d}.mp4", sentence=sentence, modify_type="real",
                             segments=[]))
        fakes = ("audio_modified", "visual_modified", "both_modified")
        for k, modify in enumerate(fakes):
            sentence = int(rng.integers(2))
            rows.append(dict(base, file=f"{ident}/{sentence:05d}_{k}_{modify.split('_')[0]}.mp4",
                             sentence=sentence, modify_type=modify, segments=draw_segments(rng, spec, spec.fps),
                             strength_video=float(rng.uniform(*STYLES[style].strength_video)),
                             strength_audio=float(rng.uniform(*STYLES[style].strength_audio))))
    for j, row in enumerate(rows):
        row["clip_seed"] = j
    return rows


def render_partial(spec: PartialSpec, row: dict) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray], np.ndarray]:
    """(frames, audio) of one planned video, and (real frames, real audio) of the video it was
    made from (the same for a real row)."""
    corpus, style = spec.corpus(), STYLES[row["style"]]
    fps, size, seconds = spec.fps, spec.size, spec.seconds
    ident = int(row["identity"][2:])
    src = identity_traits(corpus, row["identity"])
    sentence = row["sentence"]
    real_sylls = syllables(_speech_rng(corpus, row["identity"], sentence), seconds, src["rate"])
    real_audio = real_speech(corpus, row["identity"], sentence)
    n_frames = int(round(seconds * fps))
    real_mouth = envelope(real_sylls, n_frames, fps)

    def draw(mouth):
        return render_face(src, mouth, size, fps, np.random.default_rng([spec.seed, ident, 99, sentence]),
                           style=style, capture_rng=np.random.default_rng([spec.seed, ident, 98, sentence]))

    real_frames, boxes = draw(real_mouth)
    if row["modify_type"] == "real":
        return real_frames, real_audio, real_frames, real_audio
    rng = np.random.default_rng([spec.seed, 2000003, row["clip_seed"]])
    other_sylls = syllables(rng, seconds, src["rate"])           # the words put in the segments
    segments = row["segments"]
    frames, audio = list(real_frames), real_audio.copy()
    if row["modify_type"] in ("audio_modified", "both_modified"):
        clone = speak(rng, other_sylls, seconds, src["f0"], src["formant_shift"], vocoder=row["strength_audio"],
                      style=style)
        for start, end in segments:
            a, b = int(round(start * SAMPLE_RATE)), int(round(end * SAMPLE_RATE))
            real_part = real_audio[a:b]
            level = np.sqrt(np.mean(real_part ** 2)) / (np.sqrt(np.mean(clone[a:b] ** 2)) + 1e-9)
            fade = np.ones(b - a, np.float32)
            ramp = min(int(FADE_SECONDS * SAMPLE_RATE), (b - a) // 2)
            if ramp:
                fade[:ramp] = np.linspace(0, 1, ramp)
                fade[b - a - ramp:] = np.linspace(1, 0, ramp)
            audio[a:b] = real_part * (1 - fade) + clone[a:b] * min(level, 4.0) * fade
    if row["modify_type"] in ("visual_modified", "both_modified"):
        # the lips follow other words in the segments: the clone's in both_modified, in
        # visual_modified words nobody says
        mouth = real_mouth.copy()
        spoken = envelope(other_sylls, n_frames, fps)
        frame_ranges = [(int(round(s * fps)), min(n_frames, int(round(e * fps)))) for s, e in segments]
        for a, b in frame_ranges:
            mouth[a:b] = spoken[a:b]
        redrawn, boxes = draw(mouth)
        tgt = identity_traits(corpus, row["identity"])    # the same person re-rendered: no skin shift
        if style.fake_video == "blend":
            fake = rerender_face(redrawn, src, tgt, mouth, size, fps, rng, row["strength_video"], mouth_only=True)
        else:
            fake = manipulate_face(redrawn, boxes, style.fake_video, _skin_shift(src, tgt, 0.0), rng,
                                   row["strength_video"], mouth_only=True)
        for a, b in frame_ranges:
            frames[a:b] = fake[a:b]
    return frames, audio.astype(np.float32), real_frames, real_audio


def entry(spec: PartialSpec, row: dict) -> dict:
    """The row's metadata entry in AV-Deepfake1M's format (times in seconds)."""
    fps = spec.fps
    periods = [[a, b] for a, b in row["segments"]]
    visual = periods if row["modify_type"] in ("visual_modified", "both_modified") else []
    audio = periods if row["modify_type"] in ("audio_modified", "both_modified") else []
    original = None if row["modify_type"] == "real" else f"{row['identity']}/{row['sentence']:05d}.mp4"
    return {"file": row["file"], "original": original, "split": row["split"], "modify_type": row["modify_type"],
            "audio_model": f"synthetic-{STYLES[row['style']].vocoder}" if audio else "",
            "fake_segments": periods, "visual_fake_segments": visual, "audio_fake_segments": audio,
            "video_frames": int(round(spec.seconds * fps)), "audio_frames": int(round(spec.seconds * SAMPLE_RATE)),
            "style": row["style"]}


def generate_partial(data_dir: str | Path, spec: PartialSpec = PartialSpec(), *, workers: int = 2,
                     progress: bool = True) -> Path:
    """Write the corpus under data_dir (the AV-Deepfake1M root) and return it. Videos already on
    disk are kept; raises FileExistsError when data_dir holds a corpus of another spec."""
    spec.check()
    root = Path(data_dir)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"parameter `data_dir` ({root}) is a file, not a folder")
    root.mkdir(parents=True, exist_ok=True)
    made = json.loads(json.dumps(asdict(spec)))
    marker = root / MARKER
    if marker.exists() and read_json(marker) != made:
        raise FileExistsError(f"{root} holds partial fakes made with {read_json(marker)}; choose another data_dir "
                              f"for {made}")
    write_json(marker, made)
    rows = plan_partial(spec)
    for tmp in root.rglob(".*.tmp.mp4"):     # left by a run killed mid-write
        tmp.unlink()
    todo = [r for r in rows if not (root / r["split"] / r["file"]).exists()]
    if todo:
        bar = ProgressLines("partial fakes", len(todo), enabled=progress)
        with ProcessPoolExecutor(max(1, workers), mp_context=worker_context()) as pool:
            for _ in pool.map(_write_job, [(str(root), spec, r) for r in todo], chunksize=2):
                bar.update()
    for split in SPLITS:
        entries = [entry(spec, r) for r in rows if r["split"] == split]
        if entries:
            write_json(root / f"{split}_metadata.json", entries)
    return root


def _write_job(job) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cv2.setNumThreads(1)
    root, spec, row = job
    frames, audio, _, _ = render_partial(spec, row)
    final = Path(root) / row["split"] / row["file"]
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.tmp.mp4")
    style = STYLES[row["style"]]
    write_video(tmp, frames, spec.fps, audio, SAMPLE_RATE, crf=style.crf)
    os.replace(tmp, final)
