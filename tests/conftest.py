"""Shared fixtures: small real media files made with PyAV, tiny caches, and the smoke chain run
once as the main command in a git copy of the tree (tests/test_main_command.py and
tests/test_notebooks.py read it)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _inductor_cache_of_this_session(tmp_path_factory):
    """torch.compile's kernels and graphs go to a cache of this test session alone (subprocesses
    inherit it). Inductor's cache (default /tmp/torchinductor_<user>) is not keyed on
    ATEN_CPU_CAPABILITY (PyTorch 2.14.1): entries written by a run told to compute as an AVX2 CPU
    and read by a native run, or the other way round, scored the compiled inference copy 0.49
    off or aborted the process (tests/test_model.py::test_compiled_inference_copy_scores_like_the_model).
    So no test reads what another process left there."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path_factory.mktemp("torchinductor"))


def face_frames(n: int, h: int = 64, w: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Moving-gradient RGB frames whose brightness encodes the frame number (frame i -> 4 i)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 40, (h, w, 3)).astype(np.int32)
    return [np.clip(base + 4 * i, 0, 255).astype(np.uint8) for i in range(n)]


def tone(seconds: float, rate: int = 16000, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    y = (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([y] * channels) if channels > 1 else y


@pytest.fixture
def make_video(tmp_path):
    """make_video(name, n_frames=50, fps=25, seconds=None, audio=True, ...) -> Path of a real encoded file."""
    from avlib.dataio.media import write_video

    def make(name: str = "clip.mp4", n_frames: int = 50, fps: float = 25.0, *, audio: bool = True,
             h: int = 64, w: int = 64, rate: int = 16000, channels: int = 1, **kwargs):
        frames = face_frames(n_frames, h, w) if n_frames else None
        sound = tone(n_frames / fps if n_frames else 2.0, rate, channels=channels) if audio else None
        return write_video(tmp_path / name, frames, fps, sound, rate, **kwargs)

    return make


def _git(*args, cwd):
    return subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout


def _copy_of_the_tracked_tree(dest: Path) -> Path:
    """What a fresh clone would hold once this working tree is committed (tracked files and the
    untracked ones git does not ignore), committed in a new repository at `dest`."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (ROOT / rel).is_file():                # listed in the index but deleted here: not in the commit
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    _git("init", "-q", cwd=dest)
    _git("add", "-A", cwd=dest)
    _git("commit", "-q", "-m", "tree under test", cwd=dest)
    return dest


@pytest.fixture(scope="session")
def _clone_smoke_lines(tmp_path_factory):
    """(clone root, run folder, [(seconds since start, line)]) of the smoke chain run as a command
    in a git copy of the tree, with that copy's avlib and notebooks."""
    clone = _copy_of_the_tracked_tree(tmp_path_factory.mktemp("clone"))
    env = {**os.environ, "PYTHONPATH": str(clone)}
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "avlib.pipeline", "params/smoke.yaml"], cwd=clone, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines = [(time.monotonic() - start, line.rstrip("\n")) for line in proc.stdout]
    assert proc.wait() == 0, "\n".join(line for _, line in lines)
    return clone, clone / "results" / "smoke", lines


@pytest.fixture(scope="session")
def clone_smoke_run(_clone_smoke_lines):
    """(clone root, run folder, captured output) of `python -m avlib.pipeline params/smoke.yaml`
    run in a git copy of the tracked tree, its kernels started in notebooks/."""
    clone, run, lines = _clone_smoke_lines
    return clone, run, "\n".join(line for _, line in lines)
