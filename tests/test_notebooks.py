"""The notebooks as people use them: committed clean, params files valid, and the whole
chain run headlessly by papermill on params/smoke.yaml (dummy tensors) into a temporary folder."""
import json
import struct
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest

from avlib.core.errors import ParameterError
from avlib.core.params import load_params
from avlib.localise import check_params as check_localise_params
from avlib.pipeline import prepare_params, split_params
from avlib.stages.parameters import NOTEBOOKS

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_clean_with_one_parameters_cell(name):
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert not any(line.lstrip().startswith(("def ", "class ")) for c in code for line in c.source.splitlines())


@pytest.mark.parametrize("params_file", sorted((ROOT / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_params_files_only_name_notebook_parameters(params_file):
    params = load_params(params_file)
    if "localise" in params_file.stem:           # python -m avlib.localise's, not the notebooks'
        check_localise_params(params)            # raises ParameterError for an unknown key or bad value
        return
    for entry in params.pop("prepare", None) or []:
        prepare_params(params, entry)            # an extra corpus for 01: raises ParameterError for an unknown key
    split_params(params)                         # raises ParameterError for an unknown key


def test_a_params_file_extends_another(tmp_path):
    """`extends`: the base's keys, the file's own replacing them (a `prepare` list whole)."""
    (tmp_path / "base.yaml").write_text("run_name: base\nepochs: 12\nlr: 0.001\nprepare:\n  - run_name: a\n  - run_name: b\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "variant.yaml").write_text("extends: ../base.yaml\nrun_name: variant\nprepare:\n  - run_name: c\n")
    (tmp_path / "third.yaml").write_text("extends: sub/variant.yaml\nepochs: 3\n")
    assert load_params(tmp_path / "third.yaml") == {"run_name": "variant", "epochs": 3, "lr": 0.001,
                                                    "prepare": [{"run_name": "c"}]}


def test_extends_refuses_a_missing_file_and_a_cycle(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ParameterError, match=r"a.yaml: `extends` names .*nowhere.yaml"):
        load_params(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("extends: c.yaml\nepochs: 1\n")
    (tmp_path / "c.yaml").write_text("extends: b.yaml\nepochs: 2\n")
    with pytest.raises(ParameterError, match=r"b.yaml -> c.yaml -> b.yaml"):
        load_params(tmp_path / "b.yaml")


def test_an_unknown_key_is_refused():
    with pytest.raises(ParameterError, match="epochz"):
        split_params({"epochz": 3})


def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    if not data.startswith(PNG_MAGIC):
        return False
    width, height = struct.unpack(">II", data[16:24])
    return width > 100 and height > 100


@pytest.fixture(scope="module")
def smoke_run(clone_smoke_run):
    """(run folder, params) of the smoke chain (tests/conftest.py runs it once, as the main
    command, in a git copy of the tree, kernels in notebooks/)."""
    clone, run, _ = clone_smoke_run
    cache = clone / json.loads((run / "preprocess.json").read_text())["cache_dir"]
    return run, {**load_params(ROOT / "params" / "smoke.yaml"), "results_dir": str(clone / "results"),
                 "cache_dir": str(cache)}


def test_smoke_chain_writes_metrics_history_predictions_and_figures(smoke_run):
    run, params = smoke_run
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("accuracy", "auc", "per_class", "balanced_accuracy", "ap", "eer", "threshold", "confusion_matrix"):
        assert key in metrics
    assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["auc"] <= 1
    assert set(metrics["per_class"]) == {"REAL", "FAKE"}
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == list(range(1, params["epochs"] + 1))
    predictions = pd.read_csv(run / "predictions.csv")
    assert len(predictions) == sum(metrics["n"].values())
    assert predictions["p_fake"].between(0, 1).all()
    assert "sync_score" in metrics and "sync_score" in predictions              # the smoke model is a sync model
    assert set(metrics["external"]) == {"smoke-external"} and "sync_score" in metrics["external"]["smoke-external"]
    for fig in ("confusion_matrix", "roc_curve", "training_curves", "precision_recall", "per_category_auc",
                "score_distributions", "reliability", "roc_external", "sync_scores"):
        assert _is_png(run / "figures" / f"{fig}.png"), fig
        assert len(pd.read_csv(run / "figures" / f"{fig}.csv")) > 0, fig     # the numbers behind it
    for name in NOTEBOOKS:
        executed = nbformat.read(run / "notebooks" / f"{name}.ipynb", as_version=4)
        assert any(c.get("outputs") for c in executed.cells if c.cell_type == "code")
    assert (run / "checkpoints" / "best.pt").is_file() and (run / "checkpoints" / "last.pt").is_file()


def _shown(run: Path, name: str, mime: str) -> list[str]:
    """The `mime` outputs of an executed notebook of the run."""
    executed = nbformat.read(run / "notebooks" / f"{name}.ipynb", as_version=4)
    return [o["data"][mime] for c in executed.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if mime in o.get("data", {})]


def test_smoke_notebooks_show_the_data_training_and_mistakes_and_keep_them(smoke_run):
    run, _ = smoke_run
    figures = run / "figures"
    for fig in ("sample_clips", "leading_silence", "training_curves"):
        assert _is_png(figures / f"{fig}.png"), fig
    assert len(_shown(run, "01_preprocess", "image/png")) == 2                   # sample clips, leading silence
    assert any("video_encoder.model.layer4" in html for html in _shown(run, "02_build_model", "text/html"))
    assert len(_shown(run, "03_train", "image/png")) == 1                        # the curves, drawn once headless
    predictions = pd.read_csv(run / "predictions.csv")
    mistakes = int((predictions["pred"] != predictions["label"]).sum())
    assert (figures / "confident_mistakes.png").is_file() == (mistakes > 0)       # else a note, never an error
    if mistakes:
        assert _is_png(figures / "confident_mistakes.png")
        assert len(pd.read_csv(figures / "confident_mistakes.csv")) == min(mistakes, 8)
        assert len(_shown(run, "04_evaluate", "image/png")) == 1
    else:
        assert any("no mistakes" in note for note in _shown(run, "04_evaluate", "text/markdown"))


def test_train_resumes_instead_of_starting_over(smoke_run, tmp_path, monkeypatch):
    run, params = smoke_run
    clone = run.parents[1]                  # the smoke run's copy of the tree: its avlib, notebooks and cache
    monkeypatch.setenv("PYTHONPATH", str(clone))
    papermill.execute_notebook(str(clone / "notebooks" / "03_train.ipynb"), str(tmp_path / "out.ipynb"),
                               parameters={"run_name": params["run_name"], "results_dir": params["results_dir"],
                                           "epochs": params["epochs"] + 1, "workers": 0, "device": "cpu",
                                           "batch_size": params["batch_size"], "lr": params["lr"]},
                               cwd=str(clone), progress_bar=False)            # the kernel in the root, this time
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == list(range(1, params["epochs"] + 2))


@pytest.mark.parametrize("name", ["02_build_model", "05_plots"])
def test_notebooks_run_with_the_kernel_in_the_repository_root_too(smoke_run, tmp_path, monkeypatch, name):
    """The smoke chain's kernels start in notebooks/ (as JupyterLab starts them); 01 and 03 run
    from the root in the tests above and below, these two here (04 reads paths as 05 does)."""
    run, params = smoke_run
    clone = run.parents[1]
    monkeypatch.setenv("PYTHONPATH", str(clone))
    before = (run / "figures" / "roc_curve.png").stat().st_mtime_ns
    keys = {"02_build_model": ("run_name", "results_dir", "fusion", "trunk_stride"), "05_plots": ("run_name", "results_dir")}
    papermill.execute_notebook(str(clone / "notebooks" / f"{name}.ipynb"), str(tmp_path / "out.ipynb"),
                               parameters={k: params[k] for k in keys[name]}, cwd=str(clone), progress_bar=False)
    if name == "05_plots":
        assert (run / "figures" / "roc_curve.png").stat().st_mtime_ns > before
    else:
        assert json.loads((run / "model.json").read_text())["fusion"] == "sync"


# Each case starts a kernel (7 s): two notebooks here; every rule's message is tested directly in
# tests/test_parameters.py, through the same check the notebooks call.
@pytest.mark.parametrize("notebook,params,message", [
    ("03_train", {"epochs": -1}, "epochs"),
    ("01_preprocess", {"dataset": "imagenet"}, "dataset"),
])
def test_bad_parameter_stops_the_notebook_naming_it(tmp_path, notebook, params, message):
    with pytest.raises(papermill.PapermillExecutionError) as err:
        papermill.execute_notebook(str(ROOT / "notebooks" / f"{notebook}.ipynb"), str(tmp_path / "out.ipynb"),
                                   parameters={**params, "results_dir": str(tmp_path)}, cwd=str(ROOT), progress_bar=False)
    assert err.value.ename == "ParameterError"
    assert f"`{message}`" in err.value.evalue


def test_training_without_data_says_what_to_run_first(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError) as err:
        papermill.execute_notebook(str(ROOT / "notebooks" / "03_train.ipynb"), str(tmp_path / "out.ipynb"),
                                   parameters={"epochs": 290, "results_dir": str(tmp_path)}, cwd=str(ROOT),
                                   progress_bar=False)
    assert err.value.ename == "MissingInputError"
    assert "01_preprocess" in err.value.evalue
