"""Temporal localisation of partial fakes, from videos to segments, metrics and figures:

    python -m avlib.localise params/demo_localise.yaml [--seeds 0,1,2]
    python -m avlib.localise --checkpoint results/demo_localise/localiser.pt VIDEO_OR_FOLDER ... [--out segments.json]
        [--resume] [--shard K/N] [--figure timelines.png]

The first form runs the chain (generating the synthetic partial fakes when `dataset` is
synthetic_partial and the folder is empty): index -> decode whole videos with per-frame masks
(avlib.dataio.video_cache) -> train the per-frame localiser -> segments of every test video ->
metrics.json (`localisation`), comparison.csv, the challenge submission, figures. With
--seeds, each seed's run goes to <run>/seed_<n>/ and <run>/seeds.csv and metrics.json hold the
mean, sd and 95 % t-interval of each figure over seeds.

The second form writes each video's segments ([confidence, start, end] in seconds, the
modality, the video-level score) as JSON, from a trained localiser. Each file is decoded once, in
windows (avlib.dataio.stream). For large folders (a challenge's test set): each video's result is
appended to <out>.partial.jsonl as it is done, `--resume` keeps what a killed run finished, and
`--shard K/N` scores every N-th video from the K-th of the sorted list (the N outputs together
are one run's).

Splits: the dataset's own. With train, val and test (the synthetic corpus; LAV-DF's
train/dev/test) they are used as they are. AV-Deepfake1M publishes labels for train and val
only: its val becomes the test set, as its papers report, and identities of train are held
out as val (`val_fraction`). A set without labels (AV-Deepfake1M's test) is scored and
written in the submission format, without metrics.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from avlib.core.checkpoint import load_checkpoint, save_checkpoint
from avlib.core.errors import ParameterError
from avlib.core.params import Param, amp, check_declared, choice, device, flag, folder_name, fraction, integer, load_params, number, text
from avlib.core.paths import portable, read_json, resolve, swap_folder, write_csv, write_json
from avlib.core.runtime import cpu_description, pick_device, resolve_amp
from avlib.dataio.cache import CacheError
from avlib.dataio.indexers import index_dataset
from avlib.dataio.records import DatasetIndexError
from avlib.dataio.inputs import expand_paths, parse_shard, take_shard
from avlib.dataio.synthetic_partial import PartialSpec, generate_partial, identity_split
from avlib.dataio.video_cache import cache_videos
from avlib.dataio.localisation_sets import write_submission
from avlib.evaluation.localise import localisation_metrics, localise_set, save_scored, submission, video_verdict
from avlib.figures.localise import plot_ap_iou, plot_localisation_timelines
from avlib.models.localiser import FrameLocaliser
from avlib.scoring.segments import proposal_modality, propose, stream_frame_probabilities, video_scores
from avlib.training.localise import train_localiser

DATASETS = ("synthetic_partial", "avdeepfake1m", "lavdf")
PARAMS: tuple[Param, ...] = (
    text("run_name", "localise", "results/<run_name>/ receives the run", folder_name),
    text("results_dir", "results", "parent of the run folders"),
    choice("dataset", "synthetic_partial", "which corpus data_dir holds (synthetic_partial: generated there when "
           "empty, in AV-Deepfake1M's layout)", DATASETS),
    text("data_dir", "data/partial", "dataset root; relative paths are taken from the repository root"),
    text("cache_dir", "", "whole-video cache; empty: cache/localise-<dataset>-<size>px-<fps>fps"),
    integer("identities", 24, "synthetic_partial only: identities to generate", minimum=1),
    number("seconds", 8.0, "synthetic_partial only: video length"),
    text("corpus_styles", "studio,newsroom,webcam", "synthetic_partial only: generator styles"),
    integer("val_identities", 3, "synthetic_partial only: identities in val"),
    integer("test_identities", 6, "synthetic_partial only: identities in test"),
    text("heldout_styles", "outdoor", "synthetic_partial only: styles of a second, test-only corpus never trained "
         "on; empty: none"),
    integer("heldout_identities", 6, "synthetic_partial only: identities of the held-out-style corpus"),
    number("val_fraction", 0.1, "avdeepfake1m only: share of train identities held out as val", fraction),
    number("fps", 25.0, "the model's frame rate (videos are resampled by timestamp)"),
    integer("size", 48, "frames are centre-cropped to a square and resized to size x size", minimum=32),
    integer("frames", 50, "frames per window the localiser sees (2 s at 25 fps)", minimum=8),
    integer("epochs", 10, "training epochs", minimum=1),
    integer("batch_size", 8, "windows per step", minimum=1),
    number("lr", 0.002, "peak learning rate (one-cycle)"),
    integer("windows_per_video", 3, "training windows drawn from each video per epoch", minimum=1),
    flag("sync_evidence", True, "feed the sync branch's per-frame evidence to the head"),
    flag("ablation", False, "also train without the sync evidence and report both"),
    integer("workers", 2, "processes that decode videos into the cache (and generate the synthetic corpus)", minimum=1),
    integer("loader_workers", 0, "DataLoader processes that read training windows from the cache (0: in the "
            "training process; the batches are the same with any number)", minimum=0),
    integer("seed", 0, "training seed (and the synthetic corpus's)"),
    Param("device", str, "auto", "where to compute", device, allowed="auto | cpu | cuda | cuda:N"),
    Param("amp", str, "auto", "bf16 autocast where the hardware runs it natively, else fp32", amp,
          allowed="auto | true | false"),
)
# Published localisation results, each on its own benchmark (not comparable with the synthetic corpus).
ANCHORS = (
    {"set": "published: BA-TFD+ on LAV-DF", "ap@0.5": 0.9630, "ap@0.75": 0.8496, "ap@0.95": 0.0444, "ar@100": 0.8162},
    {"set": "published: UMMAFormer on AV-Deepfake1M", "ap@0.5": 0.5164, "ap@0.75": 0.2807, "ap@0.95": 0.0158,
     "ar@50": 0.4407},
    {"set": "published: best 2025 challenge entry on AV-Deepfake1M++", "ap@0.5": 0.779, "ap@0.75": 0.665,
     "ap@0.9": 0.447, "ap@0.95": 0.343, "ar@50": 0.803},
)
HEADLINE = ("ap@0.5", "ap@0.75", "ap@0.9", "ap@0.95", "ar@50", "ar@10", "score")


def check_params(values: dict) -> dict:
    """The params file's values with defaults filled in, each checked; ParameterError names an
    unknown or bad one."""
    return check_declared(PARAMS, values, "python -m avlib.localise")


def parameters_cell() -> str:
    """The parameters cell of notebooks/localise.ipynb: one `name: type = default  # help` line each."""
    return "\n".join(p.cell_line() for p in PARAMS)


def notebook_params(namespace: dict) -> dict:
    """What notebooks/localise.ipynb's second cell calls with its globals(): its parameters
    (after papermill's injected values), checked."""
    return check_params({p.name: namespace[p.name] for p in PARAMS if p.name in namespace})


def corpus_spec(p: dict, *, heldout: bool = False) -> PartialSpec:
    """The synthetic corpus (or its held-out-style test corpus) the parameters ask for; raises
    ParameterError naming the parameter that cannot make one."""
    spec = _spec(p, heldout)
    try:
        spec.check()
    except ValueError as e:
        raise ParameterError(str(e)) from None
    if not heldout:
        splits = {identity_split(spec, i) for i in range(spec.identities)}
        if not {"train", "val"} <= splits:
            raise ParameterError(f"parameters `identities` ({spec.identities}), `val_identities` "
                                 f"({spec.val_identities}) and `test_identities` ({spec.test_identities}) leave no "
                                 f"{' and no '.join(sorted({'train', 'val'} - splits))} identity (each split takes "
                                 f"whole identities per style, rounded up: {len(spec.styles)} style(s))")
    return spec


def _spec(p: dict, heldout: bool) -> PartialSpec:
    if heldout:
        return PartialSpec(identities=p["heldout_identities"], seconds=p["seconds"], seed=p["seed"] + 1000,
                           styles=p["heldout_styles"], val_identities=0, test_identities=p["heldout_identities"])
    return PartialSpec(identities=p["identities"], seconds=p["seconds"], seed=p["seed"], styles=p["corpus_styles"],
                       val_identities=p["val_identities"], test_identities=p["test_identities"])


def roles(index: pd.DataFrame, p: dict) -> pd.DataFrame:
    """`index` with `split` renamed to our roles train / val / test (see the module docstring)."""
    index = index.copy()
    index["split"] = index["split"].replace({"dev": "val"})
    unlabelled = index["label"] < 0                  # scored for a submission, never measured; testA/testB kept apart
    index.loc[unlabelled, "split"] = "unlabelled_" + index.loc[unlabelled, "split"].astype(str)
    if p["dataset"] == "avdeepfake1m":
        index.loc[index["split"] == "val", "split"] = "test"
        train_ids = sorted(set(index.loc[index["split"] == "train", "identity"]))
        rng = np.random.default_rng(p["seed"])
        held = set(rng.choice(train_ids, max(1, int(round(p["val_fraction"] * len(train_ids)))), replace=False))
        index.loc[(index["split"] == "train") & index["identity"].isin(held), "split"] = "val"
    return index


def prepare(p: dict, log=print) -> dict[str, tuple[pd.DataFrame, Path, pd.DataFrame]]:
    """{set name: (cached index, cache folder, records that could not be decoded)}: `main`
    (train/val/test) and `heldout` when asked."""
    sets = {"main": (resolve(p["data_dir"]), False)}
    if p["dataset"] == "synthetic_partial" and p["heldout_styles"]:
        sets["heldout"] = (resolve(p["data_dir"]).with_name(resolve(p["data_dir"]).name + "_heldout"), True)
    out = {}
    for name, (folder, heldout) in sets.items():
        if p["dataset"] == "synthetic_partial":
            generate_partial(folder, corpus_spec(p, heldout=heldout), workers=p["workers"], progress=True)
        # the synthetic corpus is written in AV-Deepfake1M's layout, and read by its indexer
        records = index_dataset("avdeepfake1m" if p["dataset"] == "synthetic_partial" else p["dataset"], folder)
        where = hashlib.sha1(str(folder).encode()).hexdigest()[:8]       # two folders of one name never share a cache
        cache = resolve(p["cache_dir"]) if p["cache_dir"] else resolve("cache") / (
            f"localise-{p['dataset']}-{folder.name}-{where}-{p['size']}px-{p['fps']:g}fps")
        if name == "heldout" and p["cache_dir"]:
            cache = cache.with_name(cache.name + "_heldout")
        index, failures = cache_videos(records, folder, cache, fps=p["fps"], size=p["size"], workers=p["workers"])
        if len(failures):
            log(f"{len(failures)} video(s) of {portable(folder)} could not be decoded; see {portable(cache / 'failures.csv')}")
        if index.empty:
            raise ParameterError(f"parameter `data_dir`: no video of {folder} could be decoded")
        out[name] = (roles(index, p), cache, roles(failures, p) if len(failures) else failures)
    return out


def run_seed(p: dict, sets: dict, out_dir: Path, log=print, corpus_seed: int | None = None) -> dict:
    """Train one localiser (and its ablation when asked), evaluate every set, write the run's
    files into out_dir; returns metrics.json's content."""
    dev = pick_device(p["device"])
    use_amp = resolve_amp(p["amp"], dev, log=log)
    index, cache, _ = sets["main"]
    figures = out_dir / "figures"
    metrics = {"localisation": {}, "cpu": cpu_description(), "device": str(dev), "amp": use_amp,
               "params": p, "corpus_seed": corpus_seed if corpus_seed is not None else p["seed"],
               "not_decoded": {name: failures.groupby("split").size().to_dict() if len(failures) else {}
                               for name, (_, _, failures) in sets.items()}}
    variants = [("sync_evidence", p["sync_evidence"])] + ([("no_sync_evidence", False)] if p["ablation"] else [])
    for variant, sync in variants:
        log(f"training the localiser ({variant.replace('_', ' ')}), seed {p['seed']}")
        model, history = train_localiser(cache, index, frames=p["frames"], fps=p["fps"], epochs=p["epochs"],
                                         batch_size=p["batch_size"], lr=p["lr"], seed=p["seed"], device=dev,
                                         amp=use_amp, sync_evidence=sync, windows_per_video=p["windows_per_video"],
                                         workers=p["loader_workers"], log=log)
        main_variant = variant == variants[0][0]
        val_videos = localise_set(model, cache, index[index["split"] == "val"], device=dev, amp=use_amp)["videos"]
        if main_variant:
            write_csv(out_dir / "history.csv", history)
            threshold = video_verdict(val_videos, val_videos)["peak"]["threshold"]
            save_checkpoint(out_dir / "localiser.pt", {"model": model.state_dict(), "params": p,
                                                       "config": model_config(model), "video_threshold": threshold})
        results = {}
        for name, (set_index, set_cache, failures) in sets.items():
            unlabelled = sorted(s for s in set(set_index["split"]) | set(failures.get("split", [])) if s.startswith("unlabelled_"))
            for split in ["test"] + (unlabelled if main_variant else []):
                part = set_index[set_index["split"] == split]
                if part.empty:
                    continue
                scored = localise_set(model, set_cache, part, device=dev, amp=use_amp)
                suffix = name if split == "test" else f"{name}_{split}"
                if split == "test":
                    results[name] = {**localisation_metrics(part, scored),
                                     "video_verdict": video_verdict(val_videos, scored["videos"])}
                if main_variant:
                    # every video of the split, an undecodable one with no segment: the scorer needs them all
                    lost = failures[failures["split"] == split]["file"].tolist() if len(failures) else []
                    write_submission({f: [tuple(r) for r in rows] for f, rows in submission(scored).items()},
                                     out_dir / f"segments_{suffix}.json", files=part["file"].tolist() + lost)
                    write_csv(out_dir / f"videos_{suffix}.csv", scored["videos"])
                    if split == "test":
                        save_scored(out_dir / f"frames_{suffix}.npz", part, scored)
                        plot_localisation_timelines(part, scored, figures, fps=p["fps"],
                                                    name=f"localisation_timelines_{name}")
        metrics["localisation"][variant] = results
    main = metrics["localisation"][variants[0][0]]
    if main:
        plot_ap_iou({name: r["ap_by_iou"] for name, r in main.items()}, figures)
    write_json(out_dir / "metrics.json", metrics)
    write_csv(out_dir / "comparison.csv", comparison(metrics))
    return metrics


def model_config(model: FrameLocaliser) -> dict:
    return {"fps": model.fps, "frames": model.frames, "sample_rate": model.sample_rate,
            "sync_evidence": model.sync_evidence}


def comparison(metrics: dict) -> pd.DataFrame:
    """One row per (variant, set) of this run with the AV-Deepfake1M and LAV-DF figures, then
    the published anchors (each on its own data)."""
    rows = []
    for variant, sets in metrics["localisation"].items():
        for name, r in sets.items():
            rows.append({"set": f"{name} ({variant})", **r["avdeepfake1m"],
                         **{f"lavdf_{k}": v for k, v in r["lavdf"].items()},
                         "video_auc_peak": r["video_level"]["auc_peak"],
                         "video_auc_mean": r["video_level"]["auc_mean_of_frames"],
                         "verdict_bal_acc_peak": r["video_verdict"]["peak"]["balanced_accuracy"],
                         "verdict_bal_acc_mean": r["video_verdict"]["mean_of_frames"]["balanced_accuracy"],
                         **{f"{k}_ap@0.5": v["ap@0.5"] for k, v in r["by_modify_type"].items()}})
    return pd.DataFrame(rows + list(ANCHORS))


def summarise_seeds(runs: dict[int, dict]) -> pd.DataFrame:
    """Per figure (set, variant, metric): each seed's value, mean, sd and 95 % t-interval."""
    flat: dict[str, dict[int, float]] = {}
    for seed, metrics in runs.items():
        for variant, sets in metrics["localisation"].items():
            for name, r in sets.items():
                figures = {**{k: r["avdeepfake1m"][k] for k in HEADLINE},
                           "video_auc_peak": r["video_level"]["auc_peak"],
                           "video_auc_mean": r["video_level"]["auc_mean_of_frames"],
                           "modality_accuracy": r["modality"]["accuracy"],
                           "verdict_bal_acc_peak": r["video_verdict"]["peak"]["balanced_accuracy"],
                           "verdict_bal_acc_mean": r["video_verdict"]["mean_of_frames"]["balanced_accuracy"],
                           "verdict_real_called_fake_peak": r["video_verdict"]["peak"]["real_called_fake"],
                           **{f"{k}_ap@0.5": v["ap@0.5"] for k, v in r["by_modify_type"].items()}}
                for key, value in figures.items():
                    flat.setdefault(f"{name}|{variant}|{key}", {})[seed] = value
    rows = []
    for key, values in flat.items():
        name, variant, metric = key.split("|")
        v = np.array(list(values.values()), float)
        mean, sd = float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")
        half = float(stats.t.ppf(0.975, len(v) - 1) * sd / math.sqrt(len(v))) if len(v) > 1 else float("nan")
        rows.append({"set": name, "variant": variant, "metric": metric, "mean": mean, "sd": sd,
                     "ci95_low": mean - half, "ci95_high": mean + half,
                     **{f"seed_{s}": x for s, x in values.items()}})
    return pd.DataFrame(rows)


def run(params: dict, *, seeds: list[int] | None = None, log=print) -> Path:
    """The chain of the module docstring; returns the run folder."""
    p = check_params(params)
    run_dir = resolve(p["results_dir"]) / p["run_name"]
    sets = prepare(p, log)
    if not seeds:
        run_seed(p, sets, run_dir, log)
        return run_dir
    runs = {}
    for seed in seeds:          # one corpus (made with the params' seed), a model per training seed
        runs[seed] = run_seed({**p, "seed": seed}, sets, run_dir / f"seed_{seed}", log, corpus_seed=p["seed"])
    table = summarise_seeds(runs)
    write_csv(run_dir / "seeds.csv", table)
    write_json(run_dir / "metrics.json", {"seeds": seeds, "cpu": cpu_description(),
                                          "summary": table.to_dict("records")})
    return run_dir


def write_reference(run_dir: Path, reference_dir: Path) -> Path:
    """Copy a multi-seed run to reference_dir/<run name>/ (without checkpoints), assembled beside
    the old reference and swapped in only when complete; returns the folder."""
    if not (run_dir / "seeds.csv").is_file():
        raise ParameterError("--reference needs a run over several seeds (--seeds 0,1,2)")
    target = reference_dir / run_dir.name
    staging = reference_dir / f".{run_dir.name}.new"
    if staging.exists():
        shutil.rmtree(staging)
    reference_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(run_dir, staging, ignore=shutil.ignore_patterns("*.pt", "videos_*.csv", "frames_*.npz"))
    swap_folder(staging, target)
    return target


def summary_lines(run_dir: Path) -> list[str]:
    """The headline figures of a finished run, as printed at its end: metrics.json is the last run's
    (a seeds.csv left in the folder by an earlier run over seeds is not this run's)."""
    metrics = read_json(run_dir / "metrics.json")
    lines = [f"run folder: {portable(run_dir)}/"]
    if "localisation" not in metrics:
        table = pd.read_csv(run_dir / "seeds.csv")
        keep = table[table["metric"].isin(["ap@0.5", "ap@0.75", "ar@50", "score", "video_auc_peak",
                                           "video_auc_mean", "verdict_bal_acc_peak", "verdict_bal_acc_mean",
                                           "audio_modified_ap@0.5"])]
        for r in keep.itertuples():
            lines.append(f"  {r.set:8s} {r.variant:17s} {r.metric:22s} {r.mean:.3f} +- {r.sd:.3f} "
                         f"[{r.ci95_low:.3f}, {r.ci95_high:.3f}]")
        return lines
    for variant, sets in metrics["localisation"].items():
        for name, r in sets.items():
            a = r["avdeepfake1m"]
            lines.append(f"  {name} ({variant}): AP@0.5 {a['ap@0.5']:.3f}, AP@0.75 {a['ap@0.75']:.3f}, "
                         f"AR@50 {a['ar@50']:.3f}, score {a['score']:.3f}; video AUC peak "
                         f"{r['video_level']['auc_peak']:.3f} vs mean {r['video_level']['auc_mean_of_frames']:.3f}; "
                         f"verdict balanced accuracy {r['video_verdict']['peak']['balanced_accuracy']:.3f} "
                         f"(real videos called fake {r['video_verdict']['peak']['real_called_fake']:.2f})")
    return lines


# ---------------------------------------------------------------- predict with a trained localiser

def load_localiser(path: str | Path, device="cpu") -> FrameLocaliser:
    """The localiser saved by a run (localiser.pt), in eval mode."""
    state = load_checkpoint(path)
    if "config" not in state or "model" not in state:
        raise ParameterError(f"parameter `checkpoint`: {path} is not a localiser saved by avlib.localise "
                             f"(it has {', '.join(sorted(state))})")
    model = FrameLocaliser(**state["config"])
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def predict_files(model: FrameLocaliser, paths: list[Path], *, size: int, device="cpu", amp_on: bool = False,
                  log=print, scored: dict | None = None, threshold: float | None = None, on_video=None) -> dict:
    """{file: dict(segments [{start, end, confidence, modality}], video_score (the peak of the per-frame
    P(fake)), verdict (FAKE or REAL at `threshold`, when given), duration) or dict(error)}.
    `scored`, when given, receives {"frames": {file: (T, 2)}, "proposals": {file: (n, 3)}} for figures;
    `on_video(file, result)` is called as each video is done."""
    out = {}
    for path in paths:
        try:
            p, duration = stream_frame_probabilities(model, path, size=size, device=device, amp=amp_on)
            rows = propose(p.max(1), model.fps)
            if scored is not None:
                scored.setdefault("frames", {})[str(path)] = p
                scored.setdefault("proposals", {})[str(path)] = rows
            score = video_scores(p.max(1), model.fps)["max"]
            out[str(path)] = {"duration": round(duration, 3), "video_score": score,
                              **({"verdict": "FAKE" if score >= threshold else "REAL"} if threshold is not None else {}),
                              "segments": [{"start": round(float(s), 3), "end": round(float(e), 3),
                                            "confidence": round(float(c), 4),
                                            "modality": proposal_modality(p, s, e, model.fps)} for c, s, e in rows]}
        except Exception as e:  # noqa: BLE001 - one unreadable file must not stop the others; it is reported
            out[str(path)] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            log(f"{path}: {out[str(path)]['error']}")
        if on_video is not None:
            on_video(str(path), out[str(path)])
    return out


class SegmentsLog:
    """Each video's result appended to `<out>.partial.jsonl` as it is done (one JSON line, flushed
    and synced), so that a killed prediction loses only the video in flight; with `resume`, the
    videos already in --out or in the log are `done` (a last line cut by the kill is dropped).
    `finish` writes --out whole (atomically) and removes the log."""

    def __init__(self, out: Path, *, resume: bool):
        self.out, self.log = Path(out), Path(out).with_suffix(".partial.jsonl")
        self.done: dict = {}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        if not resume or not self.log.is_file():
            self.log.write_text("")
        else:
            text = self.log.read_text()
            if not text.endswith("\n") and text:             # the line a kill cut short: dropped in place
                with open(self.log, "r+", encoding="utf-8") as f:
                    f.truncate(len(text[: text.rfind("\n") + 1].encode("utf-8")))
            for line in text[: text.rfind("\n") + 1].splitlines():
                file, result = json.loads(line)
                self.done[file] = result
        if resume and self.out.is_file():
            self.done = {**read_json(self.out), **self.done}

    def append(self, file: str, result: dict) -> None:
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(json.dumps([file, result]) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def finish(self, results: dict) -> dict:
        everything = {**self.done, **results}
        write_json(self.out, everything)
        self.log.unlink(missing_ok=True)
        return everything


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m avlib.localise", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="a params file, or (with --checkpoint) videos and folders")
    parser.add_argument("--seeds", help="comma-separated training seeds, e.g. 0,1,2")
    parser.add_argument("--reference", action="store_true",
                        help="with --seeds: copy the run to results/reference/<run_name>/ (committed)")
    parser.add_argument("--checkpoint", help="a trained localiser.pt: predict segments of the inputs")
    parser.add_argument("--out", default="segments.json", help="with --checkpoint: where the JSON goes")
    parser.add_argument("--figure", help="with --checkpoint: a PNG of each video's per-frame P(fake) and top segments")
    parser.add_argument("--resume", action="store_true",
                        help="with --checkpoint: keep the videos already in --out (or in its .partial.jsonl, after a "
                             "kill) and score only the others")
    parser.add_argument("--shard", type=parse_shard, metavar="K/N",
                        help="with --checkpoint: only the K-th of N shares of the videos (K from 0; e.g. "
                             "SLURM_ARRAY_TASK_ID/N): the N --out files together are one run's")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto")
    args = parser.parse_args(argv)
    try:
        if args.checkpoint:
            dev = pick_device(args.device)
            model = load_localiser(args.checkpoint, dev)
            saved = load_checkpoint(args.checkpoint)
            size, threshold = saved["params"]["size"], saved.get("video_threshold")
            paths = take_shard(expand_paths(args.inputs), args.shard)
            log = SegmentsLog(Path(args.out), resume=args.resume)
            todo = [p for p in paths if str(p) not in log.done]
            if log.done:
                print(f"resuming: {len(paths) - len(todo)} of {len(paths)} videos already done", file=sys.stderr)
            scored: dict = {}
            result = predict_files(model, todo, size=size, device=dev, amp_on=resolve_amp(args.amp, dev),
                                   scored=scored, threshold=threshold, on_video=log.append)
            result = log.finish(result)
            if args.figure and scored:
                files = pd.DataFrame({"file": list(scored["frames"]), "category": "predicted", "fake_periods": ""})
                path = plot_localisation_timelines(files, scored, Path(args.figure).parent, fps=model.fps,
                                                   per_type=12, name=Path(args.figure).stem)
                print(f"timelines -> {path}")
            for path, r in result.items():
                if "error" not in r:
                    top = r["segments"][0] if r["segments"] else None
                    print(f"{path}: {r.get('verdict', 'video score')} {r['video_score']:.3f}" + (
                        f"; top segment {top['start']:.2f}-{top['end']:.2f} s ({top['modality']}, "
                        f"{top['confidence']:.2f})" if top else ""))
            print(f"segments of {len(result)} video(s) -> {args.out}")
            return 0 if all("error" not in r for r in result.values()) else 1
        if len(args.inputs) != 1:
            parser.error("give one params file (or --checkpoint with videos)")
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
        if args.reference and not seeds:
            parser.error("--reference needs --seeds")
        run_dir = run(load_params(args.inputs[0]), seeds=seeds)
        print("\n".join(summary_lines(run_dir)))
        if args.reference:
            print(f"reference renewed: {portable(write_reference(run_dir, resolve('results') / 'reference'))}/")
        return 0
    except (ParameterError, CacheError, DatasetIndexError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
