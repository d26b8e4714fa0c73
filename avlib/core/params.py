"""How a parameter is declared, checked and read from a params file.

A `Param` holds everything about one parameter of a notebook: its name, type, default, the
values it allows and one line of help. avlib.stages.parameters declares each notebook's
parameters with the helpers below; the notebooks' parameters cells, their checks, the stage
functions' keywords, the pipeline's params-file check and `python -m avlib.train` all derive
from those declarations.

Why dataclasses and small check functions, not pydantic: a parameter here is a plain literal
(int, float, str or bool) whose checks are short rules with domain-specific messages ("must
be one of ..."), and papermill needs the parameters cell as plain literals anyway. pydantic
would add a dependency and a second error format for no rule we cannot write in two lines.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from avlib.core.errors import ParameterError

DEVICES = ("auto", "cpu", "cuda")
NAMED_PATH = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Param:
    """One parameter: `check(name, value)` raises ParameterError naming it; `allowed` is the
    text of the values it takes, shown before the help in the notebook's parameters cell."""
    name: str
    type: type
    default: Any
    help: str
    check: Callable[[str, Any], None]
    allowed: str = ""
    stage: bool = True          # False: the notebook uses it itself (a display switch), the stage never sees it

    def validate(self, value) -> None:
        self.check(self.name, value)

    @property
    def comment(self) -> str:
        return f"{self.allowed}: {self.help}" if self.allowed else self.help

    def cell_line(self) -> str:
        """The line of the notebook's parameters cell: `name: type = literal  # comment`."""
        return f"{self.name}: {self.type.__name__} = {literal(self.default)}  # {self.comment}"


def literal(value) -> str:
    """`value` as a Python literal of the parameters cell (strings in double quotes)."""
    return json.dumps(value) if isinstance(value, str) else repr(value)


# ---------------------------------------------------------------- checks: each raises ParameterError naming the parameter

def _is_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def at_least(minimum: int):
    def check(name, value):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ParameterError(f"parameter `{name}` must be an integer >= {minimum}, got {value!r}")
    return check


def positive(name, value):
    if not _is_number(value) or not value > 0:
        raise ParameterError(f"parameter `{name}` must be a number > 0, got {value!r}")


def nonnegative(name, value):
    if not _is_number(value) or not value >= 0:
        raise ParameterError(f"parameter `{name}` must be a number >= 0, got {value!r}")


def fraction(name, value):
    if not _is_number(value) or not 0 <= value < 1:
        raise ParameterError(f"parameter `{name}` must be a number in [0, 1), got {value!r}")


def probability(name, value):
    if not _is_number(value) or not 0 <= value <= 1:
        raise ParameterError(f"parameter `{name}` must be a probability in [0, 1], got {value!r}")


def one_of(choices):
    def check(name, value):
        if value not in choices:
            raise ParameterError(f"parameter `{name}` must be one of {', '.join(choices)}; got {value!r}")
    return check


def boolean(name, value):
    if not isinstance(value, bool):
        raise ParameterError(f"parameter `{name}` must be true or false, got {value!r}")


def string(name, value):
    if not isinstance(value, str):
        raise ParameterError(f"parameter `{name}` must be a string, got {value!r}")


def device(name, value):
    if not isinstance(value, str) or not (value in DEVICES or value.startswith("cuda:")):
        raise ParameterError(f"parameter `{name}` must be auto, cpu, cuda or cuda:N; got {value!r}")


def amp(name, value):
    if not (isinstance(value, bool) or value == "auto"):
        raise ParameterError(f"parameter `{name}` must be true, false or auto, got {value!r}")


def folder_name(name, value):
    if not isinstance(value, str) or not value or "/" in value or value.startswith("."):
        raise ParameterError(f"parameter `{name}` must be a plain folder name, got {value!r}")


# ---------------------------------------------------------------- declaring

def integer(name: str, default: int, help: str, *, minimum: int = 0, stage: bool = True) -> Param:
    return Param(name, int, default, help, at_least(minimum), stage=stage)


def number(name: str, default: float, help: str, check=positive) -> Param:
    return Param(name, float, default, help, check)


def flag(name: str, default: bool, help: str, *, stage: bool = True) -> Param:
    return Param(name, bool, default, help, boolean, stage=stage)


def choice(name: str, default: str, help: str, choices: tuple[str, ...]) -> Param:
    return Param(name, str, default, help, one_of(choices), allowed=" | ".join(choices))


def text(name: str, default: str, help: str, check=string, allowed: str = "") -> Param:
    return Param(name, str, default, help, check, allowed=allowed)


# ---------------------------------------------------------------- values that name several things

def named_paths(spec: str, *, parameter: str, reserved: tuple[str, ...] = (), what: str = "set") -> dict[str, str]:
    """{name: path} from comma-separated entries, each `path` (named by its last folder) or
    `name=path`. Raises ParameterError naming `parameter` for a name that is not letters,
    digits, _ . -, is one of `reserved`, or is repeated."""
    if not isinstance(spec, str):
        raise ParameterError(f"parameter `{parameter}` must be a string of comma-separated folders, got {spec!r}")
    sets = {}
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        name, _, path = entry.partition("=") if "=" in entry else ("", "", entry)
        name = name.strip() or Path(path.strip()).name
        if not NAMED_PATH.fullmatch(name) or name in reserved:
            raise ParameterError(f"parameter `{parameter}`: {entry!r} gives the {what} the name {name!r}; a name is "
                                 f"letters, digits, _ . -" + (f" and not one of {', '.join(reserved)}" if reserved else "")
                                 + " (write name=path to choose one)")
        if name in sets:
            raise ParameterError(f"parameter `{parameter}`: two {what}s are named {name!r}; write name=path to tell "
                                 f"them apart")
        sets[name] = path.strip()
    return sets


# ---------------------------------------------------------------- params files

def check_declared(params: tuple[Param, ...], values: dict, owner: str) -> dict:
    """`values` with the declared default for every parameter of `params` it lacks, each checked.
    Raises ParameterError naming the first bad parameter, or those `owner` (a notebook, a
    command) does not declare."""
    names = {p.name for p in params}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ParameterError(f"{owner} has no parameter(s) {', '.join(unknown)}")
    full = {p.name: values.get(p.name, p.default) for p in params}
    for p in params:
        p.validate(full[p.name])
    return full


def load_params(path: str | Path, _chain: tuple = ()) -> dict:
    """Read a params/*.yaml file into a dict; raises ParameterError if it is not a mapping.

    A file may start from another: `extends: demo_sync.yaml` (a path relative to the file)
    reads that file first, then the file's own keys replace its keys (a `prepare` list is
    replaced whole, not merged). So a variant of a run says only how it differs."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ParameterError(f"{path}: expected a mapping of parameter names to values")
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ParameterError(f"{path}: `extends` must name a params file, got {base!r}")
    target = path.parent / base
    chain = (*_chain, path.resolve())
    if target.resolve() in chain:
        raise ParameterError(f"{path}: `extends: {base}` comes back to a file it started from "
                             f"({' -> '.join(p.name for p in (*chain, target))})")
    if not target.is_file():
        raise ParameterError(f"{path}: `extends` names {target}, which is not a file")
    return {**load_params(target, chain), **data}
