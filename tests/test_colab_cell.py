"""The notebooks' first cell (tools/colab_cell.py) and the tool that puts it there.

Colab cannot be reached from the machines that test the course, so Colab is simulated: a fake
`google.colab` module in sys.modules, subprocess.run and os.chdir replaced by recorders.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)   # add_colab_cell imports colab_cell by name
    spec.loader.exec_module(module)
    return module


C = _load("colab_cell")
A = _load("add_colab_cell")


@pytest.fixture
def sim(monkeypatch, tmp_path):
    """Run the cell's source as a notebook would, with every side effect recorded instead."""
    calls = SimpleRecorder()
    monkeypatch.setattr(subprocess, "run", calls.run)
    monkeypatch.setattr(os, "chdir", calls.chdir)
    monkeypatch.setattr(os, "getcwd", lambda: calls.cwd)
    monkeypatch.setattr(sys, "path", list(sys.path))

    def run_cell(on_colab: bool, cloned: bool = False, source: str = C.CELL_SOURCE):
        if on_colab:
            monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
        else:
            monkeypatch.delitem(sys.modules, "google.colab", raising=False)
        real_isdir = os.path.isdir
        monkeypatch.setattr(os.path, "isdir", lambda p: cloned if str(p).startswith("/content/") else real_isdir(p))
        exec(compile(source, "<colab-setup cell>", "exec"), {"__name__": "__main__"})
        return calls

    return run_cell


class SimpleRecorder:
    def __init__(self):
        self.commands, self.cwd = [], "/content"

    def run(self, cmd, check=False, **kwargs):
        self.commands.append(list(cmd))
        return subprocess.CompletedProcess(cmd, 0)

    def chdir(self, path):
        self.cwd = str(path)


COURSE = "/content/" + C.COURSE_REPO_URL.rstrip("/").split("/")[-1]


def test_not_on_colab_runs_nothing_and_prints_one_stable_line(sim, capsys):
    calls = sim(on_colab=False)
    assert calls.commands == [] and calls.cwd == "/content"
    assert capsys.readouterr().out == C.NOT_ON_COLAB + "\n"


def test_on_colab_clones_installs_and_moves_into_notebooks(sim, capsys):
    calls = sim(on_colab=True)
    clone, pip = calls.commands
    assert clone[:2] == ["git", "clone"] and clone[-2:] == [C.COURSE_REPO_URL, COURSE]
    assert clone[clone.index("--branch") + 1] == C.COURSE_BRANCH
    assert pip == [sys.executable, "-m", "pip", "install", "--quiet", "-e", COURSE + "[notebooks]"]
    assert calls.cwd == COURSE + "/notebooks"
    assert sys.path[0] == COURSE                     # `import helpers` works in the same kernel
    out = capsys.readouterr().out
    assert out.startswith("On Colab: cloned ") and "installed it with pip" in out
    assert out.strip().endswith(f"working in {COURSE}/notebooks.")


def test_on_colab_a_second_run_does_not_clone_again(sim, capsys):
    calls = sim(on_colab=True, cloned=True)
    assert [c[:2] for c in calls.commands] == [[sys.executable, "-m"]]   # pip only
    assert sys.path.count(COURSE) == 1
    out = capsys.readouterr().out
    assert "cloned" not in out and out.startswith("On Colab: installed it with pip")


def test_a_failed_clone_stops_the_cell(monkeypatch, sim):
    def failing(cmd, check=False, **kw):
        raise subprocess.CalledProcessError(128, cmd)
    monkeypatch.setattr(subprocess, "run", failing)
    with pytest.raises(subprocess.CalledProcessError):
        sim(on_colab=True)


def test_cell_is_plain_python_with_the_repo_address():
    compile(C.CELL_SOURCE, "cell", "exec")
    assert not any(line.lstrip().startswith(("!", "%")) for line in C.CELL_SOURCE.splitlines())
    assert f'COURSE_REPO_URL = "{C.COURSE_REPO_URL}"' in C.CELL_SOURCE


def test_links_follow_the_repo_address():
    url = "https://github.com/someone/face-course.git"
    assert C.colab_url("00_a.ipynb", url, "dev") == \
        "https://colab.research.google.com/github/someone/face-course/blob/dev/notebooks/00_a.ipynb"
    assert C.binder_url(url, "dev") == "https://mybinder.org/v2/gh/someone/face-course/dev?urlpath=lab/tree/notebooks"
    with pytest.raises(ValueError):
        C.colab_url("x.ipynb", "https://gitlab.com/a/b")


# --- tools/add_colab_cell.py -----------------------------------------------------------------------

def _nb(cells, minor=5):
    return {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": minor}


def _md(text):
    return {"cell_type": "markdown", "id": "t", "metadata": {}, "source": [text]}


def _code(text, tags=None):
    return {"cell_type": "code", "execution_count": 1, "id": text[:8], "metadata": {"tags": tags or []},
            "outputs": [], "source": [text]}


def test_inserted_after_the_title_before_every_code_cell_and_idempotent():
    nb = _nb([_md("# Title"), _md("## Knobs"), _code("X = 1", ["parameters"]), _code("print(X)")])
    assert A.apply(nb) is True
    kinds = [(c["cell_type"], c["metadata"].get("tags")) for c in nb["cells"]]
    assert kinds[1] == ("code", [C.CELL_TAG])
    assert [c["source"] for c in nb["cells"] if c["cell_type"] == "code"][0] == A.make_cell()["source"]
    once = copy.deepcopy(nb)
    assert A.apply(nb) is False and nb == once


def test_stored_output_is_what_the_cell_prints_off_colab(sim, capsys):
    """So nbval passes on a notebook where the cell was inserted but not yet re-executed."""
    sim(on_colab=False, source="".join(A.make_cell()["source"]))
    stored = "".join(A.make_cell()["outputs"][0]["text"])
    assert capsys.readouterr().out == stored


def test_an_old_cell_is_updated_in_place_and_duplicates_dropped():
    old = _code("print('old setup')", [C.CELL_TAG])
    nb = _nb([_md("# T"), _code("X = 1", ["parameters"]), old, copy.deepcopy(old)])
    assert A.apply(nb) is True
    setup = [c for c in nb["cells"] if C.CELL_TAG in c["metadata"].get("tags", [])]
    assert len(setup) == 1 and nb["cells"].index(setup[0]) == 2     # stays where it was
    assert "".join(setup[0]["source"]) == C.CELL_SOURCE.rstrip("\n")


def test_notebook_without_title_or_with_old_format():
    nb = _nb([_code("x = 1")], minor=4)
    A.apply(nb)
    assert C.CELL_TAG in nb["cells"][0]["metadata"]["tags"] and "id" not in nb["cells"][0]


def test_file_round_trip_keeps_jupyters_layout(tmp_path):
    path = tmp_path / "n.ipynb"
    nb = _nb([_md("# T"), _code("x = 1")])
    path.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    assert A.update_file(path) is True
    text = path.read_text()
    assert text == json.dumps(json.loads(text), indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    assert A.update_file(path) is False and path.read_text() == text
    assert A.main([str(path), "--check"]) == 0


def test_check_mode_changes_nothing(tmp_path):
    path = tmp_path / "n.ipynb"
    path.write_text(json.dumps(_nb([_md("# T")]), indent=1) + "\n")
    before = path.read_text()
    assert A.main([str(path), "--check"]) == 1
    assert path.read_text() == before


def test_readme_links_are_rewritten_to_the_current_address():
    text = ("| 00 | [![Open in Colab](b.svg)](https://colab.research.google.com/github/old/repo/blob/x/"
            "notebooks/00_setup_and_data.ipynb) |\n[![Binder](b.svg)](https://mybinder.org/v2/gh/old/repo/x)\n")
    new = A.update_readme_text(text)
    assert C.colab_url("00_setup_and_data.ipynb") in new and C.binder_url() in new and "old/repo" not in new
    assert A.update_readme_text(new) == new


def test_readme_has_a_current_colab_badge_per_notebook_and_a_binder_badge():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert C.colab_url(nb.name) in readme, f"README: no Colab badge for {nb.name}"
    assert C.binder_url() in readme
    assert A.update_readme_text(readme) == readme
