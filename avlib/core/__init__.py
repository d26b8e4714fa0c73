"""The leaf every layer may use: errors, parameters, paths and atomic files, locks, progress
lines, precision and device (runtime), checkpoint files."""
from avlib.core.exports import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "ParameterError": "errors", "MissingInputError": "errors", "load_params": "params",
    "resolve": "paths", "run_dir": "paths", "write_json": "paths", "write_csv": "paths", "read_json": "paths",
    "writer_lock": "locking", "pick_device": "runtime", "resolve_amp": "runtime",
    "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint",
})
