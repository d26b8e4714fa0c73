"""What the notebooks show besides tables: sample clips (frames and MFCCs), leading silence per
category, the model's layers, the training curves (live in JupyterLab), the kept epoch and the
most confident mistakes.

Each figure function writes a PNG (and the CSV behind it) under the run's figures/ folder and
returns a `Shown`, which Jupyter displays as the image, or as a note when there is nothing to
draw (no clips, no mistakes): an empty case never stops a notebook.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np
import pandas as pd
import seaborn as sns  # noqa: E402
from IPython.display import Image, display

from avlib.dataio.cache import read_clip, read_index, read_manifest
from avlib.figures.plots import _save, plot_training_curves  # also selects the headless Agg backend

CATEGORY_KEY = "RV/FV: real/fake video, RA/FA: real/fake audio"


@dataclass(frozen=True)
class Shown:
    """A figure written to `path`, or the `note` saying why there is none."""
    path: Path | None = None
    note: str = ""

    def _repr_mimebundle_(self, include=None, exclude=None):
        if self.path is None:
            return {"text/markdown": f"*{self.note}*", "text/plain": self.note}
        return {"image/png": self.path.read_bytes(), "text/plain": str(self.path)}


def _category_order(index: pd.DataFrame) -> list[str]:
    """Categories with real clips first, then the fakes, each group by name."""
    first_label = index.groupby("category")["label"].min()
    return sorted(first_label.index, key=lambda c: (int(first_label[c]), str(c)))


def _clip_grid(cache_dir: Path, clips: pd.DataFrame, labels: list[str], frames: int, title: str):
    """A figure with one row per clip: `frames` frames spread over the window, then its MFCCs."""
    manifest = read_manifest(cache_dir)
    total = manifest["frames"]
    picks = np.unique(np.linspace(0, total - 1, min(frames, total)).round().astype(int))
    fig = plt.figure(figsize=(1.5 * len(picks) + 3.2 + 1.6, 1.45 * len(clips) + 0.7))
    grid = fig.add_gridspec(len(clips), len(picks) + 1, width_ratios=[1] * len(picks) + [2.2])
    for r, (clip_id, label) in enumerate(zip(clips["clip_id"], labels)):
        video, mfcc = read_clip(cache_dir, clip_id, manifest)
        for c, t in enumerate(picks):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(np.moveaxis(video[:, t], 0, -1), interpolation="nearest")
            ax.set(xticks=[], yticks=[])
            ax.grid(False)
            if r == 0:
                ax.set_title(f"{t / manifest['fps']:.2f} s", fontsize=8)
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        ax = fig.add_subplot(grid[r, len(picks)])
        coeffs = np.asarray(mfcc, dtype=np.float64).T          # (n_mfcc, steps); c0 alone would set the colour scale
        coeffs = (coeffs - coeffs.mean(1, keepdims=True)) / (coeffs.std(1, keepdims=True) + 1e-6)
        ax.imshow(coeffs, origin="lower", aspect="auto", cmap="magma", interpolation="nearest", vmin=-2.5, vmax=2.5)
        ax.set(xticks=[], yticks=[])
        ax.grid(False)
        if r == 0:
            ax.set_title(f"MFCC ({manifest['n_mfcc']} coeff. up × {manifest['mfcc_steps']} steps), "
                         f"each coeff. standardised", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def sample_clips(cache_dir: str | Path, folder: str | Path, *, per_category: int = 2, frames: int = 6,
                 seed: int = 0) -> Shown:
    """`per_category` random cached clips of each category (real first): frames across the
    window and the MFCCs, one row per clip. Writes sample_clips.png/.csv in `folder`."""
    cache_dir, index = Path(cache_dir), read_index(cache_dir)
    if index.empty:
        return Shown(note=f"no clips cached in {cache_dir}: nothing to show (see failures.csv there)")
    chosen = index.sample(frac=1, random_state=seed).groupby("category", sort=False).head(per_category)
    order = {c: i for i, c in enumerate(_category_order(index))}
    chosen = chosen.sort_values("category", key=lambda s: s.map(order), kind="stable")
    labels = [f"{r.category}\n{r.method}\n{'REAL' if r.label == 0 else 'FAKE'}" for r in chosen.itertuples()]
    fig = _clip_grid(cache_dir, chosen, labels, frames, f"Sample clips per category ({CATEGORY_KEY})")
    return Shown(_save(fig, Path(folder), "sample_clips",
                       chosen[["clip_id", "path", "split", "label", "category", "method", "identity"]]))


def lead_silence(cache_dir: str | Path, folder: str | Path) -> Shown:
    """Leading silence of every cached clip's audio window, per category and coloured by class
    (FakeAVCeleb's fake audio tends to start silent: a shortcut). Writes leading_silence.png/.csv."""
    cache_dir, index = Path(cache_dir), read_index(cache_dir)
    values = pd.to_numeric(index["lead_silence"], errors="coerce") if "lead_silence" in index else None
    if index.empty or values is None or values.isna().all():
        return Shown(note=f"no leading-silence values in {cache_dir}/index.csv (no clips, or a cache made by an "
                          f"older avlib): nothing to show")
    data = index.assign(lead_silence=values, cls=np.where(index["label"] == 0, "REAL", "FAKE")).dropna(
        subset=["lead_silence"])
    order = _category_order(data)
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(order) + 1.8))
    sns.pointplot(data, x="lead_silence", y="category", order=order, estimator="median", errorbar=("pi", 50),
                  linestyle="none", color="black", markers="|", markersize=14, ax=ax, label="median, IQR")
    sns.stripplot(data, x="lead_silence", y="category", order=order, hue="cls", hue_order=["REAL", "FAKE"],
                  palette={"REAL": "tab:blue", "FAKE": "tab:red"}, size=4, alpha=0.7, ax=ax)
    means = data.groupby("cls")["lead_silence"].mean()
    ax.set(xlabel="leading silence in the audio window (s)", ylabel="",
           title="Leading silence per category (mean " +
                 ", ".join(f"{k} {means[k]:.2f} s" for k in ("REAL", "FAKE") if k in means) + ")")
    ax.set_xlim(-0.02 * max(data["lead_silence"].max(), 0.05), 1.05 * max(data["lead_silence"].max(), 0.05))
    ax.legend(fontsize=8)
    table = data.groupby("category")["lead_silence"].agg(["size", "mean", "median", "max"]).reindex(order)
    return Shown(_save(fig, Path(folder), "leading_silence", table.rename(columns={"size": "n"}).reset_index()))


def model_layers(model, summary: dict, *, depth: int = 3) -> pd.DataFrame:
    """One row per module down to `depth` (dotted name, type, output shape for one clip,
    parameters, trainable parameters), from a torchinfo pass over one random clip of the
    input shapes in `summary` (what build_model_stage returns)."""
    import torch  # deferred: the 01_preprocess kernel shows clips without loading torch
    import torchinfo  # deferred: the 01_preprocess kernel shows clips without loading torch

    device = next(model.parameters()).device
    video = torch.rand(1, *summary["video_input"][1:], device=device)
    audio = torch.randn(1, *summary["audio_input"][1:], device=device)
    inputs = [video, audio]
    if "waveform_input" in summary:             # a sync model also reads the window's waveform
        inputs.append(0.1 * torch.randn(1, *summary["waveform_input"][1:], device=device))
    stats = torchinfo.summary(model, input_data=inputs, depth=depth, device=device, mode="eval", verbose=0)
    rows = []
    for layer in stats.summary_list:
        if not 0 < layer.depth <= depth:
            continue
        names, node = [], layer
        while node is not None and node.depth > 0:
            names.append(node.var_name)
            node = node.parent_info
        rows.append({"layer": ".".join(reversed(names)), "type": layer.class_name,
                     "output": " × ".join(["B", *map(str, layer.output_size[1:])]) if layer.output_size else "",
                     "parameters": int(layer.num_params), "trainable": int(layer.trainable_params)})
    return pd.DataFrame(rows)


def kept_epoch(run: str | Path) -> dict:
    """{'epoch', 'metric', 'value', 'why'} of the weights in run/checkpoints/best.pt (what
    04_evaluate scores); epoch None and the reason in 'why' when there is no best.pt."""
    import torch  # deferred: the 01_preprocess kernel shows clips without loading torch

    path = Path(run) / "checkpoints" / "best.pt"
    if not path.is_file():
        return {"epoch": None, "metric": None, "value": None,
                "why": f"no {path}: no epoch was kept (no epoch had a finite select_metric)"}
    # Memory-mapped: only the small "best" entry is read, not the weights (6 s -> 0.1 s on a busy CPU).
    best = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("best") or {}
    epoch, metric, value = best.get("epoch"), best.get("metric"), best.get("value")
    history = Path(run) / "history.csv"
    trained = len(pd.read_csv(history)) if history.is_file() else "?"
    extreme = "lowest" if metric == "val_loss" else "highest"
    shown = f"{value:.4f}" if value is not None else "not recorded"
    return {"epoch": epoch, "metric": metric, "value": value,
            "why": f"kept epoch {epoch} of {trained} in checkpoints/best.pt: its {metric} ({shown}) is the {extreme} "
                   f"of the epochs trained (select_metric; the first epoch wins a tie); 04_evaluate scores these weights"}


def training_curves(history: pd.DataFrame, folder: str | Path, kept: int | None = None) -> Shown:
    """The training curves with the kept epoch marked (training_curves.png/.csv in `folder`)."""
    if history is None or len(history) == 0:
        return Shown(note="no epochs in the history: nothing to draw")
    return Shown(plot_training_curves(history, Path(folder), kept_epoch=kept))


def jupyter_session() -> bool:
    """True when this kernel was started by a Jupyter server (JupyterLab, Notebook), which sets
    JPY_SESSION_NAME; papermill and plain Python do not."""
    return bool(os.environ.get("JPY_SESSION_NAME"))


class _LiveCurves:
    """print(), then redraw the curves in one display whenever history.csv has changed."""

    def __init__(self, history_csv: Path, folder: Path):
        self.history_csv, self.folder, self.handle, self.seen = history_csv, folder, None, None

    def __call__(self, *args, **kwargs) -> None:

        print(*args, **kwargs)
        if not self.history_csv.is_file() or self.history_csv.stat().st_mtime_ns == self.seen:
            return
        self.seen = self.history_csv.stat().st_mtime_ns
        image = Image(filename=str(plot_training_curves(pd.read_csv(self.history_csv), self.folder)))
        if self.handle is None:
            self.handle = display(image, display_id=True)
        else:
            self.handle.update(image)


def live_log(run: str | Path, *, live: bool = True):
    """The `log` for train_stage: in a JupyterLab kernel with `live`, one that also redraws the
    curves (run/figures/training_curves.png) after every epoch; otherwise print itself, so
    headless runs do no extra work."""
    if not (live and jupyter_session()):
        return print
    return _LiveCurves(Path(run) / "history.csv", Path(run) / "figures")


def confident_mistakes(predictions: pd.DataFrame, cache_dir: str | Path, folder: str | Path, *, n: int = 8,
                       frames: int = 4, threshold: float | None = None) -> Shown:
    """The `n` most confident mistakes of predictions.csv (real clips with the highest P(fake),
    fakes with the lowest) as a gallery of frames and MFCCs with P(fake), category and method.
    `threshold` (the one `pred` was made with) goes in the title. Writes
    confident_mistakes.png/.csv in `folder`."""
    wrong = predictions[predictions["pred"] != predictions["label"]]
    if wrong.empty:
        return Shown(note=f"no mistakes among the {len(predictions)} clips scored: no gallery to show")
    confidence = np.where(wrong["label"] == 0, wrong["p_fake"], 1 - wrong["p_fake"])
    wrong = wrong.assign(confidence=confidence).sort_values("confidence", ascending=False, kind="stable").head(n)
    labels = [f"P(fake) {r.p_fake:.3f}\ntrue: {'REAL' if r.label == 0 else 'FAKE'} {r.category}\n{r.method}"
              for r in wrong.itertuples()]
    title = (f"The {len(wrong)} most confident of {int((predictions['pred'] != predictions['label']).sum())} mistakes "
             f"among {len(predictions)} clips" + (f" (threshold {threshold:.3f})" if threshold is not None else ""))
    fig = _clip_grid(Path(cache_dir), wrong, labels, frames, title)
    return Shown(_save(fig, Path(folder), "confident_mistakes",
                       wrong[["clip_id", "path", "label", "category", "method", "identity", "p_fake", "confidence"]]))


def verdict_table(metrics: dict) -> pd.DataFrame:
    """The classifier alone, the sync evidence alone and the verdict, on every set 04 scored:
    AUC, balanced accuracy, and the rates of real and of fake clips called FAKE (rounded to 3)."""
    sets = {f"{metrics.get('split', 'test')} (in-domain)": metrics.get("verdict") or {}}
    sets.update({name: ext.get("verdict") or {} for name, ext in (metrics.get("external") or {}).items()})
    rows = [{"set": name, "decided by": part, **{k: values.get(k) for k in
                                                  ("auc", "balanced_accuracy", "real_called_fake", "fake_called_fake")}}
            for name, parts in sets.items() for part, values in parts.items()]
    return pd.DataFrame(rows).set_index(["set", "decided by"]).astype(float).round(3) if rows else pd.DataFrame()
