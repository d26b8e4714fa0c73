"""A synthetic audio-visual deepfake corpus, written as real H.264/AAC files in FakeAVCeleb's
layout (meta_data.csv and its quirks included), so the `fakeavceleb` indexer reads it.

Every identity has its own face, voice, background and motion. Real clips: a drawn talking
face whose mouth follows the speech envelope of a source-filter voice. The manipulations:
- fake audio (RVFA, FVFA): another voice "cloned" with vocoder-like artifacts (flattened
  pitch, smeared phase, band limit) and its own syllable timing;
- fake video (FVRA, FVFA): a re-rendered face region (blend seam, blur, colour shift,
  frame-to-frame flicker), its lips re-synced to the voice that is heard; 'wav2lip' re-renders
  the mouth region only.
The strength of each artifact is drawn per clip (audio 0.35-1, video 0.5-1 in the studio
style), so some fakes are subtle. Deterministic for a given seed. `leading_silence` > 0 prepends
that many seconds of silence to fake audio, reproducing FakeAVCeleb's known shortcut
for audits.

`styles` (avlib.dataio.synthetic_styles) chooses the generators: identities are dealt to them in
turn, each clip's style is written to styles.csv beside meta_data.csv, and the `synthetic`
indexer puts it in a `style` column. `audio_swap` makes an evaluation corpus instead: every
identity's real clip, and the same video carrying another identity's real audio.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import librosa
import numpy as np
import pandas as pd
from scipy.signal import lfilter

from avlib.core.paths import atomic_write_bytes, read_json, write_json
from avlib.core.progress import ProgressLines
from avlib.dataio.media import write_video
from avlib.dataio.preprocess import worker_context
from avlib.dataio.synthetic_styles import (
    STYLES,
    Style,
    camera_box,
    camera_path,
    capture,
    fake_region,
    grain_path,
    lit_shade,
    manipulate_face,
    parse_styles,
    vocode,
)
from avlib.dataio.synthetic_styles import background as style_background

ROOT_NAME = "FakeAVCeleb_v1.2"
CATEGORIES = {  # folder -> (letter in meta_data.csv, fake video, fake audio)
    "RealVideo-RealAudio": ("A", False, False),
    "RealVideo-FakeAudio": ("B", False, True),
    "FakeVideo-RealAudio": ("C", True, False),
    "FakeVideo-FakeAudio": ("D", True, True),
}
RACES = ("African", "Asian (East)", "Asian (South)", "Caucasian (American)", "Caucasian (European)")
VIDEO_METHODS = ("faceswap", "fsgan", "wav2lip")
AV_METHODS = ("faceswap-wav2lip", "fsgan-wav2lip")
MARKER = ".avlib-synthetic.json"
STYLES_CSV = "styles.csv"      # path (below the corpus root), style: read by the `synthetic` indexer
SAMPLE_RATE = 16000
VOWELS = ((730, 1090), (270, 2290), (300, 870), (530, 1840), (660, 1720), (490, 1350), (640, 1190))


@dataclass(frozen=True)
class CorpusSpec:
    identities: int = 60
    seconds: float = 3.0
    fps: float = 25.0
    size: int = 96
    seed: int = 0
    leading_silence: float = 0.0
    styles: tuple[str, ...] = ("studio",)    # generator styles; a comma-separated string is accepted
    audio_swap: bool = False                 # an evaluation corpus of real clips and audio-swapped copies
    real_only: bool = False                  # the real clips alone: a calibration set of a target domain

    def __post_init__(self):
        if isinstance(self.styles, (str, list)):
            object.__setattr__(self, "styles", tuple(s.strip() for s in self.styles.split(","))
                               if isinstance(self.styles, str) else tuple(self.styles))

    def check(self) -> None:
        if isinstance(self.identities, bool) or not isinstance(self.identities, int) or self.identities < 2:
            raise ValueError(f"parameter `identities` must be an integer >= 2 (one for the fake's source, "
                             f"one for its target), got {self.identities!r}")
        try:
            parse_styles(self.styles)
        except ValueError as e:
            raise ValueError(f"parameter `styles`: {e}") from None
        if self.identities < len(self.styles):
            raise ValueError(f"parameter `identities` ({self.identities}) must be at least the number of "
                             f"styles ({len(self.styles)}: {', '.join(self.styles)})")
        if not self.seconds > 0:
            raise ValueError(f"parameter `seconds` (clip duration) must be > 0, got {self.seconds!r}")
        if not self.fps > 0:
            raise ValueError(f"parameter `fps` must be > 0, got {self.fps!r}")
        if self.size < 32:
            raise ValueError(f"parameter `size` must be >= 32 pixels, got {self.size!r}")
        if self.leading_silence < 0:
            raise ValueError(f"parameter `leading_silence` must be >= 0, got {self.leading_silence!r}")


def plan_corpus(spec: CorpusSpec) -> list[dict]:
    """The deterministic list of clips (one dict per meta_data.csv row) for `spec`. Identities
    are dealt to the styles in turn; a fake's target (an audio swap's donor) has the source's
    style when that style has two identities or more."""
    rng = np.random.default_rng([spec.seed, 7])
    rows = []
    n_styles = len(spec.styles)
    for i in range(spec.identities):
        ident = f"id{10000 + i:05d}"
        race, gender = RACES[i % len(RACES)], ("men", "women")[(i // len(RACES)) % 2]
        peers = range(i % n_styles, spec.identities, n_styles)
        peers = peers if len(peers) > 1 else range(spec.identities)
        target = f"id{10000 + peers[(peers.index(i) + 1 + int(rng.integers(len(peers) - 1))) % len(peers)]:05d}"
        base = dict(source=ident, race=race, gender=gender, style=spec.styles[i % n_styles])
        if spec.audio_swap:
            rows.append(dict(base, target1="-", target2="-", method="real", folder="RealVideo-RealAudio",
                             file="00000.mp4", sentence=0, fake_video=False, fake_audio=False))
            rows.append(dict(base, target1="-", target2=target, method="audioswap", folder="RealVideo-FakeAudio",
                             file=f"00000_{target}_audioswap.mp4", sentence=0, fake_video=False,
                             fake_audio=False, audio_from=target))
            continue
        for k in range(2):
            rows.append(dict(base, target1="-", target2="-", method="real", folder="RealVideo-RealAudio",
                             file=f"{k:05d}.mp4", sentence=k, fake_video=False, fake_audio=False))
        if spec.real_only:
            continue
        rows.append(dict(base, target1="-", target2=target, method="rtvc", folder="RealVideo-FakeAudio",
                         file="00000_fake.mp4", sentence=0, fake_video=False, fake_audio=True))
        vm = VIDEO_METHODS[int(rng.integers(len(VIDEO_METHODS)))]
        name = f"00001_{target}_{vm}" + (" (1)" if i % 7 == 3 else "") + ".mp4"   # FakeAVCeleb has such names
        rows.append(dict(base, target1=target, target2="-", method=vm, folder="FakeVideo-RealAudio",
                         file=name, sentence=1, fake_video=True, fake_audio=False))
        am = AV_METHODS[int(rng.integers(len(AV_METHODS)))]
        rows.append(dict(base, target1=target, target2=target, method=am, folder="FakeVideo-FakeAudio",
                         file=f"00000_{target}_{am}.mp4", sentence=0, fake_video=True, fake_audio=True))
    for j, row in enumerate(rows):
        row["clip_seed"] = j
        row["strength_video"] = float(rng.uniform(*STYLES[row["style"]].strength_video))
        row["strength_audio"] = float(rng.uniform(*STYLES[row["style"]].strength_audio))
    return rows


def generate_corpus(data_dir: str | Path, spec: CorpusSpec = CorpusSpec(), *, workers: int = 2,
                    progress: bool = True) -> Path:
    """Write the corpus under data_dir/FakeAVCeleb_v1.2/ and return that root.

    Clips already on disk are kept (a run killed mid-way is completed, not duplicated).
    Raises ValueError for a spec that cannot make a corpus, NotADirectoryError if data_dir
    is a file, and FileExistsError if it holds a corpus made with another spec.
    """
    spec.check()
    data_dir = Path(data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise NotADirectoryError(f"parameter `data_dir` ({data_dir}) is a file, not a folder")
    root = data_dir / ROOT_NAME
    root.mkdir(parents=True, exist_ok=True)
    marker = root / MARKER
    made = _spec_record(spec)
    # A marker written before a CorpusSpec field existed was made with that field's default.
    if marker.exists() and {**_spec_record(CorpusSpec()), **read_json(marker)} != made:
        raise FileExistsError(f"{root} holds a synthetic corpus made with {read_json(marker)}; "
                              f"choose another data_dir for {made}")
    write_json(marker, made)
    rows = plan_corpus(spec)
    todo = [r for r in rows if not (root / _rel_dir(r) / r["file"]).exists()]
    for tmp in root.rglob(".*.tmp.mp4"):    # left by a run that was killed mid-write
        tmp.unlink()
    if todo:
        jobs = [(str(root), spec, r) for r in todo]
        bar = ProgressLines("synthetic corpus", len(jobs), enabled=progress)
        # Always in worker processes, even for workers=1: a process that has run torch may have
        # flushed denormals to zero (oneDNN sets that flag), and the IIR voice filters then give
        # other bits. Clips must be byte-identical for a given seed; worker_context() gives a
        # clean fork server whenever torch is loaded here.
        with ProcessPoolExecutor(max(1, workers), mp_context=worker_context()) as pool:
            for _ in pool.map(_write_clip_job, jobs, chunksize=4):
                bar.update()
    _write_metadata(root, rows)
    atomic_write_bytes(root / STYLES_CSV, pd.DataFrame({
        "path": [(_rel_dir(r) / r["file"]).as_posix() for r in rows],
        "style": [r["style"] for r in rows]}).to_csv(index=False).encode())
    return root


def _spec_record(spec: CorpusSpec) -> dict:
    """The spec as its JSON marker holds it (tuples as lists)."""
    return json.loads(json.dumps(asdict(spec)))


def clip_fps(spec: CorpusSpec, style: Style) -> float:
    """The source frame rate of a clip of `style`."""
    return style.fps or spec.fps


def identity_style(spec: CorpusSpec, ident: str) -> Style:
    """The style an identity is dealt (in turn, by its number)."""
    return STYLES[spec.styles[(int(ident[2:]) - 10000) % len(spec.styles)]]


def _rel_dir(row: dict) -> Path:
    return Path(row["folder"]) / row["race"] / row["gender"] / row["source"]


def _write_metadata(root: Path, rows: list[dict]) -> None:
    """meta_data.csv with FakeAVCeleb's quirks: trailing comma (an unnamed tenth column with
    the directory written as FakeAVCeleb/...), file name only in `path`, repeated rows."""
    lines = ["source,target1,target2,method,category,type,race,gender,path,"]
    for i, r in enumerate(rows):
        letter = CATEGORIES[r["folder"]][0]
        directory = "FakeAVCeleb/" + _rel_dir(r).as_posix()
        line = ",".join([r["source"], r["target1"], r["target2"], r["method"], letter, r["folder"],
                         r["race"], r["gender"], r["file"], directory])
        lines.append(line)
        if i % 11 == 5:
            lines.append(line)       # FakeAVCeleb's metadata repeats some rows
    atomic_write_bytes(root / "meta_data.csv", ("\n".join(lines) + "\n").encode())


def _write_clip_job(job) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cv2.setNumThreads(1)
    root, spec, row = job
    frames, audio = render_clip(spec, row)
    final = Path(root) / _rel_dir(row) / row["file"]
    tmp = final.with_name(f".{final.stem}.tmp.mp4")
    style = STYLES[row["style"]]
    write_video(tmp, frames, clip_fps(spec, style), audio, SAMPLE_RATE, crf=style.crf)
    os.replace(tmp, final)


# ---------------------------------------------------------------- identities and voices

def identity_traits(spec: CorpusSpec, ident: str) -> dict:
    """Face, voice, background and motion of one identity (deterministic), drawn from the
    ranges of its style."""
    style = identity_style(spec, ident)
    rng = np.random.default_rng([spec.seed, int(ident[2:])])
    women = (int(ident[2:]) - 10000) // len(RACES) % 2 == 1
    return dict(
        skin=rng.uniform([90, 60, 40], [235, 200, 170]),
        hair=rng.uniform(10, 120, 3),
        bg=(rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)),
        bg_angle=rng.uniform(0, np.pi),
        head=(rng.uniform(*style.head_width), rng.uniform(*style.head_height)),   # semi-axes, frame fractions
        eye_gap=rng.uniform(0.08, 0.12),
        sway=(rng.uniform(0.01, 0.04) * style.sway, rng.uniform(0.2, 0.8)),   # amplitude (frame fraction), Hz
        f0=rng.uniform(*style.f0_women) if women else rng.uniform(*style.f0_men),
        formant_shift=rng.uniform(*style.formants),
        rate=rng.uniform(*style.rate),                            # syllables per second
        texture_seed=int(rng.integers(1 << 30)),
    )


def syllables(rng: np.random.Generator, seconds: float, rate: float) -> list[tuple[float, float, int]]:
    """(start, length, vowel) of each syllable in `seconds`, with pauses."""
    out, t = [], float(rng.uniform(0.05, 0.3))
    while t < seconds:
        length = float(rng.uniform(0.6, 1.4) / rate)
        out.append((t, length, int(rng.integers(len(VOWELS)))))
        t += length + float(rng.uniform(0.02, 0.12))
        if rng.random() < 0.12:
            t += float(rng.uniform(0.2, 0.5))
    return out


def envelope(sylls, n: int, rate: float) -> np.ndarray:
    """Amplitude envelope in [0, 1] at `rate` samples per second."""
    env = np.zeros(n, np.float32)
    for start, length, _ in sylls:
        a, b = int(start * rate), min(n, int((start + length) * rate))
        if b > a:
            env[a:b] = np.maximum(env[a:b], np.sin(np.linspace(0, np.pi, b - a)) ** 0.7)
    return env


def speak(rng, sylls, seconds: float, f0: float, formant_shift: float, *, vocoder: float = 0.0,
          style: Style = STYLES["studio"]) -> np.ndarray:
    """Source-filter speech: a glottal pulse train through two formant resonators per
    syllable, with the timbre of `style`. vocoder > 0 flattens the pitch and adds the clone
    artifacts of the style's vocoder (the studio's: smeared phase, band limit, buzz)."""
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    jitter = (1 - vocoder) * (0.04 * np.sin(2 * np.pi * 5.5 * t) + 0.03 * np.cumsum(rng.normal(0, 0.002, n)))
    pitch = f0 * (1 + np.clip(jitter, -0.15, 0.15) + 0.08 * (1 - vocoder) * np.sin(2 * np.pi * 0.7 * t))
    phase = np.cumsum(pitch / SAMPLE_RATE)
    source = (np.diff(np.floor(phase), prepend=0) > 0).astype(np.float64)
    source = lfilter([1.0], [1, -style.rolloff], source)            # glottal roll-off
    if style.breath:
        source = source + style.breath * source.std() * rng.normal(0, 1, n)    # aspiration
    voice = np.zeros(n)
    for start, length, vowel in sylls:
        a, b = int(start * SAMPLE_RATE), min(n, int((start + length) * SAMPLE_RATE))
        if b <= a:
            continue
        seg = source[a:b]
        for f, bw in zip(np.array(VOWELS[vowel]) * formant_shift, (80 * style.bandwidth, 120 * style.bandwidth)):
            r = np.exp(-np.pi * bw / SAMPLE_RATE)
            seg = lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * f / SAMPLE_RATE), r * r], seg)
        voice[a:b] = seg * np.sin(np.linspace(0, np.pi, b - a)) ** 0.7
        # a fricative onset: a short burst of high-frequency noise (3-7 kHz), as consonants have
        burst = min(b - a, int(0.04 * SAMPLE_RATE))
        noise = np.diff(rng.normal(0, 1, burst + 1)) * 0.5
        voice[a:a + burst] += noise * np.hanning(burst) * np.abs(seg).max()
    if vocoder > 0:
        voice = _vocode(rng, voice, vocoder) if style.vocoder == "phase" else vocode(style.vocoder, rng, voice, vocoder)
    voice = voice / (np.abs(voice).max() + 1e-9) * 0.5
    voice += rng.normal(0, 0.003, n)                      # room noise
    return voice.astype(np.float32)


def _vocode(rng, voice: np.ndarray, strength: float) -> np.ndarray:
    """Vocoder-like artifacts: phase partly randomised per STFT bin, band limited."""
    spec = librosa.stft(voice, n_fft=512, hop_length=128)
    mag, ph = np.abs(spec), np.angle(spec)
    ph = ph + strength * rng.uniform(-np.pi, np.pi, ph.shape) * 0.8
    freqs = librosa.fft_frequencies(sr=SAMPLE_RATE, n_fft=512)
    cutoff = 4500 - 2000 * strength          # the clone loses the fricatives' high band
    mag = mag * (1 / (1 + np.exp((freqs[:, None] - cutoff) / 150)))
    out = librosa.istft(mag * np.exp(1j * ph), hop_length=128, length=len(voice))
    t = np.arange(len(out)) / SAMPLE_RATE
    return out * (1 + 0.4 * strength * np.sin(2 * np.pi * 100 * t))   # frame-rate buzz


# ---------------------------------------------------------------- faces

def render_clip(spec: CorpusSpec, row: dict) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames (RGB uint8) and audio (float32, 16 kHz) of one planned clip."""
    style = STYLES[row["style"]]
    seconds, size, fps = spec.seconds, spec.size, clip_fps(spec, style)
    ident = int(row["source"][2:])
    src = identity_traits(spec, row["source"])
    # The spoken sentence of the source video: same seed for a real clip and the fakes made from it.
    real_sylls = syllables(_speech_rng(spec, row["source"], row["sentence"]), seconds, src["rate"])
    clip_rng = np.random.default_rng([spec.seed, 1000003, row["clip_seed"]])
    if row["fake_audio"]:
        tgt = identity_traits(spec, row["target2"] if row["target2"] != "-" else row["target1"])
        heard_sylls = syllables(clip_rng, seconds, tgt["rate"])        # the clone's own timing
        audio = speak(clip_rng, heard_sylls, seconds, tgt["f0"], tgt["formant_shift"],
                      vocoder=row["strength_audio"], style=style)
        if spec.leading_silence > 0:
            pad = int(spec.leading_silence * SAMPLE_RATE)
            audio = np.concatenate([clip_rng.normal(0, 1e-4, pad).astype(np.float32), audio])[:len(audio)]
            heard_sylls = [(s + spec.leading_silence, l, v) for s, l, v in heard_sylls]
    else:
        heard_sylls = real_sylls     # an audio swap's mouth still follows its own (unheard) sentence
        audio = real_speech(spec, row.get("audio_from") or row["source"], row["sentence"])
    n_frames = int(round(seconds * fps))
    # Real video: the mouth follows the source sentence; a fake video's lips are re-synced to the heard voice.
    mouth = envelope(heard_sylls if row["fake_video"] else real_sylls, n_frames, fps)
    frames, boxes = render_face(src, mouth, size, fps, np.random.default_rng([spec.seed, ident, 99, row["sentence"]]),
                                style=style, capture_rng=np.random.default_rng([spec.seed, ident, 98, row["sentence"]]))
    if row["fake_video"]:
        tgt = identity_traits(spec, row["target1"])
        mouth_only = row["method"] == "wav2lip"
        if style.fake_video == "blend":
            frames = rerender_face(frames, src, tgt, mouth, size, fps, clip_rng, row["strength_video"],
                                   mouth_only=mouth_only)
        else:
            frames = manipulate_face(frames, boxes, style.fake_video, _skin_shift(src, tgt, row["strength_video"]),
                                     clip_rng, row["strength_video"], mouth_only=mouth_only)
    return frames, audio


def _speech_rng(spec: CorpusSpec, ident: str, sentence: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, int(ident[2:]), sentence])


def real_speech(spec: CorpusSpec, ident: str, sentence: int) -> np.ndarray:
    """The real voice of `ident` saying `sentence` (float32, 16 kHz), as its real clip carries it."""
    traits = identity_traits(spec, ident)
    rng = _speech_rng(spec, ident, sentence)
    sylls = syllables(rng, spec.seconds, traits["rate"])
    return speak(rng, sylls, spec.seconds, traits["f0"], traits["formant_shift"], style=identity_style(spec, ident))


def _skin_shift(src: dict, tgt: dict, strength: float) -> np.ndarray:
    """The colour shift that moves the source's skin toward the target's."""
    diff = tgt["skin"] - src["skin"]
    return diff / max(np.linalg.norm(diff), 1e-6) * max(np.linalg.norm(diff) * 0.5, 60.0) * strength


def _geometry(traits: dict, size: int, fps: float, i: int, rng_phase: float):
    t = i / fps
    amp, hz = traits["sway"]
    cx = size / 2 + amp * size * np.sin(2 * np.pi * hz * t + rng_phase)
    cy = size * 0.55 + 0.5 * amp * size * np.sin(2 * np.pi * hz * 1.3 * t)
    return cx, cy, traits["head"][0] * size, traits["head"][1] * size


def render_face(traits: dict, mouth: np.ndarray, size: int, fps: float, rng, *, style: Style = STYLES["studio"],
                capture_rng=None) -> tuple[list[np.ndarray], list[tuple]]:
    """A drawn talking face in `style`: background, textured and shaded head, hair, eyes with
    blinks, and a mouth whose opening follows `mouth` (one value per frame), as the style's
    camera records it (`capture_rng` draws its motion and grain). Returns the frames and the
    face box (cx, cy, semi-width, semi-height) in each."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    background = style_background(style, traits, size, xx, yy)
    tex_rng = np.random.default_rng(traits["texture_seed"])
    texture = cv2.GaussianBlur(tex_rng.normal(0, 1, (2 * size, 2 * size)).astype(np.float32), (0, 0), 1.0) * 14
    phase = float(rng.uniform(0, 2 * np.pi))
    blinks = set(int(b) for b in rng.uniform(0, len(mouth), max(1, len(mouth) // 60)))
    cameras = camera_path(style, len(mouth), fps, size, capture_rng)
    grains = grain_path(style, len(mouth), size, capture_rng)
    # The studio draws in float64 as it always has (its bytes must not change); the others in
    # float32 (faster), through a camera.
    studio = style == STYLES["studio"]
    skin = traits["skin"] if studio else traits["skin"].astype(np.float32)
    if not studio:
        background = background.astype(np.float32)
    x, y = xx[:1], yy[:, :1]     # per-frame fields are sums of a row and a column term: broadcast them
    frames, boxes = [], []
    for i, m in enumerate(mouth):
        cx, cy, ax, ay = _geometry(traits, size, fps, i, phase)
        if not studio:
            cx, cy, ax, ay = float(cx), float(cy), float(ax), float(ay)
        img = background.copy()
        u, v = (x - cx) / ax, (y - cy) / ay
        p = style.head_power
        head = u ** 2 + v ** 2 <= 1 if p == 2 else np.abs(u) ** p + np.abs(v) ** p <= 1
        ox, oy = int(size / 2 - cx + size / 2), int(size / 2 - cy + size / 2)
        tex = texture[oy:oy + size, ox:ox + size] if 0 <= ox <= size and 0 <= oy <= size else texture[:size, :size]
        shade = 1 - 0.25 * u ** 2 if style.shading == "side" else lit_shade(u, v, style.light)
        img[head] = (skin * shade[..., None] + tex[..., None])[head]
        hair = head & (y < cy - style.hair_line * ay)
        img[hair] = traits["hair"]
        eye_open = 0.3 if (i in blinks or i - 1 in blinks) else 1.0
        for side in (-1, 1):
            ex, ey = cx + side * traits["eye_gap"] * size, cy - 0.2 * ay
            eye = ((x - ex) / (0.06 * size)) ** 2 + ((y - ey) / (0.03 * size * eye_open)) ** 2 <= 1
            img[eye] = (25, 20, 20)
        mx, my = cx, cy + 0.45 * ay
        mh = 0.01 * size + 0.07 * size * float(m)
        lips = ((x - mx) / (0.13 * size)) ** 2 + ((y - my) / (mh + 0.02 * size)) ** 2 <= 1
        inner = ((x - mx) / (0.11 * size)) ** 2 + ((y - my) / mh) ** 2 <= 1
        img[lips] = (150, 50, 60)
        img[inner] = (40, 10, 15)
        if not studio:
            camera = None if cameras is None else cameras[i]
            img = capture(img, style, camera, None if grains is None else grains[i])
            cx, cy, ax, ay = camera_box(camera, cx, cy, ax, ay)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
        boxes.append((cx, cy, ax, ay))
    return frames, boxes


def rerender_face(frames, src, tgt, mouth, size, fps, rng, strength: float, *, mouth_only: bool) -> list[np.ndarray]:
    """A face-swap analogue: inside the face (or mouth) region, the frame is blurred, shifted
    toward the target's skin colour and flickers from frame to frame; the region's edge
    leaves a blend seam."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    shift = _skin_shift(src, tgt, strength)
    phase_rng = np.random.default_rng([int(src["texture_seed"]), 5])
    phase = float(phase_rng.uniform(0, 2 * np.pi))
    out = []
    for i, img in enumerate(frames):
        cx, cy, ax, ay = _geometry(src, size, fps, i, phase)
        jx, jy = rng.normal(0, 1.0 * strength, 2) * size / 96
        d, mask, _ = fake_region(xx, yy, (cx, cy, ax, ay), (jx, jy), mouth_only)
        seam = (np.abs(d - 1.0) < 0.1)[..., None]
        f = img.astype(np.float32)
        sigma = 0.6 + 1.4 * strength
        blurred = cv2.GaussianBlur(f, (0, 0), sigma)
        flicker = rng.normal(0, 20 * strength, 3)
        rendered = blurred + shift + flicker
        f = f * (1 - mask) + rendered * mask
        f = np.where(seam, f * (1 - 0.5 * strength), f)
        out.append(np.clip(f, 0, 255).astype(np.uint8))
    return out
