"""Stage 3: the training loop, torchvision references style (plain functions, explicit
arguments): train_one_epoch, predict, fit. `fit` resumes from the last complete checkpoint,
keeps `last`, `best` and the newest `keep_last` per-epoch checkpoints, and writes
history.csv after every epoch."""
from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from sklearn.metrics import roc_auc_score

from avlib.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from avlib.model import model_config, video_to_model_input
from avlib.paths import write_csv


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the epoch and batch."""


class ResumeError(RuntimeError):
    """The checkpoint to resume from was trained with other settings."""


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


def safe_auc(labels, probs) -> float:
    """ROC AUC, or NaN when only one class is present."""
    labels = np.asarray(labels)
    return float(roc_auc_score(labels, probs)) if len(np.unique(labels)) == 2 else float("nan")


def _bar(loader, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch")


def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, loader,
                    device: torch.device, epoch: int, *, amp: bool = False, channels_last: bool = True,
                    progress: bool = False) -> dict:
    """One pass over `loader`; returns loss, accuracy, auc, seconds, clips_per_s.

    Raises NonFiniteLossError naming the epoch and batch when the loss is not finite (the
    step is not applied)."""
    model.train()
    total_loss, probs, labels_all, n = 0.0, [], [], 0
    start = time.perf_counter()
    for batch, (video, audio, labels) in enumerate(_bar(loader, f"epoch {epoch} train", progress)):
        video = video_to_model_input(video, device, channels_last=channels_last)
        audio, labels = audio.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(video, audio)
        loss = criterion(logits.float(), labels)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"non-finite loss ({loss.item()}) at epoch {epoch}, batch {batch}; "
                                     f"try amp=false or a lower lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
        if not torch.isfinite(grad_norm):
            raise NonFiniteLossError(f"non-finite gradients at epoch {epoch}, batch {batch} (loss {loss.item():.4f}); "
                                     f"the step was not applied" + ("; try amp=false" if amp else ""))
        optimizer.step()
        total_loss += loss.item() * len(labels)
        n += len(labels)
        probs.append(torch.softmax(logits.detach().float(), 1)[:, 1].cpu())
        labels_all.append(labels.cpu())
    seconds = time.perf_counter() - start
    probs, labels_all = torch.cat(probs).numpy(), torch.cat(labels_all).numpy()
    return dict(loss=total_loss / max(n, 1), accuracy=float(((probs >= 0.5) == labels_all).mean()),
                auc=safe_auc(labels_all, probs), seconds=seconds, clips_per_s=n / seconds)


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device, *, amp: bool = False, channels_last: bool = True,
            criterion: nn.Module | None = None, progress: bool = False, desc: str = "predict") -> dict:
    """P(fake) for every clip in loader order: dict(probs, labels, loss, seconds, clips_per_s)."""
    model.eval()
    probs, labels_all, total_loss = [], [], 0.0
    start = time.perf_counter()
    for video, audio, labels in _bar(loader, desc, progress):
        video = video_to_model_input(video, device, channels_last=channels_last)
        audio, labels = audio.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(video, audio).float()
        if criterion is not None:
            total_loss += criterion(logits, labels).item() * len(labels)
        probs.append(torch.softmax(logits, 1)[:, 1].cpu())
        labels_all.append(labels.cpu())
    seconds = time.perf_counter() - start
    probs = torch.cat(probs).numpy() if probs else np.zeros(0)
    labels_all = torch.cat(labels_all).numpy() if labels_all else np.zeros(0, int)
    return dict(probs=probs, labels=labels_all, loss=total_loss / max(len(labels_all), 1),
                seconds=seconds, clips_per_s=len(labels_all) / seconds if seconds else float("nan"))


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
    """The newest complete checkpoint (last.pt, else the newest epoch file that loads), or None.

    Raises ResumeError if it was trained with another model or cache (see RESUME_KEYS)."""
    candidates = [checkpoint_dir / "last.pt"] + sorted(checkpoint_dir.glob("epoch_*.pt"), reverse=True)
    for path in candidates:
        if not path.is_file():
            continue
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            print(f"warning: {e}; trying the previous checkpoint")
            continue
        for key in RESUME_KEYS:
            if state["identity"].get(key) != identity.get(key):
                raise ResumeError(f"{path} was trained with {key}={state['identity'].get(key)} but this run has "
                                  f"{key}={identity.get(key)}; use another run_name or resume=false")
        return state
    return None


def fit(model: nn.Module, train_loader, val_loader, *, run_dir: str | Path, epochs: int, lr: float,
        device: torch.device, seed: int = 0, amp: bool = False, channels_last: bool = True,
        balance: str = "none", select_metric: str = "val_accuracy", keep_last: int = 2, resume: bool = True,
        identity: dict | None = None, params: dict | None = None, progress: bool = True,
        log=print) -> pd.DataFrame:
    """Train to `epochs` (resuming from the last complete epoch when resume=True) and return
    the history. Writes run_dir/history.csv and run_dir/checkpoints/{last,best,epoch_NNN}.pt.

    `identity` (plain data: model config, cache settings) must match to resume; `params` is
    stored in each checkpoint as the parameters it was trained with."""
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for stale in ckpt_dir.glob(".*.tmp"):
        stale.unlink()
    identity = _plain(identity or {"model": model_config(model)})
    params = _plain(params or {})
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last_3d)
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
    for epoch in range(start_epoch, epochs + 1):
        sampler = train_loader.sampler
        if hasattr(sampler, "generator") and sampler.generator is not None:
            sampler.generator.manual_seed(seed * 100003 + epoch)   # same order whether resumed or not
        tr = train_one_epoch(model, criterion, optimizer, train_loader, device, epoch, amp=amp,
                             channels_last=channels_last, progress=progress)
        va = predict(model, val_loader, device, amp=amp, channels_last=channels_last, criterion=val_criterion,
                     progress=progress, desc=f"epoch {epoch} val")
        row = dict(epoch=epoch, train_loss=tr["loss"], train_accuracy=tr["accuracy"], train_auc=tr["auc"],
                   val_loss=va["loss"], val_accuracy=float(((va["probs"] >= 0.5) == va["labels"]).mean()),
                   val_auc=safe_auc(va["labels"], va["probs"]), lr=optimizer.param_groups[0]["lr"],
                   seconds=tr["seconds"] + va["seconds"], train_clips_per_s=tr["clips_per_s"], balance=balance)
        history.append(_plain(row))
        value = row[select_metric]
        better = (best["value"] is None or (value < best["value"] if select_metric == "val_loss" else value > best["value"]))
        if better and not np.isnan(value):
            best = {"metric": select_metric, "value": float(value), "epoch": epoch}
            save_checkpoint(ckpt_dir / "best.pt", {"model": model.state_dict(), "model_config": model_config(model),
                                                   "epoch": epoch, "best": best, "params": params})
        full = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "best": best,
                "history": history, "rng": _rng_state(), "identity": identity, "params": params,
                "model_config": model_config(model)}
        if keep_last > 0:
            save_checkpoint(ckpt_dir / f"epoch_{epoch:03d}.pt", full)
            for old in sorted(ckpt_dir.glob("epoch_*.pt"))[:-keep_last]:
                old.unlink()
        save_checkpoint(ckpt_dir / "last.pt", full)
        write_csv(run_dir / "history.csv", pd.DataFrame(history))
        log(f"epoch {epoch}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f}  "
            f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f} auc {row['val_auc']:.3f}  "
            f"{row['train_clips_per_s']:.1f} clips/s" + ("  *best*" if best["epoch"] == epoch else ""))
    frame = pd.DataFrame(history)
    write_csv(run_dir / "history.csv", frame)
    return frame
