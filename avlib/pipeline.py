"""Run notebooks 01..05 in order with papermill from one params file:

    python -m avlib.pipeline params/smoke.yaml [--results-dir DIR] [--from 03] [--only 04,05]

Each notebook receives the keys of the file that are its own parameters; a key that is a
parameter of no notebook stops the run (papermill itself would only warn). The executed
notebooks are saved under results/<run_name>/notebooks/.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from avlib.params import ParameterError, load_params
from avlib.paths import NOTEBOOKS_DIR, REPO_ROOT, resolve

NOTEBOOKS = ("01_preprocess", "02_build_model", "03_train", "04_evaluate", "05_plots")


def notebook_parameters(name: str) -> dict:
    """{parameter: papermill's description} of one notebook's parameters cell."""
    import papermill

    return papermill.inspect_notebook(str(NOTEBOOKS_DIR / f"{name}.ipynb"))


def split_params(params: dict, names=NOTEBOOKS) -> dict[str, dict]:
    """The parameters each notebook receives; raises ParameterError for a key no notebook has."""
    declared = {name: notebook_parameters(name) for name in NOTEBOOKS}
    unknown = sorted(set(params) - set().union(*[set(d) for d in declared.values()]))
    if unknown:
        raise ParameterError(f"unknown parameter(s) {', '.join(unknown)}: no notebook declares them")
    return {name: {k: v for k, v in params.items() if k in declared[name]} for name in names}


def run_pipeline(params: dict, *, names=NOTEBOOKS, log=print) -> dict[str, float]:
    """Execute the notebooks in order; returns seconds per notebook. Raises papermill's
    PapermillExecutionError (with the failing cell's error) when a notebook fails."""
    import papermill

    per_notebook = split_params(params, names)
    run_name = params.get("run_name", "fakeavceleb")
    out_dir = resolve(params.get("results_dir", "results")) / run_name / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    timings = {}
    for name in names:
        start = time.perf_counter()
        log(f"[{name}] running with {per_notebook[name]}")
        papermill.execute_notebook(str(NOTEBOOKS_DIR / f"{name}.ipynb"), str(out_dir / f"{name}.ipynb"),
                                   parameters=per_notebook[name], cwd=str(REPO_ROOT), kernel_name="python3",
                                   progress_bar=False, log_output=True)
        timings[name] = round(time.perf_counter() - start, 1)
        log(f"[{name}] done in {timings[name]} s")
    return timings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("params", type=Path, help="a params/*.yaml file")
    parser.add_argument("--results-dir", help="override results_dir")
    parser.add_argument("--from", dest="start", help="first notebook to run, e.g. 03")
    parser.add_argument("--only", help="comma-separated notebooks to run, e.g. 04,05")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    if args.results_dir:
        params["results_dir"] = args.results_dir
    names = NOTEBOOKS
    if args.only:
        names = tuple(n for n in NOTEBOOKS if n[:2] in args.only.split(","))
    elif args.start:
        names = tuple(n for n in NOTEBOOKS if n[:2] >= args.start[:2])
    start = time.perf_counter()
    timings = run_pipeline(params, names=names)
    run = resolve(params.get("results_dir", "results")) / params.get("run_name", "fakeavceleb")
    print(f"pipeline finished in {time.perf_counter() - start:.1f} s: " +
          ", ".join(f"{k} {v} s" for k, v in timings.items()) + f"\nresults in {run}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
