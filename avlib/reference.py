"""The committed reference of a configuration (results/reference/<run_name>/), renewed from a
`--seeds` run of the pipeline (python -m avlib.pipeline params/demo.yaml --seeds 0,1,2 --reference).

What a reference holds, and why:
- the run folder of the median seed by test AUC (not the best: a reader comparing a new run
  with it should land near the middle), without checkpoints or executed notebooks (binary,
  large, and rebuilt by any run);
- the figures 01_preprocess wrote into results/<run_name>/figures/ (sample clips, leading
  silence; only those, not what an earlier full run left there), which the per-seed runs do
  not have (01 runs once for all seeds);
- spread.json: every seed's value of the headline AUCs, which `make demo` prints a new run against;
- <run_name>-seeds.csv beside it, and its seeds' rows in results/reference/comparison.csv.
"""
from __future__ import annotations

import datetime
import re
import shutil
from pathlib import Path

import pandas as pd

from avlib.core.paths import read_json, swap_folder, write_csv, write_json
from avlib.core.runtime import cpu_description

SPREAD_KEYS = ("auc", "auc_FVFA", "auc_FVRA", "auc_RVFA", "sync_auc", "audio_swap_auc", "audio_swap_sync_auc",
               "heldout_style_auc", "heldout_style_sync_auc", "skip_silence_auc", "skip_silence_sync_auc")
SKIPPED = ("checkpoints", "notebooks", ".avlib-writer*")
FIRST_FIGURES = ("sample_clips", "leading_silence")     # what 01_preprocess draws (avlib.figures.showcase), .png and .csv
SUMMARY_ROWS = ("mean", "sd", "min", "max")


def _seed_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The per-seed rows of a seeds table, seeds as int (negative seeds included)."""
    rows = table[~table["seed"].astype(str).isin(SUMMARY_ROWS)]
    return rows.assign(seed=rows["seed"].astype(int))


def median_seed(table: pd.DataFrame) -> int:
    """The seed whose test AUC is the median of a seeds table (pipeline.seeds_summary); with an
    even count, the lower of the two middle ones."""
    order = _seed_rows(table).sort_values(["auc", "seed"])
    if order.empty:
        raise ValueError("the seeds table holds no seed")
    return int(order.iloc[(len(order) - 1) // 2]["seed"])


def write_reference(results_dir: Path, run_name: str, runs: dict[int, Path], table: pd.DataFrame, *,
                    params_file: str, reference_dir: Path, log=print) -> Path:
    """Renew reference_dir/<run_name>/ from the per-seed `runs` ({seed: run folder}) and their
    summary `table`; returns the folder. The new folder is assembled beside the old one
    (.<run_name>.new) and swapped in only when complete: a failure while assembling it leaves
    the old reference as it was (and no .new folder); then the seeds table and the seeds' rows of
    reference_dir/comparison.csv are written."""
    missing = [str(r) for r in runs.values() if not (r / "metrics.json").is_file()]
    if missing:
        raise FileNotFoundError(f"no metrics.json in {', '.join(missing)}: every seed must finish 04_evaluate "
                                f"before the reference is renewed")
    seed = median_seed(table)
    seeds = _seed_rows(table)["seed"].tolist()
    reference_dir.mkdir(parents=True, exist_ok=True)
    target, staging, old = (reference_dir / run_name, reference_dir / f".{run_name}.new",
                            reference_dir / f".{run_name}.old")
    for leftover in (staging, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    try:
        shutil.copytree(runs[seed], staging, ignore=shutil.ignore_patterns(*SKIPPED))
        first = results_dir / run_name / "figures"               # 01_preprocess's figures (run once for all seeds)
        for figure in sorted(first.glob("*")) if first.is_dir() else []:
            if figure.stem in FIRST_FIGURES:
                (staging / "figures").mkdir(exist_ok=True)
                shutil.copy2(figure, staging / "figures" / figure.name)
        listed = ", ".join(map(str, seeds))
        spread = {"about": f"test AUC of {params_file} over training seeds {listed} (python -m avlib.pipeline "
                           f"{params_file} --seeds {','.join(map(str, seeds))} --reference; {cpu_description()}, "
                           f"{read_json(runs[seed] / 'metrics.json').get('precision', '')}, "
                           f"{datetime.date.today().isoformat()}); this reference is seed {seed}, the median run"}
        rows = _seed_rows(table)
        for key in SPREAD_KEYS:
            if key in rows and rows[key].notna().all():
                spread[key] = [round(float(v), 4) for v in rows[key]]
        write_json(staging / "spread.json", spread)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    swap_folder(staging, target)
    write_csv(reference_dir / f"{run_name}-seeds.csv", table)
    comparison = results_dir / "comparison.csv"
    if comparison.is_file():
        new_rows = pd.read_csv(comparison)
        new_rows = new_rows[new_rows["run_name"].isin([r.name for r in runs.values()])]
        kept = reference_dir / "comparison.csv"
        if kept.is_file():
            earlier = pd.read_csv(kept)
            earlier = earlier[~earlier["run_name"].str.fullmatch(rf"{re.escape(run_name)}-seed-?\d+", na=False)]
            new_rows = pd.concat([earlier, new_rows], ignore_index=True)
        write_csv(kept, new_rows.drop_duplicates(["run_name", "eval_set"], keep="last"))
    log(f"reference renewed: {target} (seed {seed}, the median of seeds {', '.join(map(str, seeds))} by test AUC)")
    return target
