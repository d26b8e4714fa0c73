"""Datasets and loaders over the clip cache. The Dataset memory-maps each clip's files
(decompressing the LZ4-framed video into a fresh array) and returns uint8 video; conversion
to float in [0, 1] happens on the device (avlib.models.detector.video_to_model_input)."""
from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, WeightedRandomSampler
from torch.utils.data.distributed import DistributedSampler

from avlib.dataio import cache
from avlib.dataio.augment import augment_clip, parse_augment, self_blend

VIDEO_FAKE = ("FVRA", "FVFA")          # FakeAVCeleb's categories whose video is manipulated
AUDIO_ONLY_FAKE = ("RVFA",)


class ModalityLabelError(ValueError):
    """A fake clip's category does not say whether its video was manipulated."""


class CachedClips(Dataset):
    """Clips of one split of a cache: (video uint8 (3,T,H,W), mfcc float32 (S,n), label int), and
    with `waveform=True` a fourth item, the window's waveform float32 (N,) in [-1, 1] (what sync
    models read). Raises CacheError when a waveform is asked of a cache that keeps none.
    `real_only` keeps the real clips (label 0): what the sync objective trains on.

    Training augmentation (avlib.dataio.augment): `augment` names what to apply to every clip;
    `self_blend` is the probability that a real clip is loaded as a self-blended fake (label 1).
    Only a training loader's keys augment: dataset[(i, token)] (what `make_loader` asks for when
    the dataset augments) draws from (token, i); dataset[i] is the clip as cached. `labels` stay
    the cache's labels.

    `video_labels` appends a last item, 1 when the clip's video is manipulated (FakeAVCeleb's
    FVRA and FVFA, and self-blended clips), 0 when it is not (real clips, RVFA): the target of a
    video head (03's `video_loss`). Raises ModalityLabelError (a ValueError) naming the
    categories when a fake clip's category does not say which modality was manipulated.

    `index` is the DataFrame of the clips in order (for predictions.csv)."""

    def __init__(self, cache_dir: str | Path, split: str = "train", *, waveform: bool = False,
                 real_only: bool = False, augment=(), self_blend: float = 0.0, video_labels: bool = False):
        self.augment, self.self_blend = parse_augment(augment), float(self_blend)
        if not 0.0 <= self.self_blend <= 1.0:
            raise ValueError(f"parameter `self_blend` must be a probability in [0, 1], got {self_blend!r}")
        self.cache_dir = Path(cache_dir)
        self.manifest = cache.read_manifest(self.cache_dir)
        self.waveform = waveform
        if waveform and not cache.has_waveform(self.manifest):
            cache.read_waveform(self.cache_dir, "", self.manifest)          # raises the CacheError that says what to run
        index = cache.read_index(self.cache_dir)
        index = index if split == "all" else index[index["split"] == split]
        self.index = (index[index["label"] == 0] if real_only else index).reset_index(drop=True)
        self.split = split
        self.labels = self.index["label"].to_numpy(dtype=np.int64)
        self._ids = self.index["clip_id"].tolist()
        self.video_labels = None
        if video_labels:
            categories = self.index["category"].astype(str)
            unknown = sorted(set(categories[(self.labels == 1) & ~categories.isin(VIDEO_FAKE + AUDIO_ONLY_FAKE)]))
            if unknown:
                raise ModalityLabelError(f"{self.cache_dir}: fake clips of categories {', '.join(unknown)} do not say whether "
                                 f"their video was manipulated (known: {', '.join(VIDEO_FAKE + AUDIO_ONLY_FAKE)})")
            self.video_labels = categories.isin(VIDEO_FAKE).to_numpy(dtype=np.int64)

    @property
    def augments(self) -> bool:
        return bool(self.augment) or self.self_blend > 0

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, key):
        i, token = key if isinstance(key, tuple) else (key, None)
        video, mfcc = cache.read_clip(self.cache_dir, self._ids[i], self.manifest)
        if not video.flags.writeable:          # a memory map (older caches): copy out of the file
            video = np.array(video)
        label = int(self.labels[i])
        video_label = int(self.video_labels[i]) if self.video_labels is not None else None
        if self.augments and token is not None:
            rng = np.random.default_rng([int(token), int(i)])
            if label == 0 and self.self_blend > 0 and rng.random() < self.self_blend:
                video, label = self_blend(video, rng), 1
                video_label = None if video_label is None else 1
            video = augment_clip(video, self.augment, rng)
        item = (torch.from_numpy(video), torch.from_numpy(np.array(mfcc)), label)
        if self.waveform:
            wave = cache.read_waveform(self.cache_dir, self._ids[i], self.manifest)
            item += (torch.from_numpy(wave.astype(np.float32) / 32768.0),)
        if video_label is not None:
            item += (video_label,)
        return item


def mfcc_statistics(dataset: CachedClips, max_clips: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Per-coefficient mean and std of the MFCCs of (up to `max_clips` evenly spaced) clips."""
    step = max(1, len(dataset) // max_clips)
    frames = np.concatenate([cache.read_clip(dataset.cache_dir, cid, dataset.manifest)[1]
                             for cid in dataset._ids[::step]])
    return frames.mean(0), frames.std(0)


class FloatClips(Dataset):
    """The seed's contract: float32 video in [0, 1] straight from the loader (4x the bytes).
    Kept for the benchmark's side-by-side run of the seed's loop."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        video, mfcc, label = self.base[i]
        return video.float() / 255.0, mfcc, label


class RandomClips(Dataset):
    """Random tensors of the right shapes (uint8 video), generated on the fly; for benchmarks."""

    def __init__(self, n: int, frames: int, size: int, n_mfcc: int = 40, steps: int = 200, seed: int = 0):
        self.n, self.shape, self.mfcc_shape, self.seed = n, (3, frames, size, size), (steps, n_mfcc), seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(self.seed * 100003 + i)
        video = torch.randint(0, 256, self.shape, dtype=torch.uint8, generator=g)
        return video, torch.randn(self.mfcc_shape, generator=g), int(torch.randint(0, 2, (1,), generator=g))


class SeededSampler(Sampler):
    """Wraps a training sampler to yield (index, token) keys: token is drawn once per pass from
    the wrapped sampler's generator (reseeded every epoch by `fit`), or is seed x 100003 + epoch
    for a DistributedSampler. A clip's augmentation then depends on the epoch and its index only,
    whichever worker loads it and whether the run was resumed. `generator` and `set_epoch`
    reach the wrapped sampler."""

    def __init__(self, base: Sampler):
        self.base = base

    def __getattr__(self, name):
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def __len__(self) -> int:
        return len(self.base)

    def __iter__(self):
        generator = getattr(self.base, "generator", None)
        if generator is not None:
            token = int(torch.randint(2 ** 62, (1,), generator=generator))
        else:
            token = int(self.base.seed) * 100003 + int(self.base.epoch)
        for i in self.base:
            yield (int(i), token)


def make_loader(dataset: Dataset, *, batch_size: int, train: bool, workers: int = 0,
                device: torch.device | None = None, balance: str = "none", seed: int = 0) -> DataLoader:
    """A DataLoader for training (shuffled, or class-balanced when balance='sampler') or
    evaluation (in order). The shuffling generator is reseeded each epoch by `fit`, so a
    resumed run sees the same order as an uninterrupted one."""
    sampler = None
    generator = torch.Generator().manual_seed(seed)

    if train and dist.is_available() and dist.is_initialized():

        if balance == "sampler":
            raise ValueError("parameter `balance`: 'sampler' is not supported with several processes; use 'weights'")
        sampler = DistributedSampler(dataset, shuffle=True, seed=seed)   # fit() calls set_epoch
    elif train:
        labels = getattr(dataset, "labels", None)
        if balance == "sampler" and labels is not None and len(np.unique(labels)) > 1:
            counts = np.bincount(labels, minlength=2)
            weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
            sampler = WeightedRandomSampler(weights, num_samples=len(labels), replacement=True, generator=generator)
        else:
            sampler = RandomSampler(dataset, generator=generator)
    if train and getattr(dataset, "augments", False):
        sampler = SeededSampler(sampler)
    pin = device is not None and device.type == "cuda"
    # Workers persist across epochs for training only: an evaluation loader makes one pass.
    return _CollectingLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
                      pin_memory=pin, persistent_workers=train and workers > 0, drop_last=False,
                      worker_init_fn=_leave_inherited_objects_alone if workers > 0 else None)


def shuffled_loader(dataset, *, batch_size: int, seed: int, workers: int = 0) -> DataLoader:
    """A training loader over a map-style dataset whose items depend only on their index (and an
    epoch the dataset holds): shuffled by a seeded generator, incomplete last batch dropped, in
    `workers` processes with make_loader's fork hygiene. Workers start afresh each epoch, so
    they see the dataset's new epoch."""
    return _CollectingLoader(dataset, batch_size=batch_size, shuffle=True,
                             generator=torch.Generator().manual_seed(seed), drop_last=True, num_workers=workers,
                             worker_init_fn=_leave_inherited_objects_alone if workers > 0 else None)


def stream_loader(dataset, *, workers: int = 0, prefetch: int = 4) -> DataLoader:
    """A loader for an IterableDataset that yields finished items one by one (no batching, no
    collation: numpy arrays stay numpy), in `workers` processes that keep at most `prefetch`
    items each ahead of the consumer, with the same fork hygiene as make_loader."""
    return _CollectingLoader(dataset, batch_size=None, collate_fn=_as_is, num_workers=workers,
                             prefetch_factor=prefetch if workers else None,
                             worker_init_fn=_leave_inherited_objects_alone if workers > 0 else None)


def _as_is(item):
    return item


class _CollectingLoader(DataLoader):
    """A DataLoader that collects the parent's garbage each time it starts its workers, so that
    earlier loaders' iterators die in the parent, not in these workers (see below)."""

    def __iter__(self):
        if self.num_workers > 0:
            gc.collect()
        return super().__iter__()


def _leave_inherited_objects_alone(worker_id: int) -> None:
    """A forked worker inherits the parent's uncollected garbage, earlier loaders' iterators
    included; when the worker's garbage collector reached one, its __del__ printed
    "AssertionError: can only test a child process". gc.freeze() keeps every inherited object
    out of the worker's collections from here on; a collection in the worker before this runs
    can still print it, so
    the loader also collects the parent's garbage before its workers fork (_CollectingLoader)."""
    gc.freeze()
