"""Stage 4: metrics from labels and P(fake). Plain numpy/scikit-learn, unit-tested against
hand-computed values."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    classification_report,
    confusion_matrix,
    roc_auc_score,
    roc_curve,
)

CLASS_NAMES = ["REAL", "FAKE"]


def _two_classes(labels) -> bool:
    return len(np.unique(labels)) == 2


def equal_error_rate(labels, probs) -> tuple[float, float]:
    """(EER, threshold): the point where false-positive and false-negative rates meet,
    interpolated linearly between ROC points."""
    fpr, tpr, thr = roc_curve(labels, probs)
    fnr = 1 - tpr
    diff = fpr - fnr
    i = int(np.argmax(diff >= 0))        # first point where FPR >= FNR
    if i == 0:
        return float(fpr[0]), float(thr[0])
    d0, d1 = diff[i - 1], diff[i]
    w = d0 / (d0 - d1) if d0 != d1 else 0.0
    eer = fpr[i - 1] + w * (fpr[i] - fpr[i - 1])
    return float(eer), float(thr[i - 1] + w * (thr[i] - thr[i - 1]) if np.isfinite(thr[i - 1]) else thr[i])


def choose_threshold(labels, probs) -> float:
    """The threshold maximising balanced accuracy (Youden's J) on validation; 0.5 if one class.

    It lies midway between the lowest validation score that J's best cut calls FAKE and the
    highest one it calls REAL (the widest margin the cut allows), not on that lowest FAKE score
    itself (roc_curve's threshold), which calls real any test fake a hair below validation's
    weakest one."""
    labels, probs = np.asarray(labels).astype(int), np.asarray(probs, float)
    if not _two_classes(labels):
        return 0.5
    fpr, tpr, thr = roc_curve(labels, probs, drop_intermediate=False)
    t = float(thr[int(np.argmax(tpr - fpr))])
    if not np.isfinite(t):                     # the best cut calls nothing FAKE
        return 0.5
    below = probs[probs < t]
    return float((t + below.max()) / 2) if below.size else min(t, 1.0)


def calibration(labels, probs, bins: int = 10, draws: int = 500) -> dict:
    """Expected calibration error (equal-width bins), Brier score, and the ECE's floor on this
    many clips: `ece_floor` (mean) and `ece_floor_95` (95th percentile) of the ECE that a
    perfectly calibrated model with these same probabilities shows when each clip's label is
    drawn from its probability (`draws` seeded draws). On few clips the binned frequencies are
    noisy, so even perfect calibration scores well above 0 (about 0.1 on 45 clips, 0.02 on
    1,000): an ECE is only informative against its floor."""
    labels, probs = np.asarray(labels, float), np.asarray(probs, float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probs, edges[1:-1]), 0, bins - 1)
    used = [b for b in range(bins) if (which == b).any()]
    share = np.array([(which == b).mean() for b in used])
    mean_p = np.array([probs[which == b].mean() for b in used])
    ece = float(np.sum(np.abs(mean_p - np.array([labels[which == b].mean() for b in used])) * share)) if used else float("nan")
    out = {"ece": ece, "brier": float(np.mean((probs - labels) ** 2)) if len(probs) else float("nan")}
    if used:
        rng, floor = np.random.default_rng(0), []
        step = max(1, 2_000_000 // len(probs))                    # draws at a time: memory bounded on big sets
        for done in range(0, draws, step):
            drawn = rng.random((min(step, draws - done), len(probs))) < probs        # perfectly calibrated labels
            frac = np.stack([drawn[:, which == b].mean(axis=1) for b in used], axis=1)  # (draws, bins used)
            floor.append((np.abs(frac - mean_p) * share).sum(axis=1))
        floor = np.concatenate(floor)
        out.update(ece_floor=float(floor.mean()), ece_floor_95=float(np.percentile(floor, 95)))
    return out


def binary_metrics(labels, probs, threshold: float = 0.5, decisions=None) -> dict:
    """Accuracy, balanced accuracy, per-class report, AUC, AP, EER, calibration and confusion
    matrix at `threshold` (P(fake) >= threshold means FAKE), or of `decisions` (1 = FAKE) when
    given: a verdict that weighs more than P(fake)."""
    labels, probs = np.asarray(labels).astype(int), np.asarray(probs, float)
    pred = (probs >= threshold).astype(int) if decisions is None else np.asarray(decisions).astype(int)
    report = classification_report(labels, pred, labels=[0, 1], target_names=CLASS_NAMES,
                                   output_dict=True, zero_division=0)
    out = {
        "n": {"REAL": int((labels == 0).sum()), "FAKE": int((labels == 1).sum())},
        "threshold": float(threshold),
        "accuracy": float((pred == labels).mean()) if len(labels) else float("nan"),
        "balanced_accuracy": float(balanced_accuracy_score(labels, pred)) if _two_classes(labels) else float("nan"),
        "per_class": {c: {k: float(report[c][k]) for k in ("precision", "recall", "f1-score", "support")}
                      for c in CLASS_NAMES},
        "auc": float(roc_auc_score(labels, probs)) if _two_classes(labels) else float("nan"),
        "ap": float(average_precision_score(labels, probs)) if _two_classes(labels) else float("nan"),
        "eer": equal_error_rate(labels, probs)[0] if _two_classes(labels) else float("nan"),
        "calibration": calibration(labels, probs),
        "confusion_matrix": confusion_matrix(labels, pred, labels=[0, 1]).tolist(),
    }
    return out


def _decided(frame: pd.DataFrame, threshold: float) -> pd.Series:
    """1 where a clip is called FAKE: the `pred` column when the frame has one, else P(fake) >= threshold."""
    return frame["pred"].astype(int) if "pred" in frame else (frame["p_fake"] >= threshold).astype(int)


def best_thresholds(labels, probs) -> dict:
    """The highest accuracy and balanced accuracy that any threshold reaches on these clips (an
    oracle: what a threshold chosen elsewhere is measured against)."""
    labels, probs = np.asarray(labels).astype(int), np.asarray(probs, float)
    if not _two_classes(labels):
        return {}
    cuts = np.append(np.unique(probs), np.inf)
    called = probs[None, :] >= cuts[:, None]                          # (cuts, clips)
    tpr = (called & (labels == 1)).sum(1) / (labels == 1).sum()
    tnr = (~called & (labels == 0)).sum(1) / (labels == 0).sum()
    acc = (called == (labels == 1)).mean(1)
    return {"best_accuracy": float(acc.max()), "best_balanced_accuracy": float(((tpr + tnr) / 2).max())}


def per_group(frame: pd.DataFrame, column: str, threshold: float) -> dict:
    """Each fake group of `column` (category or method) against all real clips:
    AUC, AP and recall (of the `pred` column, else at the threshold), with clip counts."""
    real = frame[frame["label"] == 0]
    out = {}
    for name, fakes in frame[frame["label"] == 1].groupby(column):
        both = pd.concat([real, fakes])
        two = _two_classes(both["label"])
        out[str(name)] = {
            "n_fake": int(len(fakes)), "n_real": int(len(real)),
            "auc": float(roc_auc_score(both["label"], both["p_fake"])) if two else float("nan"),
            "ap": float(average_precision_score(both["label"], both["p_fake"])) if two else float("nan"),
            "recall": float(_decided(fakes, threshold).mean()),
        }
    return out


def bootstrap_ci(frame: pd.DataFrame, threshold: float, *, n_boot: int = 1000, seed: int = 0,
                 group: str = "identity") -> dict:
    """95 % percentile intervals for accuracy and AUC, resampling whole identities (clips of
    one identity are not independent)."""
    rng = np.random.default_rng(seed)
    groups = [g for _, g in frame.groupby(group)]
    labels = [g["label"].to_numpy() for g in groups]
    probs = [g["p_fake"].to_numpy() for g in groups]
    decided = [_decided(g, threshold).to_numpy() for g in groups]
    accs, aucs = [], []
    for _ in range(n_boot):
        pick = rng.integers(0, len(groups), len(groups))
        y = np.concatenate([labels[i] for i in pick])
        p = np.concatenate([probs[i] for i in pick])
        accs.append((np.concatenate([decided[i] for i in pick]) == y).mean())
        if _two_classes(y):
            aucs.append(roc_auc_score(y, p))
    ci = lambda v: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v else [float("nan")] * 2
    return {"accuracy": ci(accs), "auc": ci(aucs), "n_boot": n_boot, "resampled": group}


def evaluation_report(predictions: pd.DataFrame, threshold: float, *, seed: int = 0, n_boot: int = 1000) -> dict:
    """metrics.json's content for one split's predictions (columns label, p_fake, category,
    method, identity; the decisions are its `pred` column when it has one, else p_fake >= threshold)."""
    decisions = _decided(predictions, threshold)
    out = binary_metrics(predictions["label"], predictions["p_fake"], threshold, decisions)
    out["accuracy_at_0.5"] = float(((predictions["p_fake"] >= 0.5) == predictions["label"]).mean())
    out.update(best_thresholds(predictions["label"], predictions["p_fake"]))
    out["per_category"] = per_group(predictions, "category", threshold)
    out["per_method"] = per_group(predictions, "method", threshold)
    out["ci95"] = bootstrap_ci(predictions, threshold, n_boot=n_boot, seed=seed)
    return out
