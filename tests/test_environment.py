"""The two dependency lists must not drift, and CI must run the README's test command."""
import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    norm = lambda specs: sorted(s.replace(" ", "").lower() for s in specs)
    assert norm(pip) == norm(project)


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^make [a-z-]+", ci, flags=re.M)
    assert commands == ["make test"]
    assert "make test" in readme


def test_torch_pins_are_the_ones_installed_from_the_local_copy():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch==2.14.1" in project and "torchvision==0.29.1" in project
    assert any(d.startswith("opencv-python-headless<5") for d in project)
