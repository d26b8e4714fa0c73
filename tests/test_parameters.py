"""One declaration per notebook parameter (avlib.stages.parameters): the notebooks' parameters
cells, papermill's --help-notebook, the stage functions, the pipeline's params-file check and
`python -m avlib.train` all follow it, and every value reaches the stage that uses it."""
from __future__ import annotations

import inspect
from dataclasses import asdict
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml

import avlib.train
from avlib import stages
from avlib.core.checkpoint import load_checkpoint
from avlib.core.errors import ParameterError
from avlib.core.params import literal
from avlib.stages.common import stage
from avlib.stages.parameters import (
    DECLARATIONS,
    NOTEBOOKS,
    check,
    check_params_file,
    declaration,
    parameters_cell,
    stage_values,
)

ROOT = Path(__file__).resolve().parents[1]
STAGE_MODULES = {"01_preprocess": ("preprocess", "preprocess_stage"), "02_build_model": ("build", "build_model_stage"),
                 "03_train": ("train", "train_stage"), "04_evaluate": ("evaluate", "evaluate_stage"),
                 "05_plots": ("plots", "plots_stage")}
# valid values other than the defaults, where "the default changed a little" is not one
OTHER = {"run_name": "another_run", "data_dir": "elsewhere", "cache_dir": "cache/elsewhere", "results_dir": "out",
         "device": "cuda:1", "amp": False, "corpus_styles": "newsroom,webcam", "augment": "flip,noise",
         "external_cache_dirs": "voices=cache/voices, cache/faces", "generalization_cache_dir": "cache/real",
         "video_weights": "weights/r2plus1d.pt", "sync_weights": "results/sync/checkpoints/best.pt",
         "calibration_cache_dir": "cache/my_real"}


def other_value(param):
    """A valid value of `param` that is not its default."""
    if param.name in OTHER:
        return OTHER[param.name]
    if param.type is bool:
        return not param.default
    if param.type is int:
        return param.default + 1
    if param.type is float:
        return round(param.default + 0.01, 6)
    choices = param.allowed.split(" | ")
    return choices[(choices.index(param.default) + 1) % len(choices)]


def non_defaults(notebook: str) -> dict:
    return {p.name: other_value(p) for p in declaration(notebook)}


def parameters_cell_of(notebook: str) -> str:
    nb = nbformat.read(ROOT / "notebooks" / f"{notebook}.ipynb", as_version=4)
    return next(c for c in nb.cells if "parameters" in c.metadata.get("tags", [])).source


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_the_parameters_cell_is_the_declaration(notebook):
    """Names, types, defaults and comments, line for line (restore a drifted cell from parameters_cell)."""
    assert parameters_cell_of(notebook) == parameters_cell(notebook)


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_help_notebook_documents_every_declared_parameter(notebook):
    """What `papermill --help-notebook` prints: each parameter with its type, default and help,
    allowed values first (papermill skips a line it cannot parse, e.g. one whose comment holds '=')."""
    shown = papermill.inspect_notebook(str(ROOT / "notebooks" / f"{notebook}.ipynb"))
    assert list(shown) == [p.name for p in declaration(notebook)]
    for p in declaration(notebook):
        assert shown[p.name]["inferred_type_name"] == p.type.__name__
        assert shown[p.name]["default"] == literal(p.default)
        assert shown[p.name]["help"] == p.comment and p.help
        if p.allowed:
            assert shown[p.name]["help"].startswith(p.allowed)


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_each_stage_function_takes_its_notebooks_declared_parameters(notebook):
    module, name = STAGE_MODULES[notebook]
    signature = inspect.signature(getattr(stages, name))
    declared = {p.name: p.default for p in declaration(notebook) if p.stage}
    assert {k: v.default for k, v in signature.parameters.items() if k in declared} == declared
    extras = set(signature.parameters) - set(declared)
    assert extras <= {"progress", "log", "checkpoint", "batch_size"}   # run-time switches, not notebook parameters


class Received(Exception):
    """Raised by a stand-in stage body with the parameters object the stage received."""


def _receive(p, **_):
    raise Received(p)


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_every_notebook_parameter_reaches_its_stage(notebook, monkeypatch):
    """The notebook's own cells, as papermill runs them (parameters cell, injected values, the
    check cell, the stage call), with every parameter at a value other than its default: the
    stage receives each of them (display switches such as live_curves stay in the notebook)."""
    module, name = STAGE_MODULES[notebook]
    monkeypatch.setattr(f"avlib.stages.{module}.{name}", stage(notebook)(_receive))
    values = non_defaults(notebook)
    nb = nbformat.read(ROOT / "notebooks" / f"{notebook}.ipynb", as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    namespace: dict = {}
    exec(code[0], namespace)                                        # the parameters cell
    exec("\n".join(f"{k} = {v!r}" for k, v in values.items()), namespace)   # what papermill injects
    exec(code[1], namespace)                                        # the check
    with pytest.raises(Received) as got:
        exec(code[2], namespace)                                    # the stage call
    received = asdict(got.value.args[0])
    assert received == {k: v for k, v in values.items() if next(p for p in declaration(notebook) if p.name == k).stage}
    if notebook == "03_train":
        assert "live_curves" not in received and namespace["live_curves"] is values["live_curves"]


def test_python_m_avlib_train_passes_every_training_parameter(tmp_path, monkeypatch):
    """`python -m avlib.train -f FILE` hands the stage every 03_train parameter of the file
    (augment, self_blend and video_loss among them) and ignores the other notebooks' keys."""
    monkeypatch.setattr(avlib.train, "train_stage", stage("03_train")(_receive))
    values = {k: v for k, v in non_defaults("03_train").items() if k != "live_curves"}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**values, "dataset": "dummy", "fusion": "sync", "frames": 16}))
    with pytest.raises(Received) as got:
        avlib.train.main(["-f", str(path)])
    assert asdict(got.value.args[0]) == values


def test_a_training_parameter_the_file_leaves_out_takes_the_notebooks_default(tmp_path, monkeypatch):
    monkeypatch.setattr(avlib.train, "train_stage", stage("03_train")(_receive))
    path = tmp_path / "run.yaml"
    path.write_text("run_name: short\nepochs: 3\n")
    with pytest.raises(Received) as got:
        avlib.train.main(["-f", str(path)])
    defaults = {p.name: p.default for p in declaration("03_train") if p.stage}
    assert asdict(got.value.args[0]) == {**defaults, "run_name": "short", "epochs": 3}


def test_a_script_run_trains_with_augmentation_self_blends_and_the_video_loss(tmp_path):
    """The three parameters `python -m avlib.train` once dropped, read back from what a real run
    saved in its checkpoint."""
    common = dict(results_dir=str(tmp_path / "results"), run_name="script")
    stages.preprocess_stage(dataset="dummy", data_dir="", cache_dir=str(tmp_path / "cache"), frames=8, size=16,
                            fps=8.0, n_mfcc=8, mfcc_steps=8, limit=16, progress=False, **common)
    stages.build_model_stage(video_encoder="framediff", video_head=True, device="cpu", **common)
    trained = dict(epochs=1, batch_size=8, device="cpu", workers=0, keep_last=1, augment="flip,colour",
                   self_blend=0.25, video_loss=0.5, lr=0.002, seed=3, amp=False)
    path = tmp_path / "script.yaml"
    path.write_text(yaml.safe_dump({**common, **trained, "dataset": "dummy", "frames": 8}))
    assert avlib.train.main(["-f", str(path)]) == 0
    saved = load_checkpoint(tmp_path / "results" / "script" / "checkpoints" / "last.pt")["params"]
    assert {k: saved[k] for k in trained} == trained


def test_the_pipeline_checks_every_value_of_a_params_file_before_running():
    with pytest.raises(ParameterError, match="`epochs`"):
        check_params_file({"run_name": "x", "epochs": 0})
    with pytest.raises(ParameterError, match="`corpus_styles`"):
        check_params_file({"corpus_styles": "studio,mars"})
    with pytest.raises(ParameterError, match="epochz"):
        check_params_file({"epochz": 3})
    assert check_params_file({"epochs": 3, "seed": 2})["03_train"] == {"epochs": 3, "seed": 2}
    assert check_params_file({"epochs": 3, "seed": 2})["01_preprocess"] == {"seed": 2}


@pytest.mark.parametrize("notebook,values,named", [
    ("01_preprocess", {"shard": 2, "num_shards": 2}, "shard"),
    ("01_preprocess", {"dataset": "synthetic", "identities": 2, "corpus_styles": "studio,newsroom,webcam"},
     "identities"),
    ("01_preprocess", {"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction"),
    ("03_train", {"amp": "yes"}, "amp"),
    ("03_train", {"augment": "flip,flip"}, "augment"),
    ("04_evaluate", {"external_cache_dirs": "test=cache/x"}, "external_cache_dirs"),
    ("02_build_model", {"device": "gpu"}, "device"),
])
def test_a_bad_value_is_refused_naming_the_parameter(notebook, values, named):
    with pytest.raises(ParameterError, match=f"`{named}`"):
        check(notebook, values)


def test_a_stage_called_with_a_bad_or_unknown_keyword_says_so():
    with pytest.raises(ParameterError, match="`epochs`"):
        stages.train_stage(epochs=0)
    with pytest.raises(TypeError, match="live_curves"):
        stages.train_stage(live_curves=False)


def test_stage_values_leave_out_display_switches_and_other_notebooks_keys():
    got = stage_values("03_train", {"epochs": 2, "live_curves": False, "frames": 8})
    assert got["epochs"] == 2 and "live_curves" not in got and "frames" not in got
    assert set(got) == {p.name for p in DECLARATIONS["03_train"] if p.stage}
