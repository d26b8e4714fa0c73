"""04_evaluate: the run's best checkpoint scored on val (the threshold) and on the reported split."""
from __future__ import annotations

from avlib.core.locking import writer_lock
from avlib.core.paths import resolve, run_dir, write_json
from avlib.core.runtime import pick_device, resolve_amp, tune_allocator
from avlib.evaluation import evaluate
from avlib.stages.common import locate_cache, need, stage


@stage("04_evaluate")
def evaluate_stage(p, *, checkpoint: str = "best", progress: bool = True, log=print) -> dict:
    """Score val (to fit the verdict: calibration, threshold, sync threshold; verdict.json) and
    `split` with the run's best (or last) weights; add the shortcut baseline, the thresholds set
    on a real-only cache of the target domain when `calibration_cache_dir` names one
    (verdict_domain.json), the false-positive rate on a real-only corpus when
    `generalization_cache_dir` names one; score each labelled cache of `external_cache_dirs`
    with that verdict (metrics['external'][name], external_<name>_predictions.csv). Writes
    predictions.csv, metrics.json and rows of results/comparison.csv; returns the metrics."""
    tune_allocator()
    amp = resolve_amp(p.amp, pick_device(p.device), log=log)      # "auto": bf16 only where the hardware computes in it
    run = run_dir(p.results_dir, p.run_name)
    scoring = dict(batch_size=p.batch_size, device=p.device, workers=p.workers, amp=amp, compile=p.compile,
                   progress=progress)
    with writer_lock(run, "04_evaluate"):
        ckpt_path = need(run / "checkpoints" / f"{checkpoint}.pt", f"checkpoints/{checkpoint}.pt", "03_train")
        cache = locate_cache(p.results_dir, p.run_name, p.cache_dir)
        externals = evaluate.external_sets(p.external_cache_dirs)
        evaluate.check_external_caches(ckpt_path, externals)         # refuse before the long in-domain scoring
        metrics, verdict = evaluate.evaluate_run(ckpt_path, cache, run, split=p.split, calibration=p.calibration,
                                                 threshold_rule=p.threshold_rule, target_fpr=p.target_fpr, **scoring)
        metrics["run_name"] = p.run_name
        metrics["precision"] = "bf16" if amp else "fp32"
        domain = None
        if p.calibration_cache_dir:
            domain, metrics["domain_calibration"] = evaluate.domain_calibration(
                ckpt_path, resolve(p.calibration_cache_dir), run, verdict=verdict, target_fpr=p.target_fpr, **scoring)
        if p.generalization_cache_dir:
            metrics["generalization"] = evaluate.generalization_report(
                ckpt_path, resolve(p.generalization_cache_dir), run, verdict=verdict, **scoring)
        if externals:
            metrics["external"] = evaluate.evaluate_externals(
                ckpt_path, externals, run, verdict=verdict, threshold_source=metrics["threshold_source"],
                own_cache_dir=cache, domain=domain, **scoring)
        write_json(run / "metrics.json", metrics)
        with writer_lock(resolve(p.results_dir), "04_evaluate", part="comparison", timeout=60):   # shared by all runs
            evaluate.update_comparison(resolve(p.results_dir) / "comparison.csv", metrics)
        return metrics
