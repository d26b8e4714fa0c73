"""One function per notebook, each taking that notebook's declared parameters
(avlib.stages.parameters). Stages talk to each other only through files:

results/<run_name>/preprocess.json  (01) where the cache is, what it holds, how fast it was made
results/<run_name>/model.json       (02) the model configuration 03 builds
results/<run_name>/history.csv, checkpoints/   (03)
results/<run_name>/predictions.csv, metrics.json   (04)
results/<run_name>/figures/*.png + *.csv           (05)
"""
from avlib.core.exports import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "preprocess_stage": "preprocess", "build_model_stage": "build", "model_from_run": "build",
    "train_stage": "train", "evaluate_stage": "evaluate", "plots_stage": "plots", "locate_cache": "common",
    "notebook_params": "parameters", "parameters_cell": "parameters", "check_params_file": "parameters",
    "stage_values": "parameters", "MissingInputError": "common",
})
