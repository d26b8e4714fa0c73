"""Stage 5: figures (seaborn on the headless Agg backend), each written as PNG with the CSV of
the numbers behind it."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import confusion_matrix, precision_recall_curve, roc_auc_score, roc_curve  # noqa: E402

from avlib.core.paths import write_csv  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")


def _save(fig, folder: Path, name: str, table: pd.DataFrame) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    write_csv(folder / f"{name}.csv", table)
    return path


def plot_confusion_matrix(pred: pd.DataFrame, folder: Path) -> Path:
    """Counts and row-normalised rates, side by side."""
    cm = confusion_matrix(pred["label"], pred["pred"], labels=[0, 1])
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, data, fmt, title in ((axes[0], cm, "d", "counts"), (axes[1], rates, ".2f", "rate per true class")):
        sns.heatmap(data, annot=True, fmt=fmt, cmap="Blues", cbar=False, ax=ax,
                    xticklabels=["REAL", "FAKE"], yticklabels=["REAL", "FAKE"])
        ax.set(xlabel="predicted", ylabel="true", title=title)
    table = pd.DataFrame({"true": ["REAL", "REAL", "FAKE", "FAKE"], "predicted": ["REAL", "FAKE"] * 2,
                          "count": cm.ravel(), "rate": rates.ravel()})
    return _save(fig, folder, "confusion_matrix", table)


def ranking_score(pred: pd.DataFrame) -> pd.Series:
    """The score ROC and precision-recall curves rank by: the model's own P(fake) (p_fake_raw)
    where the predictions hold it, since a calibrator that saturates can tie scores it does not
    reorder; else p_fake."""
    return pred["p_fake_raw"] if "p_fake_raw" in pred else pred["p_fake"]


def plot_roc(pred: pd.DataFrame, folder: Path, threshold: float, auc: float, *, n_boot: int = 200, seed: int = 0) -> Path:
    """ROC with a bootstrap band (identities resampled) and the operating point."""
    fpr, tpr, thr = roc_curve(pred["label"], ranking_score(pred))
    grid = np.linspace(0, 1, 101)
    rng = np.random.default_rng(seed)
    groups = [g for _, g in pred.groupby("identity")]
    curves = []
    for _ in range(n_boot):
        sample = pd.concat([groups[i] for i in rng.integers(0, len(groups), len(groups))])
        if sample["label"].nunique() == 2:
            f, t, _ = roc_curve(sample["label"], ranking_score(sample))
            curves.append(np.interp(grid, f, t))
    fig, ax = plt.subplots(figsize=(5, 5))
    if curves:
        lo, hi = np.percentile(curves, [2.5, 97.5], axis=0)
        ax.fill_between(grid, lo, hi, alpha=0.25, label="95 % band (identity bootstrap)")
    ax.plot(fpr, tpr, lw=2, label=f"AUC = {auc:.3f}")
    called = pred["pred"] == 1 if "pred" in pred else pred["p_fake"] >= threshold     # the verdict's operating point
    op_fpr = float((called & (pred["label"] == 0)).sum() / max((pred["label"] == 0).sum(), 1))
    op_tpr = float((called & (pred["label"] == 1)).sum() / max((pred["label"] == 1).sum(), 1))
    ax.scatter([op_fpr], [op_tpr], color="red", zorder=3, label=f"threshold {threshold:.2f}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test)")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, folder, "roc_curve", pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thr}))


def plot_precision_recall(pred: pd.DataFrame, folder: Path, ap: float) -> Path:
    precision, recall, thr = precision_recall_curve(pred["label"], ranking_score(pred))
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(recall, precision, lw=2, label=f"AP = {ap:.3f}")
    ax.axhline(pred["label"].mean(), ls="--", color="grey", lw=1, label="chance")
    ax.set(xlabel="recall (FAKE)", ylabel="precision (FAKE)", title="Precision-recall (test)", ylim=(0, 1.02))
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, folder, "precision_recall", pd.DataFrame({"precision": precision[:-1], "recall": recall[:-1],
                                                                "threshold": thr}))


def plot_training_curves(history: pd.DataFrame, folder: Path, kept_epoch: int | None = None) -> Path:
    """Loss, accuracy and AUC per epoch, train and validation, on integer epoch ticks; a
    dashed line marks `kept_epoch` (the weights best.pt holds) when given."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, metric in zip(axes, ("loss", "accuracy", "auc")):
        for split in ("train", "val"):
            col = f"{split}_{metric}"
            if col in history:
                ax.plot(history["epoch"], history[col], marker="o", ms=3, label=split)
        if kept_epoch is not None:
            ax.axvline(kept_epoch, color="grey", ls="--", lw=1, label=f"kept (epoch {kept_epoch})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="epoch", title=metric)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    return _save(fig, folder, "training_curves", history)


def plot_per_category(per_category: dict, folder: Path) -> Path:
    """AUC of each fake category against the real clips."""
    table = pd.DataFrame([{"category": k, **v} for k, v in per_category.items()])
    fig, ax = plt.subplots(figsize=(6, 3.8))
    if len(table):
        sns.barplot(table, x="category", y="auc", ax=ax, color="steelblue")
        for i, v in enumerate(table["auc"]):
            ax.text(i, v + 0.01, f"{v:.3f}", ha="center", fontsize=9)
    ax.set(ylim=(0, 1.08), title="AUC per fake category (vs. all real test clips)")
    return _save(fig, folder, "per_category_auc", table)


def plot_score_distributions(pred: pd.DataFrame, folder: Path, threshold: float) -> Path:
    fig, ax = plt.subplots(figsize=(7, 3.8))
    sns.histplot(pred, x="p_fake", hue="category", bins=20, binrange=(0, 1), element="step", stat="count", ax=ax)
    ax.axvline(threshold, color="red", ls="--", lw=1)
    ax.set(title="P(fake) by category (test)")
    return _save(fig, folder, "score_distributions", pred[["clip_id", "category", "label", "p_fake"]])


def plot_reliability(pred: pd.DataFrame, folder: Path, bins: int = 10) -> Path:
    """Fraction of fakes against mean P(fake) per equal-width bin: the calibrated P(fake), and
    the model's own (p_fake_raw) before calibration when the predictions hold it."""
    edges = np.linspace(0, 1, bins + 1)
    columns = [("p_fake_raw", "before calibration"), ("p_fake", "calibrated")] if "p_fake_raw" in pred else \
        [("p_fake", "P(fake)")]
    tables = []
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    for column, label in columns:
        which = np.clip(np.digitize(pred[column], edges[1:-1]), 0, bins - 1)
        table = pd.DataFrame({"bin": which, "p": pred[column], "y": pred["label"]}).groupby("bin").agg(
            mean_p=("p", "mean"), frac_fake=("y", "mean"), n=("y", "size")).reset_index().assign(curve=label)
        ece = float((table["mean_p"] - table["frac_fake"]).abs().mul(table["n"]).sum() / table["n"].sum())
        ax.plot(table["mean_p"], table["frac_fake"], marker="o", label=f"{label} (ECE {ece:.3f})")
        tables.append(table)
    ax.legend(loc="upper left", fontsize=8)
    ax.set(xlabel="mean P(fake) in bin", ylabel="fraction fake", title="Reliability (test)", xlim=(0, 1), ylim=(0, 1))
    return _save(fig, folder, "reliability", pd.concat(tables, ignore_index=True))


def plot_roc_overlay(sets: dict[str, pd.DataFrame], folder: Path) -> Path:
    """roc_external.png: one ROC curve per evaluated set (in-domain test and each external set;
    predictions with columns label and p_fake), its AUC in the legend. Sets with one class have
    no ROC and are left out (listed in the title)."""
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    rows, skipped = [], []
    for name, pred in sets.items():
        if pred["label"].nunique() < 2:
            skipped.append(name)
            continue
        fpr, tpr, thr = roc_curve(pred["label"], ranking_score(pred))
        auc = roc_auc_score(pred["label"], ranking_score(pred))
        ax.plot(fpr, tpr, lw=2, label=f"{name}: AUC {auc:.3f} (n={len(pred)})")
        rows.append(pd.DataFrame({"set": name, "auc": auc, "fpr": fpr, "tpr": tpr, "threshold": thr}))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    title = "ROC: in-domain and external sets" + (f"\n(no ROC, one class: {', '.join(skipped)})" if skipped else "")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right", fontsize=8)
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["set", "auc", "fpr", "tpr"])
    return _save(fig, folder, "roc_external", table)


def plot_sync_scores(sets: dict[str, pd.DataFrame], folder: Path) -> Path:
    """sync_scores.png: the real-only sync score (high = lips and voice disagree) per category, one
    panel per evaluated set (predictions with columns category, sync_score), with the score's AUC
    of each fake category against the set's real clips in the legend."""
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 3.8), squeeze=False)
    categories = sorted(set().union(*[set(p["category"]) for p in sets.values()]))
    colour = dict(zip(categories, sns.color_palette(n_colors=len(categories))))     # one colour per category in every panel
    rows = []
    for ax, (name, pred) in zip(axes[0], sets.items()):
        real = pred[pred["label"] == 0]
        for category, group in pred.groupby("category"):
            auc = ""
            if group["label"].iloc[0] == 1 and len(real):
                both = pd.concat([real, group])
                auc = f", AUC {roc_auc_score(both['label'], both['sync_score']):.2f}"
            sns.kdeplot(group["sync_score"], ax=ax, label=f"{category} (n={len(group)}{auc})", fill=True, alpha=0.2,
                        warn_singular=False, cut=0, color=colour[category])
            rows += [{"eval_set": name, "category": category, "clip_id": c, "sync_score": s}
                     for c, s in zip(group["clip_id"], group["sync_score"])]
        ax.set(title=f"sync score, {name}", xlabel="mean -log p(offset 0)   (high: out of sync)")
        ax.legend(fontsize=7)
    return _save(fig, folder, "sync_scores", pd.DataFrame(rows))


def plot_timeline(windows: pd.DataFrame, path: Path, title: str, threshold: float) -> None:
    """P(fake) of each window over the video (and a sync model's offset per window) as a PNG at `path`."""
    has_offset = "offset_ms" in windows
    fig, axes = plt.subplots(2 if has_offset else 1, 1, figsize=(8, 4.6 if has_offset else 2.8), sharex=True,
                             squeeze=False)
    ax = axes[0, 0]
    mid = (windows["start"] + windows["end"]) / 2
    ax.plot(mid, windows["p_fake"], marker="o")
    ax.axhline(threshold, color="red", ls="--", lw=1, label=f"threshold {threshold:.2f}")
    ax.set(ylim=(0, 1), xlabel="" if has_offset else "seconds", ylabel="P(fake)", title=title)
    ax.legend(loc="upper right", fontsize=8)
    if has_offset:                     # the sync model's audio-visual offset per window, sized by its confidence
        off = axes[1, 0]
        conf = windows["offset_confidence"].clip(lower=0)
        off.scatter(mid, windows["offset_ms"], s=20 + 200 * conf / max(float(conf.max()), 1e-6), zorder=3)
        off.plot(mid, windows["offset_ms"], lw=1, alpha=0.5)
        off.axhline(0, color="grey", lw=1)
        off.set(xlabel="seconds", ylabel="offset (ms)\n+ audio lags")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
