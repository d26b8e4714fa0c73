"""A training process killed with SIGKILL mid-epoch or mid-checkpoint-write resumes from the
last complete epoch and ends with exactly the weights of an uninterrupted run (CPU)."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from avlib.core.checkpoint import load_checkpoint
from avlib.dataio.preprocess import settings, write_dummy_cache

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3                      # the epoch fault strikes in the last epoch, the save fault in the second

SCRIPT = textwrap.dedent("""
    import sys, time, pathlib, torch
    sys.path.insert(0, {root!r})
    import avlib.training.loop as T
    from avlib.dataio.loader import CachedClips, make_loader
    from avlib.models.detector import build_model
    cache, run, fault, marker = sys.argv[1], sys.argv[2], sys.argv[3], pathlib.Path(sys.argv[4])

    def hang():
        marker.write_text("now")
        time.sleep(600)

    if fault == "save":            # die with the checkpoint of epoch 2 half written
        real_save = T.save_checkpoint
        def save(path, state):
            if path.name == "epoch_002.pt":
                tmp = path.parent / ".epoch_002.pt.killed.tmp"
                tmp.write_bytes(b"PK" + b"x" * 1000)
                hang()
            real_save(path, state)
        T.save_checkpoint = save
    elif fault == "epoch":         # die in the middle of epoch 3
        real_step = T.train_one_epoch
        def step(model, criterion, optimizer, loader, device, epoch, **kw):
            if epoch == 3:
                for i, batch in enumerate(loader):
                    if i == 1:
                        hang()
            return real_step(model, criterion, optimizer, loader, device, epoch, **kw)
        T.train_one_epoch = step
    torch.manual_seed(0)
    model = build_model(video_encoder="framediff")   # 0.4 M parameters: the resume logic, not the trunk, is under test
    train = make_loader(CachedClips(cache, "train"), batch_size=4, train=True, seed=0)
    val = make_loader(CachedClips(cache, "val"), batch_size=4, train=False)
    T.fit(model, train, val, run_dir=run, epochs={epochs}, lr=1e-3, device=torch.device("cpu"), seed=0,
          keep_last=2, progress=False, log=lambda *a: None)
""").format(root=str(ROOT), epochs=EPOCHS)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    write_dummy_cache(tmp / "cache", settings(frames=4, size=16, fps=25, n_mfcc=40, mfcc_steps=8), n=16, seed=0)
    (tmp / "train.py").write_text(SCRIPT)
    subprocess.run([sys.executable, str(tmp / "train.py"), str(tmp / "cache"), str(tmp / "straight"), "none",
                    str(tmp / "unused")], check=True, timeout=600)
    return tmp


def _run_until_marker(tiny, run, fault):
    marker = tiny / f"{run}.marker"
    proc = subprocess.Popen([sys.executable, str(tiny / "train.py"), str(tiny / "cache"), str(tiny / run), fault,
                             str(marker)])
    deadline = time.time() + 300
    while not marker.exists():
        assert proc.poll() is None, "training ended before reaching the fault"
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("fault", ["epoch", "save"])
def test_sigkill_then_resume_equals_an_uninterrupted_run(tiny, fault):
    run = f"killed_{fault}"
    _run_until_marker(tiny, run, fault)
    done = load_checkpoint(tiny / run / "checkpoints" / "last.pt")["epoch"]
    assert done == (2 if fault == "epoch" else 1)          # a killed save leaves the previous last.pt intact
    subprocess.run([sys.executable, str(tiny / "train.py"), str(tiny / "cache"), str(tiny / run), "none",
                    str(tiny / "unused")], check=True, timeout=600)
    assert not list((tiny / run / "checkpoints").glob(".*.tmp"))           # stale temporary files cleaned
    straight = load_checkpoint(tiny / "straight" / "checkpoints" / "last.pt")
    resumed = load_checkpoint(tiny / run / "checkpoints" / "last.pt")
    assert resumed["epoch"] == straight["epoch"] == EPOCHS
    for name, weight in straight["model"].items():
        assert torch.equal(weight, resumed["model"][name]), name
    assert [h["epoch"] for h in resumed["history"]] == list(range(1, EPOCHS + 1))
