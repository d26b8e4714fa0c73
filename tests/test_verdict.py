"""Verdicts a user can trust: calibrated probabilities, thresholds by rule with their own
uncertainty, thresholds set on real clips of a target domain, the sync evidence kept in the
verdict, and validation splits that look like the test split."""
import json

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize
from sklearn.metrics import roc_auc_score

from avlib import stages
from avlib.dataio.media import write_video
from avlib.dataio.splits import assign_splits
from avlib.predict import main as predict_main
from avlib.scoring.calibration import (
    apply_verdict,
    calibrate,
    choose,
    domain_verdict,
    fit_calibrator,
    fit_verdict,
    fpr_threshold,
    joint_thresholds,
    sync_threshold,
    threshold_interval,
    too_few_clips,
)
from avlib.scoring.metrics import calibration
from tests.conftest import face_frames, tone


def overconfident(n=400, seed=0):
    """Labels and P(fake) from a model that is right 80 % of the time but says 0.01 or 0.99."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    right = rng.random(n) < 0.8
    margin = rng.uniform(3, 6, n)                                         # |logit|: P 0.95-0.998
    z = np.where(labels == 1, margin, -margin) * np.where(right, 1, -1) + rng.normal(0, 0.5, n)
    return labels, 1 / (1 + np.exp(-z))


@pytest.mark.parametrize("method", ["temperature", "platt", "isotonic"])
def test_calibration_lowers_the_error_of_an_overconfident_model(method):
    labels, probs = overconfident()
    test_labels, test_probs = overconfident(seed=1)
    fitted = calibrate(fit_calibrator(labels, probs, method), test_probs)
    before, after = calibration(test_labels, test_probs), calibration(test_labels, fitted)
    assert after["ece"] < before["ece"] / 2 and after["brier"] < before["brier"]
    if method != "isotonic":                                             # monotone: the ranking is kept
        assert roc_auc_score(test_labels, fitted) == pytest.approx(roc_auc_score(test_labels, test_probs))


def test_platt_fits_platts_targets_not_zero_and_one():
    # 18 reals all at logit -1 and 27 fakes at +1: a 0/1 fit has no finite slope; Platt's targets
    # 1/20 and 28/29 are met exactly by a + b = ln 28 and -a + b = ln(1/19), solved by hand
    labels = np.r_[np.zeros(18, int), np.ones(27, int)]
    cal = fit_calibrator(labels, 1 / (1 + np.exp(-np.where(labels == 1, 1.0, -1.0))), "platt")
    assert cal["a"] == pytest.approx((np.log(28) + np.log(19)) / 2, rel=1e-4)
    assert cal["b"] == pytest.approx((np.log(28) - np.log(19)) / 2, rel=1e-3)
    assert calibrate(cal, [0.5])[0] == pytest.approx(1 / (1 + np.exp(-cal["b"])))


def test_platt_on_a_split_the_model_separates_is_no_step_function():
    # classes apart but within 0.3 of each other on the logit: even Platt's targets ask a slope of ~20
    rng = np.random.default_rng(5)
    labels = np.r_[np.zeros(18, int), np.ones(27, int)]
    z = np.where(labels == 1, rng.uniform(0.02, 0.3, 45), rng.uniform(-0.3, -0.02, 45))
    cal = fit_calibrator(labels, 1 / (1 + np.exp(-z)), "platt")
    assert cal["method"] == "platt" and cal["a"] == pytest.approx(5.0)
    fitted = calibrate(cal, 1 / (1 + np.exp(-np.linspace(-3, 3, 61))))
    assert np.all(np.diff(fitted) > 0) and 0.0 < fitted[30] < 1.0 and ((fitted > 0.01) & (fitted < 0.99)).sum() >= 10
    # within the bound the fit is the unconstrained one: the minimum of Platt's loss, found here by Nelder-Mead
    labels, probs = overconfident()
    cal = fit_calibrator(labels, probs, "platt")
    z, targets = np.log(probs / (1 - probs)), np.where(labels == 1, (labels.sum() + 1) / (labels.sum() + 2),
                                                      1 / ((labels == 0).sum() + 2))
    direct = minimize(lambda w: np.mean(np.logaddexp(0, w[0] * z + w[1]) - targets * (w[0] * z + w[1])), [1.0, 0.0],
                      method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-12}).x
    assert 0 < cal["a"] < 5.0 and [cal["a"], cal["b"]] == pytest.approx(list(direct), abs=1e-3)


def test_temperature_keeps_the_side_of_one_half_and_refuses_unknown_methods():
    labels, probs = overconfident()
    cal = fit_calibrator(labels, probs)
    assert cal["method"] == "temperature" and cal["temperature"] > 1.5     # softened
    assert ((calibrate(cal, probs) >= 0.5) == (probs >= 0.5)).all()
    with pytest.raises(ValueError, match="calibration must be one of"):
        fit_calibrator(labels, probs, "beta")


@pytest.mark.parametrize("target", [0.0, 0.05, 0.1, 0.25])
def test_the_fpr_rule_calls_at_most_the_requested_share_of_real_clips_fake(target):
    rng = np.random.default_rng(3)
    real = rng.random(200)
    t = fpr_threshold(real, target)
    assert (real >= t).mean() <= target
    assert (real >= np.nextafter(t, -np.inf) - 1e-9).mean() > target or target == 0 and t > real.max()
    labels = np.r_[np.zeros(200, int), np.ones(50, int)]
    assert choose(labels, np.r_[real, rng.random(50)], "fpr", target) == t       # fakes play no part


def test_the_threshold_interval_resamples_validation_identities():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"identity": np.repeat([f"id{i}" for i in range(12)], 5),
                          "label": np.tile([0, 0, 1, 1, 1], 12)})
    frame["p_fake"] = np.clip(0.3 + 0.4 * frame["label"] + rng.normal(0, 0.2, len(frame)), 0, 1)
    low, high = threshold_interval(frame, "balanced", 0.05, n_boot=100)
    t = choose(frame["label"], frame["p_fake"])
    assert low < high and low <= t <= high


def sync_validation(rng, n_real: int, n_fake: int, identities: int, real_p: tuple, fake_p: tuple,
                    real_sync: tuple, fake_sync: tuple) -> pd.DataFrame:
    """Validation predictions of a sync model: P(fake) uniform in each class's (low, high),
    sync scores normal with each class's (mean, sd)."""
    n = n_real + n_fake
    return pd.DataFrame({"label": [0] * n_real + [1] * n_fake, "identity": [f"i{i % identities}" for i in range(n)],
                         "p_fake": np.r_[rng.uniform(*real_p, n_real), rng.uniform(*fake_p, n_fake)],
                         "sync_score": np.r_[rng.normal(*real_sync, n_real), rng.normal(*fake_sync, n_fake)]})


def test_the_verdict_flags_a_sync_anomaly_beyond_every_real_validation_clip_whatever_the_classifier_says():
    val = sync_validation(np.random.default_rng(0), 20, 20, 10, (0.01, 0.4), (0.6, 0.99), (2, 0.3), (2.5, 0.5))
    verdict = fit_verdict(val)
    assert verdict["sync"]["threshold"] <= val.loc[val["label"] == 0, "sync_score"].max()
    beyond = val.loc[val["label"] == 0, "sync_score"].max() + 0.01
    test = pd.DataFrame({"label": [1, 1, 0], "p_fake": [0.001, 0.001, 0.001],
                         "sync_score": [beyond, beyond + 5, 1.5]})
    out = apply_verdict(verdict, test)
    assert list(out["pred"]) == [1, 1, 0]                                   # a sure classifier overruled
    assert (out["verdict_score"] >= out["p_fake"]).all()
    more = apply_verdict(verdict, test.assign(sync_score=test["sync_score"] + 1))
    assert (more["verdict_score"] >= out["verdict_score"]).all()            # never lower for more anomaly


def test_the_sync_bound_is_a_conformal_quantile_of_the_real_scores():
    scores = np.arange(1, 101, dtype=float)                                # 100 real clips
    assert sync_threshold(scores, 0.05) == 96.0                            # ceil(101 * 0.95) = 96th
    assert sync_threshold(scores[:10], 0.025) == 10.0                      # few clips: the largest


def test_a_calibration_set_with_fakes_is_refused_and_a_real_one_sets_the_rate():
    verdict = {"calibration": {"method": "none"}, "threshold": 0.5, "sync": None}
    rng = np.random.default_rng(1)
    real = apply_verdict(verdict, pd.DataFrame({"label": 0, "clip_id": [f"c{i}" for i in range(400)],
                                                "identity": [f"p{i // 4}" for i in range(400)],
                                                "p_fake": rng.beta(2, 5, 400)}))
    with pytest.raises(ValueError, match="holds 1 fake clips"):
        domain_verdict(verdict, real.assign(label=[1] + [0] * 399), target_fpr=0.1)
    domain, report = domain_verdict(verdict, real, target_fpr=0.1)
    assert report["n_set"] + report["n_held_out"] == 400
    assert report["held_out_real_called_fake"] == pytest.approx(0.1, abs=0.06)


def test_a_sync_models_domain_thresholds_are_one_test_at_the_whole_budget():
    # 20 real clips set the thresholds, 20 others show the rate: two tests at half the budget each
    # are each set on the largest of the 20 (about 1/21 false positives each, ~0.09 together); one
    # test on the joint anomaly keeps the held-out rate near 1/21, within the 5 % asked
    rng = np.random.default_rng(3)
    verdict = fit_verdict(sync_validation(rng, 18, 27, 9, (0.02, 0.5), (0.4, 0.99), (1.0, 0.3), (1.6, 0.5)))
    assert set(verdict["sync"]["scale"]) == {"classifier", "sync"}
    rates = []
    for draw in range(150):
        real = apply_verdict(verdict, pd.DataFrame({
            "label": 0, "clip_id": [f"c{i}" for i in range(40)], "identity": [f"p{i}" for i in range(40)],
            "p_fake": rng.beta(4, 2, 40), "sync_score": rng.normal(1.4, 0.4, 40)}))     # a shifted domain
        domain, report = domain_verdict(verdict, real, target_fpr=0.05, seed=draw)
        rates.append(report["held_out_real_called_fake"])
        # the two thresholds are one test: FAKE when either evidence lies beyond t of the validation reals' sd
        (mz, sz), (ms, ss) = domain["sync"]["scale"]["classifier"], domain["sync"]["scale"]["sync"]
        t = (domain["sync"]["threshold"] - ms) / ss
        probe = pd.DataFrame({"label": 0, "p_fake": rng.uniform(0.01, 0.99, 50), "sync_score": rng.normal(1.6, 0.6, 50)})
        joint = np.maximum((np.log(probe["p_fake"] / (1 - probe["p_fake"])) - mz) / sz, (probe["sync_score"] - ms) / ss)
        assert (apply_verdict({**domain, "calibration": {"method": "none"}}, probe)["pred"] == (joint > t)).all()
    assert np.mean(rates) == pytest.approx(1 / 21, abs=0.015)


def test_joint_thresholds_beyond_the_logits_reach_switch_the_classifier_off_and_refuse_nan():
    # 19 reals at P 0.5 and one with a sync anomaly of 20 sd: t = 20, beyond logit(1 - 1e-6) = 13.8,
    # so no P(fake) can pass the joint test's classifier side, not even one a hair below 1
    scale = {"classifier": [0.0, 1.0], "sync": [0.0, 1.0]}
    p_threshold, sync_bound = joint_thresholds(scale, [0.5] * 20, [0.0] * 19 + [20.0], 0.05)
    assert p_threshold > 1.0 and sync_bound == pytest.approx(20.0)
    out = apply_verdict({"calibration": {"method": "none"}, "threshold": p_threshold,
                         "sync": {"threshold": sync_bound, "real_scores": [0.0] * 19 + [20.0]}},
                        pd.DataFrame({"p_fake": [1 - 1e-9, 0.5], "sync_score": [0.0, 20.5]}))
    assert list(out["pred"]) == [0, 1]
    with pytest.raises(ValueError, match="1 of the 20 real clips have no finite"):
        joint_thresholds(scale, [0.5] * 20, [0.0] * 19 + [float("nan")], 0.05)
    report = {"n_set": 10, "target_fpr": 0.05, "least_rate": 1 / 11}
    assert "no threshold promises less than 9.1%" in too_few_clips(report)
    assert too_few_clips({**report, "n_set": 19, "least_rate": 1 / 20}) == ""


def test_the_fpr_rule_of_a_sync_model_is_one_test_at_the_whole_budget_on_validation_too():
    # 18 real validation clips: two tests at half the budget are each set on the largest of them
    # (a new real clip exceeds each about 1 time in 19, ~0.10 together); one joint test ~1/19
    rng = np.random.default_rng(4)
    rates = []
    for _ in range(120):
        val = sync_validation(rng, 18, 27, 9, (0.02, 0.6), (0.3, 0.99), (1.0, 0.3), (1.6, 0.5))
        verdict = fit_verdict(val, calibration="none", rule="fpr", target_fpr=0.05, n_boot=0)
        assert verdict["sync"]["alpha"] == 0.05 and verdict["threshold"] > val.loc[val["label"] == 0, "p_fake"].max()
        new = sync_validation(rng, 40, 0, 40, (0.02, 0.6), (0, 1), (1.0, 0.3), (0, 1))
        rates.append(apply_verdict(verdict, new)["pred"].mean())
    assert np.mean(rates) == pytest.approx(1 / 19, abs=0.015)


def test_validation_and_test_splits_hold_every_style_in_proportion():
    rows = [dict(path=f"{s}/{i}/{k}.mp4", identity=f"{s}{i}", category=c, label=int(c != "RVRA"), style=s)
            for s in ("studio", "newsroom", "webcam") for i in range(20)
            for k, c in enumerate(("RVRA", "RVRA", "RVFA", "FVRA", "FVFA"))]
    split = assign_splits(pd.DataFrame(rows), seed=0).drop_duplicates("identity")
    counts = split.groupby(["split", "style"]).size().unstack()
    assert (counts.loc["val"] == 3).all() and (counts.loc["test"] == 3).all()


def test_the_evaluate_stage_writes_the_verdict_and_a_domain_calibration(tmp_path):
    common = dict(results_dir=str(tmp_path / "results"), data_dir="", frames=16, size=16, fps=10.0, n_mfcc=40,
                  mfcc_steps=8, progress=False)
    stages.preprocess_stage(run_name="v", dataset="dummy", cache_dir=str(tmp_path / "cache"), limit=32, **common)
    stages.preprocess_stage(run_name="realset", dataset="dummy", cache_dir=str(tmp_path / "real"), limit=16,
                            real_only=True, seed=5, **common)
    stages.preprocess_stage(run_name="mixed", dataset="dummy", cache_dir=str(tmp_path / "mixed"), limit=8, seed=6,
                            **common)
    run = dict(run_name="v", results_dir=common["results_dir"])
    stages.build_model_stage(fusion="sync", trunk_stride=4, video_encoder="framediff", **run)
    stages.train_stage(epochs=1, batch_size=8, device="cpu", workers=0, keep_last=0, progress=False,
                       log=lambda *a: None, **run)
    metrics = stages.evaluate_stage(device="cpu", workers=0, progress=False, split="test", target_fpr=0.1,
                                    calibration_cache_dir=str(tmp_path / "real"), **run)
    folder = tmp_path / "results" / "v"
    verdict = json.loads((folder / "verdict.json").read_text())
    assert verdict["calibration"]["method"] == "temperature" and verdict["sync"]["alpha"] == pytest.approx(0.05)
    assert set(metrics["verdict"]) == {"classifier", "sync_score", "verdict"}
    assert {"ece", "ece_before", "brier", "brier_before"} <= set(metrics["calibration"])
    pred = pd.read_csv(folder / "predictions.csv")
    assert (pred["pred"] == (pred["verdict_score"] >= verdict["threshold"])).all()
    assert metrics["domain_calibration"]["n_set"] + metrics["domain_calibration"]["n_held_out"] == 16
    assert json.loads((folder / "verdict_domain.json").read_text())["source"] == "calibration set"
    with pytest.raises(ValueError, match="fake clips"):
        stages.evaluate_stage(device="cpu", workers=0, progress=False, calibration_cache_dir=str(tmp_path / "mixed"),
                              **run)


def test_predict_sets_its_threshold_on_a_folder_of_the_users_real_videos(tmp_path, capsys):
    from tests.test_evaluate import _checkpoint

    ckpt = _checkpoint(tmp_path)
    (tmp_path / "run" / "verdict.json").write_text(json.dumps(
        {"calibration": {"method": "temperature", "temperature": 2.0}, "threshold": 0.999, "sync": None}))
    mine, real = tmp_path / "mine", tmp_path / "my_real"
    write_video(mine / "a.mp4", face_frames(16, 32, 32), 8, tone(2.0), 16000)
    for i in range(6):
        write_video(real / f"r{i}.mp4", face_frames(16, 32, 32, seed=i), 8, tone(2.0, freq=300 + 40 * i), 16000)
    assert predict_main([str(mine), "--checkpoint", str(ckpt), "--csv", str(tmp_path / "run.csv")]) == 0
    assert "threshold 0.999" in capsys.readouterr().out                       # the run's own
    assert predict_main([str(mine), "--checkpoint", str(ckpt), "--calibrate-on", str(real), "--target-fpr", "0.2",
                         "--csv", str(tmp_path / "mine.csv")]) == 0
    out, err = capsys.readouterr()
    set_line = next(line for line in err.splitlines() if line.startswith("thresholds set on 3 of your 6 real videos"))
    threshold = float(set_line.split("P(fake) ")[1].split(";")[0].split(",")[0])
    assert f"threshold {threshold:.3f}" in out and threshold != pytest.approx(0.999)


def test_a_separable_validation_split_neither_sharpens_without_bound_nor_moves_the_auc():
    from avlib.evaluation.evaluate import verdict_metrics

    rng = np.random.default_rng(2)
    val = pd.DataFrame({"label": [0] * 20 + [1] * 25, "identity": [f"i{i % 9}" for i in range(45)],
                        "p_fake": np.r_[rng.uniform(0.05, 0.7, 20), rng.uniform(0.75, 0.9999, 25)]})
    verdict = fit_verdict(val)
    assert verdict["calibration"]["temperature"] >= 0.2 - 1e-9
    test = apply_verdict(verdict, val.assign(category="x", method="x", clip_id=[f"c{i}" for i in range(45)],
                                             p_fake=rng.uniform(0.5, 0.99999, 45)))
    report = verdict_metrics(test, verdict, n_boot=5)
    assert report["auc"] == pytest.approx(roc_auc_score(test["label"], test["p_fake_raw"]))


def test_the_sync_override_holds_whatever_the_classifier_threshold():
    verdict = {"calibration": {"method": "none"}, "threshold": np.nextafter(1.0, 2.0),
               "sync": {"threshold": 2.0, "real_scores": [1.0, 1.5, 2.0]}}
    out = apply_verdict(verdict, pd.DataFrame({"label": [1, 0], "p_fake": [1.0, 1.0], "sync_score": [9.0, 1.2]}))
    assert list(out["pred"]) == [1, 0]


@pytest.mark.parametrize("rate", ["5", "0", "-0.1"])
def test_predict_refuses_a_target_rate_outside_zero_to_one(tmp_path, rate, capsys):
    with pytest.raises(SystemExit):
        predict_main([str(tmp_path), "--checkpoint", str(tmp_path / "x.pt"), "--calibrate-on", str(tmp_path),
                      "--target-fpr", rate])
    assert "--target-fpr" in capsys.readouterr().err
