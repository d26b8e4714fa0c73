"""Generator styles of the synthetic corpus (avlib.dataio.synthetic): each style is another "generator",
different in what a detector could latch onto: face outline and shading, background, lighting,
camera motion, compression and frame rate, the family and strength of each manipulation, and
voice timbre. Train on some styles and test on a held-out one for a cross-generator check.
In every style the mouth follows the speech envelope of the voice.

`studio` is the original look; a corpus of it alone is byte-identical to the corpus made before
styles existed. The effects of the other styles live here; avlib.dataio.synthetic calls them.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import librosa
import numpy as np
from scipy.ndimage import gaussian_filter1d, uniform_filter1d
from scipy.signal import butter, lfilter

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Style:
    name: str
    fps: float | None = None                  # source frame rate; None: CorpusSpec.fps
    crf: int = 23                             # x264 constant rate factor: higher, more compressed
    head_power: float = 2.0                   # face outline |x|^p + |y|^p <= 1: 2 an ellipse, > 2 squarer
    head_width: tuple[float, float] = (0.22, 0.3)    # range of the semi-axes, fractions of the frame
    head_height: tuple[float, float] = (0.3, 0.38)
    hair_line: float = 0.55                   # hair above cy - hair_line * semi-height
    shading: str = "side"                     # side: darker toward the cheeks; lit: a sphere lit by `light`
    light: tuple[float, float] = (0.0, 0.0)   # key light direction in the image plane (x right, y down)
    background: str = "gradient"              # gradient | panels | noise | bokeh
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)   # exposure times colour cast, per RGB channel
    grain: float = 0.0                        # sensor noise (sd, 8-bit levels), new every frame
    sway: float = 1.0                         # factor on the head's sway amplitude
    camera: str = "none"                      # none | zoom | pan | shake
    fake_video: str = "blend"                 # blend (studio only: it ignores the camera) | blocky | ghost | warp
    strength_video: tuple[float, float] = (0.5, 1.0)
    vocoder: str = "phase"                    # phase | channel | telephone | metallic
    strength_audio: tuple[float, float] = (0.35, 1.0)
    f0_men: tuple[float, float] = (90, 140)
    f0_women: tuple[float, float] = (170, 250)
    formants: tuple[float, float] = (0.9, 1.15)   # range of the formant-shift factor
    rate: tuple[float, float] = (3.0, 5.0)    # syllables per second
    bandwidth: float = 1.0                    # factor on the formant bandwidths (larger: duller)
    rolloff: float = 0.95                     # glottal roll-off pole (smaller: brighter, buzzier)
    breath: float = 0.0                       # aspiration noise mixed into the glottal source


STYLES = {s.name: s for s in (
    Style("studio"),
    Style("newsroom", fps=30.0, crf=18, head_width=(0.26, 0.31), head_height=(0.28, 0.33), hair_line=0.4,
          shading="lit", light=(-0.55, -0.45), background="panels", gain=(0.9, 0.97, 1.08), sway=0.6,
          camera="zoom", fake_video="ghost", strength_video=(0.4, 0.9), vocoder="channel",
          strength_audio=(0.4, 1.0), f0_men=(80, 120), f0_women=(160, 220), formants=(0.85, 1.0),
          rate=(3.5, 5.0), bandwidth=0.8, rolloff=0.97),
    Style("webcam", fps=20.0, crf=32, head_power=3.5, head_width=(0.23, 0.28), head_height=(0.3, 0.36),
          hair_line=0.65, shading="lit", light=(0.0, -0.9), background="noise", gain=(0.85, 0.72, 0.58),
          grain=5.0, sway=1.2, camera="shake", fake_video="blocky", vocoder="telephone",
          strength_audio=(0.3, 0.9), formants=(0.95, 1.2), rate=(2.8, 4.5), bandwidth=1.3, rolloff=0.9,
          breath=0.3),
    Style("outdoor", fps=24.0, crf=27, head_power=1.7, head_width=(0.2, 0.26), head_height=(0.32, 0.4),
          hair_line=0.5, shading="lit", light=(0.85, -0.2), background="bokeh", gain=(1.12, 1.08, 0.95),
          sway=0.3, camera="pan", fake_video="warp", strength_video=(0.45, 0.95), vocoder="metallic",
          f0_men=(100, 160), f0_women=(180, 280), formants=(1.0, 1.25), rate=(4.0, 6.0), breath=0.1),
)}


def parse_styles(styles) -> tuple[str, ...]:
    """A tuple of style names from a comma-separated string or a sequence. Raises ValueError
    naming the allowed styles for an unknown, repeated or missing one."""
    names = tuple(s.strip() for s in styles.split(",")) if isinstance(styles, str) else tuple(styles)
    unknown = [n for n in names if n not in STYLES]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(f"styles must be distinct names among {', '.join(STYLES)}; got {styles!r}")
    return names


# ---------------------------------------------------------------- scene

def background(style: Style, traits: dict, size: int, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """The static background (H, W, 3) float of one identity in `style`."""
    lo, hi = traits["bg"]
    g = (np.cos(traits["bg_angle"]) * xx + np.sin(traits["bg_angle"]) * yy) / size
    g = np.clip((g - g.min()) / (np.ptp(g) + 1e-6), 0, 1)[..., None]
    if style.background == "gradient":
        return lo * (1 - g) + hi * g
    rng = np.random.default_rng([traits["texture_seed"], 3])
    if style.background == "panels":        # a wall of panels with seams and a faint grain
        width = size / rng.uniform(4, 7)
        across = xx + rng.uniform(0, width)
        panel = (np.floor(across / width) % 2)[..., None]
        seam = (np.abs((across % width) - width / 2) > width / 2 - max(1.0, size / 96))[..., None]
        grain = cv2.GaussianBlur(rng.normal(0, 6, (size, size)).astype(np.float32), (0, 0), 2.0)[..., None]
        return (lo * (1 - panel) + (0.6 * lo + 0.4 * hi) * panel) * (1 - 0.3 * seam) + grain
    if style.background == "noise":         # a busy, high-frequency clutter, contrasted whatever the colours
        noise = cv2.GaussianBlur(rng.uniform(0, 1, (size, size)).astype(np.float32), (0, 0), 0.8)[..., None]
        noise = np.clip((noise - 0.5) * 3 + 0.5, 0, 1)
        return lo * (1 - noise) + hi * noise + 80 * (noise - 0.5)
    if style.background == "bokeh":         # out-of-focus discs of light over a gradient
        img = lo * (1 - g) + hi * g
        for _ in range(8):
            x, y, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.06, 0.16) * size
            disc = np.clip((r - np.sqrt((xx - x) ** 2 + (yy - y) ** 2)) / (0.3 * r), 0, 1)[..., None]
            img = img * (1 - 0.6 * disc) + rng.uniform(120, 255, 3) * 0.6 * disc
        return img
    raise ValueError(f"style {style.name}: unknown background {style.background!r}")


def lit_shade(u: np.ndarray, v: np.ndarray, light: tuple[float, float]) -> np.ndarray:
    """Lambert shading of a sphere-like head (u, v: coordinates in semi-axes) lit from `light`."""
    lx, ly = light
    lz = max(1.0 - lx * lx - ly * ly, 0.2) ** 0.5
    norm = (lx * lx + ly * ly + lz * lz) ** 0.5
    nz = np.sqrt(np.clip(1 - u * u - v * v, 0, 1))
    return 0.45 + 0.7 * np.clip((u * lx + v * ly + nz * lz) / norm, 0, 1)


def camera_path(style: Style, n: int, fps: float, size: int, rng) -> list[np.ndarray] | None:
    """One 2x3 affine matrix per frame (image of the scene in the camera), or None for a fixed camera."""
    if style.camera == "none":
        return None
    t = np.arange(n) / fps
    centre = (size / 2, size / 2)
    phase = rng.uniform(0, 2 * np.pi)
    if style.camera == "zoom":              # a slow push in and out
        scale, angle = 1.08 + 0.07 * np.sin(2 * np.pi * 0.15 * t + phase), np.zeros(n)
        shift = np.zeros((n, 2))
    elif style.camera == "pan":             # a slow horizontal drift, cropped so no border shows
        scale, angle = np.full(n, 1.12), np.zeros(n)
        shift = np.stack([0.05 * size * np.sin(2 * np.pi * 0.2 * t + phase), np.zeros(n)], 1)
    elif style.camera == "shake":           # hand-held: a smoothed random walk with a little roll
        walk = gaussian_filter1d(np.cumsum(rng.normal(0, 1, (n, 3)), 0), max(fps / 10, 1.0), axis=0)
        walk = walk / (np.abs(walk).max(0) + 1e-6)
        scale, angle, shift = np.full(n, 1.08), 1.5 * walk[:, 2], 0.025 * size * walk[:, :2]
    else:
        raise ValueError(f"style {style.name}: unknown camera {style.camera!r}")
    mats = []
    for s, a, (dx, dy) in zip(scale, angle, shift):
        m = cv2.getRotationMatrix2D(centre, float(a), float(s))
        m[:, 2] += (dx, dy)
        mats.append(m)
    return mats


def camera_box(camera: np.ndarray | None, cx: float, cy: float, ax: float, ay: float) -> tuple:
    """The face box (centre, semi-axes) as the camera `camera` (2x3 affine, or None) records it."""
    if camera is None:
        return cx, cy, ax, ay
    (a, b, tx), (c, d, ty) = camera.tolist()
    scale = abs(a * d - b * c) ** 0.5
    return a * cx + b * cy + tx, c * cx + d * cy + ty, ax * scale, ay * scale


def grain_path(style: Style, n: int, size: int, rng) -> list[np.ndarray] | None:
    """The sensor noise (H, W, 1) of each of n frames, or None: windows at random offsets into
    one noise field (as fresh to the eye as new noise, and cheaper)."""
    if not style.grain:
        return None
    field = style.grain * rng.standard_normal((2 * size, 2 * size, 1), dtype=np.float32)
    return [field[oy:oy + size, ox:ox + size] for oy, ox in rng.integers(0, size + 1, (n, 2))]


def capture(img: np.ndarray, style: Style, camera: np.ndarray | None, grain: np.ndarray | None) -> np.ndarray:
    """What the camera records of the rendered scene: framing, exposure and colour cast, grain."""
    img = img.astype(np.float32)
    if camera is not None:
        img = cv2.warpAffine(img, camera, img.shape[1::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    img *= np.asarray(style.gain, np.float32)
    if grain is not None:
        img += grain
    return img


# ---------------------------------------------------------------- manipulations

def fake_region(xx, yy, box, jitter, mouth_only: bool):
    """(normalised distance from the manipulated region's centre, soft mask (H, W, 1), the
    centre's row before jitter) of the face (or mouth) region of a face box (cx, cy, ax, ay),
    moved by `jitter` (jx, jy)."""
    cx, cy, ax, ay = box
    jx, jy = jitter
    if mouth_only:
        rx, ry, ccy = 0.55 * ax, 0.35 * ay, cy + 0.42 * ay
    else:
        rx, ry, ccy = 0.75 * ax, 0.7 * ay, cy + 0.1 * ay
    d = np.sqrt(((xx - cx - jx) / rx) ** 2 + ((yy - ccy - jy) / ry) ** 2)
    return d, np.clip((1.05 - d) / 0.1, 0, 1)[..., None], ccy


def manipulate_face(frames: list[np.ndarray], boxes, family: str, shift: np.ndarray, rng, strength: float, *,
                    mouth_only: bool) -> list[np.ndarray]:
    """A face-swap analogue of `family` inside the face (or mouth) region that follows the face
    box (cx, cy, ax, ay) of each frame: blocky (upsampled from a coarse grid), ghost
    (over-sharpened, trailing the previous frame), warp (misaligned, colour-banded, a bright halo).
    `shift` moves the region's colour toward the target's skin."""
    size = frames[0].shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out, previous = [], None
    for img, (cx, cy, ax, ay) in zip(frames, boxes):
        jx, jy = rng.normal(0, strength, 2) * size / 96
        d, mask, ccy = fake_region(xx, yy, (cx, cy, ax, ay), (jx, jy), mouth_only)
        f = img.astype(np.float32)
        if family == "blocky":
            k = max(2, int(round((2 + 3 * strength) * size / 96)))
            small = cv2.resize(f, (max(1, size // k),) * 2, interpolation=cv2.INTER_AREA)
            rendered = cv2.resize(small, (size, size), interpolation=cv2.INTER_NEAREST) + 0.5 * shift
        elif family == "ghost":
            sharp = f + 1.5 * strength * (f - cv2.GaussianBlur(f, (0, 0), 1.0)) + 0.4 * shift
            rendered = sharp if previous is None else (1 - 0.55 * strength) * sharp + 0.55 * strength * previous
            previous = rendered
        elif family == "warp":
            m = cv2.getRotationMatrix2D((float(cx), float(ccy)), 0.0, 1 + 0.08 * strength)
            m[:, 2] += (2 * jx, 2 * jy)
            moved = cv2.warpAffine(f, m, (size, size), borderMode=cv2.BORDER_REFLECT101)
            step = 4 + 12 * strength
            rendered = np.round((moved + 0.6 * shift) / step) * step
        else:
            raise ValueError(f"unknown fake_video family {family!r}")
        f = f * (1 - mask) + rendered * mask
        if family == "warp":
            f = np.where((np.abs(d - 1.0) < 0.1)[..., None], f + 35 * strength, f)    # a bright halo
        out.append(np.clip(f, 0, 255).astype(np.uint8))
    return out


def vocode(kind: str, rng, voice: np.ndarray, strength: float) -> np.ndarray:
    """A voice clone's artifacts of family `kind` (the studio's `phase` lives in avlib.dataio.synthetic):
    channel (spectral envelope smeared over a few mel bands, partly random phase), telephone
    (band-pass, aliased 8 kHz resampling, coarse mu-law), metallic (comb resonance, musical noise)."""
    if kind == "telephone":
        b, a = butter(4, [300, 3400], btype="band", fs=SAMPLE_RATE)
        out = lfilter(b, a, voice)
        out = np.repeat(out[::2], 2)[:len(voice)]           # no anti-aliasing: aliases and images
        out = out / (np.abs(out).max() + 1e-9)
        mu, levels = 255.0, 2 ** (7 - 4 * strength)
        coded = np.sign(out) * np.log1p(mu * np.abs(out)) / np.log1p(mu)
        coded = np.round(coded * levels) / levels
        return np.sign(coded) * np.expm1(np.abs(coded) * np.log1p(mu)) / mu
    if kind == "metallic":
        delay = int(SAMPLE_RATE * (0.004 + 0.004 * strength))
        out = lfilter([1.0], np.r_[1.0, np.zeros(delay - 1), -(0.35 + 0.4 * strength)], voice)
        spec = librosa.stft(out, n_fft=512, hop_length=128)
        mag = np.abs(spec)
        gate = mag >= 0.15 * strength * mag.max(axis=0, keepdims=True)     # weak bins dropped: musical noise
        return librosa.istft(spec * gate, hop_length=128, length=len(voice))
    if kind == "channel":
        spec = librosa.stft(voice, n_fft=512, hop_length=128)
        mag, ph = np.abs(spec), np.angle(spec)
        smooth = uniform_filter1d(mag, int(round(5 + 20 * strength)), axis=0)    # harmonics smeared away
        freqs = np.linspace(0, SAMPLE_RATE / 2, mag.shape[0])[:, None]
        mag = ((1 - strength) * mag + strength * smooth) / (1 + np.exp((freqs - (6000 - 2500 * strength)) / 400))
        ph = ph + 0.5 * strength * rng.uniform(-np.pi, np.pi, ph.shape)
        return librosa.istft(mag * np.exp(1j * ph), hop_length=128, length=len(voice))
    raise ValueError(f"unknown vocoder {kind!r}")
