"""The main command as people meet it (`make demo` runs `python -m avlib.pipeline params/demo_sync.yaml`):
progress streamed as it happens, no line that asks nothing of the user, a closing summary beside
the committed reference, and no tracked file touched. The smoke chain runs once, as a command,
in a throwaway git copy of the tracked tree; its kernels start in notebooks/, as JupyterLab
starts them."""
import json
import re
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from avlib.core.progress import Heartbeat, ProgressLines, format_duration
from avlib.pipeline import compare_with_reference, spread_verdict, summary_lines
from tests.conftest import _git

ROOT = Path(__file__).resolve().parents[1]

EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+)  train loss [\d.]+  val loss [\d.]+ acc [\d.]+ AUC [\d.na]+  .+ s "
                        r"\([\d.]+ clips/s\)  ETA \d.* s")


def test_main_command_leaves_tracked_files_untouched(clone_smoke_run):
    clone, run, _ = clone_smoke_run
    assert (run / "metrics.json").is_file() and (clone / "results" / "comparison.csv").is_file()
    assert _git("status", "--porcelain", "--untracked-files=all", cwd=clone) == ""


def test_main_command_streams_epochs_and_ends_with_a_summary(_clone_smoke_lines):
    clone, run, lines = _clone_smoke_lines
    text = [line for _, line in lines]
    epochs = [(t, EPOCH_LINE.match(line)) for t, line in lines if EPOCH_LINE.match(line)]
    assert [(int(m[1]), int(m[2])) for _, m in epochs] == [(1, 2), (2, 2)], text
    (t1, _), (t2, _) = epochs
    train_done = next(t for t, line in lines if line.startswith("[3/5] 03_train done"))
    assert t1 + 0.1 < t2 < train_done             # each line arrived when its epoch ended, not with the notebook
    executed = nbformat.read(run / "notebooks" / "03_train.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert all(m[0] in printed for _, m in epochs)       # the same lines in the executed notebook
    times = [t for t, _ in lines]
    assert times[0] < 10 and max(b - a for a, b in zip(times, times[1:])) < 60, lines
    assert text[-1] == "executed notebooks: results/smoke/notebooks/"      # paths relative to the copy's root
    assert any(line.startswith("test split, 6 clips: AUC ") for line in text), text
    table = text.index(next(line for line in text if line.startswith("the verdict on every set (threshold ")))
    assert text[table + 1].split() == ["set", "AUC", "sync", "AUC", "bal.", "acc.", "real->fake", "fake->fake"]
    assert [line.split()[0] for line in text[table + 2:table + 4]] == ["test", "smoke-external"]
    assert re.fullmatch(r"calibration \(temperature\): ECE [\d.]+ -> [\d.]+ \(perfect calibration shows [\d.]+ on this many "
                        r"clips, 95 % below [\d.]+\), Brier [\d.]+ -> [\d.]+ on the test split",
                        text[table + 4]), text[table + 4]
    assert not [line for line in text if re.search("warning|error|encryption|unable to", line, re.I)], text


def test_a_headless_run_saves_no_progress_widget_in_its_notebooks(clone_smoke_run):
    """A widget saved by a kernel nobody watched shows as a dead bar in JupyterLab."""
    _, run, _ = clone_smoke_run
    for path in sorted((run / "notebooks").glob("*.ipynb")):
        outputs = [o for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code" for o in c.outputs]
        assert outputs and not [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
                                or "0%|" in o.get("text", "")], path.name


def test_progress_lines_throttle_and_finish_once():
    now = [0.0]
    out = []
    bar = ProgressLines("preprocess", 4, every=10, log=out.append, clock=lambda: now[0])
    for step in (1, 12, 13, 30):
        now[0] = step
        bar.update()
    assert out == ["preprocess: 2/4 clips (50 %), 0.2 clips/s, ETA 12 s", "preprocess: 4/4 clips in 30 s, 0.1 clips/s"]
    bar.update()
    assert len(out) == 2                      # nothing after the final line
    silent = ProgressLines("synthetic corpus", 0, log=out.append)
    silent.update()
    assert len(out) == 2
    assert [format_duration(s) for s in (4.4, 65, 3600 + 180)] == ["4 s", "1 min 05 s", "1 h 03 min"]


def test_heartbeat_speaks_during_a_long_epoch_and_passes_the_loader_through():
    now = [0.0]
    out = []
    beat = Heartbeat(every=45, log=out.append, clock=lambda: now[0])
    train, val = list(range(4)), list(range(3))
    wrapped = beat(train, "epoch 1/2 training")
    assert len(wrapped) == 4 and wrapped.count(2) == 1          # length and attributes of the loader
    seen = []
    for item in wrapped:
        now[0] += 20                                             # a 20 s batch
        seen.append(item)
    for _ in beat(val, "epoch 1/2 validation"):
        now[0] += 20
    assert seen == train
    assert out == ["epoch 1/2 training: 3/4 batches (75 %), 0.1 batches/s, ETA 20 s",
                   "epoch 1/2 validation: 2/3 batches (67 %), 0.1 batches/s, ETA 20 s"]   # one clock across loaders


def test_preprocess_reports_clips_done_and_rate(tmp_path, capsys):
    from avlib.dataio.indexers import index_dataset
    from avlib.dataio.media import write_video
    from avlib.dataio.preprocess import preprocess, settings
    from tests.conftest import face_frames, tone

    for label in ("real", "fake"):
        write_video(tmp_path / "data" / label / "person0" / "a.mp4", face_frames(8, 32, 32), 25, tone(0.4), 16000)
    records = index_dataset("folder", tmp_path / "data")
    preprocess(records, tmp_path / "data", tmp_path / "cache", settings(frames=4, size=16, fps=25, n_mfcc=40,
                                                                        mfcc_steps=10), workers=1)
    assert re.search(r"^preprocess: 2/2 clips in \d+ s, [\d.]+ clips/s$", capsys.readouterr().out, re.M)


def _metrics(auc, fvra):
    return {"auc": auc, "accuracy": 0.9, "balanced_accuracy": 0.91, "eer": 0.05, "threshold": 0.6, "split": "test",
            "n": {"REAL": 18, "FAKE": 27}, "ci95": {"auc": [auc - 0.03, 1.0]},
            "per_category": {"FVRA": {"auc": fvra}, "RVFA": {"auc": 1.0}}}


def test_summary_compares_with_the_reference_and_its_spread(tmp_path):
    run, reference = tmp_path / "results" / "demo", tmp_path / "reference" / "demo"
    for folder, metrics in ((run, _metrics(0.90, 0.80)), (reference, _metrics(0.98, 0.95))):
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(metrics))
    (reference / "spread.json").write_text(json.dumps({"auc": [0.914, 0.947, 0.984]}))
    table = compare_with_reference(_metrics(0.90, 0.80), _metrics(0.98, 0.95), {"auc": [0.914, 0.984]})
    assert list(table["key"]) == ["auc", "accuracy", "balanced_accuracy", "eer", "auc_FVRA", "auc_RVFA"]
    assert table.set_index("key").loc["auc", "earlier"] == "0.914-0.984"
    assert table.set_index("key").loc["auc_FVRA", ["this_run", "reference"]].tolist() == [0.80, 0.95]
    lines = summary_lines(run, {"03_train": 125.0, "04_evaluate": 20.0}, reference)
    assert lines[0] == "finished in 2 min 25 s: 03_train 2 min 05 s, 04_evaluate 20 s"
    assert lines[1].startswith("test split, 45 clips: AUC 0.900 (95 % CI 0.87-1.00)")
    assert any(line.split() == ["AUC", "FVRA", "0.800", "0.950"] for line in lines), lines
    assert "below the range of earlier runs (0.914-0.984)" in "\n".join(lines)
    assert "within the range" in spread_verdict(0.95, [0.914, 0.984])
    assert "within the range" in spread_verdict(0.934156, [0.9342, 0.9634, 0.9794])   # the same run, rounded in spread.json
    assert "below the range" in spread_verdict(0.9334, [0.9342, 0.9794])
    no_reference = summary_lines(run, {"04_evaluate": 20.0})
    assert not any("reference" in line for line in no_reference)


def test_seeds_summary_gives_each_seed_then_mean_sd_min_max(tmp_path):
    from avlib.pipeline import seeds_summary

    runs = {}
    for seed, (auc, fvra, swap) in enumerate([(0.90, 0.80, 0.95), (0.96, 0.90, 0.91), (0.93, 0.70, 0.99)]):
        runs[seed] = tmp_path / f"demo-seed{seed}"
        runs[seed].mkdir()
        metrics = {**_metrics(auc, fvra), "sync_score": {"auc": 0.7, "per_category": {"RVFA": {"auc": 0.9}}},
                   "external": {"audio_swap": {"auc": swap, "per_category": {}, "sync_score": {"auc": 0.97},
                                               "balanced_accuracy": swap - 0.2, "calibration": {"ece": 0.1 * seed}},
                                "real_only": {"kind": "real-only", "false_positive_rate": 0.1}}}
        (runs[seed] / "metrics.json").write_text(json.dumps(metrics))
    table = seeds_summary(runs).set_index("seed")
    assert list(table.index) == ["0", "1", "2", "mean", "sd", "min", "max"]
    assert table.loc["mean", "auc"] == pytest.approx(0.93) and table.loc["sd", "auc"] == pytest.approx(0.03)
    assert table.loc["min", "auc_FVRA"] == 0.70 and table.loc["max", "audio_swap_auc"] == 0.99
    assert table.loc["1", "sync_auc_RVFA"] == 0.9 and table.loc["mean", "audio_swap_sync_auc"] == pytest.approx(0.97)
    assert table.loc["2", "audio_swap_balanced_accuracy"] == pytest.approx(0.79)
    assert table.loc["max", "audio_swap_ece"] == pytest.approx(0.2) and table.loc["0", "balanced_accuracy"] == 0.91
    assert "real_only_balanced_accuracy" not in table


def _seed_runs(results, aucs):
    runs = {}
    for seed, auc in enumerate(aucs):
        runs[seed] = results / f"demo-seed{seed}"
        for sub in ("figures", "checkpoints", "notebooks"):
            (runs[seed] / sub).mkdir(parents=True)
        (runs[seed] / "metrics.json").write_text(json.dumps({**_metrics(auc, auc - 0.1), "precision": "fp32"}))
        (runs[seed] / "figures" / "roc_curve.png").write_bytes(b"seed %d" % seed)
        (runs[seed] / "checkpoints" / "best.pt").write_bytes(b"weights")
        (runs[seed] / "notebooks" / "03_train.ipynb").write_text("{}")
    return runs


def test_reference_is_the_median_seed_with_the_spread_and_01s_figures(tmp_path):
    from avlib.pipeline import seeds_summary
    from avlib.reference import write_reference

    results, reference = tmp_path / "results", tmp_path / "reference"
    runs = _seed_runs(results, [0.95, 0.80, 0.90])
    (results / "demo" / "figures").mkdir(parents=True)
    (results / "demo" / "figures" / "sample_clips.png").write_bytes(b"01")
    (results / "demo" / "figures" / "roc_external.png").write_bytes(b"an earlier full run's")
    (results / "comparison.csv").write_text("run_name,eval_set,auc\ndemo-seed0,test,0.9\ndemo-seed1,test,0.8\n"
                                            "demo-seed2,test,0.95\nother,test,0.5\n")
    (reference / "demo" / "figures").mkdir(parents=True)
    (reference / "demo" / "figures" / "stale.png").write_bytes(b"old")
    (reference / "comparison.csv").write_text("run_name,eval_set,auc\ndemo-seed7,test,0.1\nkept-seed0,test,0.7\n")
    table = seeds_summary(runs)
    folder = write_reference(results, "demo", runs, table, params_file="params/demo.yaml", reference_dir=reference,
                             log=lambda line: None)
    assert folder == reference / "demo"
    assert (folder / "figures" / "roc_curve.png").read_bytes() == b"seed 2"      # 0.90: the median of 0.95, 0.80, 0.90
    assert (folder / "figures" / "sample_clips.png").read_bytes() == b"01"
    assert not (folder / "figures" / "roc_external.png").exists()
    assert not (folder / "checkpoints").exists() and not (folder / "notebooks").exists()
    assert not (folder / "figures" / "stale.png").exists()
    spread = json.loads((folder / "spread.json").read_text())
    assert spread["auc"] == [0.95, 0.8, 0.9] and spread["auc_FVRA"] == [0.85, 0.7, 0.8]
    assert "seed 2, the median run" in spread["about"] and "params/demo.yaml --seeds 0,1,2" in spread["about"]
    assert (reference / "demo-seeds.csv").read_text() == table.to_csv(index=False)
    kept = pd.read_csv(reference / "comparison.csv")
    assert sorted(kept["run_name"]) == ["demo-seed0", "demo-seed1", "demo-seed2", "kept-seed0"]


def test_reference_stays_as_it_was_when_a_seed_has_no_metrics(tmp_path):
    from avlib.pipeline import seeds_summary
    from avlib.reference import write_reference

    results, reference = tmp_path / "results", tmp_path / "reference"
    runs = _seed_runs(results, [0.90, 0.80])
    table = seeds_summary(runs)
    (reference / "demo").mkdir(parents=True)
    (reference / "demo" / "metrics.json").write_text("{}")
    (runs[1] / "metrics.json").unlink()
    with pytest.raises(FileNotFoundError, match="demo-seed1"):
        write_reference(results, "demo", runs, table, params_file="params/demo.yaml", reference_dir=reference)
    assert [p.name for p in reference.iterdir()] == ["demo"] and (reference / "demo" / "metrics.json").read_text() == "{}"


def test_median_seed_of_an_even_count_is_the_lower_middle(tmp_path):
    from avlib.pipeline import seeds_summary
    from avlib.reference import median_seed

    runs = _seed_runs(tmp_path, [0.90, 0.70, 0.95, 0.80])
    assert median_seed(seeds_summary(runs)) == 3                 # 0.80 of 0.70, 0.80, 0.90, 0.95


def test_reference_is_left_whole_when_assembling_the_new_one_fails(tmp_path, monkeypatch):
    import avlib.reference as reference
    from avlib.pipeline import seeds_summary

    results, ref = tmp_path / "results", tmp_path / "reference"
    runs = _seed_runs(results, [0.90, 0.80, 0.95])
    (ref / "demo").mkdir(parents=True)
    (ref / "demo" / "metrics.json").write_text("{}")

    def disk_full(path, obj):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(reference, "write_json", disk_full)
    with pytest.raises(OSError, match="No space"):
        reference.write_reference(results, "demo", runs, seeds_summary(runs), params_file="params/demo.yaml",
                                  reference_dir=ref, log=lambda line: None)
    assert [p.name for p in ref.iterdir()] == ["demo"] and [p.name for p in (ref / "demo").iterdir()] == ["metrics.json"]


def test_reference_needs_seeds_and_04(capsys):
    from avlib.pipeline import main

    with pytest.raises(SystemExit):
        main(["params/demo.yaml", "--reference"])
    assert "--reference renews the reference from several seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(ROOT / "params" / "demo.yaml"), "--seeds", "0,1,2", "--only", "03", "--reference"])
    assert "include 04" in capsys.readouterr().err


def test_prepare_entries_take_the_runs_settings_and_refuse_unknown_keys():
    from avlib.core.params import ParameterError
    from avlib.pipeline import prepare_params

    main = {"run_name": "demo", "dataset": "synthetic", "frames": 32, "fps": 16.0, "epochs": 12, "data_dir": "data/a"}
    extra = prepare_params(main, {"run_name": "held", "data_dir": "data/b", "corpus_styles": "outdoor"})
    assert extra == {"run_name": "held", "dataset": "synthetic", "frames": 32, "fps": 16.0, "data_dir": "data/b",
                     "corpus_styles": "outdoor"}                   # epochs is not 01's: left out
    with pytest.raises(ParameterError, match="epochs"):
        prepare_params(main, {"run_name": "held", "epochs": 3})
    with pytest.raises(ParameterError, match="run_name"):
        prepare_params(main, {"data_dir": "data/b"})
