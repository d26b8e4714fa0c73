"""The notebooks' displays (avlib.figures.showcase): figures on a tiny dummy cache, and the empty cases
(no clips, a missing category, no mistakes) that must give a note instead of an error."""
import struct

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from avlib.core.checkpoint import save_checkpoint
from avlib.core.paths import write_csv
from avlib.dataio.cache import read_index
from avlib.dataio.preprocess import settings, write_dummy_cache
from avlib.figures import plots, showcase


def _png_size(path):
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), path
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("showcase") / "cache"
    write_dummy_cache(folder, settings(frames=4, size=16, fps=25, n_mfcc=8, mfcc_steps=6), n=16, seed=0)
    return folder


def _copy_cache_with(cache, tmp_path, index):
    """A cache folder whose index.csv is `index` (clip folders and manifest shared by symlink)."""
    other = tmp_path / "cache"
    other.mkdir()
    for name in ("clips", "manifest.json"):
        (other / name).symlink_to(cache / name)
    write_csv(other / "index.csv", index)
    return other


def test_sample_clips_shows_each_category_real_first(cache, tmp_path):
    shown = showcase.sample_clips(cache, tmp_path, per_category=2)
    width, height = _png_size(shown.path)
    chosen = pd.read_csv(tmp_path / "sample_clips.csv")
    assert list(dict.fromkeys(chosen["category"])) == ["RVRA", "FVFA", "FVRA", "RVFA"]
    assert chosen.groupby("category").size().max() == 2
    assert height > width / 2 and "image/png" in shown._repr_mimebundle_()


def test_a_category_without_clips_is_left_out(cache, tmp_path):
    index = read_index(cache)
    other = _copy_cache_with(cache, tmp_path, index[index["category"] != "FVRA"])
    shown = showcase.sample_clips(other, tmp_path / "figures", per_category=1, frames=2)
    assert set(pd.read_csv(tmp_path / "figures" / "sample_clips.csv")["category"]) == {"RVRA", "FVFA", "RVFA"}
    assert shown.path.is_file()


def test_an_empty_cache_gives_notes_not_errors(cache, tmp_path):
    other = _copy_cache_with(cache, tmp_path, read_index(cache).iloc[:0])
    for shown in (showcase.sample_clips(other, tmp_path / "figures"), showcase.lead_silence(other, tmp_path / "figures")):
        assert shown.path is None and "nothing to show" in shown.note
        assert shown._repr_mimebundle_()["text/markdown"].strip("*") == shown.note
    assert not (tmp_path / "figures").exists()


def test_lead_silence_per_category(cache, tmp_path):
    index = read_index(cache)
    index["lead_silence"] = np.where(index["category"].isin(["RVFA", "FVFA"]), 0.4, 0.0)
    shown = showcase.lead_silence(_copy_cache_with(cache, tmp_path, index), tmp_path / "figures")
    table = pd.read_csv(tmp_path / "figures" / "leading_silence.csv").set_index("category")
    assert table.loc["FVFA", "mean"] == pytest.approx(0.4) and table.loc["RVRA", "mean"] == 0.0
    assert table["n"].sum() == len(index) and _png_size(shown.path)[0] > 100


def test_confident_mistakes_most_confident_first(cache, tmp_path):
    pred = read_index(cache).iloc[:6].copy()
    pred["label"] = [0, 0, 1, 1, 0, 1]
    pred["p_fake"] = [0.7, 0.95, 0.02, 0.4, 0.1, 0.9]      # mistakes: 0.95 (real), 0.02 (fake), 0.7 (real), 0.4 (fake)
    pred["pred"] = (pred["p_fake"] >= 0.5).astype(int)
    shown = showcase.confident_mistakes(pred, cache, tmp_path, n=3, threshold=0.5)
    table = pd.read_csv(tmp_path / "confident_mistakes.csv")
    assert list(table["p_fake"]) == [0.02, 0.95, 0.7]
    assert shown.path == tmp_path / "confident_mistakes.png"


def test_no_mistakes_gives_a_note(cache, tmp_path):
    pred = read_index(cache).iloc[:4].copy()
    pred["p_fake"] = pred["label"].astype(float)
    pred["pred"] = pred["label"]
    shown = showcase.confident_mistakes(pred, cache, tmp_path)
    assert shown.path is None and "no mistakes among the 4 clips" in shown.note
    assert not (tmp_path / "confident_mistakes.png").exists()


class _TinyDetector(nn.Module):
    def __init__(self):
        super().__init__()
        self.video = nn.Sequential(nn.Conv3d(3, 4, 3, padding=1), nn.AdaptiveAvgPool3d(1), nn.Flatten())
        self.audio = nn.LSTM(8, 5, batch_first=True)
        self.head = nn.Linear(9, 2)

    def forward(self, video, audio):
        return self.head(torch.cat([self.video(video), self.audio(audio)[0][:, -1]], 1))


def test_model_layers_names_shapes_and_parameters():
    model = _TinyDetector().train()
    table = showcase.model_layers(model, {"video_input": ["B", 3, 2, 8, 8], "audio_input": ["B", 6, 8]}, depth=2)
    rows = table.set_index("layer")
    assert rows.loc["video.0", "type"] == "Conv3d" and rows.loc["video.0", "output"] == "B × 4 × 2 × 8 × 8"
    assert rows.loc["head", "output"] == "B × 2"
    top = table[~table["layer"].str.contains(".", regex=False)]
    assert top["parameters"].sum() == sum(p.numel() for p in model.parameters())
    assert model.training                                   # torchinfo's eval pass leaves the mode as it was


def test_kept_epoch_says_which_and_why(tmp_path):
    assert showcase.kept_epoch(tmp_path)["epoch"] is None
    save_checkpoint(tmp_path / "checkpoints" / "best.pt",
                    {"model": {"w": torch.zeros(2)}, "epoch": 3, "best": {"metric": "val_loss", "value": 0.25, "epoch": 3}})
    write_csv(tmp_path / "history.csv", pd.DataFrame({"epoch": [1, 2, 3, 4]}))
    kept = showcase.kept_epoch(tmp_path)
    assert kept["epoch"] == 3 and kept["metric"] == "val_loss"
    assert "epoch 3 of 4" in kept["why"] and "lowest" in kept["why"] and "0.2500" in kept["why"]


def test_training_curves_use_integer_epochs_and_mark_the_kept_one(tmp_path, monkeypatch):
    figures = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, *a: figures.append(fig) or save(fig, *a))
    history = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.9, 0.7, 0.6], "val_loss": [0.8, 0.75, 0.7]})
    showcase.training_curves(history, tmp_path, kept=2)
    ax = figures[0].axes[0]
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert any(list(line.get_xdata()) == [2, 2] for line in ax.get_lines())
    assert showcase.training_curves(history.iloc[:0], tmp_path).path is None


def test_live_log_redraws_only_in_jupyterlab_and_only_on_change(tmp_path, monkeypatch):
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    assert showcase.live_log(tmp_path) is print                  # headless: no extra work at all
    monkeypatch.setenv("JPY_SESSION_NAME", "notebooks/03_train.ipynb")
    assert showcase.live_log(tmp_path, live=False) is print
    log = showcase.live_log(tmp_path)
    log("before any epoch")
    figure = tmp_path / "figures" / "training_curves.png"
    assert not figure.exists()
    write_csv(tmp_path / "history.csv", pd.DataFrame({"epoch": [1], "train_loss": [0.7], "val_loss": [0.69]}))
    log("epoch 1/2")
    drawn = figure.stat().st_mtime_ns
    log("a message without a new epoch")
    assert figure.stat().st_mtime_ns == drawn
