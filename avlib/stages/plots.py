"""05_plots: every figure of the run, PNG with the CSV of its numbers."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from avlib.core.errors import MissingInputError
from avlib.core.paths import read_json, resolve
from avlib.evaluation.localise import load_scored
from avlib.figures import plots
from avlib.figures.localise import plot_ap_iou, plot_localisation_timelines
from avlib.stages.common import need, stage


@stage("05_plots")
def plots_stage(p) -> list[Path]:
    """Every figure of the run into results/<run_name>/figures/ (PNG + CSV); returns the PNG paths."""
    run = resolve(p.results_dir) / p.run_name
    if localisation_runs(run):
        return localisation_plots(run)
    pred = pd.read_csv(need(run / "predictions.csv", "predictions.csv", "04_evaluate"), keep_default_na=False)
    metrics = read_json(need(run / "metrics.json", "metrics.json", "04_evaluate"))
    history = pd.read_csv(need(run / "history.csv", "history.csv", "03_train"))
    figures = run / "figures"
    out = [plots.plot_confusion_matrix(pred, figures),
           plots.plot_training_curves(history, figures, kept_epoch=metrics.get("epoch"))]
    if pred["label"].nunique() == 2:
        out += [plots.plot_roc(pred, figures, metrics["threshold"], metrics["auc"]),
                plots.plot_precision_recall(pred, figures, metrics["ap"]),
                plots.plot_per_category(metrics["per_category"], figures)]
    out += [plots.plot_score_distributions(pred, figures, metrics["threshold"]), plots.plot_reliability(pred, figures)]
    if metrics.get("external"):
        sets = {f"{metrics['split']} (in-domain)": pred}
        for name, ext in metrics["external"].items():
            sets[name] = pd.read_csv(need(run / ext["predictions"], ext["predictions"], "04_evaluate"),
                                     keep_default_na=False)
        out.append(plots.plot_roc_overlay(sets, figures))
    if "sync_score" in pred:                     # a sync model: its real-only score per category, every set
        sync_sets = {f"{metrics['split']} (in-domain)": pred}
        for name, ext in metrics.get("external", {}).items():
            table = pd.read_csv(run / ext["predictions"], keep_default_na=False)
            if "sync_score" in table:
                sync_sets[name] = table
        out.append(plots.plot_sync_scores(sync_sets, figures))
    return out


def localisation_runs(run: Path) -> list[Path]:
    """The folders of a localisation run (`python -m avlib.localise`) under `run`: itself, or its
    seed_<n>/ folders for a run over seeds; [] for a run of notebooks 01-04."""
    metrics = run / "metrics.json"
    if not metrics.is_file():
        return []
    saved = read_json(metrics)
    if "localisation" in saved:
        return [run]
    if "summary" not in saved or "seeds" not in saved:          # a run of notebooks 01-04
        return []
    # the seeds of this run (the folder may hold others from an earlier run)
    return [run / f"seed_{seed}" for seed in saved["seeds"]]


def localisation_plots(run: Path) -> list[Path]:
    """A localisation run's figures, drawn again from its files: the AP-IoU curve of each test set
    and the per-video timelines (true segments, per-frame P(fake), top proposals), per seed."""
    out = []
    for folder in localisation_runs(run):
        metrics = read_json(folder / "metrics.json")
        sets = next(iter(metrics["localisation"].values()))          # the main variant
        figures = folder / "figures"
        out.append(plot_ap_iou({name: r["ap_by_iou"] for name, r in sets.items()}, figures))
        for name in sets:
            saved = folder / f"frames_{name}.npz"
            if not saved.is_file():
                raise MissingInputError(f"{saved} not found: the per-frame scores of set {name!r} are written by "
                                        f"`python -m avlib.localise` (runs before this version did not keep them)")
            index, scored = load_scored(saved)
            out.append(plot_localisation_timelines(index, scored, figures, fps=metrics["params"]["fps"],
                                                   name=f"localisation_timelines_{name}"))
    return out
