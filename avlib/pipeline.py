"""Run notebooks 01..05 in order with papermill from one params file:

    python -m avlib.pipeline params/smoke.yaml [--results-dir DIR] [--from 03] [--only 04,05] [--seeds 0,1,2 [--reference]]

A params file may hold `prepare:`, a list of extra corpora that 01_preprocess caches first (each
entry: its own run_name and the 01 parameters it changes), e.g. the external test sets its
04_evaluate scores (`external_cache_dirs`).

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
import papermill
import zmq
from jupyter_client.manager import AsyncKernelManager
from traitlets.config import Config

from avlib.core.errors import ParameterError
from avlib.core.params import load_params
from avlib.core.paths import NOTEBOOKS_DIR, REPO_ROOT, portable, read_json, resolve, write_csv
from avlib.core.progress import format_duration
from avlib.reference import write_reference
from avlib.scoring.calibration import too_few_clips
from avlib.stages.parameters import NOTEBOOKS, check_params_file, declaration

REFERENCE_DIR = REPO_ROOT / "results" / "reference"
HEADLINE = (("auc", "AUC"), ("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("eer", "EER"))


def split_params(params: dict, names=NOTEBOOKS) -> dict[str, dict]:
    """The parameters each notebook of `names` receives from a params file's mapping, every value
    checked against the notebooks' declarations before any notebook runs. Raises ParameterError
    for a key no notebook declares or a bad value, naming it."""
    per_notebook = check_params_file(params)
    return {name: per_notebook[name] for name in names}


def kernel_config():
    """traitlets Config for the notebook kernels: the kernel manager provisions CurveZMQ keys
    where the kernel spec supports them (ipykernel >= 7). Without keys, ipykernel 7 warns at
    every start that its TCP traffic is unencrypted; with them it is encrypted and silent."""
    config = Config()
    if zmq.has("curve") and "transport_encryption" in AsyncKernelManager.class_trait_names():
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
    """Where `value` falls against the values of earlier runs of the same configuration, to the
    three decimals it prints (spread.json keeps four, at which a rerun of the median seed could
    be called below its own value)."""
    low, high = min(earlier), max(earlier)
    if round(low, 3) <= round(value, 3) <= round(high, 3):
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
        lines += test_set_lines(m)
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


def _number(value) -> str:
    return "-" if value is None or value != value else f"{value:.3f}"


def test_set_lines(metrics: dict) -> list[str]:
    """One line per scored set (the in-domain split, each external set): the classifier's AUC,
    the sync evidence's AUC for a sync model, and the verdict's balanced accuracy and rates of
    real and fake clips called fake; the calibration's ECE before and after."""
    sets = {f"{metrics.get('split', 'test')} (in-domain)": metrics}
    sets.update(metrics.get("external") or {})
    sync = any("sync_score" in (s.get("verdict") or {}) for s in sets.values())
    header = f"  {'set':<22}{'AUC':>7}" + (f"{'sync AUC':>10}" if sync else "") + \
        f"{'bal. acc.':>11}{'real->fake':>12}{'fake->fake':>12}"
    ci = [c for c in metrics.get("threshold_ci95") or [] if c == c]           # NaN when it could not be resampled
    lines = [f"the verdict on every set (threshold {metrics['threshold']:.3f}"
             + (f", 95 % CI {ci[0]:.3f}-{ci[1]:.3f}" if len(ci) == 2 else "")
             + (f"; sync threshold {metrics['sync_threshold']:.3f}" if "sync_threshold" in metrics else "") + "):",
             header]
    for name, s in sets.items():
        v = s.get("verdict") or {}
        row = f"  {name:<22}{_number(s.get('auc')):>7}"
        if sync:
            row += f"{_number((v.get('sync_score') or {}).get('auc')):>10}"
        decided = v.get("verdict") or {"real_called_fake": s.get("false_positive_rate")}     # a real-only set
        row += (f"{_number(decided.get('balanced_accuracy')):>11}{_number(decided.get('real_called_fake')):>12}"
                f"{_number(decided.get('fake_called_fake')):>12}")
        lines.append(row)
    cal = metrics.get("calibration") or {}
    if "ece_before" in cal:
        floor = (f" (perfect calibration shows {cal['ece_floor']:.3f} on this many clips, 95 % below "
                 f"{cal['ece_floor_95']:.3f})") if "ece_floor" in cal else ""
        lines.append(f"calibration ({cal.get('method')}): ECE {cal['ece_before']:.3f} -> {cal['ece']:.3f}{floor}, "
                     f"Brier {cal['brier_before']:.3f} -> {cal['brier']:.3f} on the {metrics.get('split', 'test')} split")
    domain = metrics.get("domain_calibration")
    if domain and "held_out_real_called_fake" in domain:
        lines.append(f"thresholds set on {domain['cache_dir']} at {domain['target_fpr']:.1%}: "
                     f"{domain['held_out_real_called_fake']:.1%} of its {domain['n_held_out']} held-out real clips "
                     f"called fake{too_few_clips(domain)}")
        for name, ext in (metrics.get("external") or {}).items():
            at = ext.get("at_domain_threshold")
            if at and "balanced_accuracy" in at:
                lines.append(f"  {name} at those thresholds: balanced accuracy {at['balanced_accuracy']:.3f}, "
                             f"real->fake {at['real_called_fake']:.3f}")
    return lines


def prepare_params(params: dict, entry: dict) -> dict:
    """01_preprocess's parameters for one entry of a params file's `prepare` list: the main run's
    preprocessing settings (frames, size, fps, MFCC, ...) overlaid by the entry (its own
    run_name, data_dir, cache_dir, corpus options). Raises ParameterError for an entry without
    run_name or with a key 01_preprocess does not declare."""
    declared = {p.name for p in declaration("01_preprocess")}
    if not isinstance(entry, dict) or "run_name" not in entry:
        raise ParameterError(f"`prepare` entries are mappings with their own run_name; got {entry!r}")
    unknown = sorted(set(entry) - set(declared))
    if unknown:
        raise ParameterError(f"`prepare` entry {entry['run_name']!r}: {', '.join(unknown)} are not parameters of "
                             f"01_preprocess")
    return {**{k: v for k, v in params.items() if k in declared}, **entry}


def seeds_summary(runs: dict[int, Path]) -> pd.DataFrame:
    """One row per seed (test AUC, per-category AUC, each external set's AUC, and the sync
    score's when the model has one; the balanced accuracy at the run's validation threshold and
    the calibration error (ECE) of the test split and each external set, from each run's
    metrics.json), then mean, sd, min and max."""
    rows = []
    for seed, run in runs.items():
        m = read_json(run / "metrics.json")
        row = {"seed": seed, "run_name": run.name, "auc": m["auc"]}
        row.update({k: v for k, v in (("balanced_accuracy", m.get("balanced_accuracy")),
                                      ("ece", (m.get("calibration") or {}).get("ece"))) if v is not None})
        row.update({f"auc_{c}": v["auc"] for c, v in sorted((m.get("per_category") or {}).items())})
        if "sync_score" in m:
            row["sync_auc"] = m["sync_score"]["auc"]
            row.update({f"sync_auc_{c}": v["auc"] for c, v in sorted(m["sync_score"]["per_category"].items())})
        for name, ext in (m.get("external") or {}).items():
            if "auc" in ext:
                row[f"{name}_auc"] = ext["auc"]
                row.update({f"{name}_auc_{c}": v["auc"] for c, v in sorted((ext.get("per_category") or {}).items())})
                if "balanced_accuracy" in ext:      # at the run's own validation threshold: does it transfer?
                    row[f"{name}_balanced_accuracy"] = ext["balanced_accuracy"]
                if "ece" in (ext.get("calibration") or {}):
                    row[f"{name}_ece"] = ext["calibration"]["ece"]
            if "sync_score" in ext:
                row[f"{name}_sync_auc"] = ext["sync_score"]["auc"]
        rows.append(row)
    table = pd.DataFrame(rows)
    numbers = table.drop(columns=["seed", "run_name"]).astype(float)
    stats = pd.DataFrame({"seed": ["mean", "sd", "min", "max"], "run_name": "",
                          **{c: [numbers[c].mean(), numbers[c].std(ddof=1) if len(numbers) > 1 else float("nan"),
                                 numbers[c].min(), numbers[c].max()] for c in numbers}})
    return pd.concat([table.astype({"seed": str}), stats], ignore_index=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("params", type=Path, help="a params/*.yaml file")
    parser.add_argument("--results-dir", help="override results_dir")
    parser.add_argument("--from", dest="start", help="first notebook to run, e.g. 03")
    parser.add_argument("--only", help="comma-separated notebooks to run, e.g. 04,05")
    parser.add_argument("--seeds", help="comma-separated training seeds, e.g. 0,1,2: one run <run_name>-seed<k> "
                                        "each (01 runs once: corpus and split stay the file's), then a summary")
    parser.add_argument("--reference", action="store_true",
                        help="with --seeds: renew results/reference/<run_name>/ from the median seed (avlib.reference)")
    args = parser.parse_args(argv)
    if args.reference and not args.seeds:
        parser.error("--reference renews the reference from several seeds: give --seeds too, e.g. --seeds 0,1,2")
    params = load_params(args.params)
    prepare = params.pop("prepare", None) or []
    if args.results_dir:
        params["results_dir"] = args.results_dir
    check_params_file(params)                 # every value of every notebook, before anything runs
    extras = [prepare_params(params, entry) for entry in prepare]
    for extra in extras:
        check_params_file(extra)
    names = NOTEBOOKS
    if args.only:
        names = tuple(n for n in NOTEBOOKS if n[:2] in args.only.split(","))
    elif args.start:
        names = tuple(n for n in NOTEBOOKS if n[:2] >= args.start[:2])
    if args.reference and "04_evaluate" not in names:
        parser.error("--reference needs the seeds' metrics of this run: include 04 (--only/--from leave it out), "
                     "or an older metrics.json would be taken for the new weights")
    run_name = params.get("run_name", "fakeavceleb")
    run = resolve(params.get("results_dir", "results")) / run_name

    def log(line: str) -> None:
        print(line, flush=True)

    log(f"{args.params}: run {run_name} -> {portable(run)}/")
    if "01_preprocess" in names:             # the corpora the run's 04 scores as external test sets
        for extra in extras:
            log(f"preparing {extra['run_name']} ({extra.get('data_dir', '')})")
            run_pipeline(extra, names=("01_preprocess",), log=log)
    if not args.seeds:
        timings = run_pipeline(params, names=names, log=log)
        reference = REFERENCE_DIR / run_name
        for line in summary_lines(run, timings, reference if reference.is_dir() else None):
            log(line)
        return 0
    seeds = [int(k) for k in args.seeds.split(",") if k.strip()]
    if "01_preprocess" in names:
        run_pipeline(params, names=("01_preprocess",), log=log)
    cache = params.get("cache_dir") or read_json(run / "preprocess.json")["cache_dir"]
    runs = {}
    for seed in seeds:
        params_k = {**params, "run_name": f"{run_name}-seed{seed}", "seed": seed, "cache_dir": cache}
        runs[seed] = resolve(params.get("results_dir", "results")) / params_k["run_name"]
        log(f"seed {seed}: run {params_k['run_name']}")
        timings = run_pipeline(params_k, names=tuple(n for n in names if n != "01_preprocess"), log=log)
        for line in summary_lines(runs[seed], timings):
            log(line)
    if all((r / "metrics.json").is_file() for r in runs.values()):
        table = seeds_summary(runs)
        out = resolve(params.get("results_dir", "results")) / f"{run_name}-seeds.csv"
        write_csv(out, table)
        log(f"over seeds {args.seeds} ({out.name}):")
        with pd.option_context("display.width", 200, "display.max_columns", 40, "display.precision", 3):
            log(table.to_string(index=False))
        if args.reference:
            write_reference(out.parent, run_name, runs, table, params_file=portable(args.params.resolve()),
                            reference_dir=REFERENCE_DIR, log=log)
    elif args.reference:
        log("reference not renewed: not every seed has a metrics.json (04_evaluate did not run or failed)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
