"""Stage 4 in full: score a run's clips, pick the threshold on validation, add the honesty
checks (shortcut baseline, generalization to real-only corpora), score labelled corpora from
elsewhere (external test sets) at that threshold, and keep a comparison table across runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from avlib.core.checkpoint import load_checkpoint
from avlib.core.params import named_paths
from avlib.core.paths import portable, resolve, write_csv, write_json
from avlib.dataio.cache import read_index
from avlib.evaluation.audit import shortcut_baseline
from avlib.models.sync import sync_score_report
from avlib.scoring.calibration import apply_verdict, domain_verdict, fit_verdict, verdict_report
from avlib.scoring.metrics import bootstrap_ci, calibration, evaluation_report
from avlib.scoring.scorer import (
    Scorer,
    check_cache_settings,
    score_cache,
    score_split,
    scoring_model,
    with_sync_columns,
)

COMPARISON_COLUMNS = ["run_name", "eval_set", "dataset", "modality", "split", "epoch", "n_real", "n_fake", "accuracy",
                      "balanced_accuracy", "auc", "auc_ci_low", "auc_ci_high", "ap", "eer", "threshold",
                      "shortcut_auc"]
GENERALIZATION_SLICES = ("gender", "age", "skin_type", "dataset")
SPLIT_NAMES = ("train", "val", "test", "all")        # the in-domain rows of comparison.csv


PREDICTION_COLUMNS = ["clip_id", "path", "split", "label", "category", "method", "identity"]


def split_predictions(model, cache_dir: Path, split: str, *, batch_size: int, device, workers: int, amp: bool,
                      progress: bool) -> pd.DataFrame | None:
    """The clips of one split with p_fake as the model gives it (and a sync model's columns);
    None when the split is empty."""
    ds, out = score_split(model, cache_dir, split, batch_size=batch_size, device=device, workers=workers, amp=amp,
                          progress=progress)
    if out is None:
        return None
    return with_sync_columns(ds.index[PREDICTION_COLUMNS].assign(p_fake=out["probs"]), out)


def evaluate_run(checkpoint: Path, cache_dir: Path, run: Path, *, split: str = "test", batch_size: int = 8,
                 device: str = "auto", workers: int = 2, amp: bool = False, compile: bool = False,
                 progress: bool = True, calibration: str = "temperature", threshold_rule: str = "balanced",
                 target_fpr: float = 0.05) -> tuple[dict, dict]:
    """(metrics, verdict) for `split`: the verdict (calibrator, threshold, sync threshold;
    avlib.scoring.calibration.fit_verdict) is fitted on the val split and written to
    verdict.json; predictions.csv holds `split` with calibrated and raw P(fake), the verdict
    score and the verdict."""
    model, state, dev, _ = scoring_model(checkpoint, device, amp=amp, compile=compile)
    scoring = dict(batch_size=batch_size, device=dev, workers=workers, amp=amp, progress=progress)
    val = split_predictions(model, cache_dir, "val", **scoring)
    if val is not None and (val["label"].nunique() == 2 or threshold_rule == "fpr" and (val["label"] == 0).any()):
        verdict = fit_verdict(val, calibration=calibration, rule=threshold_rule, target_fpr=target_fpr)
        rule = ("max balanced accuracy" if threshold_rule == "balanced"
                else f"{target_fpr:.1%} of real clips called fake")
        source = f"val ({rule}, {calibration} calibration)"
    else:
        verdict = {"calibration": {"method": "none"}, "threshold_rule": "default", "target_fpr": target_fpr,
                   "threshold": 0.5, "threshold_ci95": [float("nan")] * 2, "source": "default", "sync": None}
        source = "default 0.5 (no validation clips of both classes)"
    verdict.update(checkpoint=Path(checkpoint).name, epoch=state.get("epoch"))      # predict checks it scores these
    write_json(run / "verdict.json", verdict)
    pred = split_predictions(model, cache_dir, split, **scoring)
    if pred is None:
        raise ValueError(f"the cache at {cache_dir} has no clips in split {split!r}")
    pred = apply_verdict(verdict, pred)
    write_csv(run / "predictions.csv", pred)
    index = read_index(cache_dir)
    metrics = {"split": split, "checkpoint": Path(checkpoint).name, "epoch": state.get("epoch"),
               "dataset": str(index["dataset"].iloc[0]) if len(index) else "",
               "modality": state["model_config"]["modality"], "threshold_source": source,
               **verdict_metrics(pred, verdict)}
    add_sync_report(metrics, pred, state)
    metrics["shortcut_baseline"] = shortcut_baseline(index, split if split in ("val", "test") else "test")
    if metrics["shortcut_baseline"].get("warning"):
        print("WARNING:", metrics["shortcut_baseline"]["warning"])
    return metrics, verdict


def verdict_metrics(pred: pd.DataFrame, verdict: dict, *, n_boot: int = 1000) -> dict:
    """evaluation_report of apply_verdict's predictions: AUC and AP of the calibrated P(fake),
    accuracy and the rest of the verdict; the calibration before and after; the threshold, its
    interval and the sync threshold; the classifier, the sync evidence and the verdict side by
    side (`verdict`)."""
    raw = "p_fake_raw" in pred
    # AUC, AP, EER and their intervals rank by the model's own score (a saturating calibrator ties
    # scores it never reorders); accuracy and the rest follow the verdict (the `pred` column)
    report = evaluation_report(pred.assign(p_fake=pred["p_fake_raw"]) if raw else pred, verdict["threshold"],
                               n_boot=n_boot)
    after = calibration(pred["label"], pred["p_fake"])
    before = report["calibration"] if raw else {}
    report["calibration"] = {"method": verdict["calibration"]["method"], **after,
                             **{f"{k}_before": v for k, v in before.items()}}
    report["threshold_ci95"] = verdict.get("threshold_ci95")
    report["threshold_rule"] = verdict.get("threshold_rule")
    if verdict.get("sync"):
        report["sync_threshold"] = verdict["sync"]["threshold"]
    report["verdict"] = verdict_report(pred, verdict)
    return report


def add_sync_report(metrics: dict, pred: pd.DataFrame, state: dict) -> None:
    """metrics['sync_score'] (avlib.models.sync.sync_score_report) when `pred` has a sync model's columns."""
    if "sync_score" in pred:
        metrics["sync_score"] = sync_score_report(pred, state["model_config"].get("fps"))


def false_positive_report(pred: pd.DataFrame, threshold: float) -> dict:
    """False-positive rate at `threshold` of real-only predictions (columns p_fake, pred), overall
    and per gender, age, skin type and dataset where annotated."""
    report = {"n": int(len(pred)), "threshold": threshold, "false_positive_rate": float(pred["pred"].mean()),
              "mean_p_fake": float(pred["p_fake"].mean())}
    for column in GENERALIZATION_SLICES:
        if column in pred and (pred[column].astype(str) != "").any():
            groups = pred[pred[column].astype(str) != ""].groupby(pred[column].astype(str))
            report[f"by_{column}"] = {k: {"n": int(len(g)), "false_positive_rate": float(g["pred"].mean())}
                                      for k, g in groups}
    return report


def generalization_report(checkpoint: Path, cache_dir: Path, run: Path, *, verdict: dict, batch_size: int = 8,
                          device: str = "auto", workers: int = 2, amp: bool = False, compile: bool = False,
                          progress: bool = True) -> dict:
    """False-positive rate of the run's verdict on every clip of a real-only cache (CREMA-D, Casual
    Conversations, any folder of real videos), overall and per gender, age and skin type when
    annotated. Writes generalization_predictions.csv. Raises ValueError when the cache holds
    fakes or was made with other shapes than the model was trained on."""
    pred = score_cache(scoring_model(checkpoint, device, amp=amp, compile=compile), cache_dir, batch_size=batch_size,
                       workers=workers, amp=amp, progress=progress)
    if (pred["label"] != 0).any():
        raise ValueError(f"{cache_dir} holds fake clips; generalization is measured on real-only corpora "
                         f"(score a labelled corpus with `external_cache_dirs`)")
    pred = apply_verdict(verdict, pred)
    write_csv(run / "generalization_predictions.csv", pred)
    return {"cache_dir": portable(cache_dir), **false_positive_report(pred, verdict["threshold"])}


def external_sets(spec: str) -> dict[str, Path]:
    """{name: cache folder} from the `external_cache_dirs` parameter: comma-separated cache
    folders, each `path` (named by its folder) or `name=path`. Raises ParameterError naming the
    parameter for a name that is not a plain file-name part (letters, digits, _ . -), is a
    split name, or is repeated."""
    return {name: resolve(path) for name, path in
            named_paths(spec, parameter="external_cache_dirs", reserved=SPLIT_NAMES, what="external set").items()}


def check_external_caches(checkpoint: Path, sets: dict[str, Path]) -> None:
    """Raise (CacheError, ValueError naming the setting) before any scoring when an external
    cache is missing or was made with other settings than the checkpoint's training cache."""
    if sets:
        trained_on = load_checkpoint(checkpoint).get("preprocess") or {}
        for cache_dir in sets.values():
            check_cache_settings(trained_on, cache_dir)


EXTERNAL_BOOTSTRAP = 200        # resamples for an external set's intervals: their second decimal, at a fifth of the time


def evaluate_externals(checkpoint: Path, sets: dict[str, Path], run: Path, *, verdict: dict, threshold_source: str,
                       own_cache_dir: Path | None = None, domain: dict | None = None, batch_size: int = 8,
                       device: str = "auto", workers: int = 2, amp: bool = False, compile: bool = False,
                       progress: bool = True) -> dict:
    """metrics.json's `external`: {name: evaluate_external's report} for each cache of `sets`
    (what external_sets returns), the checkpoint's model loaded once for all of them."""
    scorer = scoring_model(checkpoint, device, amp=amp, compile=compile)
    return {name: evaluate_external(scorer, cache_dir, run, name=name, verdict=verdict,
                                    threshold_source=threshold_source, own_cache_dir=own_cache_dir, domain=domain,
                                    batch_size=batch_size, workers=workers, amp=amp, progress=progress)
            for name, cache_dir in sets.items()}


def evaluate_external(scorer: Scorer, cache_dir: Path, run: Path, *, name: str, verdict: dict,
                      threshold_source: str, own_cache_dir: Path | None = None, domain: dict | None = None,
                      batch_size: int = 8, workers: int = 2, amp: bool = False, progress: bool = True) -> dict:
    """metrics.json's `external.<name>`: every clip of a labelled cache from elsewhere scored by
    `scorer` (scoring_model's) with the run's verdict (calibrator and thresholds from its own
    validation split, never from this set). The keys of the test split's metrics
    (identity-bootstrap CIs; clips resampled when no identities are given), the shortcut
    baseline fitted on `own_cache_dir`'s training split; for a real-only cache (no AUC), the
    false-positive report instead. With `domain` (a verdict set on real clips of a target
    domain), also the verdict at its thresholds (`at_domain_threshold`). Writes
    external_<name>_predictions.csv. Raises ValueError when the cache's settings differ or it
    holds no clips."""
    raw = score_cache(scorer, cache_dir, batch_size=batch_size, workers=workers, amp=amp, progress=progress)
    pred = apply_verdict(verdict, raw)
    file = f"external_{name}_predictions.csv"
    write_csv(run / file, pred)
    report = {"eval_set": name, "cache_dir": portable(cache_dir), "predictions": file, "split": "all",
              "checkpoint": scorer.checkpoint, "epoch": scorer.state.get("epoch"),
              "dataset": ",".join(sorted(pred["dataset"].astype(str).unique())),
              "modality": scorer.state["model_config"]["modality"],
              "threshold_source": f"the run's {threshold_source}"}
    if domain is not None:
        report["at_domain_threshold"] = verdict_report(apply_verdict(domain, raw), domain)["verdict"]
    if (pred["label"] == 0).all():
        return {**report, "kind": "real-only",
                "note": "no fake clips, so no AUC: false-positive rate of the run's verdict",
                **false_positive_report(pred, verdict["threshold"])}
    report.update(kind="labelled", **external_metrics(pred, verdict))
    add_sync_report(report, pred, scorer.state)
    if own_cache_dir is not None:
        own = read_index(own_cache_dir)
        report["shortcut_baseline"] = shortcut_baseline(
            pd.concat([own[own["split"] == "train"], pred.assign(split="external")], ignore_index=True), "external")
    return report


def external_metrics(pred: pd.DataFrame, verdict: dict, *, n_boot: int = EXTERNAL_BOOTSTRAP) -> dict:
    """verdict_metrics for an external set's predictions; its bootstrap intervals resample
    identities, or clips when the corpus gives no identities (one group would make the interval
    a point)."""
    report = verdict_metrics(pred, verdict, n_boot=n_boot)
    if (pred["identity"].astype(str) == "").all():
        report["ci95"] = bootstrap_ci(pred, verdict["threshold"], n_boot=n_boot, group="clip_id")
    return report


def domain_calibration(checkpoint: Path, cache_dir: Path, run: Path, *, verdict: dict, target_fpr: float,
                       batch_size: int = 8, device: str = "auto", workers: int = 2, amp: bool = False,
                       compile: bool = False, progress: bool = True) -> tuple[dict, dict]:
    """(verdict for the target domain, metrics.json's `domain_calibration`) from a real-only cache
    of that domain (avlib.scoring.calibration.domain_verdict): thresholds set at `target_fpr` on
    half of its clips, the rate of real clips called FAKE on the other half. Writes
    verdict_domain.json. Raises ValueError when the cache holds fakes or was made with other
    settings than the model's training cache."""
    scorer = scoring_model(checkpoint, device, amp=amp, compile=compile)
    real = apply_verdict(verdict, score_cache(scorer, cache_dir, batch_size=batch_size, workers=workers, amp=amp,
                                              progress=progress))
    try:
        domain, report = domain_verdict(verdict, real, target_fpr=target_fpr)
    except ValueError as err:
        raise ValueError(f"calibration_cache_dir {portable(cache_dir)}: {err}") from None
    write_json(run / "verdict_domain.json", domain)
    return domain, {"cache_dir": portable(cache_dir), **report}


def comparison_row(metrics: dict) -> dict:
    """One row of results/comparison.csv from the metrics of one evaluated set (in-domain split,
    external labelled set, or external real-only set)."""
    n = metrics.get("n")
    if not isinstance(n, dict):                                 # a real-only set's false-positive report
        n = {"REAL": n, "FAKE": 0}
    row = {"run_name": metrics.get("run_name"), "eval_set": metrics.get("eval_set", metrics.get("split")),
           "dataset": metrics.get("dataset"), "modality": metrics.get("modality"), "split": metrics.get("split"),
           "epoch": metrics.get("epoch"), "n_real": n["REAL"], "n_fake": n["FAKE"],
           "accuracy": metrics.get("accuracy", 1 - metrics.get("false_positive_rate", np.nan)),
           "balanced_accuracy": metrics.get("balanced_accuracy", np.nan), "auc": metrics.get("auc", np.nan),
           "auc_ci_low": metrics.get("ci95", {}).get("auc", [np.nan] * 2)[0],
           "auc_ci_high": metrics.get("ci95", {}).get("auc", [np.nan] * 2)[1], "ap": metrics.get("ap", np.nan),
           "eer": metrics.get("eer", np.nan), "threshold": metrics["threshold"],
           "shortcut_auc": metrics.get("shortcut_baseline", {}).get("auc", np.nan)}
    for cat, vals in sorted(metrics.get("per_category", {}).items()):
        row[f"auc_{cat}"] = vals["auc"]
    if "sync_score" in metrics:                      # the real-only sync score beside the classifier
        row["sync_auc"] = metrics["sync_score"]["auc"]
        for cat, vals in sorted(metrics["sync_score"]["per_category"].items()):
            row[f"sync_auc_{cat}"] = vals["auc"]
    return row


def update_comparison(path: Path, metrics: dict) -> pd.DataFrame:
    """Insert or replace this run's rows in results/comparison.csv, one per (run_name, eval_set):
    the evaluated split and each of metrics['external']. Older tables without eval_set are read
    with eval_set = split."""
    rows = pd.DataFrame([comparison_row(metrics)] + [comparison_row({**ext, "run_name": metrics.get("run_name")})
                                                     for ext in metrics.get("external", {}).values()])
    table = pd.read_csv(path) if Path(path).is_file() else pd.DataFrame(columns=COMPARISON_COLUMNS)
    if "eval_set" not in table:
        table["eval_set"] = table["split"]
    keys = set(zip(rows["run_name"], rows["eval_set"]))
    table = table.loc[np.array([key not in keys for key in zip(table["run_name"], table["eval_set"])], dtype=bool)]
    table = pd.concat([table, rows], ignore_index=True)
    external = ~table["eval_set"].isin(SPLIT_NAMES)                         # each run's in-domain rows first
    table = table.assign(_external=external).sort_values(["run_name", "_external", "eval_set"], kind="stable")
    table = table.drop(columns="_external")
    table = table[[c for c in COMPARISON_COLUMNS if c in table] + [c for c in table if c not in COMPARISON_COLUMNS]]
    write_csv(path, table)
    return table
