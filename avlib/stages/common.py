"""What every stage shares: the decorator that gives a stage function its notebook's declared
parameters, and the files a stage finds from an earlier one."""
from __future__ import annotations

import functools
import inspect
from dataclasses import field, make_dataclass
from pathlib import Path

from avlib.core.errors import MissingInputError
from avlib.core.paths import read_json, resolve
from avlib.stages.parameters import declaration, stage_values


def params_class(notebook: str) -> type:
    """A frozen dataclass with one field per parameter `notebook`'s stage takes, defaults as declared."""
    fields = [(p.name, p.type, field(default=p.default)) for p in declaration(notebook) if p.stage]
    name = "".join(part.title() for part in notebook.split("_")[1:]) + "Params"
    return make_dataclass(name, fields, frozen=True)


def stage(notebook: str):
    """Make `body(p, *, extras...)` the stage function of `notebook`: it is called with the
    notebook's parameters as keywords (those missing take their declared defaults; each is
    checked, ParameterError naming a bad one) and receives them as one frozen object `p`.
    The function's signature lists the declared parameters, then `body`'s own keywords."""
    config = params_class(notebook)
    names = {f for f in config.__dataclass_fields__}

    def wrap(body):
        extras = list(inspect.signature(body).parameters.values())[1:]

        @functools.wraps(body)
        def run(**kwargs):
            values = stage_values(notebook, {k: kwargs.pop(k) for k in list(kwargs) if k in names})
            return body(config(**values), **kwargs)

        declared = [inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=p.default, annotation=p.type)
                    for p in declaration(notebook) if p.stage]
        run.__signature__ = inspect.Signature(declared + extras)
        run.notebook = notebook
        run.params_class = config
        return run
    return wrap


def need(path: Path, what: str, notebook: str) -> Path:
    """`path`, or MissingInputError saying which notebook writes it."""
    if not path.is_file():
        raise MissingInputError(f"{path} not found: {what} is written by notebooks/{notebook}.ipynb; "
                                f"run it first with the same run_name (or `python -m avlib.pipeline PARAMS`)")
    return path


def locate_cache(results_dir: str, run_name: str, cache_dir: str = "") -> Path:
    """The cache this run uses: `cache_dir` if given, else the one 01_preprocess recorded."""
    if cache_dir:
        return resolve(cache_dir)
    report = need(resolve(results_dir) / run_name / "preprocess.json", "preprocess.json", "01_preprocess")
    return resolve(read_json(report)["cache_dir"])
