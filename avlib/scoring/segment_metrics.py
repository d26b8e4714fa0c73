"""Temporal forgery localisation metrics (AP@IoU, AR@N) as LAV-DF and AV-Deepfake1M compute them.

Pure numpy. Proposals are ``{video: rows [confidence, start, end]}`` and truths are
``{video: rows [start, end]}``, all times in seconds (the AV-Deepfake1M submission format; the
LAV-DF reference code reads proposal times in frames and divides them by 25, so convert LAV-DF
frame outputs to seconds before calling). Videos are evaluated in the order of ``truths`` (the
metadata list of the official code); proposals for videos absent from ``truths`` are ignored, as
the official code ignores them (LAV-DF evaluates subsets that way); a video of ``truths`` absent
from ``proposals`` is an error.

Official code followed (read at ControlNet/LAV-DF 51b8d91 and ControlNet/AV-Deepfake1M 2c72275):

* ControlNet/LAV-DF ``metrics.py`` (classes ``AP`` and ``AR``), ``utils.py`` (``iou_1d``) and
  ``evaluate.py`` (thresholds and N used for the LAV-DF benchmark);
* ControlNet/AV-Deepfake1M ``src/loc_1d.rs`` (the Rust core of ``avdeepfake1m.evaluation``:
  ``ap_1d``, ``ar_1d``, ``ap_ar_1d``; the package has no C++ source, the evaluation is Rust built
  with maturin, exposed by ``python/avdeepfake1m/evaluation/__init__.py``), ``README.md``
  (call of ``ap_ar_1d`` with fps 1, AP IoUs 0.5/0.75/0.9/0.95, AR N 50/30/20/10/5) and
  ``examples/batfd/evaluate.py`` (the challenge score). The Rust code is a port of LAV-DF's
  ``metrics.py`` and agrees with it on everything below unless stated.
  Checked against the released wheel ``avdeepfake1m`` 0.0.4 on small cases.

Definitions (both official implementations):

* IoU of two segments = max(0, min(ends) - max(starts)) / (max(ends) - min(starts)); a match
  needs IoU strictly greater than the threshold (``iou > t``: IoU exactly 0.5 does not count at
  0.5). IoUs and thresholds are compared in float32 as the official code does (torch's default
  dtype / Rust ``f32``), so decisions at a threshold tie are the same as there.
* AP at one IoU threshold. Per video, each true segment, in the order given, claims the first
  proposal (in confidence order) with IoU > t that no earlier true segment claimed; a claimed
  proposal is a true positive, every other proposal a false positive (so a second proposal of
  an already matched segment is a false positive, and every proposal of a video without true
  segments is one). Matching is greedy by true segment, not by IoU size. All proposals of all
  videos are then ranked together by confidence, descending, with a stable sort (ties keep
  video order, then row order). With TP_k the true positives in the top k, L the number of true
  segments over all videos and K the number of proposals:
  precision_k = TP_k / k, recall_k = TP_k / L, and the official curve/summation is
  ``AP = sum_{k=2..K} (recall_k - recall_{k-1}) * max_{j>=k} precision_j``.
  Note the sum starts at k = 2: the official code prepends the point (recall 1, precision 0) to
  the reversed curve and sums |dx| * running max of precision over its consecutive pairs, so the
  step from recall 0 to recall_1 is never counted. When the top-ranked proposal is a true
  positive, AP is 1/L lower than the textbook all-point interpolated AP: a perfect prediction
  scores 1 - 1/L, not 1.0 (one segment, one exact proposal: AP 0.0 in both official codes,
  confirmed with ``avdeepfake1m`` 0.0.4). We reproduce this. L = 0 gives NaN (0/0 recall in
  both official codes); we return NaN whenever L = 0.
* AR@N over IoU thresholds T (both benchmarks use 0.5:0.05:0.95, ten values). Per video keep
  the N proposals of highest confidence (all if fewer); a true segment is recalled at t if its
  best IoU with a kept proposal is > t (no one-to-one matching here). Recalled and missed
  segments are summed over all videos (pooled over segments, not averaged per video):
  recall_t = recalled_t / L, and AR@N = mean over t of recall_t.

Where the two official implementations differ, and what we do:

* AR with no true segments at all (every video real): ``ap_ar_1d`` returns 0.0 (it guards the
  0/0), LAV-DF's ``AR`` returns NaN. ``average_recall`` returns NaN;
  ``localisation_report(..., "avdeepfake1m")`` reports 0.0 as the challenge server does,
  ``"lavdf"`` reports NaN.
* A video with fewer than N proposals: the Rust code keeps all of them; LAV-DF's ``AR`` fails
  with an index error (its post-processing always yields about 100). We keep all of them.
* A video with an empty proposal list: the released ``avdeepfake1m`` panics while reading the
  JSON and LAV-DF fails on the empty tensor, so neither defines it; the Rust source has a branch
  that would drop such a video's true segments from the AR denominator, unreachable through its
  JSON reader. We count its true segments as missed (AR) and as not found (AP), which is what
  the formulas above give with K = 0 for that video.
* Proposal order within a video: both official codes take rows in the order given (AR keeps the
  first N rows; AP's matching walks rows in file order) and rely on the submission being sorted
  by confidence, descending (the format of the challenge and of their post-processing). We sort
  each video's rows by confidence (stable) first, so results equal the official ones on sorted
  submissions and follow the stated definition (top N by confidence) on unsorted ones.

Protocols in ``localisation_report``:

* ``"avdeepfake1m"`` (AV-Deepfake1M / AV-Deepfake1M++, 1M-Deepfakes challenge): AP at IoU
  0.5, 0.75, 0.9, 0.95; AR@50, 30, 20, 10, 5 over IoU 0.5:0.05:0.95; score
  = 1/8 * sum(AP) + 1/10 * sum(AR), written in ``examples/batfd/evaluate.py`` as
  0.5 * mean(AP) + 0.5 * mean(AR) (the README states no formula).
* ``"lavdf"`` (LAV-DF ``evaluate.py``): AP at IoU 0.5, 0.75, 0.95; AR@100, 50, 20, 10 over IoU
  0.5:0.05:0.95. LAV-DF defines no combined score, so there is no ``"score"`` key.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

PROTOCOLS = ("avdeepfake1m", "lavdf")
AR_IOU_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
AP_IOU_THRESHOLDS = {"avdeepfake1m": (0.5, 0.75, 0.9, 0.95), "lavdf": (0.5, 0.75, 0.95)}
AR_NUM_PROPOSALS = {"avdeepfake1m": (50, 30, 20, 10, 5), "lavdf": (100, 50, 20, 10)}

__all__ = [
    "AP_IOU_THRESHOLDS", "AR_IOU_THRESHOLDS", "AR_NUM_PROPOSALS", "PROTOCOLS",
    "average_precision", "average_recall", "challenge_score", "iou_1d", "localisation_report",
]


# ----------------------------------------------------------------------------------------------
# IoU


def iou_1d(proposals, truths, *, dtype=np.float64) -> np.ndarray:
    """Temporal IoU of every proposal segment with every true segment.

    ``proposals`` (n, 2) and ``truths`` (m, 2) hold rows [start, end]; returns (n, m). Computed
    in ``dtype`` (float64 by default; the metrics use float32 like the official code). Two
    zero-length segments at the same instant have union 0: their IoU is 0 here (NaN in the
    official code; neither passes a threshold).
    """
    dtype = np.dtype(dtype)
    p = np.asarray(proposals, dtype=dtype)
    t = np.asarray(truths, dtype=dtype)
    if p.size == 0:
        p = p.reshape(0, 2)
    if t.size == 0:
        t = t.reshape(0, 2)
    for name, a in (("proposals", p), ("truths", t)):
        if a.ndim != 2 or a.shape[1] != 2:
            raise ValueError(f"iou_1d: {name} must have shape (n, 2) of [start, end], got {a.shape}")
    p_start, p_end = p[:, 0:1], p[:, 1:2]
    t_start, t_end = t[None, :, 0], t[None, :, 1]
    inter = np.maximum(np.minimum(p_end, t_end) - np.maximum(p_start, t_start), dtype.type(0))
    union = np.maximum(p_end, t_end) - np.minimum(p_start, t_start)
    out = np.zeros(inter.shape, dtype=dtype)
    np.divide(inter, union, out=out, where=union > 0)
    return out


# ----------------------------------------------------------------------------------------------
# input checks


def _rows(video, value, width: int, what: str) -> np.ndarray:
    """``value`` as a float64 (k, width) array, or ValueError naming the video and the fault."""
    layout = "[confidence, start, end]" if width == 3 else "[start, end]"
    where = f"video {video!r}: {what}"
    if value is None:
        raise ValueError(f"{where} is None; give an empty list for none")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None:
        # ragged or non-numeric: find the first offending row
        try:
            items = list(value)
        except TypeError:
            raise ValueError(f"{where} must be a list of rows {layout}, "
                             f"got {type(value).__name__}") from None
        for i, row in enumerate(items):
            try:
                r = np.asarray(row, dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"{where} row {i} is not {width} numbers {layout}: {row!r}") from None
            if r.ndim != 1 or r.size != width:
                raise ValueError(f"{where} row {i} has {r.size} values, expected {width} {layout}: {row!r}")
        raise ValueError(f"{where} is not a (k, {width}) array of numbers {layout}")
    if arr.size == 0:
        return np.zeros((0, width))
    if arr.ndim != 2 or arr.shape[1] != width:
        got = arr.shape[1] if arr.ndim == 2 else None
        detail = f"rows have {got} values" if got is not None else f"got shape {arr.shape}"
        raise ValueError(f"{where}: expected rows of {width} numbers {layout}, {detail}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{where} row {i} has a NaN or infinite value: {arr[i].tolist()}")
    start, end = arr[:, width - 2], arr[:, width - 1]
    bad = end < start
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{where} row {i} ends before it starts (start {start[i]:g}, end {end[i]:g})")
    return arr


class _Video:
    """One video's checked data: confidences sorted descending (stable) and the float32 IoU
    matrix (proposals in that order x true segments)."""

    __slots__ = ("confidence", "ious", "n_truths")

    def __init__(self, props: np.ndarray, truths: np.ndarray):
        order = np.argsort(-props[:, 0], kind="stable")
        props = props[order]
        self.confidence = props[:, 0]
        self.n_truths = len(truths)
        self.ious = iou_1d(props[:, 1:].astype(np.float32), truths.astype(np.float32), dtype=np.float32)


def _prepare(proposals, truths) -> list[_Video]:
    if not isinstance(proposals, Mapping):
        raise ValueError("proposals must be a dict video -> rows [confidence, start, end], "
                         f"got {type(proposals).__name__}")
    if not isinstance(truths, Mapping):
        raise ValueError(f"truths must be a dict video -> rows [start, end], got {type(truths).__name__}")
    missing = [v for v in truths if v not in proposals]
    if missing:
        shown = ", ".join(repr(v) for v in missing[:5])
        raise ValueError(f"proposals has no entry for {len(missing)} video(s) of truths ({shown}"
                         f"{', ...' if len(missing) > 5 else ''}); "
                         "give an empty list for a video without proposals")
    return [_Video(_rows(v, proposals[v], 3, "proposal"), _rows(v, truths[v], 2, "true segment"))
            for v in truths]


def _check_iou(iou, name: str = "iou") -> float:
    try:
        value = float(iou)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {iou!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {iou!r}")
    return value


def _check_thresholds(iou_thresholds) -> np.ndarray:
    values = [_check_iou(t, "iou_thresholds") for t in np.atleast_1d(np.asarray(iou_thresholds, dtype=object))]
    if not values:
        raise ValueError("iou_thresholds must hold at least one IoU threshold")
    return np.asarray(values, dtype=np.float32)


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer (proposals kept per video), got {n!r}")
    return int(n)


def _check_protocol(protocol) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(map(repr, PROTOCOLS))}; got {protocol!r}")
    return protocol


# ----------------------------------------------------------------------------------------------
# AP / AR on checked data


def _true_positives(video: _Video, iou: np.float32) -> np.ndarray:
    """Official matching: each true segment in turn claims the first unclaimed proposal
    (confidence order) with IoU > threshold."""
    hit = video.ious > iou
    claimed = np.zeros(len(video.confidence), dtype=bool)
    for j in range(video.n_truths):
        free = np.flatnonzero(hit[:, j] & ~claimed)
        if free.size:
            claimed[free[0]] = True
    return claimed


def _ap(videos: list[_Video], iou: float) -> float:
    n_truths = sum(v.n_truths for v in videos)
    if n_truths == 0:
        return math.nan
    thr = np.float32(iou)
    confidence = np.concatenate([v.confidence for v in videos] + [np.zeros(0)])
    is_tp = np.concatenate([_true_positives(v, thr) for v in videos] + [np.zeros(0, dtype=bool)])
    if confidence.size == 0:
        return 0.0
    is_tp = is_tp[np.argsort(-confidence, kind="stable")]
    acc = np.cumsum(is_tp, dtype=np.float64)
    precision = acc / np.arange(1, acc.size + 1)
    recall = acc / n_truths
    best_after = np.maximum.accumulate(precision[::-1])[::-1]        # max precision at rank >= k
    # official summation: from rank 2 on; the step 0 -> recall_1 is not counted
    return float(np.sum(np.diff(recall) * best_after[1:]))


def _ar(videos: list[_Video], n: int, thresholds: np.ndarray) -> float:
    n_truths = 0
    recalled = np.zeros(len(thresholds), dtype=np.int64)
    for v in videos:
        n_truths += v.n_truths
        if v.n_truths == 0 or v.ious.shape[0] == 0:
            continue
        best = v.ious[:n].max(axis=0)                                 # (n_truths,)
        recalled += (best[None, :] > thresholds[:, None]).sum(axis=1)
    if n_truths == 0:
        return math.nan
    return float(np.mean(recalled / n_truths))


# ----------------------------------------------------------------------------------------------
# public API


def average_precision(proposals: Mapping, truths: Mapping, iou: float) -> float:
    """AP at one IoU threshold over all videos of ``truths`` (see the module docstring).

    ``proposals``: {video: (n, 3) rows [confidence, start, end]}; ``truths``: {video: (m, 2)
    rows [start, end]} in seconds. Returns NaN when there are no true segments at all; 0.0 when
    there are true segments and no proposals.
    """
    return _ap(_prepare(proposals, truths), _check_iou(iou))


def average_recall(proposals: Mapping, truths: Mapping, n: int,
                   iou_thresholds: Sequence[float] = AR_IOU_THRESHOLDS) -> float:
    """AR@n: recall of true segments by each video's ``n`` most confident proposals, pooled over
    all segments of all videos, averaged over ``iou_thresholds`` (both benchmarks: 0.5:0.05:0.95).
    Returns NaN when there are no true segments at all (LAV-DF; the AV-Deepfake1M code says 0.0).
    """
    n = _check_n(n)
    thresholds = _check_thresholds(iou_thresholds)
    return _ar(_prepare(proposals, truths), n, thresholds)


def challenge_score(ap: Sequence[float], ar: Sequence[float]) -> float:
    """1M-Deepfakes challenge localisation score: 0.5 * mean(AP) + 0.5 * mean(AR), i.e.
    1/8 * sum(AP@{0.5,0.75,0.9,0.95}) + 1/10 * sum(AR@{50,30,20,10,5})."""
    ap, ar = list(ap), list(ar)
    if not ap or not ar:
        raise ValueError("challenge_score needs at least one AP and one AR value")
    return 0.5 * sum(ap) / len(ap) + 0.5 * sum(ar) / len(ar)


def localisation_report(proposals: Mapping, truths: Mapping, protocol: str) -> dict[str, float]:
    """All localisation metrics of one benchmark's protocol.

    ``protocol="avdeepfake1m"``: keys ap@0.5, ap@0.75, ap@0.9, ap@0.95, ar@50, ar@30, ar@20,
    ar@10, ar@5, score (challenge score). ``protocol="lavdf"``: ap@0.5, ap@0.75, ap@0.95,
    ar@100, ar@50, ar@20, ar@10. ValueError for another protocol or malformed input.
    """
    protocol = _check_protocol(protocol)
    videos = _prepare(proposals, truths)
    thresholds = np.asarray(AR_IOU_THRESHOLDS, dtype=np.float32)
    report = {f"ap@{t:g}": _ap(videos, t) for t in AP_IOU_THRESHOLDS[protocol]}
    ar = {f"ar@{n}": _ar(videos, n, thresholds) for n in AR_NUM_PROPOSALS[protocol]}
    if protocol == "avdeepfake1m":
        # avdeepfake1m's ar_1d turns 0/0 (no true segments at all) into 0.0
        ar = {k: (0.0 if math.isnan(v) else v) for k, v in ar.items()}
    report.update(ar)
    if protocol == "avdeepfake1m":
        aps = [report[f"ap@{t:g}"] for t in AP_IOU_THRESHOLDS[protocol]]
        report["score"] = challenge_score(aps, list(ar.values()))
    return report
