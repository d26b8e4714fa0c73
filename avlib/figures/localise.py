"""Figures of temporal localisation: per-video timelines (per-frame P(fake) of both heads, the
true fake segments and the top proposals) and the AP-IoU curve, each a PNG with its numbers
beside it as CSV."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from avlib.figures.plots import _save, plt


def plot_localisation_timelines(index: pd.DataFrame, scored: dict, folder: Path, *, fps: float,
                                per_type: int = 2, top: int = 3, name: str = "localisation_timelines") -> Path:
    """`per_type` videos of each modify type: P(fake) per frame (visual and audio heads), the
    true fake segments shaded, the `top` proposals as bars labelled with their confidence."""
    picked = pd.concat([rows.head(per_type) for _, rows in index.groupby("category", sort=True)])
    fig, axes = plt.subplots(len(picked), 1, figsize=(9, 1.6 * len(picked) + 0.6), sharex=True, squeeze=False)
    table = []
    for ax, r in zip(axes[:, 0], picked.to_dict("records")):
        p = scored["frames"][r["file"]]
        t = np.arange(len(p)) / fps
        ax.plot(t, p[:, 0], lw=1.2, label="P(lips fake)")
        ax.plot(t, p[:, 1], lw=1.2, label="P(voice fake)")
        for a, b in json.loads(r["fake_periods"] or "[]"):
            ax.axvspan(a, b, color="red", alpha=0.15, lw=0)
        for k, (c, a, b) in enumerate(scored["proposals"][r["file"]][:top]):
            ax.plot([a, b], [1.05 + 0.08 * k] * 2, color="black", lw=3, solid_capstyle="butt")
            ax.text(b + 0.05, 1.03 + 0.08 * k, f"{c:.2f}", fontsize=7, va="center")
            table.append({"file": r["file"], "rank": k + 1, "confidence": c, "start": a, "end": b})
        ax.set(ylim=(0, 1.35), ylabel="P(fake)")
        ax.set_title(f"{r['file']} ({r['category']}); red: true segments, black: top proposals", fontsize=8)
    axes[0, 0].legend(loc="upper left", fontsize=7, ncol=2)
    axes[-1, 0].set_xlabel("seconds")
    return _save(fig, Path(folder), name, pd.DataFrame(table))


def plot_ap_iou(curves: dict[str, dict[str, float]], folder: Path, name: str = "localisation_ap_iou") -> Path:
    """AP against the IoU threshold for each named set (`curves`: {set: {iou: AP}})."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    rows = []
    for label, curve in curves.items():
        ious = [float(k) for k in curve]
        ax.plot(ious, list(curve.values()), marker="o", label=label)
        rows += [{"set": label, "iou": i, "ap": v} for i, v in zip(ious, curve.values())]
    ax.set(xlabel="temporal IoU threshold", ylabel="AP", ylim=(0, 1.02), title="AP by IoU threshold")
    ax.legend(fontsize=8)
    return _save(fig, Path(folder), name, pd.DataFrame(rows))
