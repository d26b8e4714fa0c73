"""Stage 4 in full: score a run's clips, pick the threshold on validation, add the honesty
checks (shortcut baseline, generalization to real-only corpora), and keep a comparison table
across runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from avlib.paths import portable, write_csv

COMPARISON_COLUMNS = ["run_name", "dataset", "modality", "split", "epoch", "n_real", "n_fake", "accuracy",
                      "balanced_accuracy", "auc", "auc_ci_low", "auc_ci_high", "ap", "eer", "threshold",
                      "shortcut_auc"]
GENERALIZATION_SLICES = ("gender", "age", "skin_type", "dataset")


def load_detector(checkpoint: str | Path, device="cpu"):
    """(model in eval mode on `device`, checkpoint state) from a best/last checkpoint file."""
    from avlib.checkpoint import load_checkpoint
    from avlib.model import build_model
    from avlib.params import pick_device

    state = load_checkpoint(checkpoint)
    cfg = state.get("model_config")
    if cfg is None:
        raise ValueError(f"{checkpoint}: no model_config; pass a checkpoint written by avlib (best.pt or last.pt)")
    model = build_model(n_mfcc=cfg["n_mfcc"], modality=cfg["modality"])
    model.load_state_dict(state["model"])
    dev = pick_device(device) if isinstance(device, str) else device
    return model.to(dev).eval(), state


def score_split(model, cache_dir: Path, split: str, *, batch_size: int, device, workers: int, amp: bool,
                progress: bool):
    """(dataset, predict() output or None when the split is empty). `model` is best an
    `inference_model` copy made with the same `amp`."""
    from avlib.data import CachedClips, make_loader
    from avlib.train import predict

    ds = CachedClips(cache_dir, split)
    if len(ds) == 0:
        return ds, None
    loader = make_loader(ds, batch_size=batch_size, train=False, workers=workers, device=device)
    return ds, predict(model, loader, device, amp=amp, progress=progress, desc=f"predict {split}")


def evaluate_run(checkpoint: Path, cache_dir: Path, run: Path, *, split: str = "test", batch_size: int = 8,
                 device: str = "auto", workers: int = 2, amp: bool = False, compile: bool = False,
                 progress: bool = True) -> dict:
    """predictions.csv for `split` and the metrics dict (threshold from val)."""
    from avlib.audit import shortcut_baseline
    from avlib.cache import read_index
    from avlib.metrics import choose_threshold, evaluation_report
    from avlib.model import inference_model

    model, state = load_detector(checkpoint, device)
    dev = next(model.parameters()).device
    model = inference_model(model, amp=amp, compile=compile)
    _, val_out = score_split(model, cache_dir, "val", batch_size=batch_size, device=dev, workers=workers, amp=amp,
                             progress=progress)
    threshold = choose_threshold(val_out["labels"], val_out["probs"]) if val_out is not None else 0.5
    ds, out = score_split(model, cache_dir, split, batch_size=batch_size, device=dev, workers=workers, amp=amp,
                          progress=progress)
    if out is None:
        raise ValueError(f"the cache at {cache_dir} has no clips in split {split!r}")
    pred = ds.index[["clip_id", "path", "split", "label", "category", "method", "identity"]].copy()
    pred["p_fake"] = out["probs"]
    pred["pred"] = (pred["p_fake"] >= threshold).astype(int)
    write_csv(run / "predictions.csv", pred)
    index = read_index(cache_dir)
    metrics = {"split": split, "checkpoint": Path(checkpoint).name, "epoch": state.get("epoch"),
               "dataset": str(index["dataset"].iloc[0]) if len(index) else "",
               "modality": state["model_config"]["modality"],
               "threshold_source": "val (max balanced accuracy)" if val_out is not None else "default 0.5",
               **evaluation_report(pred, threshold)}
    metrics["shortcut_baseline"] = shortcut_baseline(index, split if split in ("val", "test") else "test")
    if metrics["shortcut_baseline"].get("warning"):
        print("WARNING:", metrics["shortcut_baseline"]["warning"])
    return metrics


def generalization_report(checkpoint: Path, cache_dir: Path, run: Path, *, threshold: float, batch_size: int = 8,
                          device: str = "auto", workers: int = 2, amp: bool = False, compile: bool = False,
                          progress: bool = True) -> dict:
    """False-positive rate at `threshold` on every clip of a real-only cache (CREMA-D, Casual
    Conversations, any folder of real videos), overall and per gender, age and skin type when
    annotated. Writes generalization_predictions.csv. Raises ValueError when the cache holds
    fakes or was made with other shapes than the model was trained on."""
    from avlib.cache import read_manifest
    from avlib.model import inference_model

    model, state = load_detector(checkpoint, device)
    trained_on = state.get("preprocess") or {}
    manifest = read_manifest(cache_dir)
    differ = [k for k in ("frames", "size", "fps", "n_mfcc", "mfcc_steps") if trained_on and trained_on.get(k) != manifest.get(k)]
    if differ:
        raise ValueError(f"{cache_dir} was made with other {', '.join(differ)} than the model was trained on "
                         f"({', '.join(f'{k}={trained_on[k]}' for k in differ)}); rerun 01_preprocess with those")
    dev = next(model.parameters()).device
    model = inference_model(model, amp=amp, compile=compile)
    ds, out = score_split(model, cache_dir, "all", batch_size=batch_size, device=dev, workers=workers, amp=amp,
                          progress=progress)
    if out is None:
        raise ValueError(f"{cache_dir} holds no clips")
    if (ds.labels != 0).any():
        raise ValueError(f"{cache_dir} holds fake clips; generalization is measured on real-only corpora")
    pred = ds.index.copy()
    pred["p_fake"] = out["probs"]
    pred["pred"] = (pred["p_fake"] >= threshold).astype(int)
    write_csv(run / "generalization_predictions.csv", pred)
    report = {"cache_dir": portable(cache_dir), "n": int(len(pred)), "threshold": threshold,
              "false_positive_rate": float(pred["pred"].mean()), "mean_p_fake": float(pred["p_fake"].mean())}
    for column in GENERALIZATION_SLICES:
        if column in pred and (pred[column].astype(str) != "").any():
            groups = pred[pred[column].astype(str) != ""].groupby(pred[column].astype(str))
            report[f"by_{column}"] = {k: {"n": int(len(g)), "false_positive_rate": float(g["pred"].mean())}
                                      for k, g in groups}
    return report


def update_comparison(path: Path, metrics: dict) -> pd.DataFrame:
    """Insert or replace this run's row in results/comparison.csv (one row per run)."""
    row = {"run_name": metrics.get("run_name"), "dataset": metrics.get("dataset"), "modality": metrics.get("modality"),
           "split": metrics.get("split"), "epoch": metrics.get("epoch"), "n_real": metrics["n"]["REAL"],
           "n_fake": metrics["n"]["FAKE"], "accuracy": metrics["accuracy"],
           "balanced_accuracy": metrics["balanced_accuracy"], "auc": metrics["auc"],
           "auc_ci_low": metrics["ci95"]["auc"][0], "auc_ci_high": metrics["ci95"]["auc"][1], "ap": metrics["ap"],
           "eer": metrics["eer"], "threshold": metrics["threshold"],
           "shortcut_auc": metrics.get("shortcut_baseline", {}).get("auc", np.nan)}
    for cat, vals in sorted(metrics.get("per_category", {}).items()):
        row[f"auc_{cat}"] = vals["auc"]
    table = pd.read_csv(path) if Path(path).is_file() else pd.DataFrame(columns=COMPARISON_COLUMNS)
    table = table[table["run_name"] != row["run_name"]]
    table = pd.concat([table, pd.DataFrame([row])], ignore_index=True).sort_values("run_name")
    write_csv(path, table)
    return table
