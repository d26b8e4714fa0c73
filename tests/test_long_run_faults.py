"""Faults a long research run meets, each provoked for real: a second writer on the same run (two
processes), a full disk at a checkpoint, cache or results write (ENOSPC/EDQUOT raised after part
of the file is written), a DataLoader worker killed with SIGKILL, and oversized files given to
avlib.predict. Each test checks that nothing finished is lost and that the message says what to do."""
import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from avlib import stages
from avlib.core.checkpoint import load_checkpoint, save_checkpoint
from avlib.core.locking import LockedError, lock_files, writer_lock
from avlib.core.paths import DiskFullError, read_json, write_json
from avlib.dataio.cache import VIDEO_FILE, is_cached
from avlib.dataio.decode import decode_clip
from avlib.dataio.indexers import index_dataset
from avlib.dataio.inputs import InputLimits, InputRefused, check_input
from avlib.dataio.loader import CachedClips, make_loader
from avlib.dataio.media import write_video
from avlib.dataio.preprocess import preprocess, settings, write_dummy_cache
from avlib.models.detector import build_model, model_config
from avlib.predict import main as predict_main
from avlib.training.loop import LoaderWorkerError, fit, load_resume_state
from tests.conftest import face_frames, tone

ROOT = Path(__file__).resolve().parents[1]
CONFIG = settings(frames=4, size=16, fps=25, n_mfcc=40, mfcc_steps=8)


# ---------------------------------------------------------------- one writer per run

HOLDER = textwrap.dedent("""
    import sys, time, pathlib
    sys.path.insert(0, {root!r})
    from avlib.core.locking import writer_lock
    with writer_lock(sys.argv[1], "03_train"):
        pathlib.Path(sys.argv[2]).write_text("holding")
        time.sleep(300)
""").format(root=str(ROOT))


def _start_holder(folder: Path, ready: Path) -> subprocess.Popen:
    """Another process (as if 03_train ran in JupyterLab) holding the writer lock of `folder`."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), str(ready)],
                            env={**os.environ, "JPY_SESSION_NAME": "notebooks/03_train.ipynb"})
    deadline = time.time() + 60
    while not ready.exists():
        assert proc.poll() is None and time.time() < deadline, "the holder process did not take the lock"
        time.sleep(0.05)
    return proc


def test_a_second_writer_stops_at_once_naming_the_holder_and_a_dead_ones_lock_is_taken_over(tmp_path, capsys):
    run = tmp_path / "results" / "run"
    run.mkdir(parents=True)
    (run / "history.csv").write_text("epoch,train_loss\n1,0.69\n")
    holder = _start_holder(run, tmp_path / "ready")
    common = dict(run_name="run", results_dir=str(tmp_path / "results"))
    try:
        start = time.perf_counter()
        with pytest.raises(LockedError) as refused:
            stages.train_stage(**common, epochs=1, batch_size=2, lr=1e-3, device="cpu", workers=0, progress=False)
        assert time.perf_counter() - start < 10
        message = str(refused.value)
        for part in (f"host {socket.gethostname()}", f"PID {holder.pid}", "process started",
                     "notebook notebooks/03_train.ipynb", f"`kill {holder.pid}`", "another run_name"):
            assert part in message, part
        with pytest.raises(LockedError, match=f"PID {holder.pid}"):
            stages.evaluate_stage(**common, device="cpu", workers=0, progress=False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run / "history.csv").read_text() == "epoch,train_loss\n1,0.69\n"       # the holder's file untouched
    # the holder was killed: its lock is stale, taken over, and this stage goes on to its own first check
    with pytest.raises(stages.MissingInputError, match="preprocess.json"):
        stages.train_stage(**common, epochs=1, batch_size=2, lr=1e-3, device="cpu", workers=0, progress=False)
    assert f"PID {holder.pid}" in capsys.readouterr().out          # "took over the writer lock ... from ..."
    assert not any(p.exists() for p in lock_files(run))             # released when the stage stopped


def test_a_lock_held_on_another_host_is_kept_and_the_message_says_which_files_to_delete(tmp_path):
    marker, record = lock_files(tmp_path)
    marker.write_text("424242\ngpu-node-7\n")          # filelock's marker: PID and host of the holder
    write_json(record, {"host": "gpu-node-7", "pid": 424242, "process_started": "2026-11-28T22:00:00+00:00",
                        "locked_at": "2026-11-28T22:00:05+00:00", "stage": "03_train",
                        "notebook": "notebooks/03_train.ipynb", "command": "papermill notebooks/03_train.ipynb"})
    with pytest.raises(LockedError) as refused:
        with writer_lock(tmp_path, "04_evaluate"):
            pass
    message = str(refused.value)
    assert "gpu-node-7, PID 424242" in message and "cannot check" in message
    assert f"delete {marker} and {record}" in message
    assert marker.read_text() == "424242\ngpu-node-7\n" and read_json(record)["pid"] == 424242


# ---------------------------------------------------------------- full disk

REAL_WRITE = os.write


def _fail_half_way(name_part: str, code: int = errno.ENOSPC):
    """An os.write that, for a temporary file whose name contains `name_part`, writes half of
    the data and then fails as a full disk (or quota) does; other writes go through."""
    def write(fd, data):
        if name_part in os.readlink(f"/proc/self/fd/{fd}"):
            REAL_WRITE(fd, memoryview(data)[: len(data) // 2])
            raise OSError(code, os.strerror(code))
        return REAL_WRITE(fd, data)
    return write


def test_a_results_file_over_quota_keeps_its_previous_version(tmp_path, monkeypatch):
    path = tmp_path / "run" / "metrics.json"
    write_json(path, {"auc": 0.9})
    monkeypatch.setattr(os, "write", _fail_half_way(".metrics.json."))
    with pytest.raises(DiskFullError) as full:
        write_json(path, {"auc": 0.95, "per_category": {"FVRA": 0.8}})
    assert full.value.errno == errno.ENOSPC and str(full.value).startswith("[Errno 28] no space left")
    needed = len((json.dumps({"auc": 0.95, "per_category": {"FVRA": 0.8}}, indent=2) + "\n").encode())
    assert f"needed {needed:,} bytes" in str(full.value) and f"in {path.parent}" in str(full.value)
    assert read_json(path) == {"auc": 0.9} and sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]
    monkeypatch.setattr(os, "write", _fail_half_way(".metrics.json.", errno.EDQUOT))
    with pytest.raises(DiskFullError, match="disk quota exceeded"):
        write_json(path, {"auc": 0.95})
    assert read_json(path) == {"auc": 0.9}


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    """A tiny cache and a run trained for one epoch (shared: the tests continue copies of it)."""
    tmp = tmp_path_factory.mktemp("long_run")
    write_dummy_cache(tmp / "cache", CONFIG, n=16, seed=0)
    _fit(tmp / "cache", tmp / "base", 1)
    return tmp


def _fit(cache, run, epochs, *, train_set=None, workers=0):
    torch.manual_seed(0)
    train = make_loader(train_set or CachedClips(cache, "train"), batch_size=4, train=True, workers=workers, seed=0)
    val = make_loader(CachedClips(cache, "val"), batch_size=4, train=False)
    return fit(build_model(video_encoder="framediff"), train, val, run_dir=run, epochs=epochs, lr=1e-3, device=torch.device("cpu"), seed=0,
               progress=False, log=lambda *a: None)


def _copy_of_base(one_epoch, name) -> Path:
    """A run that has finished epoch 1: hard links to the base run's files (fit replaces files, never edits them)."""
    run = one_epoch / name
    (run / "checkpoints").mkdir(parents=True)
    for rel in ("checkpoints/last.pt", "history.csv"):
        os.link(one_epoch / "base" / rel, run / rel)
    return run


def test_a_checkpoint_write_on_a_full_disk_stops_the_run_and_the_rerun_resumes(one_epoch, monkeypatch):
    run = _copy_of_base(one_epoch, "disk_full")
    monkeypatch.setattr(os, "write", _fail_half_way(".epoch_002.pt."))
    with pytest.raises(DiskFullError) as full:
        _fit(one_epoch / "cache", run, 2)
    message = str(full.value)
    needed = int(re.search(r"needed ([\d,]+) bytes", message).group(1).replace(",", ""))
    assert "no space left" in message and f"in {run / 'checkpoints'}" in message and "rerun" in message
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1          # the previous one, whole
    assert not list((run / "checkpoints").glob(".*.tmp"))                         # no half-written file left
    assert list(pd.read_csv(run / "history.csv")["epoch"]) == [1]
    monkeypatch.undo()                                                             # space freed
    history = _fit(one_epoch / "cache", run, 2)
    assert list(history["epoch"]) == [1, 2]
    assert (run / "checkpoints" / "epoch_002.pt").stat().st_size == needed         # the bytes the message named


def test_a_full_disk_stops_preprocessing_keeping_the_clips_already_cached(tmp_path, monkeypatch):
    data = tmp_path / "data"
    for i in range(3):
        write_video(data / "real" / f"p{i}" / "a.mp4", face_frames(8, 32, 32, seed=i), 8, tone(1.0), 16000)
    records = index_dataset("folder", data)
    config = settings(frames=8, size=16, fps=8, n_mfcc=40, mfcc_steps=10)
    real_write_bytes, videos = Path.write_bytes, []

    def write_bytes(self, payload):                         # the second clip's video hits a full disk
        if self.name == VIDEO_FILE:
            videos.append(self)
            if len(videos) == 2:
                real_write_bytes(self, bytes(payload)[: len(payload) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_bytes(self, payload)
    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    cache = tmp_path / "cache"
    with pytest.raises(DiskFullError, match=r"no space left on the device: writing .*clips.* needed up to [\d,]+ bytes"):
        preprocess(records, data, cache, config, workers=1, progress=False)
    clips = list((cache / "clips").iterdir())
    assert sum(is_cached(cache, p.name) for p in clips) == 1                   # the first clip, whole
    assert not [p for p in clips if p.name.startswith(".")]                   # no temporary folder left
    assert not list((cache / "failures").iterdir())                           # the file is not blamed
    monkeypatch.undo()
    report = preprocess(records, data, cache, config, workers=1, progress=False)
    assert (report["clips_cached"], report["clips_failed"], report["processed_this_run"]) == (3, 0, 2)


# ---------------------------------------------------------------- a dead loader worker

class WorkerKilledOnce(torch.utils.data.Dataset):
    """Clips whose loader worker SIGKILLs itself at its first item, once (as the kernel's
    out-of-memory killer would): a marker file remembers that it happened."""

    def __init__(self, base, marker: Path):
        self.base, self.marker, self.labels = base, marker, base.labels

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        if torch.utils.data.get_worker_info() is not None and not self.marker.exists():
            self.marker.write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)
        return self.base[i]


def test_a_killed_loader_worker_names_memory_and_the_parameters_and_keeps_the_last_epoch(one_epoch):
    run = _copy_of_base(one_epoch, "worker_killed")
    dying = WorkerKilledOnce(CachedClips(one_epoch / "cache", "train"), one_epoch / "killed.marker")
    with pytest.raises(LoaderWorkerError) as died:
        _fit(one_epoch / "cache", run, 2, train_set=dying, workers=1)
    message = str(died.value)
    for part in ("epoch 2", "out-of-memory", "`workers` (now 1)", "`batch_size` (now 4)", "after epoch 1"):
        assert part in message, part
    assert (one_epoch / "killed.marker").exists()
    assert list(pd.read_csv(run / "history.csv")["epoch"]) == [1]
    # what the rerun starts from (the disk-full test above runs such a rerun to its end)
    resume = load_resume_state(run / "checkpoints", {"model": model_config(build_model(video_encoder="framediff"))})
    assert resume["epoch"] == 1 and [h["epoch"] for h in resume["history"]] == [1]
    assert not list((run / "checkpoints").glob("epoch_002*"))


# ---------------------------------------------------------------- files from strangers

def _checkpoint(tmp_path):
    config = settings(frames=8, size=16, fps=8, n_mfcc=40, mfcc_steps=10)
    model = build_model()
    path = tmp_path / "run" / "checkpoints" / "best.pt"
    save_checkpoint(path, {"model": model.state_dict(), "model_config": model_config(model), "epoch": 1,
                           "preprocess": config})
    return path


def test_predict_refuses_each_oversized_input_naming_its_flag_and_scores_the_rest(tmp_path, capsys):
    videos = tmp_path / "strangers"
    write_video(videos / "big_frames.mp4", face_frames(12, 64, 64), 8, tone(1.5), 16000)
    write_video(videos / "long.mp4", face_frames(2, 32, 32), 8, None, timestamps=[0.0, 500.0])
    with open(videos / "bulky.mp4", "wb") as f:
        f.truncate(2 * 2**20)                                  # 2 MiB (sparse)
    write_video(videos / "fine.mp4", face_frames(12, 32, 32), 8, tone(1.5), 16000)
    code = predict_main([str(videos), "--checkpoint", str(_checkpoint(tmp_path)), "--csv", str(tmp_path / "out.csv"),
                         "--max-side", "48", "--max-duration", "100", "--max-file-mb", "1"])
    assert code == 1
    out = pd.read_csv(tmp_path / "out.csv", keep_default_na=False).set_index("path")
    expected = {"big_frames.mp4": "InputRefused: over --max-side 48: frames of 64x64 pixels",
                "long.mp4": "InputRefused: over --max-duration 100: the file lasts 500 s",
                "bulky.mp4": "InputRefused: over --max-file-mb 1: the file is 2.0 MiB"}
    printed = capsys.readouterr().err
    for name, error in expected.items():
        assert out.loc[str(videos / name), "error"].startswith(error), name
        assert f"{videos / name}: {error}" in printed, name
    assert out.loc[str(videos / "fine.mp4"), "label"] in ("REAL", "FAKE")


def test_a_ten_hour_file_and_a_5_gib_file_are_refused_at_the_default_limits(tmp_path):
    ten_hours = write_video(tmp_path / "ten_hours.mp4", face_frames(2, 32, 32), 25, None, timestamps=[0.0, 36000.0])
    with pytest.raises(InputRefused, match="over --max-duration 3600: the file lasts 36,000 s"):
        check_input(ten_hours, InputLimits())
    huge = tmp_path / "huge.mp4"
    with open(huge, "wb") as f:
        f.truncate(5 * 2**30)                                  # sparse: takes no disk space
    with pytest.raises(InputRefused, match="over --max-file-mb 4096: the file is 5,120.0 MiB"):
        check_input(huge, InputLimits())


MEASURE = textwrap.dedent("""
    import pathlib, re, sys
    sys.path.insert(0, {root!r})
    import av
    import avlib.dataio.decode       # imported by check_input: loads OpenCV (40 MB), not what is measured here
    from avlib.dataio.inputs import InputLimits, InputRefused, check_input

    def peak_growth(action):     # MB the peak RSS grows by during action (Linux: clear_refs 5 resets the peak)
        pathlib.Path("/proc/self/clear_refs").write_text("5")
        peak = lambda: int(re.search(r"VmHWM:\\s+(\\d+)", pathlib.Path("/proc/self/status").read_text())[1])
        before = peak()
        action()
        return (peak() - before) // 1024

    refusal = []
    def check():
        try:
            check_input(pathlib.Path(sys.argv[1]), InputLimits())
        except InputRefused as e:
            refusal.append(str(e))
    checked = peak_growth(check)
    unguarded = peak_growth(lambda: av.open(sys.argv[1]).close())    # H.264's probe decodes a frame
    print(checked, unguarded, *refusal, sep="\\n")
""").format(root=str(ROOT))


def test_a_huge_frame_is_refused_from_the_header_before_any_frame_is_decoded(tmp_path):
    import av

    path = tmp_path / "huge_frame.mp4"
    side = 8192
    with av.open(str(path), "w") as out:                       # one flat 8192x8192 H.264 frame: 60 kB
        stream = out.add_stream("libx264", rate=25)
        stream.width = stream.height = side
        stream.options = {"preset": "ultrafast"}
        frame = av.VideoFrame(side, side, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes([128]) * plane.buffer_size)
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)
    result = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, timeout=300)
    checked_mb, unguarded_mb, refusal = result.stdout.strip().split("\n")
    assert refusal == f"over --max-side 4096: frames of {side}x{side} pixels (from the stream header; no frame decoded)"
    assert int(checked_mb) < 50 and int(unguarded_mb) > 100      # measured: 28 MB, and 153 MB unguarded


def test_the_decoder_refuses_frames_that_grow_past_the_stream_header(tmp_path):
    import io

    import av
    import numpy as np

    def segment(side, value):      # raw H.264 (Annex B): a stream may change size at any keyframe
        buffer = io.BytesIO()
        with av.open(buffer, "w", format="h264") as out:
            stream = out.add_stream("libx264", rate=25)
            stream.width = stream.height = side
            stream.options = {"preset": "ultrafast"}
            for i in range(10):
                frame = av.VideoFrame.from_ndarray(np.full((side, side, 3), value, np.uint8), format="rgb24")
                frame.pts = i
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        return buffer.getvalue()

    path = tmp_path / "grows.h264"
    path.write_bytes(segment(32, 50) + segment(256, 200))      # the header says 32x32; frames 11.. are 256x256
    assert decode_clip(path, frames=20, size=16, fps=25).valid_frames == 20
    limited = decode_clip(path, frames=20, size=16, fps=25, max_pixels=64 * 64)
    assert limited.valid_frames == 10 and limited.video.max() < 100          # only the 32x32 frames
