"""The training loop, torchvision references style (plain functions, explicit arguments):
train_one_epoch and fit (validation uses avlib.scoring.forward.predict). `fit` resumes from the last complete checkpoint,
keeps `last`, `best` and the newest `keep_last` per-epoch checkpoints, and writes
history.csv after every epoch.

Several processes (one per GPU, or gloo on the CPU) with DistributedDataParallel:

    torchrun --nproc_per_node N -m avlib.train -f params/<run>.yaml

writes the same files as notebooks/03_train.ipynb (run 01 and 02 first); each rank trains on
its shard of the training split (batch_size per process), rank 0 writes the files, and
distributed.json records every rank's weight fingerprint. BatchNorm statistics are per rank
(SyncBatchNorm needs GPUs), so N processes match one process with N x batch_size closely but
not exactly.
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from avlib.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from avlib.core.paths import write_csv, write_json
from avlib.core.progress import Heartbeat, format_duration
from avlib.models.detector import model_config, to_channels_last, video_to_model_input
from avlib.scoring.forward import forward_batch, predict, progress_bar, safe_auc


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the epoch and batch."""


class ResumeError(RuntimeError):
    """The checkpoint to resume from was trained with other settings."""


class LoaderWorkerError(RuntimeError):
    """A DataLoader worker process died (most often killed by the kernel for want of memory);
    the message names the parameters to lower and the epoch training resumes from."""


# Parameters that define the run: resuming with a different value would mix two runs.
RESUME_KEYS = ("model", "cache")


def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch; deterministic=True also asks torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, loader,
                    device: torch.device, epoch: int, *, amp: bool = False, channels_last: bool = True,
                    progress: bool = False, objective: str = "classify", sync_weight: float = 0.0,
                    video_weight: float = 0.0) -> dict:
    """One pass over `loader`; returns loss, accuracy, auc, seconds, clips_per_s.

    Batches are (video, mfcc, labels, *extra); the extra tensors (a sync model's waveform) are
    passed on to the model, except with `video_weight` > 0 the last, the video labels
    (CachedClips(video_labels=True)). `objective`/`sync_weight`/`video_weight`: see `_forward`.

    Raises NonFiniteLossError naming the epoch and batch when the loss is not finite (the
    step is not applied)."""
    model.train()
    total_loss, probs, labels_all, n = 0.0, [], [], 0
    start = time.perf_counter()
    for batch, (video, audio, labels, *extra) in enumerate(progress_bar(loader, f"epoch {epoch} train", progress)):
        video = video_to_model_input(video, device, channels_last=channels_last)
        audio, labels = audio.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        extra = [x.to(device, non_blocking=True) for x in extra]
        video_labels = extra.pop() if video_weight > 0 else None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits, _, loss = forward_batch(model, video, audio, labels, extra, criterion=criterion,
                                       objective=objective, sync_weight=sync_weight,
                                       video_labels=video_labels, video_weight=video_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # The norm only (clip_grad_norm_ would multiply every gradient by NaN/inf when one is bad,
        # hiding which tensor went wrong). Loss and norm come to the host together: one wait
        # for the device per step, not one per check.
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
        loss_value, norm_value = torch.stack([loss.detach(), grad_norm.float()]).tolist()
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(f"non-finite loss ({loss_value}) at epoch {epoch}, batch {batch}; "
                                     f"try amp=false or a lower lr")
        if not math.isfinite(norm_value):
            bad = [name for name, p in model.named_parameters()
                   if p.grad is not None and not torch.isfinite(torch.linalg.vector_norm(p.grad))]
            raise NonFiniteLossError(f"non-finite gradients at epoch {epoch}, batch {batch} (loss {loss_value:.4f}) in "
                                     f"{len(bad)} tensor(s), first {bad[0] if bad else '?'}; the step was not applied"
                                     + ("; try amp=false" if amp else ""))
        optimizer.step()
        total_loss += loss_value * len(labels)
        n += len(labels)
        probs.append(torch.softmax(logits.detach().float(), 1)[:, 1])
        labels_all.append(labels)
    seconds = time.perf_counter() - start
    probs, labels_all = torch.cat(probs).cpu().numpy(), torch.cat(labels_all).cpu().numpy()
    return dict(loss=total_loss / max(n, 1), accuracy=float(((probs >= 0.5) == labels_all).mean()),
                auc=safe_auc(labels_all, probs), seconds=seconds, clips_per_s=n / seconds,
                probs=probs, labels=labels_all)


def class_weights(labels: np.ndarray) -> torch.Tensor:
    """Inverse-frequency weights for CrossEntropyLoss (mean weight 1 over the clips)."""
    counts = np.bincount(np.asarray(labels), minlength=2).astype(float)
    weights = len(labels) / (2 * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32)


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                                                   int(np_state[2]), int(np_state[3]), float(np_state[4])],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(value):
    """Python-native copies of numbers (checkpoints carry plain data only)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def load_resume_state(checkpoint_dir: Path, identity: dict) -> dict | None:
    """The newest complete checkpoint: last.pt, or a newer epoch_NNN.pt when last.pt is older or
    broken (a kill between the two writes); None when nothing loads.

    Raises ResumeError if it was trained with another model or cache (see RESUME_KEYS)."""
    def epoch_of(path: Path) -> int:
        return int(path.stem.split("_")[1]) if path.stem.startswith("epoch_") else -1

    state = None
    if (checkpoint_dir / "last.pt").is_file():
        try:
            state = load_checkpoint(checkpoint_dir / "last.pt")
        except CheckpointError as e:
            print(f"warning: {e}; trying the per-epoch checkpoints")
    newest = state["epoch"] if state else 0
    for path in sorted(checkpoint_dir.glob("epoch_*.pt"), key=epoch_of, reverse=True):
        if epoch_of(path) <= newest:
            break
        try:
            state = load_checkpoint(path)
            break
        except CheckpointError as e:
            print(f"warning: {e}; trying the previous checkpoint")
    if state is None:
        return None
    for key in RESUME_KEYS:
        if state["identity"].get(key) != identity.get(key):
            raise ResumeError(f"the checkpoint of epoch {state['epoch']} in {checkpoint_dir} was trained with "
                              f"{key}={state['identity'].get(key)} but this run has {key}={identity.get(key)}; "
                              f"use another run_name or resume=false")
    return state


def _link_or_save(source: Path, target: Path, state: dict) -> None:
    """Make `target` a hard link to the complete file `source`, atomically (temporary link, then
    os.replace); write `state` instead where the file system has no hard links."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.link.tmp")
    try:
        tmp.unlink(missing_ok=True)
        os.link(source, tmp)
        os.replace(tmp, target)
    except OSError:
        tmp.unlink(missing_ok=True)
        save_checkpoint(target, state)


def _dead_loader_worker_named(fit_function):
    """`fit`, raising LoaderWorkerError for the bare 'DataLoader worker ... exited unexpectedly'."""

    @functools.wraps(fit_function)
    def wrapper(model, train_loader, val_loader, *, run_dir, **kwargs):
        try:
            return fit_function(model, train_loader, val_loader, run_dir=run_dir, **kwargs)
        except RuntimeError as e:
            if not str(e).startswith("DataLoader worker"):
                raise
            history = Path(run_dir) / "history.csv"
            done = int(pd.read_csv(history)["epoch"].max()) if history.is_file() else 0
            cause = ("most likely the kernel's out-of-memory killer stopped it (`dmesg` or `journalctl -k` then "
                     "shows 'Out of memory')" if "Killed" in str(e) or "unexpectedly" in str(e) else "it crashed")
            resumes = f"after epoch {done}, the last complete one" if done else "from the start (no epoch was complete)"
            raise LoaderWorkerError(
                f"a data-loading worker process died in epoch {done + 1} ({e}); {cause}. Lower `workers` (now "
                f"{train_loader.num_workers}) or `batch_size` (now {train_loader.batch_size}) and rerun: with "
                f"resume=true training continues {resumes} ({history.parent})") from e
    return wrapper


@_dead_loader_worker_named
def fit(model: nn.Module, train_loader, val_loader, *, run_dir: str | Path, epochs: int, lr: float,
        device: torch.device, seed: int = 0, amp: bool = False, channels_last: bool = True,
        compile: bool = False, balance: str = "none", select_metric: str = "val_accuracy", keep_last: int = 2, resume: bool = True,
        identity: dict | None = None, params: dict | None = None, progress: bool = True,
        log=print, objective: str = "classify", sync_weight: float = 0.0, video_weight: float = 0.0) -> pd.DataFrame:
    """Train to `epochs` (resuming from the last complete epoch when resume=True) and return
    the history. Writes run_dir/history.csv and run_dir/checkpoints/{last,best,epoch_NNN}.pt.

    `identity` (plain data: model config, cache settings) must match to resume; `params` is
    stored in each checkpoint as the parameters it was trained with. `compile` trains through
    torch.compile (the first step compiles: about a minute on a 2-core CPU; on that CPU it
    was 7 % slower than eager, on GPUs it usually pays); checkpoints hold the plain model.
    `objective` and `sync_weight` (sync models): see `_forward`; their history also has
    val_sync_loss, val_offset_accuracy (real clips found at offset 0) and val_sync_auc.
    `video_weight` > 0 (a model with a video head, a training set with video_labels=True):
    see `_forward`."""
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for stale in ckpt_dir.glob(".*.tmp"):
        stale.unlink()
    identity = _plain(identity or {"model": model_config(model)})
    params = _plain(params or {})
    model.to(device)
    if channels_last:
        to_channels_last(model)
    if device.type == "cuda" and not torch.are_deterministic_algorithms_enabled():
        torch.backends.cudnn.benchmark = True     # clip shapes are fixed: cuDNN times its 3-D kernels once, keeps the fastest
    rank, world = distributed_rank_and_size()
    net = model
    if world > 1:

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile:
        net = torch.compile(net, dynamic=False)   # a short last batch gets its own static graph, not a slower dynamic one for all
    weights = class_weights(train_loader.dataset.labels) if balance == "weights" else None
    criterion = nn.CrossEntropyLoss(weight=weights.to(device) if weights is not None else None)
    val_criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history, start_epoch = [], 1
    best = {"metric": select_metric, "value": None, "epoch": None}
    set_seed(seed)
    state = load_resume_state(ckpt_dir, identity) if resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1
        _set_rng_state(state["rng"])
        log(f"resumed from epoch {state['epoch']} ({ckpt_dir / 'last.pt'})")
    if start_epoch > epochs:
        log(f"already trained for {start_epoch - 1} epochs (>= epochs={epochs}); nothing to do")
    session_start = time.perf_counter()
    for epoch in range(start_epoch, epochs + 1):
        epoch_start = time.perf_counter()
        sampler = train_loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)                                 # DistributedSampler: seed + epoch
        elif hasattr(sampler, "generator") and sampler.generator is not None:
            sampler.generator.manual_seed(seed * 100003 + epoch)   # same order whether resumed or not
        beat = Heartbeat(every=45.0, log=log)     # a line at least every minute, however long the epoch
        tr = train_one_epoch(net, criterion, optimizer, beat(train_loader, f"epoch {epoch}/{epochs} training"),
                             device, epoch, amp=amp, channels_last=channels_last, progress=progress and rank == 0,
                             objective=objective, sync_weight=sync_weight, video_weight=video_weight)
        if world > 1:
            tr = _gather_epoch(tr)
            _broadcast_buffers(model)   # BatchNorm running statistics: rank 0's everywhere, as in its checkpoint
        has_sync = getattr(model, "fusion", "concat") == "sync"
        va = predict(model, beat(val_loader, f"epoch {epoch}/{epochs} validation"), device, amp=amp,
                     channels_last=channels_last, criterion=val_criterion,
                     progress=progress and rank == 0, desc=f"epoch {epoch} val",   # every rank: the whole val set
                     sync=has_sync, objective=objective)
        row = dict(epoch=epoch, train_loss=tr["loss"], train_accuracy=tr["accuracy"], train_auc=tr["auc"],
                   val_loss=va["loss"], val_accuracy=float(((va["probs"] >= 0.5) == va["labels"]).mean()),
                   val_auc=safe_auc(va["labels"], va["probs"]), lr=optimizer.param_groups[0]["lr"],
                   seconds=tr["seconds"] + va["seconds"], train_clips_per_s=tr["clips_per_s"], balance=balance,
                   precision="bf16" if amp else "fp32")
        if has_sync:        # the real-only sync score on validation: its loss, offsets found at 0, its AUC
            real = va["labels"] == 0
            row.update(val_sync_loss=va["sync_loss"],
                       val_offset_accuracy=float((va["sync_offset"][real] == 0).mean()) if real.any() else float("nan"),
                       val_sync_auc=safe_auc(va["labels"], va["sync_score"]))
        history.append(_plain(row))
        value = row[select_metric]
        better = (best["value"] is None or (value < best["value"] if select_metric == "val_loss" else value > best["value"]))
        if better and not np.isnan(value):
            best = {"metric": select_metric, "value": float(value), "epoch": epoch}
        if rank != 0:
            continue                                                  # only rank 0 writes files
        if best["epoch"] == epoch:
            save_checkpoint(ckpt_dir / "best.pt", {"model": model.state_dict(), "model_config": model_config(model),
                                                   "epoch": epoch, "best": best, "params": params,
                                                   "preprocess": identity.get("cache")})
        full = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "best": best,
                "history": history, "rng": _rng_state(), "identity": identity, "params": params,
                "model_config": model_config(model)}
        if keep_last > 0:
            epoch_path = ckpt_dir / f"epoch_{epoch:03d}.pt"
            save_checkpoint(epoch_path, full)
            _link_or_save(epoch_path, ckpt_dir / "last.pt", full)    # one write of the full state, not two
            for old in sorted(ckpt_dir.glob("epoch_*.pt"))[:-keep_last]:
                old.unlink()
        else:
            save_checkpoint(ckpt_dir / "last.pt", full)
        write_csv(run_dir / "history.csv", pd.DataFrame(history))
        now = time.perf_counter()
        eta = (now - session_start) / (epoch - start_epoch + 1) * (epochs - epoch)     # mean epoch of this session
        log(f"epoch {epoch}/{epochs}  train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f} "
            f"acc {row['val_accuracy']:.3f} AUC {row['val_auc']:.3f}  {format_duration(now - epoch_start)} "
            f"({row['train_clips_per_s']:.1f} clips/s)  ETA {format_duration(eta)}"
            + ("  *best*" if best["epoch"] == epoch else ""))
    frame = pd.DataFrame(history)
    if rank == 0:
        write_csv(run_dir / "history.csv", frame)
    if world > 1:
        _record_rank_weights(model, run_dir, rank)
    return frame


def distributed_rank_and_size() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _broadcast_buffers(model: nn.Module) -> None:

    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def _gather_epoch(local: dict) -> dict:
    """Training metrics over every rank's clips (each rank saw its own shard)."""
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, {k: local[k] for k in ("probs", "labels", "loss", "seconds")})
    probs = np.concatenate([p["probs"] for p in parts])
    labels = np.concatenate([p["labels"] for p in parts])
    loss = sum(p["loss"] * len(p["labels"]) for p in parts) / max(len(labels), 1)
    seconds = max(p["seconds"] for p in parts)
    return dict(loss=loss, accuracy=float(((probs >= 0.5) == labels).mean()), auc=safe_auc(labels, probs),
                seconds=seconds, clips_per_s=len(labels) / seconds, probs=probs, labels=labels)


def _record_rank_weights(model: nn.Module, run_dir: Path, rank: int) -> None:
    """Rank 0 writes distributed.json with every rank's weight fingerprint (sum and a hash),
    so anyone can check that the ranks ended with identical weights."""


    digest = hashlib.sha1()
    total = 0.0
    for p in model.state_dict().values():
        data = p.detach().cpu().contiguous()
        digest.update(data.numpy().tobytes() if data.dtype != torch.bfloat16 else data.float().numpy().tobytes())
        total += float(data.double().sum()) if data.is_floating_point() else 0.0
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, {"rank": rank, "sha1": digest.hexdigest(), "sum": total})
    if rank == 0:
        write_json(run_dir / "distributed.json", {"world_size": len(parts), "ranks": parts,
                                                  "identical": len({p["sha1"] for p in parts}) == 1})
