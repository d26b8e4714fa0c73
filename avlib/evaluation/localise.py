"""Evaluating a per-frame localiser on whole videos: segments per video, the benchmarks'
protocols, a video-level verdict that one fake segment can move, and the share of each
manipulation.

`localise_set` scores every video of a set (per-frame P(fake) from overlapping windows,
proposals from it) and `localisation_metrics` reports, for that set:
- `avdeepfake1m` and `lavdf`: the benchmarks' AP/AR (avlib.scoring.segment_metrics);
- `ap_ceiling`: 1 - 1/(true segments), the most AP can reach on the set by the official code
  (a perfect prediction of 10 segments scores 0.9);
- `ap_by_iou`: AP at IoU 0.5, 0.55, ..., 0.95 (the AP-IoU curve);
- `by_modify_type`: AP@0.5 and AR@50 on the videos of one manipulation with the real videos
  (their proposals are false positives too);
- `video_level`: AUC of telling partially faked videos from real ones by the peak of the
  smoothed per-frame P(fake) (our aggregate) and by its mean over frames (what averaging window
  scores over a video gives);
- `video_verdict` (added by `avlib.localise`): yes/no per video at thresholds chosen on the
  validation videos, by the peak and by the mean (`video_verdict`);
- `modality`: how often the top proposal that matches a true segment (IoU > 0.5) names the
  manipulated modality (visual, audio, both) right.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from avlib.core.paths import atomic_write_bytes
from avlib.dataio.video_cache import read_video_entry
from avlib.scoring.calibration import choose
from avlib.scoring.segment_metrics import average_precision, iou_1d, localisation_report
from avlib.scoring.segments import frame_probabilities, proposal_modality, propose, video_scores

AP_IOUS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))
MODALITY_OF = {"visual_modified": "visual", "audio_modified": "audio", "both_modified": "both"}


def truths_of(index: pd.DataFrame) -> dict[str, np.ndarray]:
    """{file: (m, 2) true fake periods in seconds} of every labelled video of `index`."""
    return {r["file"]: np.asarray(json.loads(r["fake_periods"] or "[]"), float).reshape(-1, 2)
            for r in index.to_dict("records") if int(r["label"]) >= 0}


def localise_set(model, cache_dir, index: pd.DataFrame, *, device="cpu", amp: bool = False) -> dict:
    """Score every video of `index`: dict(frames {file: (T, 2) P(fake) per frame (visual, audio)},
    proposals {file: (n, 3) [confidence, start, end]}, modality {file: [per proposal]}, videos:
    one row per video with its label, modify type, and `max`/`mean` video-level scores)."""
    out = {"frames": {}, "proposals": {}, "modality": {}, "videos": []}
    model.eval()
    for r in index.to_dict("records"):
        entry = read_video_entry(cache_dir, r["clip_id"])
        p = frame_probabilities(model, entry["video"], entry["audio"], device=device, amp=amp)
        fake = p.max(1)
        proposals = propose(fake, model.fps)
        out["frames"][r["file"]] = p
        out["proposals"][r["file"]] = proposals
        out["modality"][r["file"]] = [proposal_modality(p, s, e, model.fps) for _, s, e in proposals]
        out["videos"].append({"file": r["file"], "label": int(r["label"]), "category": r["category"],
                              "style": r.get("style", ""), **video_scores(fake, model.fps),
                              "proposals": len(proposals)})
    out["videos"] = pd.DataFrame(out["videos"])
    return out


def ap_ceiling(n_segments: int) -> float:
    """The highest AP the benchmarks' code gives a set with n true segments: 1 - 1/n (its
    precision-recall sum skips the first step; see avlib.scoring.segment_metrics)."""
    return 1.0 - 1.0 / n_segments if n_segments else float("nan")


def _auc(labels, scores) -> float:
    return float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else float("nan")


def localisation_metrics(index: pd.DataFrame, scored: dict) -> dict:
    """The report described in the module docstring, for one set."""
    truths = truths_of(index)
    proposals = {f: scored["proposals"][f] for f in truths}
    n_segments = int(sum(len(t) for t in truths.values()))
    report = {"videos": len(truths), "fake_segments": n_segments, "ap_ceiling": ap_ceiling(n_segments),
              "avdeepfake1m": localisation_report(proposals, truths, "avdeepfake1m"),
              "lavdf": localisation_report(proposals, truths, "lavdf"),
              "ap_by_iou": {f"{iou:.2f}": average_precision(proposals, truths, float(iou)) for iou in AP_IOUS},
              "by_modify_type": {}}
    categories = index.set_index("file")["category"]
    real = [f for f in truths if categories[f] == "real"]
    for kind in sorted(set(categories) - {"real"}):
        files = [f for f in truths if categories[f] == kind] + real
        sub = localisation_report({f: proposals[f] for f in files}, {f: truths[f] for f in files}, "avdeepfake1m")
        n_kind = int(sum(len(truths[f]) for f in files))
        report["by_modify_type"][kind] = {"videos": len(files) - len(real), "fake_segments": n_kind,
                                          "ap_ceiling": ap_ceiling(n_kind), "ap@0.5": sub["ap@0.5"],
                                          "ap@0.75": sub["ap@0.75"], "ar@50": sub["ar@50"]}
    videos = scored["videos"]
    videos = videos[videos["file"].isin(truths)]
    report["video_level"] = {"auc_peak": _auc(videos["label"], videos["max"]),
                             "auc_mean_of_frames": _auc(videos["label"], videos["mean"]),
                             "what": "partially faked videos against real ones; peak: max of per-frame P(fake) "
                                     "smoothed over 0.2 s; mean: its mean over the video"}
    report["modality"] = modality_accuracy(index, scored, truths)
    return report


def video_verdict(val_videos: pd.DataFrame, test_videos: pd.DataFrame) -> dict:
    """Yes/no per video, by the peak and by the mean of the per-frame P(fake): each threshold
    chosen on the validation videos (balanced accuracy), then applied to the test videos:
    balanced accuracy and the rates of real and of partially faked videos called fake."""
    out = {}
    val = val_videos[val_videos["label"] >= 0]
    for column, name in (("max", "peak"), ("mean", "mean_of_frames")):
        threshold = choose(val["label"], val[column], "balanced")
        labels, called = test_videos["label"].to_numpy(), (test_videos[column] >= threshold).to_numpy()
        real, fake = called[labels == 0], called[labels == 1]
        rates = {"real_called_fake": float(real.mean()) if len(real) else float("nan"),
                 "fake_called_fake": float(fake.mean()) if len(fake) else float("nan")}
        out[name] = {"threshold": float(threshold), **rates,
                     "balanced_accuracy": (1 - rates["real_called_fake"] + rates["fake_called_fake"]) / 2}
    return out


def modality_accuracy(index: pd.DataFrame, scored: dict, truths: dict) -> dict:
    """Share of true segments whose best-ranked matching proposal (IoU > 0.5) names the right
    modality, overall and per modify type."""
    hits: dict[str, list[bool]] = {}
    for r in index.to_dict("records"):
        want = MODALITY_OF.get(r["category"])
        if want is None or r["file"] not in truths:
            continue
        rows = scored["proposals"][r["file"]]
        for segment in truths[r["file"]]:
            if not len(rows):
                continue
            match = np.flatnonzero(iou_1d(rows[:, 1:], segment[None])[:, 0] > 0.5)
            if len(match):
                hits.setdefault(r["category"], []).append(scored["modality"][r["file"]][match[0]] == want)
    every = [h for v in hits.values() for h in v]
    return {"matched_segments": len(every), "accuracy": float(np.mean(every)) if every else float("nan"),
            **{k: float(np.mean(v)) for k, v in sorted(hits.items())}}


def submission(scored: dict) -> dict[str, list[list[float]]]:
    """The 1M-Deepfakes challenge's localisation entries: {file: [[confidence, start, end], ...]}."""
    return {f: [[round(float(c), 5), round(float(s), 3), round(float(e), 3)] for c, s, e in rows]
            for f, rows in scored["proposals"].items()}


def save_scored(path: str | Path, index: pd.DataFrame, scored: dict) -> None:
    """What the figures of one scored set need, in one .npz (written atomically): each video's
    file, category, true fake periods, per-frame P(fake) and proposals, so that 05_plots can
    draw the timelines again without the model."""
    rows = index.to_dict("records")
    arrays = {"files": np.array([r["file"] for r in rows]), "categories": np.array([r["category"] for r in rows]),
              "fake_periods": np.array([r["fake_periods"] or "[]" for r in rows])}
    for i, r in enumerate(rows):
        arrays[f"frames_{i}"] = scored["frames"][r["file"]].astype(np.float32)
        arrays[f"proposals_{i}"] = np.asarray(scored["proposals"][r["file"]], np.float64).reshape(-1, 3)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getbuffer())


def load_scored(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """(index with file, category, fake_periods; scored with frames and proposals) from save_scored's file."""
    with np.load(path) as data:
        files = [str(f) for f in data["files"]]
        index = pd.DataFrame({"file": files, "category": [str(c) for c in data["categories"]],
                              "fake_periods": [str(p) for p in data["fake_periods"]]})
        scored = {"frames": {f: data[f"frames_{i}"] for i, f in enumerate(files)},
                  "proposals": {f: data[f"proposals_{i}"] for i, f in enumerate(files)}}
    return index, scored
