"""Parameter checks shared by the notebooks: a bad value stops a notebook in its first cells
with a message that names the parameter and what is allowed."""
from __future__ import annotations

from pathlib import Path

import yaml

DATASETS = ("fakeavceleb", "cremad", "casualconv", "folder", "synthetic", "dummy")
WINDOWS = ("start", "center")
DEVICES = ("auto", "cpu", "cuda")
BALANCE = ("none", "weights", "sampler")
SELECT_METRICS = ("val_accuracy", "val_auc", "val_loss")
SPLITS = ("train", "val", "test", "all")


class ParameterError(ValueError):
    """A notebook parameter has a value the pipeline cannot use."""


def _int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ParameterError(f"parameter `{name}` must be an integer >= {minimum}, got {value!r}")


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ParameterError(f"parameter `{name}` must be a number > 0, got {value!r}")


def _nonnegative(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ParameterError(f"parameter `{name}` must be a number >= 0, got {value!r}")


def _fraction(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ParameterError(f"parameter `{name}` must be a number in [0, 1), got {value!r}")


def _choice(choices):
    def check(name, value):
        if value not in choices:
            raise ParameterError(f"parameter `{name}` must be one of {', '.join(choices)}; got {value!r}")
    return check


def _device(name, value):
    if not isinstance(value, str) or not (value in DEVICES or value.startswith("cuda:")):
        raise ParameterError(f"parameter `{name}` must be auto, cpu, cuda or cuda:N; got {value!r}")


def _bool(name, value):
    if not isinstance(value, bool):
        raise ParameterError(f"parameter `{name}` must be true or false, got {value!r}")


def _external_sets(name, value):
    from avlib.evaluate import external_sets

    if not isinstance(value, str):
        raise ParameterError(f"parameter `{name}` must be a string of comma-separated cache folders, got {value!r}")
    try:
        external_sets(value)
    except ValueError as err:
        raise ParameterError(str(err)) from None


def _amp(name, value):
    if not (isinstance(value, bool) or value == "auto"):
        raise ParameterError(f"parameter `{name}` must be true, false or auto, got {value!r}")


def _probability(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ParameterError(f"parameter `{name}` must be a probability in [0, 1], got {value!r}")


def _augment(name, value):
    from avlib.augment import parse_augment

    try:
        if not isinstance(value, str):
            raise ValueError(f"must be a comma-separated string, got {value!r}")
        parse_augment(value)
    except ValueError as e:
        raise ParameterError(f"parameter `{name}` {e}") from None


def _styles(name, value):
    from avlib.synthetic_styles import STYLES, parse_styles

    try:
        if not isinstance(value, str):
            raise ValueError(value)
        parse_styles(value)
    except ValueError:
        raise ParameterError(f"parameter `{name}` must be comma-separated distinct styles among "
                             f"{', '.join(STYLES)}; got {value!r}") from None


def _name(name, value):
    if not isinstance(value, str) or not value or "/" in value or value.startswith("."):
        raise ParameterError(f"parameter `{name}` must be a plain folder name, got {value!r}")


RULES = {
    "run_name": _name,
    "dataset": _choice(DATASETS),
    "frames": lambda n, v: _int(n, v, 1),
    "size": lambda n, v: _int(n, v, 16),
    "fps": _positive,
    "n_mfcc": lambda n, v: _int(n, v, 1),
    "mfcc_steps": lambda n, v: _int(n, v, 1),
    "epochs": lambda n, v: _int(n, v, 1),
    "batch_size": lambda n, v: _int(n, v, 1),
    "lr": _positive,
    "seed": lambda n, v: _int(n, v, 0),
    "device": _device,
    "workers": lambda n, v: _int(n, v, 0),
    "limit": lambda n, v: _int(n, v, 0),
    "window": _choice(WINDOWS),
    "skip_silence": _bool,
    "face_crop": _bool,
    "shard": lambda n, v: _int(n, v, 0),
    "num_shards": lambda n, v: _int(n, v, 1),
    "val_fraction": _fraction,
    "test_fraction": _fraction,
    "identities": lambda n, v: _int(n, v, 1),
    "corpus_styles": _styles,
    "audio_swap": _bool,
    "resume": _bool,
    "deterministic": _bool,
    "amp": _amp,
    "channels_last": _bool,
    "compile": _bool,
    "keep_last": lambda n, v: _int(n, v, 0),
    "balance": _choice(BALANCE),
    "select_metric": _choice(SELECT_METRICS),
    "split": _choice(SPLITS),
    "modality": _choice(("av", "video", "audio")),
    "fusion": _choice(("concat", "sync")),
    "trunk_stride": lambda n, v: _int(n, v, 1),
    "video_encoder": _choice(("r2plus1d_18", "framediff")),
    "objective": _choice(("classify", "sync")),
    "sync_weight": _nonnegative,
    "augment": _augment,
    "self_blend": _probability,
    "video_head": _bool,
    "video_loss": _nonnegative,
    "live_curves": _bool,
    "external_cache_dirs": _external_sets,
}


def check(**params) -> dict:
    """Check every named parameter that has a rule; return them unchanged.

    Raises ParameterError naming the first bad parameter.
    """
    for name, value in params.items():
        rule = RULES.get(name)
        if rule is not None:
            rule(name, value)
    if "shard" in params and "num_shards" in params and params["shard"] >= params["num_shards"]:
        raise ParameterError(f"parameter `shard` must be < num_shards ({params['num_shards']}), got {params['shard']}")
    if params.get("dataset") == "synthetic" and "corpus_styles" in params and "identities" in params:
        n_styles = len(params["corpus_styles"].split(","))
        if params["identities"] < max(2, n_styles):
            raise ParameterError(f"parameter `identities` ({params['identities']}) must be at least 2 and at least "
                                 f"the number of corpus_styles ({n_styles}) for dataset synthetic")
    if params.get("val_fraction", 0) + params.get("test_fraction", 0) >= 1:
        raise ParameterError("parameters `val_fraction` + `test_fraction` must leave some clips for training")
    return params


def load_params(path: str | Path, _chain: tuple = ()) -> dict:
    """Read a params/*.yaml file into a dict; raises ParameterError if it is not a mapping.

    A file may start from another: `extends: demo_sync.yaml` (a path relative to the file)
    reads that file first, then the file's own keys replace its keys (a `prepare` list is
    replaced whole, not merged). So a variant of a run says only how it differs."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ParameterError(f"{path}: expected a mapping of parameter names to values")
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ParameterError(f"{path}: `extends` must name a params file, got {base!r}")
    target = path.parent / base
    chain = (*_chain, path.resolve())
    if target.resolve() in chain:
        raise ParameterError(f"{path}: `extends: {base}` comes back to a file it started from "
                             f"({' -> '.join(p.name for p in (*chain, target))})")
    if not target.is_file():
        raise ParameterError(f"{path}: `extends` names {target}, which is not a file")
    return {**load_params(target, chain), **data}


def pick_device(device: str):
    """Return the torch.device for `device` ('auto' takes CUDA when present)."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ParameterError(f"parameter `device` is {device!r} but no CUDA device is available")
    return torch.device(device)
