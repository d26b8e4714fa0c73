"""03_train: the run's model trained on the cache's train split, validated on its val split."""
from __future__ import annotations

import os
from dataclasses import asdict

import pandas as pd
import torch

from avlib.core.errors import MissingInputError, ParameterError
from avlib.core.locking import writer_lock
from avlib.core.paths import portable, run_dir
from avlib.core.runtime import pick_device, resolve_amp, tune_allocator
from avlib.dataio.loader import CachedClips, ModalityLabelError, make_loader, mfcc_statistics
from avlib.stages.build import model_from_run
from avlib.stages.common import locate_cache, stage
from avlib.training.loop import fit, set_seed


@stage("03_train")
def train_stage(p, *, progress: bool = True, log=print) -> pd.DataFrame:
    """Train the run's model on the cache's train split, validating on its val split; returns
    the history. Every parameter it ran with is saved in its checkpoints (`params`).

    `augment` (comma-separated: flip, colour, noise, compress) and `self_blend` (probability
    that a real training clip becomes a self-blended fake; objective 'classify' only) change
    the training clips as they load (avlib.dataio.augment); validation clips are never changed.

    objective 'classify': cross-entropy, plus for sync models `sync_weight` x the offset loss
    on real clips. objective 'sync': the offset loss alone, on the real clips only (any cache,
    real-only corpora included); its best.pt can initialise a later sync model (02's
    `sync_weights`). Raises ParameterError for objective 'sync' on a concat model.

    `video_loss` > 0 adds that weight x the video head's binary cross-entropy against "the
    video is manipulated" (FakeAVCeleb's FVRA and FVFA; self-blended clips): the trunk learns
    visual cues even where the audio alone would explain a fake. Needs a model built with
    02's `video_head` and a corpus whose categories say which modality is fake (ParameterError
    otherwise)."""
    tune_allocator()
    with writer_lock(run_dir(p.results_dir, p.run_name), "03_train",
                     enabled=os.environ.get("RANK", "0") == "0"):      # under torchrun rank 0 writes
        cache = locate_cache(p.results_dir, p.run_name, p.cache_dir)
        set_seed(p.seed, p.deterministic)
        model, spec = model_from_run(p.results_dir, p.run_name)
        sync = spec.get("fusion", "concat") == "sync"
        if p.objective == "sync" and not sync:
            raise ParameterError("parameter `objective`: 'sync' trains a sync branch, and this run's model has none; "
                                 "build it with fusion: sync in 02_build_model")
        real_only = p.objective == "sync"
        video_loss = 0.0 if real_only else float(p.video_loss)
        if video_loss > 0 and not spec.get("video_head"):
            raise ParameterError(f"parameter `video_loss` ({video_loss}) trains the model's video head, and this run's "
                                 f"model has none; build it with video_head: true in 02_build_model")
        if not real_only and video_loss == 0 and spec.get("video_head"):
            raise ParameterError("parameter `video_loss` is 0, and this run's model has a video head: its video trunk "
                                 "learns from video_loss alone, so it would stay untrained; set video_loss > 0 "
                                 "(e.g. 1.0) or build the model without video_head")
        select_metric = p.select_metric
        if real_only and select_metric != "val_loss":      # accuracy and AUC of an untrained classifier mean nothing
            log(f"objective sync: best.pt is the epoch with the lowest offset loss on the real validation clips "
                f"(select_metric val_loss, not {select_metric})")
            select_metric = "val_loss"
        try:
            train_set = CachedClips(cache, "train", waveform=sync, real_only=real_only, augment=p.augment,
                                    self_blend=0.0 if real_only else p.self_blend, video_labels=video_loss > 0)
        except ModalityLabelError as err:
            raise ParameterError(f"parameter `video_loss` needs per-modality labels: {err}") from None
        val_set = CachedClips(cache, "val", waveform=sync, real_only=real_only)
        if len(train_set) == 0 or len(val_set) == 0:
            raise MissingInputError(f"{cache} has {len(train_set)} training and {len(val_set)} validation clips; "
                                    f"both are needed (check failures.csv there)")
        model.audio_encoder.set_normalization(*mfcc_statistics(train_set))
        dev = pick_device(p.device)
        if dev.type == "cuda" and "LOCAL_RANK" in os.environ:           # torchrun: one GPU per process
            dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(dev)
        amp = resolve_amp(p.amp, dev, log=log)           # "auto": bf16 only where the hardware computes in it
        train_loader = make_loader(train_set, batch_size=p.batch_size, train=True, workers=p.workers, device=dev,
                                   balance=p.balance, seed=p.seed)
        val_loader = make_loader(val_set, batch_size=p.batch_size, train=False, workers=p.workers, device=dev)
        sync_weight = p.sync_weight if sync else 0.0
        # Saved whole in the checkpoints, with what the run made of them: the cache it found, the
        # precision it chose, the selection metric and losses that apply to this model.
        params = {**asdict(p), "cache_dir": portable(cache), "amp": amp, "select_metric": select_metric,
                  "sync_weight": sync_weight, "augment": ",".join(train_set.augment),
                  "self_blend": train_set.self_blend, "video_loss": video_loss}
        model_identity = {k: spec[k] for k in ("n_mfcc", "modality", "parameters")}
        if sync:             # concat runs keep the identity older checkpoints were written with
            model_identity.update(fusion="sync", objective=p.objective)
        identity = {"model": model_identity, "cache": {**train_set.manifest, "cache_dir": portable(cache)}}
        return fit(model, train_loader, val_loader, run_dir=run_dir(p.results_dir, p.run_name), epochs=p.epochs,
                   lr=p.lr, device=dev, seed=p.seed, amp=amp, channels_last=p.channels_last, compile=p.compile,
                   balance=p.balance, select_metric=select_metric, keep_last=p.keep_last, resume=p.resume,
                   identity=identity, params=params, progress=progress, log=log, objective=p.objective,
                   sync_weight=sync_weight, video_weight=video_loss)
