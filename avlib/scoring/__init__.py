"""From a model to scores and from scores to figures of merit, shared by training (validation)
and evaluation: batched prediction, the inference copy of a checkpoint, metrics."""
from avlib.core.exports import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "predict": "forward", "scoring_model": "scorer", "score_cache": "scorer",
    "binary_metrics": "metrics", "choose_threshold": "metrics", "evaluation_report": "metrics",
})
