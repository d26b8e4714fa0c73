"""Files a collaborator can read: results, cache entries and checkpoints get the permissions the
user's umask gives a new file or folder, though each is written to a private temporary first."""
import os
import stat

import numpy as np
import pandas as pd
import pytest
import torch

from avlib.core.checkpoint import save_checkpoint
from avlib.core.paths import write_csv, write_json
from avlib.dataio.cache import write_clip


@pytest.fixture
def umask():
    before = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(before)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775),
                                                     (0o077, 0o600, 0o700)])
def test_written_files_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    write_json(tmp_path / "metrics.json", {"auc": 0.5})
    write_csv(tmp_path / "predictions.csv", pd.DataFrame({"p_fake": [0.1]}))
    save_checkpoint(tmp_path / "best.pt", {"model": {"w": torch.zeros(2)}})
    (tmp_path / "cache" / "clips").mkdir(parents=True)
    write_clip(tmp_path / "cache", "clip0", np.zeros((3, 2, 4, 4), np.uint8), np.zeros((2, 3), np.float32), {})
    for name in ("metrics.json", "predictions.csv", "best.pt", "cache/clips/clip0/meta.json",
                 "cache/clips/clip0/mfcc.npy"):
        assert _mode(tmp_path / name) == file_mode, name
    assert _mode(tmp_path / "cache" / "clips" / "clip0") == dir_mode
    assert not list(tmp_path.rglob("*.tmp")) and not list((tmp_path / "cache" / "clips").glob(".tmp-*"))
