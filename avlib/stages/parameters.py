"""Every notebook's parameters, declared once.

Each declaration is the single source of: the notebook's parameters cell (a test holds the
cell equal to `parameters_cell`), the check in the notebook's next cell (`notebook_params`),
the keywords of the stage function (`avlib.stages.stage`), the pipeline's check of a params
file (`check_params_file`) and what `python -m avlib.train` reads from one (`stage_values`).
"""
from __future__ import annotations

from avlib.core.errors import ParameterError
from avlib.core.params import (
    Param,
    amp,
    check_declared,
    choice,
    device,
    flag,
    folder_name,
    fraction,
    integer,
    named_paths,
    nonnegative,
    number,
    probability,
    text,
)
from avlib.dataio.augment import AUGMENTATIONS, parse_augment
from avlib.dataio.synthetic_styles import STYLES, parse_styles
from avlib.scoring.calibration import CALIBRATIONS, THRESHOLD_RULES

DATASETS = ("fakeavceleb", "cremad", "casualconv", "folder", "synthetic", "dummy")
SPLITS = ("test", "val", "train", "all")
IN_DOMAIN_SETS = ("train", "val", "test", "all")     # names an external set may not take: comparison.csv's in-domain rows


def _augment(name, value):
    try:
        if not isinstance(value, str):
            raise ValueError(f"must be a comma-separated string, got {value!r}")
        parse_augment(value)
    except ValueError as e:
        raise ParameterError(f"parameter `{name}` {e}") from None


def _styles(name, value):
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        parse_styles(value)
    except ValueError:
        raise ParameterError(f"parameter `{name}` must be comma-separated distinct styles among "
                             f"{', '.join(STYLES)}; got {value!r}") from None


def _external_sets(name, value):
    named_paths(value, parameter=name, reserved=IN_DOMAIN_SETS, what="external set")


def _run_name(help: str) -> Param:
    return text("run_name", "fakeavceleb", help, folder_name)


RESULTS_DIR = text("results_dir", "results", "parent of the run folders")
CACHE_DIR = text("cache_dir", "", "clip cache; empty: the one 01_preprocess recorded for this run")
DEVICE = Param("device", str, "auto", "where to compute", device, allowed="auto | cpu | cuda | cuda:N")
WORKERS = integer("workers", 2, "DataLoader worker processes")
AMP = Param("amp", str, "auto", "bf16 autocast where the hardware runs it natively (CUDA with bf16, a CPU "
            "with avx512_bf16/amx_bf16), else fp32", amp, allowed="auto | true | false")

DECLARATIONS: dict[str, tuple[Param, ...]] = {
    "01_preprocess": (
        _run_name("results/<run_name>/ receives preprocess.json"),
        choice("dataset", "fakeavceleb", "which indexer reads data_dir", DATASETS),
        text("data_dir", "data", "dataset root; relative paths are taken from the repository root"),
        text("cache_dir", "", "clip cache; empty: cache/<dataset>-T<frames>-<size>px-<fps>fps-mfcc<n>x<steps>"),
        RESULTS_DIR,
        integer("frames", 128, "T, frames per clip window", minimum=1),
        integer("size", 112, "frames are centre-cropped to a square and resized to size x size", minimum=16),
        number("fps", 25.0, "frame rate of the window grid; sources are resampled by timestamp"),
        integer("n_mfcc", 40, "MFCC coefficients", minimum=1),
        integer("mfcc_steps", 200, "S, MFCC steps spanning exactly the video window", minimum=1),
        choice("window", "start", "where the window sits in the clip", ("start", "center")),
        flag("skip_silence", False, "start the window after leading silence (FakeAVCeleb shortcut audit)"),
        flag("face_crop", False, "crop to the Haar-detected face; FakeAVCeleb clips are already face-centred"),
        integer("workers", 2, "decoding processes"),
        integer("limit", 0, "use at most this many clips, 0 for all; dataset dummy: random clips, 0 for 48"),
        integer("seed", 0, "split seed, and the synthetic corpus seed"),
        integer("shard", 0, "this machine's shard of the corpus (0-based)"),
        integer("num_shards", 1, "machines sharing the corpus (each caches the clips of its shard)", minimum=1),
        number("val_fraction", 0.15, "share of identities in the validation split", fraction),
        number("test_fraction", 0.15, "share of identities in the test split", fraction),
        integer("identities", 60, "dataset synthetic only: identities to generate", minimum=1),
        text("corpus_styles", "studio", "dataset synthetic only: comma-separated generator styles, identities "
             "dealt in turn", _styles, allowed=" | ".join(STYLES)),
        flag("audio_swap", False, "dataset synthetic only: an evaluation corpus of real clips and the same videos "
             "with another identity's real audio (needs its own data_dir)"),
        flag("real_only", False, "cache only the real clips (a calibration set for 04's calibration_cache_dir)"),
    ),
    "02_build_model": (
        _run_name("run folder under results_dir; 01_preprocess must have run for it"),
        RESULTS_DIR,
        CACHE_DIR,
        choice("modality", "av", "ablations zero the other branch's features", ("av", "video", "audio")),
        choice("video_encoder", "r2plus1d_18", "R(2+1)D-18 (the seed) or a small per-frame CNN over frames and "
               "their differences (the demos')", ("r2plus1d_18", "framediff")),
        flag("video_head", False, "an auxiliary \"video manipulated?\" logit for 03's video_loss (per-modality "
             "labels: FVRA, FVFA)"),
        text("video_weights", "", "optional local R(2+1)D-18 state dict to initialise the video encoder"),
        Param("device", str, "cpu", "for the shape check", device, allowed="auto | cpu | cuda | cuda:N"),
        choice("fusion", "concat", "concat (the seed) or sync: adds a lip-voice synchrony branch (needs fps of 10 "
               "or more and a cache with waveforms)", ("concat", "sync")),
        integer("trunk_stride", 1, "feed the video trunk every n-th frame (the sync branch sees all)", minimum=1),
        text("sync_weights", "", "fusion sync: best.pt of an `objective: sync` run to initialise the sync branch"),
    ),
    "03_train": (
        _run_name("run folder under results_dir; 01 and 02 must have run for it"),
        RESULTS_DIR,
        CACHE_DIR,
        integer("epochs", 100, "train up to this epoch (a resumed run trains only the missing ones)", minimum=1),
        integer("batch_size", 4, "clips per batch", minimum=1),
        number("lr", 1e-4, "Adam learning rate"),
        integer("seed", 0, "seeds python, numpy, torch and the shuffling order"),
        DEVICE,
        WORKERS,
        AMP,
        flag("channels_last", True, "channels_last memory format for the video encoder"),
        flag("compile", False, "torch.compile the training step (first step compiles; pays on GPUs, not on a "
             "2-core CPU)"),
        choice("balance", "none", "class imbalance handling", ("none", "weights", "sampler")),
        choice("select_metric", "val_accuracy", "picks best.pt (the seed used accuracy)",
               ("val_accuracy", "val_auc", "val_loss")),
        integer("keep_last", 2, "per-epoch checkpoints to keep (each holds model and optimizer state)"),
        flag("resume", True, "continue from results/<run_name>/checkpoints/last.pt when present"),
        flag("deterministic", False, "ask torch for deterministic kernels (slower; for exact reruns)"),
        flag("live_curves", True, "redraw the training curves after every epoch when run in JupyterLab "
             "(headless runs never do)", stage=False),
        choice("objective", "classify", "sync trains only the sync branch, on real clips only (offset InfoNCE; "
               "any cache)", ("classify", "sync")),
        number("sync_weight", 1.0, "fusion sync models: weight of the offset loss on real clips beside the "
               "cross-entropy", nonnegative),
        text("augment", "", "training clips only, comma-separated (what cameras and uploads do); empty for none",
             _augment, allowed=", ".join(AUGMENTATIONS)),
        number("video_loss", 0.0, "weight of the video head's loss (model built with video_head): is the video "
               "manipulated (FVRA, FVFA, self-blends)", nonnegative),
        number("self_blend", 0.0, "probability that a real training clip becomes a self-blended fake (its own "
               "lower face restyled and blended back; avlib.dataio.augment)", probability),
    ),
    "04_evaluate": (
        _run_name("run folder under results_dir; 03_train must have run for it"),
        RESULTS_DIR,
        CACHE_DIR,
        choice("split", "test", "split to report", SPLITS),
        integer("batch_size", 8, "clips per batch", minimum=1),
        DEVICE,
        WORKERS,
        AMP,
        flag("compile", False, "torch.compile the scoring model (first batch of each shape compiles)"),
        text("generalization_cache_dir", "", "optional cache of a real-only corpus made by 01_preprocess: "
             "false-positive rates"),
        text("external_cache_dirs", "", "comma-separated caches of labelled corpora made by 01_preprocess with "
             "the run's settings, each named by its folder or by a prefix ending in an equals sign: full metrics "
             "at the val threshold", _external_sets),
        choice("calibration", "temperature", "maps P(fake) to calibrated probabilities, fitted on the val split",
               CALIBRATIONS),
        choice("threshold_rule", "balanced", "the decision threshold on val: max balanced accuracy, or at most "
               "target_fpr of the real clips called fake", THRESHOLD_RULES),
        number("target_fpr", 0.05, "the rate of real clips the fpr rule and calibration_cache_dir may call fake "
               "(a sync model: one test over P(fake) and its sync evidence there; under the balanced rule its "
               "sync evidence alone at target_fpr / 2)", fraction),
        text("calibration_cache_dir", "", "optional cache of real clips only from your target domain (01_preprocess "
             "with real_only): the thresholds set there at target_fpr, the rate shown on its held-out half"),
    ),
    "05_plots": (
        _run_name("run folder under results_dir; 04_evaluate must have run for it"),
        RESULTS_DIR,
    ),
}
NOTEBOOKS = tuple(DECLARATIONS)


def _check_relations(values: dict) -> None:
    """Rules between parameters of one notebook."""
    if "shard" in values and "num_shards" in values and values["shard"] >= values["num_shards"]:
        raise ParameterError(f"parameter `shard` must be < num_shards ({values['num_shards']}), got {values['shard']}")
    if values.get("dataset") == "synthetic" and "corpus_styles" in values and "identities" in values:
        n_styles = len(values["corpus_styles"].split(","))
        if values["identities"] < max(2, n_styles):
            raise ParameterError(f"parameter `identities` ({values['identities']}) must be at least 2 and at least "
                                 f"the number of corpus_styles ({n_styles}) for dataset synthetic")
    if values.get("val_fraction", 0) + values.get("test_fraction", 0) >= 1:
        raise ParameterError("parameters `val_fraction` + `test_fraction` must leave some clips for training")


def declaration(notebook: str) -> tuple[Param, ...]:
    """The parameters of `notebook` ('03_train'); raises ParameterError for an unknown notebook."""
    try:
        return DECLARATIONS[notebook]
    except KeyError:
        raise ParameterError(f"no notebook {notebook!r}; the notebooks are {', '.join(NOTEBOOKS)}") from None


def check(notebook: str, values: dict) -> dict:
    """`values` with the declared default for every parameter of `notebook` it lacks, each
    checked. Raises ParameterError naming the first bad parameter, or one `notebook` does not
    declare."""
    full = check_declared(declaration(notebook), values, notebook)
    _check_relations(full)
    return full


def stage_values(notebook: str, values: dict) -> dict:
    """The checked parameters that `notebook`'s stage function takes (without display switches such
    as live_curves), from `values`, which may hold other notebooks' parameters too (a params file)."""
    names = {p.name for p in declaration(notebook)}
    full = check(notebook, {k: v for k, v in values.items() if k in names})
    return {p.name: full[p.name] for p in declaration(notebook) if p.stage}


def notebook_params(notebook: str, namespace: dict) -> dict:
    """What the notebook's second cell calls with its globals(): the values of its parameters
    cell (after papermill's injected values), checked; returns those its stage takes.
    Raises ParameterError naming a bad parameter."""
    missing = [p.name for p in declaration(notebook) if p.name not in namespace]
    if missing:
        raise ParameterError(f"{notebook}'s parameters cell lacks {', '.join(missing)}: restore the cell from "
                             f"avlib.stages.parameters.parameters_cell({notebook!r})")
    return stage_values(notebook, {p.name: namespace[p.name] for p in declaration(notebook)})


def parameters_cell(notebook: str) -> str:
    """The source of `notebook`'s parameters cell: one `name: type = default  # help` line per parameter."""
    return "\n".join(p.cell_line() for p in declaration(notebook))


def check_params_file(params: dict, *, extra_keys: tuple[str, ...] = ()) -> dict[str, dict]:
    """{notebook: its checked parameters} from a params file's mapping, before any notebook runs.
    Raises ParameterError for a key no notebook declares (papermill itself would only warn) and
    for a bad value, naming it."""
    declared = {p.name for params_ in DECLARATIONS.values() for p in params_}
    unknown = sorted(set(params) - declared - set(extra_keys))
    if unknown:
        raise ParameterError(f"unknown parameter(s) {', '.join(unknown)}: no notebook declares them")
    out = {}
    for notebook, decl in DECLARATIONS.items():
        names = {p.name for p in decl}
        given = {k: v for k, v in params.items() if k in names}
        check(notebook, given)
        out[notebook] = given
    return out
