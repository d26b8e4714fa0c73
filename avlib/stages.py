"""One function per notebook stage. Notebooks call these (and display what they return);
stages talk to each other only through files: the cache folder and results/<run_name>/.

results/<run_name>/preprocess.json  (01) where the cache is, what it holds, how fast it was made
results/<run_name>/model.json       (02) the model configuration 03 builds
results/<run_name>/history.csv, checkpoints/   (03)
results/<run_name>/predictions.csv, metrics.json   (04)
results/<run_name>/figures/*.png + *.csv           (05)
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from avlib.paths import default_cache_dir, portable, read_json, resolve, run_dir, write_csv, write_json


class MissingInputError(FileNotFoundError):
    """A stage's input is not there yet; the message says which notebook to run first."""


def _need(path: Path, what: str, notebook: str) -> Path:
    if not path.is_file():
        raise MissingInputError(f"{path} not found: {what} is written by notebooks/{notebook}.ipynb; "
                                f"run it first with the same run_name (or `python -m avlib.pipeline PARAMS`)")
    return path


# ---------------------------------------------------------------- 01 preprocess

def preprocess_stage(*, run_name: str, dataset: str, data_dir: str, cache_dir: str, results_dir: str,
                     frames: int, size: int, fps: float, n_mfcc: int, mfcc_steps: int, window: str = "start",
                     skip_silence: bool = False, face_crop: bool = False, workers: int = 2, limit: int = 0,
                     seed: int = 0, shard: int = 0, num_shards: int = 1, val_fraction: float = 0.15,
                     test_fraction: float = 0.15, identities: int = 60, progress: bool = True) -> dict:
    """Index (generating the synthetic corpus first when asked), split, decode and cache;
    writes results/<run_name>/preprocess.json and returns it."""
    from avlib.preprocess import preprocess, settings, write_dummy_cache

    config = settings(frames=frames, size=size, fps=fps, n_mfcc=n_mfcc, mfcc_steps=mfcc_steps, window=window,
                      skip_silence=skip_silence, face_crop=face_crop)
    cache = resolve(cache_dir) if cache_dir else default_cache_dir(dataset, frames, size, fps, n_mfcc, mfcc_steps)
    if dataset == "dummy":
        report = write_dummy_cache(cache, config, n=limit or 48, seed=seed, val_fraction=val_fraction,
                                   test_fraction=test_fraction)
    else:
        from avlib.indexers import index_dataset

        data = resolve(data_dir)
        if dataset == "synthetic":
            from avlib.synthetic import CorpusSpec, generate_corpus

            generate_corpus(data, CorpusSpec(identities=identities, seed=seed), workers=max(workers, 1),
                            progress=progress)
        elif not data.is_dir():
            raise MissingInputError(f"parameter `data_dir`: {data} does not exist; put the {dataset} files there "
                                    f"(see README, 'Running on the real datasets')")
        records = index_dataset(dataset, data)
        if limit and limit < len(records):
            records = records.sample(n=limit, random_state=seed).sort_values("path").reset_index(drop=True)
        report = preprocess(records, data, cache, config, workers=workers, shard=shard, num_shards=num_shards,
                            val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, progress=progress)
    report = {"run_name": run_name, "dataset": dataset, "data_dir": str(data_dir), **report,
              "cache_dir": portable(report["cache_dir"])}
    write_json(run_dir(results_dir, run_name) / "preprocess.json", report)
    return report


def locate_cache(results_dir: str, run_name: str, cache_dir: str = "") -> Path:
    """The cache this run uses: `cache_dir` if given, else the one 01_preprocess recorded."""
    if cache_dir:
        return resolve(cache_dir)
    report = _need(resolve(results_dir) / run_name / "preprocess.json", "preprocess.json", "01_preprocess")
    return resolve(read_json(report)["cache_dir"])


# ---------------------------------------------------------------- 02 build model

def build_model_stage(*, run_name: str, results_dir: str, cache_dir: str = "", modality: str = "av",
                      video_weights: str = "", device: str = "cpu", batch_size: int = 2):
    """Build the detector for the cached clip shapes, run one forward pass on a batch of
    cached clips, and write results/<run_name>/model.json. Returns (model, summary)."""
    import torch

    from avlib.cache import read_manifest
    from avlib.model import build_model, count_parameters, video_to_model_input
    from avlib.params import pick_device

    manifest = read_manifest(locate_cache(results_dir, run_name, cache_dir))
    weights = str(resolve(video_weights)) if video_weights else ""
    model = build_model(n_mfcc=manifest["n_mfcc"], modality=modality, video_weights=weights or None)
    dev = pick_device(device)
    model.to(dev).eval()
    video = torch.randint(0, 256, (batch_size, 3, manifest["frames"], manifest["size"], manifest["size"]), dtype=torch.uint8)
    audio = torch.randn(batch_size, manifest["mfcc_steps"], manifest["n_mfcc"])
    with torch.no_grad():
        logits = model(video_to_model_input(video, dev), audio.to(dev))
    summary = {
        "n_mfcc": manifest["n_mfcc"], "modality": modality, "video_weights": video_weights,
        "parameters": count_parameters(model),
        "parameters_by_part": {name: count_parameters(part) for name, part in
                               (("video_encoder", model.video_encoder), ("audio_encoder", model.audio_encoder),
                                ("classifier", model.classifier))},
        "video_input": ["B", 3, manifest["frames"], manifest["size"], manifest["size"]],
        "audio_input": ["B", manifest["mfcc_steps"], manifest["n_mfcc"]],
        "output": list(logits.shape[1:]),
    }
    write_json(run_dir(results_dir, run_name) / "model.json", summary)
    return model, summary


def model_from_run(results_dir: str, run_name: str):
    """Rebuild the model 02_build_model described for this run."""
    from avlib.model import build_model

    spec = read_json(_need(resolve(results_dir) / run_name / "model.json", "model.json", "02_build_model"))
    weights = str(resolve(spec["video_weights"])) if spec.get("video_weights") else None
    return build_model(n_mfcc=spec["n_mfcc"], modality=spec["modality"], video_weights=weights), spec


# ---------------------------------------------------------------- 03 train

def train_stage(*, run_name: str, results_dir: str, cache_dir: str = "", epochs: int, batch_size: int, lr: float,
                seed: int = 0, device: str = "auto", workers: int = 2, amp: bool = False, channels_last: bool = True,
                compile: bool = False, balance: str = "none", select_metric: str = "val_accuracy", keep_last: int = 2,
                resume: bool = True, deterministic: bool = False, progress: bool = True, log=print) -> pd.DataFrame:
    """Train the run's model on the cache's train split, validating on its val split."""
    import os

    import torch

    from avlib.data import CachedClips, make_loader, mfcc_statistics
    from avlib.params import pick_device
    from avlib.runtime import tune_allocator
    from avlib.train import fit, set_seed

    tune_allocator()
    cache = locate_cache(results_dir, run_name, cache_dir)
    set_seed(seed, deterministic)
    model, spec = model_from_run(results_dir, run_name)
    train_set, val_set = CachedClips(cache, "train"), CachedClips(cache, "val")
    if len(train_set) == 0 or len(val_set) == 0:
        raise MissingInputError(f"{cache} has {len(train_set)} training and {len(val_set)} validation clips; "
                                f"both are needed (check failures.csv there)")
    model.audio_encoder.set_normalization(*mfcc_statistics(train_set))
    dev = pick_device(device)
    if dev.type == "cuda" and "LOCAL_RANK" in os.environ:           # torchrun: one GPU per process
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(dev)
    train_loader = make_loader(train_set, batch_size=batch_size, train=True, workers=workers, device=dev,
                               balance=balance, seed=seed)
    val_loader = make_loader(val_set, batch_size=batch_size, train=False, workers=workers, device=dev)
    params = dict(run_name=run_name, cache_dir=portable(cache), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                  amp=amp, channels_last=channels_last, balance=balance, select_metric=select_metric)
    identity = {"model": {k: spec[k] for k in ("n_mfcc", "modality", "parameters")},
                "cache": {**train_set.manifest, "cache_dir": portable(cache)}}
    return fit(model, train_loader, val_loader, run_dir=run_dir(results_dir, run_name), epochs=epochs, lr=lr,
               device=dev, seed=seed, amp=amp, channels_last=channels_last, compile=compile, balance=balance,
               select_metric=select_metric, keep_last=keep_last, resume=resume, identity=identity,
               params=params, progress=progress, log=log)


# ---------------------------------------------------------------- 04 evaluate

def evaluate_stage(*, run_name: str, results_dir: str, cache_dir: str = "", split: str = "test",
                   checkpoint: str = "best", batch_size: int = 8, device: str = "auto", workers: int = 2,
                   amp: bool = False, compile: bool = False, generalization_cache_dir: str = "",
                   progress: bool = True) -> dict:
    """Score val (to choose the threshold) and `split` with the run's best (or last) weights;
    add the shortcut baseline, and the false-positive rate on a real-only corpus when
    `generalization_cache_dir` names one. Writes predictions.csv, metrics.json and a row of
    results/comparison.csv; returns the metrics."""
    from avlib import evaluate
    from avlib.runtime import tune_allocator

    tune_allocator()
    run = run_dir(results_dir, run_name)
    ckpt_path = _need(run / "checkpoints" / f"{checkpoint}.pt", f"checkpoints/{checkpoint}.pt", "03_train")
    cache = locate_cache(results_dir, run_name, cache_dir)
    metrics = evaluate.evaluate_run(ckpt_path, cache, run, split=split, batch_size=batch_size, device=device,
                                    workers=workers, amp=amp, compile=compile, progress=progress)
    metrics["run_name"] = run_name
    if generalization_cache_dir:
        metrics["generalization"] = evaluate.generalization_report(
            ckpt_path, resolve(generalization_cache_dir), run, threshold=metrics["threshold"], batch_size=batch_size,
            device=device, workers=workers, amp=amp, compile=compile, progress=progress)
    write_json(run / "metrics.json", metrics)
    evaluate.update_comparison(resolve(results_dir) / "comparison.csv", metrics)
    return metrics


# ---------------------------------------------------------------- 05 plots

def plots_stage(*, run_name: str, results_dir: str) -> list[Path]:
    """Every figure of the run into results/<run_name>/figures/ (PNG + CSV); returns the PNG paths."""
    from avlib import plots

    run = resolve(results_dir) / run_name
    pred = pd.read_csv(_need(run / "predictions.csv", "predictions.csv", "04_evaluate"), keep_default_na=False)
    metrics = read_json(_need(run / "metrics.json", "metrics.json", "04_evaluate"))
    history = pd.read_csv(_need(run / "history.csv", "history.csv", "03_train"))
    figures = run / "figures"
    out = [plots.plot_confusion_matrix(pred, figures), plots.plot_training_curves(history, figures)]
    if pred["label"].nunique() == 2:
        out += [plots.plot_roc(pred, figures, metrics["threshold"], metrics["auc"]),
                plots.plot_precision_recall(pred, figures, metrics["ap"]),
                plots.plot_per_category(metrics["per_category"], figures)]
    out += [plots.plot_score_distributions(pred, figures, metrics["threshold"]), plots.plot_reliability(pred, figures)]
    return out
