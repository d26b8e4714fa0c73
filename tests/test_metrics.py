"""Metrics against values computed by hand on small fixed arrays."""
import numpy as np
import pandas as pd
import pytest

from avlib.scoring.metrics import (
    binary_metrics,
    bootstrap_ci,
    calibration,
    choose_threshold,
    equal_error_rate,
    evaluation_report,
    per_group,
)

LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
PROBS = np.array([0.1, 0.3, 0.6, 0.2, 0.8, 0.4, 0.9, 0.7])


def test_binary_metrics_by_hand():
    m = binary_metrics(LABELS, PROBS, threshold=0.5)
    # predictions: 0 0 1 0 | 1 0 1 1 -> 6 of 8 right; one false positive, one false negative
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["confusion_matrix"] == [[3, 1], [1, 3]]
    # AUC: of 16 (real, fake) pairs the fake scores higher in 15 (only fake 0.4 < real 0.6)
    assert m["auc"] == pytest.approx(15 / 16)
    assert m["per_class"]["FAKE"]["precision"] == pytest.approx(0.75)
    assert m["n"] == {"REAL": 4, "FAKE": 4}


def test_equal_error_rate_by_hand():
    eer, _ = equal_error_rate(LABELS, PROBS)
    assert eer == pytest.approx(0.25)
    perfect, _ = equal_error_rate([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert perfect == pytest.approx(0.0)


def test_threshold_maximises_balanced_accuracy_on_validation():
    t = choose_threshold([0, 0, 1, 1], [0.1, 0.35, 0.4, 0.9])
    assert 0.35 < t <= 0.4


def test_threshold_sits_in_the_middle_of_the_gap_not_on_the_weakest_fake():
    assert choose_threshold([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == pytest.approx(0.5)
    assert choose_threshold([0, 1, 0, 1, 1], [0.1, 0.3, 0.5, 0.7, 0.95]) == pytest.approx(0.6)   # J's best: 0.7
    assert choose_threshold([0, 0], [0.2, 0.9]) == 0.5


def test_calibration_by_hand():
    cal = calibration([0, 1], [0.2, 0.8], bins=10)
    assert cal["brier"] == pytest.approx(0.04)
    assert cal["ece"] == pytest.approx(0.2)
    # each clip alone in its bin: |0.2 - 0| w.p. 0.8 and |0.2 - 1| w.p. 0.2 -> 0.32, the same for 0.8;
    # ECE 0.2, 0.5 or 0.8 (both off: w.p. 0.04), so its 95th percentile is 0.5
    assert cal["ece_floor"] == pytest.approx(0.32, abs=0.03) and cal["ece_floor_95"] == pytest.approx(0.5)
    assert calibration([1, 0], [0.2, 0.8])["ece_floor"] == cal["ece_floor"]       # it does not look at the labels


def test_the_ece_floor_falls_with_the_number_of_clips():
    rng = np.random.default_rng(3)
    floors = {}
    for n in (45, 5000):
        probs = rng.random(n)
        cal = calibration(rng.random(n) < probs, probs)         # calibrated by construction
        floors[n] = cal["ece_floor"]
        assert cal["ece"] <= cal["ece_floor_95"]
    assert floors[45] > 0.05 and floors[5000] < 0.03


def test_per_category_compares_each_fake_group_with_all_reals():
    frame = pd.DataFrame({"label": [0, 0, 1, 1, 1, 1], "p_fake": [0.1, 0.5, 0.9, 0.8, 0.3, 0.2],
                          "category": ["RVRA", "RVRA", "FVFA", "FVFA", "RVFA", "RVFA"]})
    out = per_group(frame, "category", threshold=0.5)
    assert out["FVFA"]["auc"] == pytest.approx(1.0) and out["FVFA"]["recall"] == 1.0
    # RVFA 0.3 and 0.2 against reals 0.1 and 0.5: each beats 0.1 only -> 2 of 4 pairs
    assert out["RVFA"]["auc"] == pytest.approx(2 / 4) and out["RVFA"]["recall"] == 0.0
    assert set(out) == {"FVFA", "RVFA"}


def test_bootstrap_resamples_identities():
    # identity A: all right, identity B: all wrong; the accuracy interval must span both extremes' mix
    frame = pd.DataFrame({"identity": ["A"] * 4 + ["B"] * 4, "label": [0, 1] * 4,
                          "p_fake": [0.1, 0.9, 0.1, 0.9, 0.9, 0.1, 0.9, 0.1]})
    ci = bootstrap_ci(frame, 0.5, n_boot=400, seed=0)
    assert ci["accuracy"][0] == 0.0 and ci["accuracy"][1] == 1.0     # resampling whole identities
    single = pd.DataFrame({"identity": list("ABCDEFGH"), "label": [0, 1] * 4, "p_fake": [0.1, 0.9] * 4})
    assert bootstrap_ci(single, 0.5, n_boot=100)["accuracy"] == [1.0, 1.0]


def test_evaluation_report_has_the_keys_04_writes():
    frame = pd.DataFrame({"identity": list("ABCDEFGH"), "label": LABELS, "p_fake": PROBS,
                          "category": ["RVRA"] * 4 + ["FVFA"] * 4, "method": ["real"] * 4 + ["fsgan"] * 4})
    report = evaluation_report(frame, 0.5, n_boot=50)
    for key in ("accuracy", "balanced_accuracy", "auc", "ap", "eer", "per_category", "per_method", "ci95",
                "calibration", "confusion_matrix", "accuracy_at_0.5"):
        assert key in report
