"""Run notebooks 01..05 in order with papermill from one params file:

    python -m avlib.pipeline params/smoke.yaml [--results-dir DIR] [--from 03] [--only 04,05]

Each notebook receives the keys of the file that are its own parameters; a key that is a
parameter of no notebook stops the run (papermill itself would only warn). The kernels start in
notebooks/, as JupyterLab starts them. What the notebooks print (training epochs, preprocessing
progress) reaches the terminal as it happens, and the executed notebooks are saved under
results/<run_name>/notebooks/. The run ends with its headline metrics, side by side with the
committed reference run (results/reference/<run_name>/) when there is one.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
from jupyter_client.manager import AsyncKernelManager

from avlib.params import ParameterError, load_params
from avlib.paths import NOTEBOOKS_DIR, REPO_ROOT, portable, read_json, resolve
from avlib.progress import format_duration

NOTEBOOKS = ("01_preprocess", "02_build_model", "03_train", "04_evaluate", "05_plots")
REFERENCE_DIR = REPO_ROOT / "results" / "reference"
HEADLINE = (("auc", "AUC"), ("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("eer", "EER"))


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


def kernel_config():
    """traitlets Config for the notebook kernels: the kernel manager provisions CurveZMQ keys
    where the kernel spec supports them (ipykernel >= 7). Without keys, ipykernel 7 warns at
    every start that its TCP traffic is unencrypted; with them it is encrypted and silent."""
    import zmq
    from jupyter_client import KernelManager
    from traitlets.config import Config

    config = Config()
    if zmq.has("curve") and "transport_encryption" in KernelManager.class_trait_names():
        config.KernelManager.transport_encryption = "auto"
    return config


class NotebookKernelManager(AsyncKernelManager):
    """Shuts a finished notebook's kernel down without interrupting it first. jupyter_client
    sends SIGINT before every shutdown; when it lands while ipykernel is still returning from
    its last reply, the kernel logs 'KeyboardInterrupt caught in kernel' for nothing. papermill
    shuts a kernel down only after the notebook has finished or failed, when it is idle."""

    async def _async_interrupt_kernel(self) -> None:
        if not self.shutting_down:
            await super()._async_interrupt_kernel()


def run_pipeline(params: dict, *, names=NOTEBOOKS, log=print, stdout=None, stderr=None,
                 cwd: str | Path = NOTEBOOKS_DIR) -> dict[str, float]:
    """Execute the notebooks in order; returns seconds per notebook. The notebooks' printed
    output is copied to `stdout`/`stderr` (default: this process's) as it arrives; kernels
    start in `cwd`. Raises papermill's PapermillExecutionError (with the failing cell's error)
    when a notebook fails."""
    import papermill

    per_notebook = split_params(params, names)
    run_name = params.get("run_name", "fakeavceleb")
    out_dir = resolve(params.get("results_dir", "results")) / run_name / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    config = kernel_config()
    timings = {}
    for i, name in enumerate(names, 1):
        start = time.perf_counter()
        log(f"[{i}/{len(names)}] {name}")
        papermill.execute_notebook(str(NOTEBOOKS_DIR / f"{name}.ipynb"), str(out_dir / f"{name}.ipynb"),
                                   parameters=per_notebook[name], cwd=str(cwd), kernel_name="python3",
                                   progress_bar=False, log_output=False, config=config,
                                   kernel_manager_class=NotebookKernelManager,
                                   stdout_file=stdout or sys.stdout, stderr_file=stderr or sys.stderr)
        timings[name] = round(time.perf_counter() - start, 1)
        log(f"[{i}/{len(names)}] {name} done in {format_duration(timings[name])}")
    return timings


def _value(metrics: dict, key: str):
    """A headline metric, or a per-category AUC for 'auc_<category>'; None when absent."""
    if key.startswith("auc_"):
        return (metrics.get("per_category") or {}).get(key[4:], {}).get("auc")
    return metrics.get(key)


def compare_with_reference(metrics: dict, reference: dict, spread: dict | None = None) -> pd.DataFrame:
    """One row per headline metric and per-category AUC found in both: metric, this_run,
    reference, and `earlier` ('min-max' of the values `spread` lists for it, else '')."""
    keys = [k for k, _ in HEADLINE] + [f"auc_{c}" for c in sorted(reference.get("per_category") or {})]
    labels = dict(HEADLINE)
    rows = []
    for key in keys:
        ours, ref = _value(metrics, key), _value(reference, key)
        if ours is None or ref is None:
            continue
        earlier = (spread or {}).get(key) or []
        rows.append({"metric": labels.get(key, f"AUC {key[4:]}"), "key": key, "this_run": float(ours),
                     "reference": float(ref),
                     "earlier": f"{min(earlier):.3f}-{max(earlier):.3f}" if earlier else ""})
    return pd.DataFrame(rows, columns=["metric", "key", "this_run", "reference", "earlier"])


def spread_verdict(value: float, earlier: list[float], what: str = "AUC") -> str:
    """Where `value` falls against the values of earlier runs of the same configuration."""
    low, high = min(earlier), max(earlier)
    if low <= value <= high:
        return f"{what} {value:.3f} is within the range of earlier runs ({low:.3f}-{high:.3f})"
    side = "below" if value < low else "above"
    return (f"{what} {value:.3f} is {side} the range of earlier runs ({low:.3f}-{high:.3f}): "
            f"look at figures/training_curves.png, and rerun to see whether it repeats")


def summary_lines(run: Path, timings: dict[str, float], reference: Path | None = None) -> list[str]:
    """The run's closing lines: time per notebook, headline metrics (when 04_evaluate has
    written metrics.json), the comparison with `reference` (a folder holding metrics.json and,
    optionally, spread.json: {metric: [values of earlier runs]}), and where the files are."""
    lines = [f"finished in {format_duration(sum(timings.values()))}: "
             + ", ".join(f"{k} {format_duration(v)}" for k, v in timings.items())]
    metrics_path = run / "metrics.json"
    if "04_evaluate" in timings and metrics_path.is_file():
        m = read_json(metrics_path)
        n = sum((m.get("n") or {}).values())
        ci = (m.get("ci95") or {}).get("auc")
        lines.append(f"{m.get('split', 'test')} split, {n} clips: AUC {m['auc']:.3f}"
                     + (f" (95 % CI {ci[0]:.2f}-{ci[1]:.2f})" if ci else "")
                     + f", accuracy {m['accuracy']:.3f} at threshold {m['threshold']:.2f}, EER {m['eer']:.3f}")
        per_category = {c: v["auc"] for c, v in (m.get("per_category") or {}).items() if v.get("auc") is not None}
        if per_category:
            lines.append("AUC per category: " + ", ".join(f"{c} {v:.3f}" for c, v in sorted(per_category.items())))
        if reference is not None and (reference / "metrics.json").is_file():
            spread = read_json(reference / "spread.json") if (reference / "spread.json").is_file() else {}
            table = compare_with_reference(m, read_json(reference / "metrics.json"), spread)
            lines.append(f"against the reference run ({portable(reference)}/):")
            lines.append(f"  {'':<20}{'this run':>10}{'reference':>11}  earlier runs")
            lines += [f"  {r.metric:<20}{r.this_run:>10.3f}{r.reference:>11.3f}  {r.earlier}".rstrip()
                      for r in table.itertuples()]
            if spread.get("auc"):
                lines.append(spread_verdict(m["auc"], spread["auc"]))
    if (run / "figures").is_dir():
        lines.append(f"figures: {portable(run / 'figures')}/")
    lines.append(f"executed notebooks: {portable(run / 'notebooks')}/")
    return lines


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
    run_name = params.get("run_name", "fakeavceleb")
    run = resolve(params.get("results_dir", "results")) / run_name

    def log(line: str) -> None:
        print(line, flush=True)

    log(f"{args.params}: run {run_name} -> {portable(run)}/")
    timings = run_pipeline(params, names=names, log=log)
    reference = REFERENCE_DIR / run_name
    for line in summary_lines(run, timings, reference if reference.is_dir() else None):
        log(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
