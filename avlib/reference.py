"""The committed reference of a configuration (results/reference/<run_name>/), renewed from a
`--seeds` run of the pipeline (python -m avlib.pipeline params/demo.yaml --seeds 0,1,2 --reference).

What a reference holds, and why:
- the run folder of the median seed by test AUC (not the best: a reader comparing a new run
  with it should land near the middle), without checkpoints or executed notebooks (binary,
  large, and rebuilt by any run);
- the figures 01_preprocess wrote into results/<run_name>/figures/ (sample clips, leading
  silence), which the per-seed runs do not have (01 runs once for all seeds);
- spread.json: every seed's value of the headline AUCs, which `make demo` prints a new run against;
- <run_name>-seeds.csv beside it, and its seeds' rows in results/reference/comparison.csv.
"""
from __future__ import annotations

import datetime
import os
import platform
import shutil
from pathlib import Path

import pandas as pd

from avlib.paths import read_json, write_csv, write_json

SPREAD_KEYS = ("auc", "auc_FVFA", "auc_FVRA", "auc_RVFA", "sync_auc", "audio_swap_auc", "audio_swap_sync_auc",
               "heldout_style_auc", "heldout_style_sync_auc", "skip_silence_auc", "skip_silence_sync_auc")
SKIPPED = ("checkpoints", "notebooks", ".avlib-writer*")


def median_seed(table: pd.DataFrame) -> int:
    """The seed whose test AUC is the median of a seeds table (pipeline.seeds_summary); with an
    even count, the lower of the two middle ones."""
    seeds = table[table["seed"].astype(str).str.fullmatch(r"\d+")]
    order = seeds.assign(seed=seeds["seed"].astype(int)).sort_values(["auc", "seed"])
    return int(order.iloc[(len(order) - 1) // 2]["seed"])


def cpu_description(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """'N-core <model>, AVX-512 BF16' or '..., AVX2 only' (what the reference's timings and bf16 choice depend on)."""
    from avlib.runtime import cpu_bf16_flags

    model = platform.processor() or platform.machine()
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        flags = "AVX-512 BF16" if cpu_bf16_flags(cpuinfo) else "no bf16 (AVX2 or less)"
    except OSError:
        flags = "flags unknown"
    return f"{os.cpu_count()}-core {model}, {flags}"


def write_reference(results_dir: Path, run_name: str, runs: dict[int, Path], table: pd.DataFrame, *,
                    params_file: str, reference_dir: Path, log=print) -> Path:
    """Renew reference_dir/<run_name>/ from the per-seed `runs` ({seed: run folder}) and their
    summary `table`; returns the folder. The new folder is assembled beside the old one and
    swapped in only when complete, so a failure leaves the old reference as it was."""
    missing = [str(r) for r in runs.values() if not (r / "metrics.json").is_file()]
    if missing:
        raise FileNotFoundError(f"no metrics.json in {', '.join(missing)}: every seed must finish 04_evaluate "
                                f"before the reference is renewed")
    seed = median_seed(table)
    reference_dir.mkdir(parents=True, exist_ok=True)
    target = reference_dir / run_name
    staging = reference_dir / f".{run_name}.new"
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(runs[seed], staging, ignore=shutil.ignore_patterns(*SKIPPED))
    first = results_dir / run_name / "figures"               # 01_preprocess's figures (run once for all seeds)
    if first.is_dir():
        (staging / "figures").mkdir(exist_ok=True)
        for figure in first.iterdir():
            if figure.is_file() and not (staging / "figures" / figure.name).exists():
                shutil.copy2(figure, staging / "figures" / figure.name)
    seeds = table[table["seed"].astype(str).str.fullmatch(r"\d+")]
    spread = {"about": f"test AUC of {params_file} over training seeds {', '.join(map(str, seeds['seed']))} "
                       f"(python -m avlib.pipeline {params_file} --seeds {','.join(map(str, seeds['seed']))} "
                       f"--reference; {cpu_description()}, {read_json(runs[seed] / 'metrics.json').get('precision', '')}, "
                       f"{datetime.date.today().isoformat()}); this reference is seed {seed}, the median run"}
    for key in SPREAD_KEYS:
        if key in seeds and seeds[key].notna().all():
            spread[key] = [round(float(v), 4) for v in seeds[key]]
    write_json(staging / "spread.json", spread)
    if target.exists():
        old = reference_dir / f".{run_name}.old"
        if old.exists():
            shutil.rmtree(old)
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old)
    else:
        staging.rename(target)
    write_csv(reference_dir / f"{run_name}-seeds.csv", table)
    comparison = results_dir / "comparison.csv"
    if comparison.is_file():
        rows = pd.read_csv(comparison)
        rows = rows[rows["run_name"].isin([r.name for r in runs.values()])]
        kept = reference_dir / "comparison.csv"
        if kept.is_file():
            earlier = pd.read_csv(kept)
            earlier = earlier[~earlier["run_name"].str.fullmatch(rf"{run_name}-seed\d+", na=False)]
            rows = pd.concat([earlier, rows], ignore_index=True)
        write_csv(kept, rows.drop_duplicates(["run_name", "eval_set"], keep="last"))
    log(f"reference renewed: {target} (seed {seed}, the median of seeds "
        f"{', '.join(map(str, seeds['seed']))} by test AUC)")
    return target
