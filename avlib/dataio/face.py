"""Crops of a frame: the centre square, or the optional face crop with OpenCV's Haar
frontal-face detector (the one that works offline from a pip install of
opencv-python-headless<5), boxes smoothed over time, the centre square as fallback."""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

DETECT_EVERY = 4      # frames between detections; boxes in between are interpolated
MARGIN = 0.25         # box grown by this fraction on each side to keep chin and forehead


def square_resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """Centre square crop (keeps the aspect ratio: portrait videos are not squashed), then resize."""
    h, w = rgb.shape[:2]
    side = min(h, w)
    y, x = (h - side) // 2, (w - side) // 2
    crop = rgb[y:y + side, x:x + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


@lru_cache(maxsize=1)
def _detector():
    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    detector = cv2.CascadeClassifier(path)
    if detector.empty():
        raise RuntimeError(f"cannot load the Haar cascade at {path} (opencv-python-headless<5 ships it)")
    return detector


def detect_face(rgb: np.ndarray) -> tuple[float, float, float] | None:
    """(centre x, centre y, side) of the largest frontal face, or None."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    min_side = max(24, min(gray.shape) // 8)
    faces = _detector().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
    if len(faces) == 0:
        return None
    x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
    return x + w / 2, y + h / 2, max(w, h) * (1 + 2 * MARGIN)


def smooth_boxes(boxes: list, n: int) -> np.ndarray | None:
    """Per-frame (cx, cy, side) from sparse detections: median-filtered, then linearly
    interpolated over time; None when no frame had a face."""
    known = [(i, b) for i, b in enumerate(boxes) if b is not None]
    if not known:
        return None
    idx = np.array([i for i, _ in known])
    vals = np.array([b for _, b in known], dtype=np.float64)
    if len(vals) >= 3:   # a running median of 3 removes single false detections
        padded = np.vstack([vals[:1], vals, vals[-1:]])
        vals = np.median(np.stack([padded[:-2], padded[1:-1], padded[2:]]), axis=0)
    out = np.empty((n, 3))
    for c in range(3):
        out[:, c] = np.interp(np.arange(n), idx, vals[:, c])
    out[:, 2] = np.median(out[:, 2])  # one box size for the clip: no zoom jitter
    return out


def crop_faces(images: list[np.ndarray], size: int) -> list[np.ndarray]:
    """Crop every full-resolution frame to the smoothed face box and resize to size x size;
    frames of a clip without any detected face are centre-cropped."""
    detections = [detect_face(im) if i % DETECT_EVERY == 0 else None for i, im in enumerate(images)]
    boxes = smooth_boxes(detections, len(images))
    if boxes is None:
        return [square_resize(im, size) for im in images]
    out = []
    for im, (cx, cy, side) in zip(images, boxes):
        h, w = im.shape[:2]
        side = int(min(side, h, w))
        x = int(np.clip(cx - side / 2, 0, w - side))
        y = int(np.clip(cy - side / 2, 0, h - side))
        out.append(square_resize(im[y:y + side, x:x + side], size))
    return out
