"""A run's clips scored at its validation threshold, the shortcut audit, external test sets and
the comparison table across runs."""
from avlib.core.exports import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {"evaluate_run": "evaluate", "shortcut_baseline": "audit"})
