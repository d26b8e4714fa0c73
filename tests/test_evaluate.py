"""Evaluation extras: the shortcut baseline, generalization to real-only corpora, the
comparison table, and the predict CLI on real encoded files."""
import json

import numpy as np
import pandas as pd
import pytest

from avlib.audit import shortcut_baseline
from avlib.cache import read_index
from avlib.checkpoint import save_checkpoint
from avlib.evaluate import generalization_report, update_comparison
from avlib.indexers import index_dataset
from avlib.media import write_video
from avlib.model import build_model, model_config
from avlib.predict import main as predict_main, window_starts
from avlib.preprocess import preprocess, settings
from avlib.synthetic import CorpusSpec, generate_corpus
from tests.conftest import face_frames, tone

CONFIG = settings(frames=8, size=16, fps=8, n_mfcc=40, mfcc_steps=10)


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
    report = generalization_report(ckpt, tmp_path / "cache", tmp_path / "run", threshold=0.5, device="cpu",
                                   workers=0, progress=False)
    pred = pd.read_csv(tmp_path / "run" / "generalization_predictions.csv")
    assert report["n"] == 3 and report["false_positive_rate"] == pytest.approx((pred["p_fake"] >= 0.5).mean())
    assert "by_dataset" in report
    other = {**CONFIG, "frames": 4}
    with pytest.raises(ValueError, match="frames"):
        generalization_report(_checkpoint(tmp_path, other), tmp_path / "cache", tmp_path / "run", threshold=0.5,
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


def test_window_starts():
    assert window_starts(None, 2.0, 2.0, 10) == [0.0]
    assert window_starts(7.0, 2.0, 2.0, 10) == [0.0, 2.0, 4.0]
    assert window_starts(7.0, 2.0, 1.0, 3) == [0.0, 1.0, 2.0]


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
