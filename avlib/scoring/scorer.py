"""A checkpoint made ready to score, and clips scored with it: what 04_evaluate, its external
sets and predict share (the inference copy of the model, batching, precision)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from avlib.core.checkpoint import load_checkpoint
from avlib.core.runtime import pick_device
from avlib.dataio.cache import read_manifest
from avlib.dataio.loader import CachedClips, make_loader
from avlib.models.detector import build_model, inference_model, model_kwargs
from avlib.models.sync import SYNC_COLUMNS
from avlib.scoring.forward import predict

# A cache scored with a checkpoint must have been made with these settings as the training cache.
MATCHING_SETTINGS = ("frames", "size", "fps", "n_mfcc", "mfcc_steps", "sample_rate")


class Scorer(NamedTuple):
    """A checkpoint ready to score clips: what scoring_model returns."""
    model: Any                  # the inference_model copy
    state: dict                 # the checkpoint (epoch, model_config, preprocess, ...)
    device: Any
    checkpoint: str             # the checkpoint's file name


def load_detector(checkpoint: str | Path, device="cpu"):
    """(model in eval mode on `device`, checkpoint state) from a best/last checkpoint file."""
    state = load_checkpoint(checkpoint)
    cfg = state.get("model_config")
    if cfg is None:
        raise ValueError(f"{checkpoint}: no model_config; pass a checkpoint written by avlib (best.pt or last.pt)")
    model = build_model(**model_kwargs(cfg))
    model.load_state_dict(state["model"])
    dev = pick_device(device) if isinstance(device, str) else device
    return model.to(dev).eval(), state


def score_split(model, cache_dir: Path, split: str, *, batch_size: int, device, workers: int, amp: bool,
                progress: bool):
    """(dataset, predict() output or None when the split is empty). `model` is best an
    `inference_model` copy made with the same `amp`."""
    sync = is_sync_model(model)
    ds = CachedClips(cache_dir, split, waveform=sync)
    if len(ds) == 0:
        return ds, None
    loader = make_loader(ds, batch_size=batch_size, train=False, workers=workers, device=device)
    return ds, predict(model, loader, device, amp=amp, progress=progress, desc=f"predict {split}", sync=sync)


def is_sync_model(model) -> bool:
    """Whether `model` (or the model inside a torch.compile wrapper) has a sync branch."""
    return getattr(getattr(model, "_orig_mod", model), "fusion", "concat") == "sync"


def with_sync_columns(pred: pd.DataFrame, out: dict) -> pd.DataFrame:
    """`pred` with the sync model's per-clip score, offset (frames) and confidence, when `out` has them."""
    return pred.assign(**{c: out[c] for c in SYNC_COLUMNS}) if "sync_score" in out else pred


def check_cache_settings(trained_on: dict, cache_dir: Path) -> dict:
    """The manifest of `cache_dir`. Raises CacheError when there is no cache there, ValueError
    naming every setting (frames, size, fps, MFCC) that differs from `trained_on`, the
    checkpoint's `preprocess` record."""
    manifest = read_manifest(cache_dir)
    differ = [k for k in MATCHING_SETTINGS if k in trained_on and trained_on[k] != manifest.get(k)]
    if differ:
        values = ", ".join(f"{k}={manifest.get(k)!r} there, {trained_on[k]!r} in training" for k in differ)
        raise ValueError(f"{cache_dir} was made with other {', '.join(differ)} than the model was trained on "
                         f"({values}); rerun 01_preprocess on that corpus with the training settings")
    return manifest


def scoring_model(checkpoint: Path, device="auto", *, amp: bool = False, compile: bool = False) -> Scorer:
    """The checkpoint's model as an `inference_model` copy, with its state and device."""
    model, state = load_detector(checkpoint, device)
    return Scorer(inference_model(model, amp=amp, compile=compile), state, next(model.parameters()).device,
                  Path(checkpoint).name)


def score_cache(scorer: Scorer, cache_dir: Path, *, batch_size: int = 8, workers: int = 2, amp: bool = False,
                progress: bool = True) -> pd.DataFrame:
    """The index of every clip of `cache_dir` with a p_fake column, scored by `scorer` (what
    scoring_model returns). Raises ValueError when the cache was made with other settings than
    the checkpoint's training cache or holds no clips."""
    check_cache_settings(scorer.state.get("preprocess") or {}, cache_dir)
    ds, out = score_split(scorer.model, cache_dir, "all", batch_size=batch_size, device=scorer.device,
                          workers=workers, amp=amp, progress=progress)
    if out is None:
        raise ValueError(f"{cache_dir} holds no clips")
    return with_sync_columns(ds.index.assign(p_fake=out["probs"]), out)
