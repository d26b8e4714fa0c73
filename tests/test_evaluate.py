"""Evaluation extras: the shortcut baseline, generalization to real-only corpora, the
comparison table, and the predict CLI on real encoded files."""
import functools
import json

import numpy as np
import pandas as pd
import pytest

from avlib.core.checkpoint import save_checkpoint
from avlib.core.errors import ParameterError
from avlib.dataio.cache import read_index
from avlib.dataio.indexers import index_dataset
from avlib.dataio.media import write_video
from avlib.dataio.preprocess import preprocess, settings, write_dummy_cache
from avlib.dataio.synthetic import CorpusSpec, generate_corpus
from avlib.evaluation.audit import shortcut_baseline
from avlib.evaluation.evaluate import external_metrics, external_sets, generalization_report, update_comparison
from avlib.figures.plots import plot_roc_overlay
from avlib.models.detector import build_model, model_config
from avlib.predict import covered_seconds, window_starts
from avlib.predict import main as predict_main
from avlib.scoring.calibration import apply_verdict
from avlib.scoring.metrics import choose_threshold, evaluation_report
from avlib.stages import evaluate_stage
from avlib.stages.parameters import check
from tests.conftest import face_frames, tone

CONFIG = settings(frames=8, size=16, fps=8, n_mfcc=40, mfcc_steps=10)
AT_HALF = {"calibration": {"method": "none"}, "threshold": 0.5, "sync": None}     # a verdict: P(fake) >= 0.5


def _synthetic_cache(tmp_path, leading_silence):
    data = tmp_path / f"data{leading_silence}"
    generate_corpus(data, CorpusSpec(identities=20, seconds=1.6, size=32, leading_silence=leading_silence),
                    workers=2, progress=False)
    cache = tmp_path / f"cache{leading_silence}"
    preprocess(index_dataset("synthetic", data), data, cache, CONFIG, workers=2, test_fraction=0.3, progress=False)
    return read_index(cache)


def test_shortcut_baseline_finds_leading_silence_and_only_that(tmp_path):
    with_silence = shortcut_baseline(_synthetic_cache(tmp_path, 0.5), "test")
    without = shortcut_baseline(_synthetic_cache(tmp_path, 0.0), "test")
    assert with_silence["auc"] > 0.8 and with_silence["warning"]
    assert without["auc"] < 0.7 and without["warning"] is None
    assert with_silence["mean_lead_silence"]["FAKE"] > with_silence["mean_lead_silence"]["REAL"] + 0.2


def _checkpoint(tmp_path, config=CONFIG):
    model = build_model()
    path = tmp_path / "run" / "checkpoints" / "best.pt"
    save_checkpoint(path, {"model": model.state_dict(), "model_config": model_config(model), "epoch": 1,
                           "preprocess": config})
    return path


def test_generalization_reports_false_positive_rates_by_slice(tmp_path):
    data = tmp_path / "realonly"
    for i, gender in enumerate(["Female", "Male", "Female"]):
        write_video(data / "real" / f"p{i}" / "a.mp4", face_frames(12, 32, 32, seed=i), 8, tone(1.5), 16000)
    preprocess(index_dataset("folder", data), data, tmp_path / "cache", CONFIG, workers=1, progress=False)
    ckpt = _checkpoint(tmp_path)
    report = generalization_report(ckpt, tmp_path / "cache", tmp_path / "run", verdict=AT_HALF, device="cpu",
                                   workers=0, progress=False)
    pred = pd.read_csv(tmp_path / "run" / "generalization_predictions.csv")
    assert report["n"] == 3 and report["false_positive_rate"] == pytest.approx((pred["p_fake"] >= 0.5).mean())
    assert "by_dataset" in report
    other = {**CONFIG, "frames": 4}
    with pytest.raises(ValueError, match="frames"):
        generalization_report(_checkpoint(tmp_path, other), tmp_path / "cache", tmp_path / "run", verdict=AT_HALF,
                              device="cpu", workers=0, progress=False)


def test_comparison_table_keeps_one_row_per_run(tmp_path):
    base = {"n": {"REAL": 2, "FAKE": 3}, "accuracy": 0.5, "balanced_accuracy": 0.5, "auc": 0.6,
            "ci95": {"auc": [0.4, 0.8]}, "ap": 0.7, "eer": 0.4, "threshold": 0.5, "split": "test",
            "per_category": {"RVFA": {"auc": 0.9}}}
    update_comparison(tmp_path / "comparison.csv", {**base, "run_name": "av", "modality": "av"})
    update_comparison(tmp_path / "comparison.csv", {**base, "run_name": "video", "modality": "video", "auc": 0.55})
    table = update_comparison(tmp_path / "comparison.csv", {**base, "run_name": "av", "modality": "av", "auc": 0.65})
    assert list(table["run_name"]) == ["av", "video"]
    assert table.set_index("run_name").loc["av", "auc"] == 0.65 and "auc_RVFA" in table


def test_comparison_table_reads_old_files_and_keeps_one_row_per_run_and_eval_set(tmp_path):
    path = tmp_path / "comparison.csv"
    pd.DataFrame([{"run_name": "av", "split": "test", "auc": 0.6, "threshold": 0.5},
                  {"run_name": "old", "split": "test", "auc": 0.7, "threshold": 0.5}]).to_csv(path, index=False)
    test = {"run_name": "av", "split": "test", "n": {"REAL": 2, "FAKE": 3}, "auc": 0.9, "threshold": 0.4,
            "ci95": {"auc": [0.8, 1.0]}}
    table = update_comparison(path, {**test, "external": {
        "gen2": {"eval_set": "gen2", "split": "all", "n": {"REAL": 4, "FAKE": 4}, "auc": 0.55, "threshold": 0.4},
        "voices": {"eval_set": "voices", "split": "all", "n": 5, "false_positive_rate": 0.2, "threshold": 0.4}}})
    rows = table.set_index(["run_name", "eval_set"])
    assert list(rows.index) == [("av", "test"), ("av", "gen2"), ("av", "voices"), ("old", "test")]   # in-domain first
    assert rows.loc[("av", "test"), "auc"] == 0.9 and rows.loc[("av", "gen2"), "auc"] == 0.55
    assert rows.loc[("av", "voices"), ["n_real", "n_fake", "accuracy"]].tolist() == [5, 0, pytest.approx(0.8)]
    table = update_comparison(path, {**test, "auc": 0.95})          # re-evaluated in-domain only
    assert len(table) == 4 and table.set_index(["run_name", "eval_set"]).loc[("av", "test"), "auc"] == 0.95


def test_external_set_names_must_be_plain_and_distinct(tmp_path):
    assert external_sets(f" {tmp_path / 'gen-2'} , voices={tmp_path / 'x y'},") == {
        "gen-2": tmp_path / "gen-2", "voices": tmp_path / "x y"}
    for spec, message in ((str(tmp_path / "x y"), "'x y'"), (str(tmp_path / "test"), "'test'"),
                          (f"a={tmp_path / 'p'},a={tmp_path / 'q'}", "two external sets")):
        with pytest.raises(ParameterError, match=message) as err:
            check("04_evaluate", {"external_cache_dirs": spec})
        assert "`external_cache_dirs`" in str(err.value)


def test_external_metrics_resample_clips_when_the_corpus_has_no_identities():
    pred = pd.DataFrame({"clip_id": [f"c{i}" for i in range(8)], "label": [0, 1] * 4,
                         "p_fake": np.linspace(0.1, 0.9, 8), "category": ["real", "fake"] * 4,
                         "method": ["real", "fake"] * 4})
    pred = apply_verdict(AT_HALF, pred)
    with_ids = external_metrics(pred.assign(identity=["a", "a", "b", "b", "c", "c", "d", "d"]), AT_HALF, n_boot=50)
    without = external_metrics(pred.assign(identity=""), AT_HALF, n_boot=50)
    assert with_ids["ci95"]["resampled"] == "identity" and without["ci95"]["resampled"] == "clip_id"
    assert without["ci95"]["auc"][0] < without["ci95"]["auc"][1]                # not the point one group gives


def _folder_corpus(data, real, fake):
    for i in range(real):
        write_video(data / "real" / f"r{i}" / "a.mp4", face_frames(12, 32, 32, seed=i), 8, tone(1.5), 16000)
    for i in range(fake):
        write_video(data / "fake" / f"f{i}" / "a.mp4", face_frames(12, 32, 32, seed=10 + i), 8,
                    tone(1.5, freq=300.0), 16000)
    return index_dataset("folder", data)


def test_external_labelled_corpus_is_scored_at_the_run_val_threshold(tmp_path, monkeypatch):
    monkeypatch.setattr("avlib.scoring.metrics.evaluation_report", functools.partial(evaluation_report, n_boot=20))
    _checkpoint(tmp_path)
    run = tmp_path / "run"
    own = tmp_path / "own"
    write_dummy_cache(own, CONFIG, n=8, val_fraction=0.25, test_fraction=0.25)    # one identity in val, one in test
    write_dummy_cache(tmp_path / "bigger", {**CONFIG, "size": 24}, n=2)
    stage = dict(run_name="run", results_dir=str(tmp_path), cache_dir=str(own), split="val", device="cpu",
                 workers=0, progress=False)
    with pytest.raises(ValueError, match="other size than the model was trained on"):
        evaluate_stage(**stage, external_cache_dirs=f"{tmp_path / 'bigger'}")
    assert not (run / "predictions.csv").exists()                              # refused before any scoring
    records = _folder_corpus(tmp_path / "data", real=2, fake=2)
    preprocess(records, tmp_path / "data", tmp_path / "crossgen", CONFIG, workers=0, progress=False)
    write_dummy_cache(tmp_path / "realonly", CONFIG, n=1)
    assert (read_index(tmp_path / "realonly")["label"] == 0).all()
    metrics = evaluate_stage(**stage, external_cache_dirs=f"{tmp_path / 'crossgen'},voices={tmp_path / 'realonly'}")
    val = pd.read_csv(run / "predictions.csv")
    threshold = choose_threshold(val["label"], val["p_fake"])
    ext = json.loads((run / "metrics.json").read_text())["external"]["crossgen"]
    assert ext["threshold"] == pytest.approx(threshold) and "val" in ext["threshold_source"]
    split_keys = {"split", "checkpoint", "epoch", "dataset", "modality", "threshold_source", "shortcut_baseline",
                  *evaluation_report(val, threshold, n_boot=1)}
    assert split_keys <= set(metrics) and split_keys <= set(ext)                 # the in-domain split's keys
    assert ext["n"] == {"REAL": 2, "FAKE": 2} and ext["ci95"]["resampled"] == "identity"
    assert ext["kind"] == "labelled" and "fake" in ext["per_method"] and ext["dataset"] == "folder"
    pred = pd.read_csv(run / "external_crossgen_predictions.csv")
    assert len(pred) == 4 and (pred["pred"] == (pred["p_fake"] >= ext["threshold"])).all()
    voices = metrics["external"]["voices"]
    assert voices["kind"] == "real-only" and voices["n"] == 1 and "auc" not in voices
    voices_pred = pd.read_csv(run / "external_voices_predictions.csv")
    assert voices["false_positive_rate"] == (voices_pred["p_fake"] >= threshold).mean()
    table = pd.read_csv(tmp_path / "comparison.csv").set_index("eval_set")
    assert sorted(table.index) == ["crossgen", "val", "voices"]
    assert table.loc["crossgen", "auc"] == pytest.approx(ext["auc"]) and table.loc["voices", "n_fake"] == 0
    figure = plot_roc_overlay({"val (in-domain)": val, "crossgen": pred, "voices": voices_pred}, run / "figures")
    curves = pd.read_csv(run / "figures" / "roc_external.csv")
    assert figure.read_bytes()[:4] == b"\x89PNG"
    assert set(curves["set"]) == {"val (in-domain)", "crossgen"}                 # a real-only set has no ROC
    assert curves.groupby("set")["auc"].first()["crossgen"] == pytest.approx(ext["auc"])


def test_windows_cover_the_whole_video_unless_capped():
    assert window_starts(None, 2.0, 2.0) == [0.0]
    assert window_starts(1.5, 2.0, 2.0) == [0.0]
    assert window_starts(7.0, 2.0, 2.0) == [0.0, 2.0, 4.0, 5.0]          # the last one ends where the video does
    assert window_starts(6.0, 2.0, 2.0) == [0.0, 2.0, 4.0]
    assert window_starts(7.0, 2.0, 1.0, 3) == [0.0, 1.0, 2.0]             # a cap the user asked for
    assert window_starts(1200.0, 2.0, 2.0)[-1] == 1198.0 and len(window_starts(1200.0, 2.0, 2.0)) == 600
    windows = pd.DataFrame({"start": [0.0, 2.0, 4.0, 5.0], "end": [2.0, 4.0, 6.0, 7.0]})
    assert covered_seconds(windows) == 7.0
    assert covered_seconds(windows.iloc[:2]) == 4.0


def test_predict_scores_every_second_and_says_when_a_cap_cut_a_video_short(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path)
    video = write_video(tmp_path / "talk.mp4", face_frames(44, 32, 32), 8, tone(5.5), 16000)   # 5.5 s, 1 s windows
    assert predict_main([str(video), "--checkpoint", str(ckpt), "--csv", str(tmp_path / "all.csv")]) == 0
    row = pd.read_csv(tmp_path / "all.csv").iloc[0]
    assert row["windows"] == 6 and row["covered_seconds"] == pytest.approx(row["duration"], abs=0.05)
    assert "warning" not in capsys.readouterr().err
    assert predict_main([str(video), "--checkpoint", str(ckpt), "--max-windows", "2",
                         "--csv", str(tmp_path / "cut.csv")]) == 0
    row = pd.read_csv(tmp_path / "cut.csv").iloc[0]
    assert row["windows"] == 2 and row["covered_seconds"] == 2.0
    assert f"warning: {video}: scored 2.0 s of its 5.5 s (--max-windows 2)" in capsys.readouterr().err


def test_predict_cli_scores_good_files_and_reports_the_broken_one(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path)
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"threshold": 0.42}))
    videos = tmp_path / "mine"
    write_video(videos / "short clip.mp4", face_frames(12, 32, 32), 8, tone(1.5), 16000)
    write_video(videos / "sub" / "long.mp4", face_frames(40, 32, 32), 8, tone(5.0), 16000)
    (videos / "broken.mp4").write_bytes(b"\x00" * 100)
    code = predict_main([str(videos), "--checkpoint", str(ckpt), "--csv", str(tmp_path / "out.csv"),
                         "--json", str(tmp_path / "out.json"), "--windows", str(tmp_path / "win.csv"),
                         "--timeline", str(tmp_path / "timeline")])
    assert code == 1                                     # one file failed, the others were scored
    out = pd.read_csv(tmp_path / "out.csv", keep_default_na=False).set_index("path")
    assert out.loc[str(videos / "broken.mp4"), "label"] == "ERROR"
    long = out.loc[str(videos / "sub" / "long.mp4")]
    assert long["windows"] == 5 and 0 <= float(long["p_fake"]) <= 1      # 5 s in 1 s windows
    windows = pd.read_csv(tmp_path / "win.csv")
    assert windows[windows["path"] == str(videos / "sub" / "long.mp4")]["p_fake"].mean() == pytest.approx(float(long["p_fake"]), abs=1e-4)
    assert (tmp_path / "timeline" / "long_timeline.png").read_bytes()[:4] == b"\x89PNG"
    assert len(json.loads((tmp_path / "out.json").read_text())) == 3
    assert "threshold 0.420" in capsys.readouterr().out
