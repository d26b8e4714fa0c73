"""From scores to verdicts a user can trust: probabilities calibrated on the validation split,
thresholds with their own uncertainty, a threshold set on real clips alone at a target
false-positive rate, and the sync branch's real-only evidence kept in the verdict.

A calibrator is plain data (JSON), fitted on validation predictions and applied to any others:
- temperature (default; Guo et al. 2017): p' = sigmoid(z / T) with z = logit(p). One parameter,
  so 45 validation clips can fit it; it never changes the ranking (AUC) or the side of 0.5.
- platt: p' = sigmoid(a z + b), a > 0: also moves the 0.5 point; two parameters, fitted as
  Platt (1999) fitted them, to the targets (N+ + 1)/(N+ + 2) and 1/(N- + 2) rather than 1 and 0.
- isotonic: a monotone step function (sklearn); can tie scores, so AUC may move slightly.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import roc_auc_score

from avlib.scoring.metrics import choose_threshold

CALIBRATIONS = ("temperature", "platt", "isotonic", "none")
THRESHOLD_RULES = ("balanced", "fpr")
EPS = 1e-6
# Platt's slope on the logit at most 5, as temperature scaling's T at least 0.2: on a validation split
# the model separates almost perfectly, a fit to 0/1 targets gave the demo's concat model slopes of
# 28-59, which turned its probabilities into 0 or 1. Platt's own targets keep it finite (0.86-1.05 there);
# the bound stays for splits whose two classes lie closer than any slope of 5 can resolve
PLATT_MAX_SLOPE = 5.0


def logit(probs) -> np.ndarray:
    p = np.clip(np.asarray(probs, float), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z) -> np.ndarray:
    return expit(np.asarray(z, float))


def _nll(targets: np.ndarray, logits: np.ndarray) -> float:
    """Mean negative log-likelihood of `targets` (0/1 labels, or Platt's soft targets) under
    P(fake) = sigmoid(`logits`), in the form that cannot overflow: log(1 + e^s) - t s."""
    return float(np.mean(np.logaddexp(0.0, logits) - targets * logits))


def platt_targets(labels: np.ndarray) -> np.ndarray:
    """Platt's (1999) targets: (N+ + 1)/(N+ + 2) for each fake and 1/(N- + 2) for each real clip,
    each class's rate under a uniform prior after seeing it N times. With 0/1 targets a split the
    model separates has no finite fit; with these, 27 fakes and 18 reals ask at most 28/29 and at
    least 1/20, which is what so few clips can tell (sklearn's sigmoid calibration does the same)."""
    n_fake, n_real = int((labels == 1).sum()), int((labels == 0).sum())
    return np.where(labels == 1, (n_fake + 1) / (n_fake + 2), 1 / (n_real + 2))


def _fit_platt(targets: np.ndarray, z: np.ndarray) -> tuple[float, float]:
    """(a, b) minimising _nll(targets, a z + b): a smooth, convex problem in two parameters."""
    def loss(w):
        s = w[0] * z + w[1]
        gap = sigmoid(s) - targets                       # d nll / d s
        return _nll(targets, s), np.array([np.mean(gap * z), np.mean(gap)])
    a, b = minimize(loss, np.array([1.0, 0.0]), jac=True, method="BFGS").x
    return float(a), float(b)


def fit_calibrator(labels, probs, method: str = "temperature") -> dict:
    """A calibrator (plain data: {'method', ...its parameters}) fitted on `labels` and `probs`.
    With one class only, or method 'none', the identity. Raises ValueError for another method."""
    if method not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {', '.join(CALIBRATIONS)}; got {method!r}")
    labels, z = np.asarray(labels, int), logit(probs)
    if method == "none" or len(np.unique(labels)) < 2:
        return {"method": "none"}
    if method == "temperature":
        # T in [0.2, 20]: a validation split the model separates perfectly drives T to 0 (every
        # score to 0 or 1); no 45-clip split justifies sharpening the model more than five-fold
        best = minimize_scalar(lambda log_t: _nll(labels, z / math.exp(log_t)), bounds=(math.log(0.2), math.log(20.0)), method="bounded")
        return {"method": "temperature", "temperature": float(math.exp(best.x))}
    if method == "platt":
        targets = platt_targets(labels)
        a, b = _fit_platt(targets, z)
        if a <= 0:                       # the split ranks against the model: a falling map would invert it
            return {**fit_calibrator(labels, probs, "temperature"), "note": "platt's slope was not positive"}
        if a > PLATT_MAX_SLOPE:          # temperature's bound, 1/T >= 1/0.2: a steeper slope is a step function
            a = PLATT_MAX_SLOPE
            b = float(minimize_scalar(lambda b: _nll(targets, a * z + b), bounds=(-50.0, 50.0), method="bounded").x)
        return {"method": "platt", "a": a, "b": b}
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(z, labels)
    return {"method": "isotonic", "x": [float(v) for v in iso.X_thresholds_],
            "y": [float(v) for v in iso.y_thresholds_]}


def calibrate(calibrator: dict, probs) -> np.ndarray:
    """`probs` through a calibrator that fit_calibrator returned."""
    probs = np.asarray(probs, float)
    method = calibrator.get("method", "none")
    if method == "none":
        return probs
    z = logit(probs)
    if method == "temperature":
        return sigmoid(z / calibrator["temperature"])
    if method == "platt":
        return sigmoid(calibrator["a"] * z + calibrator["b"])
    if method == "isotonic":
        return np.interp(z, calibrator["x"], calibrator["y"])
    raise ValueError(f"unknown calibration method {method!r}")


def fpr_threshold(real_scores, target_fpr: float) -> float:
    """The lowest threshold at which at most `target_fpr` of `real_scores` are >= it (called
    FAKE): just above the score of the real clip that would exceed the budget."""
    scores = np.sort(np.asarray(real_scores, float))
    if scores.size == 0:
        raise ValueError("no real clips to set a false-positive rate on")
    allowed = int(math.floor(target_fpr * scores.size + 1e-9))        # real clips that may be called FAKE
    if allowed >= scores.size:
        return float(scores[0])
    return float(np.nextafter(scores[scores.size - 1 - allowed], np.inf))


def choose(labels, probs, rule: str = "balanced", target_fpr: float = 0.05) -> float:
    """The decision threshold by `rule`: 'balanced' maximises balanced accuracy (Youden's J);
    'fpr' calls at most `target_fpr` of the real clips FAKE (needs no fake clip)."""
    if rule == "balanced":
        return choose_threshold(labels, probs)
    if rule == "fpr":
        labels = np.asarray(labels, int)
        return fpr_threshold(np.asarray(probs, float)[labels == 0], target_fpr)
    raise ValueError(f"threshold_rule must be one of {', '.join(THRESHOLD_RULES)}; got {rule!r}")


def threshold_interval(frame: pd.DataFrame, rule: str, target_fpr: float, *, column: str = "p_fake",
                       n_boot: int = 200, seed: int = 0, pick=None) -> list[float]:
    """95 % percentile interval of the threshold `rule` picks (or `pick(sample)`, when given),
    resampling the validation identities (clips of one identity are not independent): how much
    the threshold itself depends on which few identities the validation split happened to hold."""
    pick = pick or (lambda sample: choose(sample["label"], sample[column], rule, target_fpr))
    rng = np.random.default_rng(seed)
    groups = [g for _, g in frame.groupby("identity")] if "identity" in frame else [frame]
    picked = []
    for _ in range(n_boot):
        sample = pd.concat([groups[i] for i in rng.integers(0, len(groups), len(groups))])
        if rule == "fpr" and (sample["label"] == 0).any() or sample["label"].nunique() == 2:
            picked.append(pick(sample))
    if not picked:
        return [float("nan"), float("nan")]
    return [float(np.percentile(picked, 2.5)), float(np.percentile(picked, 97.5))]


def sync_threshold(real_sync_scores, alpha: float) -> float:
    """The sync anomaly beyond which a clip is called FAKE whatever the classifier says: the
    k-th smallest of the n real validation clips' sync scores, k = ceil((n + 1)(1 - alpha)),
    capped at n (a split-conformal bound: a new real clip exceeds it with probability <= alpha;
    with few real clips it is the largest of them)."""
    scores = np.sort(np.asarray(real_sync_scores, float))
    if scores.size == 0:
        raise ValueError("no real clips to calibrate the sync evidence on")
    if not 0 < alpha < 1:
        raise ValueError(f"the sync evidence's false-positive budget must be in (0, 1), got {alpha!r}")
    k = min(scores.size, max(1, int(math.ceil((scores.size + 1) * (1 - alpha)))))
    return float(scores[k - 1])


def sync_evidence(real_sync_scores, sync_scores) -> np.ndarray:
    """How far each sync score lies beyond the real validation clips': the share of them it
    exceeds, in [0, 1] (non-decreasing in the sync score)."""
    ref = np.sort(np.asarray(real_sync_scores, float))
    return np.searchsorted(ref, np.asarray(sync_scores, float), side="left") / max(ref.size, 1)


# ---------------------------------------------------------------- the verdict: calibrator, threshold, sync bound

def fit_verdict(val: pd.DataFrame, *, calibration: str = "temperature", rule: str = "balanced",
                target_fpr: float = 0.05, n_boot: int = 200) -> dict:
    """The run's verdict, fitted on its validation predictions (columns label, p_fake as the
    model gives it, identity; sync_score for a sync model): plain data, saved as verdict.json.

    The calibrator maps P(fake) to calibrated probabilities; the threshold on them follows
    `rule` ('balanced': Youden's J; 'fpr': at most the target rate of real clips called FAKE),
    with its 95 % interval over resampled validation identities. A sync model's verdict also
    calls FAKE every clip whose sync anomaly lies beyond the real validation clips': under rule
    'balanced' at `target_fpr` / 2 (`sync_threshold`); under rule 'fpr' both kinds of evidence
    make one test at `target_fpr` (joint_thresholds; its scale is fitted on the same real clips,
    so there the bound is approximate)."""
    labels = val["label"].to_numpy().astype(int)
    calibrator = fit_calibrator(labels, val["p_fake"], calibration)
    calibrated = val.assign(p_fake=calibrate(calibrator, val["p_fake"]))
    has_sync = "sync_score" in val and (labels == 0).any()
    verdict = {"calibration": calibrator, "threshold_rule": rule, "target_fpr": float(target_fpr),
               "threshold": None, "threshold_ci95": None,            # below, once the sync branch is known
               "source": "val", "n_real": int((labels == 0).sum()), "n_fake": int((labels == 1).sum()),
               "sync": None}
    pick, threshold = None, None
    if has_sync:
        real = calibrated[labels == 0]
        scale = real_scale(real["p_fake"], real["sync_score"])
        if rule == "fpr":
            def pick(sample):
                sample = sample[sample["label"] == 0]
                return joint_thresholds(scale, sample["p_fake"], sample["sync_score"], target_fpr)[0]
            alpha = target_fpr
            threshold, bound = joint_thresholds(scale, real["p_fake"], real["sync_score"], target_fpr)
        else:
            alpha = target_fpr / 2
            bound = sync_threshold(real["sync_score"], alpha)
        verdict["sync"] = {"alpha": alpha, "threshold": bound, "scale": scale,
                           "real_scores": [float(s) for s in np.sort(real["sync_score"].to_numpy(float))]}
    verdict["threshold"] = threshold if pick else choose(labels, calibrated["p_fake"], rule, target_fpr)
    verdict["threshold_ci95"] = threshold_interval(calibrated, rule, target_fpr, n_boot=n_boot, pick=pick)
    return verdict


def real_scale(p_fake, sync_scores) -> dict:
    """Where real clips lie on each of the two kinds of evidence: [mean, sd] of the calibrated
    logit of P(fake) and of the sync anomaly (sd 1 when fewer than two clips or no spread)."""
    def mean_sd(x):
        x = np.asarray(x, float)
        sd = float(x.std(ddof=1)) if x.size > 1 else 0.0
        return [float(x.mean()), sd if sd > EPS else 1.0]
    return {"classifier": mean_sd(logit(p_fake)), "sync": mean_sd(sync_scores)}


def joint_thresholds(scale: dict, p_fake, sync_scores, alpha: float) -> tuple[float, float]:
    """(threshold on calibrated P(fake), threshold on the sync anomaly) of ONE test at
    false-positive rate `alpha`, set on real clips (`p_fake` calibrated, `sync_scores`): a clip
    is FAKE when either evidence lies more than t of the real clips' sd (`scale`, real_scale)
    beyond their mean, t the conformal bound (sync_threshold) of the real clips' joint anomaly
    max((z - m_z) / s_z, (sync - m_s) / s_s). That test is exactly the two thresholds returned,
    so apply_verdict needs nothing new (a P(fake) threshold above 1: that side never fires).
    Two tests at alpha / 2 each, each set on the largest of 20 clips, call a new real clip ~2/21
    of the time; with `scale` fitted on other clips this one calls it at most
    max(alpha, 1/(n + 1)) of the time, n the real clips it is set on: fewer than 1/alpha - 1
    clips cannot promise alpha. Raises ValueError for a non-finite score."""
    (mz, sz), (ms, ss) = scale["classifier"], scale["sync"]
    p_fake, sync_scores = np.asarray(p_fake, float), np.asarray(sync_scores, float)
    bad = int((~np.isfinite(p_fake) | ~np.isfinite(sync_scores)).sum())
    if bad:
        raise ValueError(f"{bad} of the {p_fake.size} real clips have no finite P(fake) or sync score: "
                         f"the thresholds cannot be set on them (a diverged model?)")
    anomaly = np.maximum((logit(p_fake) - mz) / sz, (sync_scores - ms) / ss)
    t = sync_threshold(anomaly, alpha)
    within = anomaly <= t                # these stay REAL: the max() guards against rounding in the way back
    edge = mz + t * sz
    if edge >= logit(1.0):               # beyond the clipped logit's reach: the classifier side never fires
        classifier = float(np.nextafter(1.0, np.inf))
    else:
        classifier = float(np.nextafter(max(sigmoid(edge), p_fake[within].max()), np.inf))
    return classifier, float(max(ms + t * ss, sync_scores[within].max()))


def apply_verdict(verdict: dict, pred: pd.DataFrame) -> pd.DataFrame:
    """`pred` (p_fake as the model gives it) with p_fake_raw, p_fake calibrated, verdict_score
    and pred (1 = FAKE). verdict_score is the calibrated P(fake), raised for a sync model by its
    sync evidence: to 1 beyond the sync threshold (FAKE whatever the classifier says), below it
    to at most the threshold times the share of real validation clips it exceeds, which orders
    clips without deciding any. It never decreases with the sync anomaly."""
    out = pred.copy()
    out["p_fake_raw"] = out["p_fake"]
    out["p_fake"] = calibrate(verdict["calibration"], out["p_fake_raw"])
    threshold = verdict["threshold"]
    score = out["p_fake"].to_numpy(float)
    called = score >= threshold
    sync = verdict.get("sync")
    if sync and "sync_score" in out:
        anomaly = out["sync_score"].to_numpy(float)
        beyond = anomaly > sync["threshold"]
        below = min(threshold, 1.0) * sync_evidence(sync["real_scores"], anomaly) * (1 - 1e-9)
        score = np.maximum(score, np.where(beyond, max(1.0, threshold), below))
        called |= beyond                 # decided here, not by the score: a threshold above 1 calls nothing else
    out["verdict_score"] = score
    out["pred"] = called.astype(int)
    return out


def _decision_report(labels, score, called) -> dict:
    labels, called = np.asarray(labels, int), np.asarray(called, int)
    real, fake = labels == 0, labels == 1
    report = {"real_called_fake": float(called[real].mean()) if real.any() else float("nan"),
              "fake_called_fake": float(called[fake].mean()) if fake.any() else float("nan")}
    if real.any() and fake.any():
        report["auc"] = float(roc_auc_score(labels, score))
        report["balanced_accuracy"] = (1 - report["real_called_fake"] + report["fake_called_fake"]) / 2
    return report


def verdict_report(pred: pd.DataFrame, verdict: dict) -> dict:
    """The classifier alone (calibrated P(fake) at the threshold), the sync evidence alone (its
    score beyond the sync threshold) and the verdict, side by side: AUC, balanced accuracy, and
    the rates of real and fake clips called FAKE."""
    labels = pred["label"].to_numpy()
    report = {"classifier": _decision_report(labels, pred["p_fake"], pred["p_fake"] >= verdict["threshold"])}
    sync = verdict.get("sync")
    if sync and "sync_score" in pred:
        report["sync_score"] = _decision_report(labels, pred["sync_score"], pred["sync_score"] > sync["threshold"])
    report["verdict"] = _decision_report(labels, pred["verdict_score"], pred["pred"])
    return report


def too_few_clips(report: dict) -> str:
    """'' or a note for a domain_verdict report whose real clips are too few for its target rate."""
    least = report.get("least_rate", 0.0)
    if least <= report["target_fpr"]:
        return ""
    return f" (set on {report['n_set']} real clips: no threshold promises less than {least:.1%}; give it more)"


def domain_verdict(verdict: dict, real: pd.DataFrame, *, target_fpr: float, seed: int = 0) -> tuple[dict, dict]:
    """(verdict for the target domain, its report) from a real-only set of that domain (`real`:
    apply_verdict's columns). Half of its identities (of its clips, when it names none) set the
    thresholds at `target_fpr`: for a sync model one test over both kinds of evidence
    (joint_thresholds, on the validation reals' scale), else the classifier's alone; the other
    half shows the rate of real clips then called FAKE. The calibrator stays the validation
    split's. Raises ValueError when the set holds a fake clip: fakes of the target domain are
    what a user does not have."""
    if (real["label"] != 0).any():
        raise ValueError(f"the calibration set holds {int((real['label'] != 0).sum())} fake clips: the threshold "
                         f"is set on real clips of the target domain only, so that no fake of it is needed; "
                         f"make a cache of its real clips (01_preprocess with real_only: true)")
    named = real["identity"].astype(str)
    groups = named if named[named != ""].nunique() >= 2 else real["clip_id"]      # one speaker: split the clips
    names = np.array(sorted(groups.unique()))
    np.random.default_rng(seed).shuffle(names)
    setting = groups.isin(set(names[: max(1, len(names) // 2)]))
    part, held = real[setting], real[~setting]
    sync = verdict.get("sync")
    has_sync = bool(sync) and "sync_score" in real
    domain = {**verdict, "threshold_rule": "fpr", "target_fpr": float(target_fpr), "source": "calibration set",
              "threshold_ci95": [float("nan")] * 2, "n_real": int(len(part)), "n_fake": 0}
    if has_sync:
        # one test over both kinds of evidence at the whole budget; verdicts fitted before the scale was
        # kept take the setting half's own (then the bound is approximate: the scale saw those clips)
        scale = sync.get("scale") or real_scale(part["p_fake"], part["sync_score"])
        domain["threshold"], bound = joint_thresholds(scale, part["p_fake"], part["sync_score"], target_fpr)
        domain["sync"] = {"alpha": float(target_fpr), "threshold": bound, "scale": scale,
                          "real_scores": [float(s) for s in np.sort(part["sync_score"].to_numpy(float))]}
    else:
        domain["threshold"] = fpr_threshold(part["p_fake"], target_fpr)
    report = {"n_set": int(len(part)), "n_held_out": int(len(held)), "threshold": domain["threshold"],
              "least_rate": 1.0 / (len(part) + 1),       # what n real clips can promise at best
              "sync_threshold": domain["sync"]["threshold"] if has_sync else None, "target_fpr": float(target_fpr)}
    if len(held):
        report["held_out_real_called_fake"] = float(apply_verdict(domain, held.assign(p_fake=held["p_fake_raw"]))
                                                    ["pred"].mean())
    return domain, report
