"""Large folders: one row per video appended as it completes, a rerun that resumes after a kill,
shards whose outputs together are one run's, windows batched across videos by worker
processes, a broken file reported while the rest are scored."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from avlib.core.checkpoint import save_checkpoint
from avlib.dataio.media import write_video
from avlib.dataio.preprocess import settings
from avlib.models.detector import build_model, model_config
from avlib.predict import main as predict_main
from tests.conftest import face_frames, tone

ROOT = Path(__file__).resolve().parents[1]


def _checkpoint(tmp):
    """Untrained weights of the small framediff model, with the preprocessing it would have used."""
    model = build_model(video_encoder="framediff")
    path = tmp / "run" / "checkpoints" / "best.pt"
    save_checkpoint(path, {"model": model.state_dict(), "model_config": model_config(model), "epoch": 1,
                           "preprocess": settings(frames=8, size=16, fps=8, n_mfcc=40, mfcc_steps=10)})
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A checkpoint and a folder of 7 short videos (1-4.5 s, 1 s windows) and one broken file."""
    tmp = tmp_path_factory.mktemp("folder")
    ckpt = _checkpoint(tmp)
    videos = tmp / "videos"
    for i in range(7):
        seconds = 1.0 + 0.5 * i
        write_video(videos / f"v{i}.mp4", face_frames(int(8 * seconds), 32, 32, seed=i), 8,
                    tone(seconds, freq=300 + 50 * i), 16000)
    (videos / "broken.mp4").write_bytes(b"\x00" * 64)
    return ckpt, videos


def _run(folder, out: Path, *extra) -> pd.DataFrame:
    ckpt, videos = folder
    predict_main([str(videos), "--checkpoint", str(ckpt), "--csv", str(out), "--batch-size", "5", *extra])
    return pd.read_csv(out, keep_default_na=False, dtype=str)


def test_workers_batches_and_shards_give_one_runs_rows(folder, tmp_path):
    one = _run(folder, tmp_path / "one.csv", "--workers", "0").sort_values("path").reset_index(drop=True)
    assert len(one) == 8 and (one["label"] == "ERROR").sum() == 1            # the broken file reported
    assert one.loc[one["label"] != "ERROR", "covered_seconds"].tolist() == \
        pytest.approx(one.loc[one["label"] != "ERROR", "duration"].tolist(), abs=0.05)
    two = _run(folder, tmp_path / "two.csv", "--workers", "2").sort_values("path").reset_index(drop=True)
    pd.testing.assert_frame_equal(one, two)
    shards = pd.concat([_run(folder, tmp_path / f"shard{k}.csv", "--shard", f"{k}/3", "--workers", "0")
                        for k in range(3)]).sort_values("path").reset_index(drop=True)
    pd.testing.assert_frame_equal(one, shards)
    assert one.to_csv(index=False) == shards.to_csv(index=False)             # byte for byte after sorting


def test_a_killed_run_resumes_losing_at_most_the_videos_in_flight(folder, tmp_path):
    ckpt, videos = folder
    full = _run(folder, tmp_path / "full.csv", "--workers", "0").sort_values("path").reset_index(drop=True)
    out = tmp_path / "killed.csv"
    proc = subprocess.Popen([sys.executable, "-m", "avlib.predict", str(videos), "--checkpoint", str(ckpt),
                             "--csv", str(out), "--batch-size", "1", "--workers", "0"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out.is_file() and out.read_text().count("\n") >= 3):          # header and two videos
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = pd.read_csv(out, keep_default_na=False)
    assert 2 <= len(kept) < 8
    with open(out, "a") as f:                                                   # a line the kill cut short
        f.write(f"{videos / 'v6.mp4'},0.5")
    resumed = _run(folder, out, "--workers", "0", "--resume")
    assert len(resumed) == 8 and resumed["path"].is_unique
    pd.testing.assert_frame_equal(resumed.sort_values("path").reset_index(drop=True), full)
    assert resumed["path"].tolist()[: len(kept)] == kept["path"].tolist()      # finished rows kept as they were


def test_resume_needs_the_file_and_a_shard_must_be_one_of_n(folder, capsys):
    ckpt, videos = folder
    for flags, message in ((["--resume"], "--resume continues the file given with --csv"),
                           (["--shard", "3/3"], "must be K/N with 0 <= K < N")):
        with pytest.raises(SystemExit):
            predict_main([str(videos), "--checkpoint", str(ckpt), *flags])
        assert message in capsys.readouterr().err
