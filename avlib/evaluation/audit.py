"""Honesty checks: how far a trivial detector gets on shortcuts alone.

FakeAVCeleb's fake audio tends to start with a short silence that alone separates the classes
(Smeu et al., CVPR 2025). The baseline here sees only two numbers per clip, the leading
silence of its audio window and the window's RMS level, fits a logistic regression on the
training split and reports its AUC on the evaluated split. When it exceeds 0.8 the dataset
(or the preprocessing) hands the detector a shortcut; use `skip_silence: true` or read the
model's numbers with that in mind.
"""
from __future__ import annotations

import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

SHORTCUT_FEATURES = ("lead_silence", "audio_rms_db")
WARN_AUC = 0.8


def shortcut_baseline(index: pd.DataFrame, split: str = "test") -> dict:
    """{'auc', 'auc_lead_silence_only', 'warning'} of the shortcut baseline on `split`
    (fitted on 'train'); AUCs are NaN when a split lacks a class or the features."""
    features = index[list(SHORTCUT_FEATURES)].apply(pd.to_numeric, errors="coerce") \
        if set(SHORTCUT_FEATURES) <= set(index.columns) else None
    if features is None or features.isna().any().any():
        return {"auc": float("nan"), "warning": None,
                "note": "the cache lacks shortcut features for some clips (made by an older avlib): rerun 01_preprocess "
                        "into a new cache_dir"}
    index = index.assign(**{c: features[c] for c in SHORTCUT_FEATURES})
    train, test = index[index["split"] == "train"], index[index["split"] == split]
    if train["label"].nunique() < 2 or test["label"].nunique() < 2:
        return {"auc": float("nan"), "warning": None, "note": "a split lacks one class"}
    x_train = train[list(SHORTCUT_FEATURES)].to_numpy(float)
    x_test = test[list(SHORTCUT_FEATURES)].to_numpy(float)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(x_train, train["label"])
    auc = float(roc_auc_score(test["label"], model.predict_proba(x_test)[:, 1]))
    lead_only = float(roc_auc_score(test["label"], test["lead_silence"]))
    warning = None
    if auc > WARN_AUC:
        warning = (f"a baseline that sees only leading silence and audio level reaches AUC {auc:.3f} on {split}: "
                   f"the data offer a shortcut; compare the model against it, or preprocess with skip_silence=true")
    return {"auc": auc, "auc_lead_silence_only": lead_only, "features": list(SHORTCUT_FEATURES),
            "mean_lead_silence": {"REAL": float(test.loc[test["label"] == 0, "lead_silence"].mean()),
                                  "FAKE": float(test.loc[test["label"] == 1, "lead_silence"].mean())},
            "warning": warning}
