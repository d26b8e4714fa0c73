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

from avlib.locking import writer_lock
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
                     test_fraction: float = 0.15, identities: int = 60, corpus_styles: str = "studio",
                     audio_swap: bool = False, progress: bool = True) -> dict:
    """Index (generating the synthetic corpus first when asked), split, decode and cache;
    writes results/<run_name>/preprocess.json and returns it."""
    from avlib.preprocess import preprocess, settings, write_dummy_cache

    config = settings(frames=frames, size=size, fps=fps, n_mfcc=n_mfcc, mfcc_steps=mfcc_steps, window=window,
                      skip_silence=skip_silence, face_crop=face_crop)
    cache = resolve(cache_dir) if cache_dir else default_cache_dir(
        dataset, frames, size, fps, n_mfcc, mfcc_steps, "" if dataset == "dummy" else data_dir)
    part = f"shard-{shard}-of-{num_shards}" if num_shards > 1 else ""    # shards of one corpus write side by side
    with writer_lock(run_dir(results_dir, run_name), "01_preprocess", part=part), \
            writer_lock(cache, "01_preprocess", part=part):
        if dataset == "dummy":
            report = write_dummy_cache(cache, config, n=limit or 48, seed=seed, val_fraction=val_fraction,
                                       test_fraction=test_fraction)
        else:
            from avlib.indexers import index_dataset

            data = resolve(data_dir)
            if dataset == "synthetic":
                from avlib.synthetic import CorpusSpec, generate_corpus

                generate_corpus(data, CorpusSpec(identities=identities, seed=seed, styles=corpus_styles,
                                                 audio_swap=audio_swap), workers=max(workers, 1),
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
                      video_weights: str = "", device: str = "cpu", batch_size: int = 2, fusion: str = "concat",
                      trunk_stride: int = 1, sync_weights: str = "", video_encoder: str = "r2plus1d_18",
                      video_head: bool = False):
    """Build the detector for the cached clip shapes, run one forward pass on a batch of
    cached clips, and write results/<run_name>/model.json. Returns (model, summary).

    fusion='sync' adds the sync branch (avlib.sync); it needs a cache with waveforms and a frame
    rate that follows lips (ParameterError naming `fps` or `frames` otherwise)."""
    import torch

    from avlib.cache import has_waveform, read_manifest
    from avlib.model import build_model, count_parameters, video_to_model_input
    from avlib.params import ParameterError, pick_device

    cache = locate_cache(results_dir, run_name, cache_dir)
    manifest = read_manifest(cache)
    if fusion == "sync" and not has_waveform(manifest):
        raise MissingInputError(f"fusion sync reads each clip's waveform, which the cache at {portable(cache)} does not "
                                f"keep (made before 2026-11-29): rerun notebooks/01_preprocess.ipynb into a new cache_dir")
    if trunk_stride > manifest["frames"]:
        raise ParameterError(f"parameter `trunk_stride` ({trunk_stride}) is larger than the clip's {manifest['frames']} frames")
    weights = str(resolve(video_weights)) if video_weights else ""
    sync_init = str(resolve(sync_weights)) if sync_weights else ""
    model = build_model(n_mfcc=manifest["n_mfcc"], modality=modality, video_weights=weights or None, fusion=fusion,
                        fps=manifest["fps"], frames=manifest["frames"], trunk_stride=trunk_stride,
                        sample_rate=manifest.get("sample_rate", 16000), sync_weights=sync_init or None,
                        video_encoder=video_encoder, video_head=video_head)
    dev = pick_device(device)
    model.to(dev).eval()
    video = torch.randint(0, 256, (batch_size, 3, manifest["frames"], manifest["size"], manifest["size"]), dtype=torch.uint8)
    audio = torch.randn(batch_size, manifest["mfcc_steps"], manifest["n_mfcc"])
    extra = []
    if fusion == "sync":
        n_samples = int(round(manifest["frames"] / manifest["fps"] * manifest.get("sample_rate", 16000)))
        extra = [0.1 * torch.randn(batch_size, n_samples, device=dev)]
    with torch.no_grad():
        logits = model(video_to_model_input(video, dev), audio.to(dev), *extra)
    parts = [("video_encoder", model.video_encoder), ("audio_encoder", model.audio_encoder),
             ("classifier", model.classifier)] + ([("sync", model.sync)] if fusion == "sync" else [])
    summary = {
        "n_mfcc": manifest["n_mfcc"], "modality": modality, "video_encoder": video_encoder, "video_head": video_head,
        "video_weights": video_weights,
        "fusion": fusion, "trunk_stride": trunk_stride, "sync_weights": sync_weights,
        "fps": manifest["fps"], "frames": manifest["frames"], "sample_rate": manifest.get("sample_rate", 16000),
        "parameters": count_parameters(model),
        "parameters_by_part": {name: count_parameters(part) for name, part in parts},
        "video_input": ["B", 3, manifest["frames"], manifest["size"], manifest["size"]],
        "audio_input": ["B", manifest["mfcc_steps"], manifest["n_mfcc"]],
        "output": list(logits.shape[1:]),
    }
    if fusion == "sync":
        summary["sync_offsets"] = model.sync.k
        summary["waveform_input"] = ["B", extra[0].shape[1]]
    write_json(run_dir(results_dir, run_name) / "model.json", summary)
    return model, summary


def model_from_run(results_dir: str, run_name: str):
    """Rebuild the model 02_build_model described for this run."""
    from avlib.model import build_model

    from avlib.model import model_kwargs

    spec = read_json(_need(resolve(results_dir) / run_name / "model.json", "model.json", "02_build_model"))
    weights = str(resolve(spec["video_weights"])) if spec.get("video_weights") else None
    sync_init = str(resolve(spec["sync_weights"])) if spec.get("sync_weights") else None
    return build_model(**model_kwargs(spec), video_weights=weights, sync_weights=sync_init), spec


# ---------------------------------------------------------------- 03 train

def train_stage(*, run_name: str, results_dir: str, cache_dir: str = "", epochs: int, batch_size: int, lr: float,
                seed: int = 0, device: str = "auto", workers: int = 2, amp: bool | str = "auto",
                channels_last: bool = True, compile: bool = False, balance: str = "none",
                select_metric: str = "val_accuracy", keep_last: int = 2,
                resume: bool = True, deterministic: bool = False, progress: bool = True, log=print,
                objective: str = "classify", sync_weight: float = 1.0, augment: str = "",
                self_blend: float = 0.0, video_loss: float = 0.0) -> pd.DataFrame:
    """Train the run's model on the cache's train split, validating on its val split.

    `augment` (comma-separated: flip, colour, noise, compress) and `self_blend` (probability
    that a real training clip becomes a self-blended fake; objective 'classify' only) change
    the training clips as they load (avlib.augment); validation clips are never changed.

    objective 'classify': cross-entropy, plus for sync models `sync_weight` x the offset loss
    on real clips. objective 'sync': the offset loss alone, on the real clips only (any cache,
    real-only corpora included); its best.pt can initialise a later sync model (02's
    `sync_weights`). Raises ParameterError for objective 'sync' on a concat model.

    `video_loss` > 0 adds that weight x the video head's binary cross-entropy against "the
    video is manipulated" (FakeAVCeleb's FVRA and FVFA; self-blended clips): the trunk learns
    visual cues even where the audio alone would explain a fake. Needs a model built with
    02's `video_head` and a corpus whose categories say which modality is fake (ParameterError
    otherwise)."""
    import os

    import torch

    from avlib.data import CachedClips, ModalityLabelError, make_loader, mfcc_statistics
    from avlib.params import ParameterError, pick_device
    from avlib.runtime import resolve_amp, tune_allocator
    from avlib.train import fit, set_seed

    tune_allocator()
    with writer_lock(run_dir(results_dir, run_name), "03_train",
                     enabled=os.environ.get("RANK", "0") == "0"):      # under torchrun rank 0 writes
        cache = locate_cache(results_dir, run_name, cache_dir)
        set_seed(seed, deterministic)
        model, spec = model_from_run(results_dir, run_name)
        sync = spec.get("fusion", "concat") == "sync"
        if objective == "sync" and not sync:
            raise ParameterError("parameter `objective`: 'sync' trains a sync branch, and this run's model has none; "
                                 "build it with fusion: sync in 02_build_model")
        real_only = objective == "sync"
        video_loss = 0.0 if real_only else float(video_loss)
        if video_loss > 0 and not spec.get("video_head"):
            raise ParameterError(f"parameter `video_loss` ({video_loss}) trains the model's video head, and this run's "
                                 f"model has none; build it with video_head: true in 02_build_model")
        if not real_only and video_loss == 0 and spec.get("video_head"):
            raise ParameterError("parameter `video_loss` is 0, and this run's model has a video head: its video trunk "
                                 "learns from video_loss alone, so it would stay untrained; set video_loss > 0 "
                                 "(e.g. 1.0) or build the model without video_head")
        if real_only and select_metric != "val_loss":      # accuracy and AUC of an untrained classifier mean nothing
            log(f"objective sync: best.pt is the epoch with the lowest offset loss on the real validation clips "
                f"(select_metric val_loss, not {select_metric})")
            select_metric = "val_loss"
        try:
            train_set = CachedClips(cache, "train", waveform=sync, real_only=real_only, augment=augment,
                                    self_blend=0.0 if real_only else self_blend, video_labels=video_loss > 0)
        except ModalityLabelError as err:
            raise ParameterError(f"parameter `video_loss` needs per-modality labels: {err}") from None
        val_set = CachedClips(cache, "val", waveform=sync, real_only=real_only)
        if len(train_set) == 0 or len(val_set) == 0:
            raise MissingInputError(f"{cache} has {len(train_set)} training and {len(val_set)} validation clips; "
                                    f"both are needed (check failures.csv there)")
        model.audio_encoder.set_normalization(*mfcc_statistics(train_set))
        dev = pick_device(device)
        if dev.type == "cuda" and "LOCAL_RANK" in os.environ:           # torchrun: one GPU per process
            dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(dev)
        amp = resolve_amp(amp, dev, log=log)           # "auto": bf16 only where the hardware computes in it
        train_loader = make_loader(train_set, batch_size=batch_size, train=True, workers=workers, device=dev,
                                   balance=balance, seed=seed)
        val_loader = make_loader(val_set, batch_size=batch_size, train=False, workers=workers, device=dev)
        params = dict(run_name=run_name, cache_dir=portable(cache), epochs=epochs, batch_size=batch_size, lr=lr,
                      seed=seed, amp=amp, channels_last=channels_last, balance=balance, select_metric=select_metric,
                      objective=objective, sync_weight=sync_weight if sync else 0.0,
                      augment=",".join(train_set.augment), self_blend=train_set.self_blend, video_loss=video_loss)
        model_identity = {k: spec[k] for k in ("n_mfcc", "modality", "parameters")}
        if sync:             # concat runs keep the identity older checkpoints were written with
            model_identity.update(fusion="sync", objective=objective)
        identity = {"model": model_identity, "cache": {**train_set.manifest, "cache_dir": portable(cache)}}
        return fit(model, train_loader, val_loader, run_dir=run_dir(results_dir, run_name), epochs=epochs, lr=lr,
                   device=dev, seed=seed, amp=amp, channels_last=channels_last, compile=compile, balance=balance,
                   select_metric=select_metric, keep_last=keep_last, resume=resume, identity=identity,
                   params=params, progress=progress, log=log, objective=objective,
                   sync_weight=sync_weight if sync else 0.0, video_weight=video_loss)


# ---------------------------------------------------------------- 04 evaluate

def evaluate_stage(*, run_name: str, results_dir: str, cache_dir: str = "", split: str = "test",
                   checkpoint: str = "best", batch_size: int = 8, device: str = "auto", workers: int = 2,
                   amp: bool | str = "auto", compile: bool = False, generalization_cache_dir: str = "",
                   external_cache_dirs: str = "", progress: bool = True, log=print) -> dict:
    """Score val (to choose the threshold) and `split` with the run's best (or last) weights;
    add the shortcut baseline, and the false-positive rate on a real-only corpus when
    `generalization_cache_dir` names one; score each labelled cache of `external_cache_dirs`
    at that threshold (metrics['external'][name], external_<name>_predictions.csv). Writes
    predictions.csv, metrics.json and rows of results/comparison.csv; returns the metrics."""
    from avlib import evaluate
    from avlib.params import pick_device
    from avlib.runtime import resolve_amp, tune_allocator

    tune_allocator()
    amp = resolve_amp(amp, pick_device(device), log=log)      # "auto": bf16 only where the hardware computes in it
    run = run_dir(results_dir, run_name)
    with writer_lock(run, "04_evaluate"):
        ckpt_path = _need(run / "checkpoints" / f"{checkpoint}.pt", f"checkpoints/{checkpoint}.pt", "03_train")
        cache = locate_cache(results_dir, run_name, cache_dir)
        externals = evaluate.external_sets(external_cache_dirs)
        evaluate.check_external_caches(ckpt_path, externals)         # refuse before the long in-domain scoring
        metrics = evaluate.evaluate_run(ckpt_path, cache, run, split=split, batch_size=batch_size, device=device,
                                        workers=workers, amp=amp, compile=compile, progress=progress)
        metrics["run_name"] = run_name
        metrics["precision"] = "bf16" if amp else "fp32"
        if generalization_cache_dir:
            metrics["generalization"] = evaluate.generalization_report(
                ckpt_path, resolve(generalization_cache_dir), run, threshold=metrics["threshold"],
                batch_size=batch_size, device=device, workers=workers, amp=amp, compile=compile, progress=progress)
        if externals:
            metrics["external"] = evaluate.evaluate_externals(
                ckpt_path, externals, run, threshold=metrics["threshold"],
                threshold_source=metrics["threshold_source"], own_cache_dir=cache, batch_size=batch_size,
                device=device, workers=workers, amp=amp, compile=compile, progress=progress)
        write_json(run / "metrics.json", metrics)
        with writer_lock(resolve(results_dir), "04_evaluate", part="comparison", timeout=60):   # shared by all runs
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
            sets[name] = pd.read_csv(_need(run / ext["predictions"], ext["predictions"], "04_evaluate"),
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
