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


class FakeDist:
    def __init__(self, name, version):
        self.metadata, self.version = {"Name": name}, version


COLAB_PACKAGES = {"torch": "2.9.0", "ipywidgets": "7.7.1", "numpy": "2.0.2", "pandas": "2.2.2"}
IMPORTS = {"torch": ["torch"], "ipywidgets": ["ipywidgets"], "numpy": ["numpy"], "pandas": ["pandas"]}


@pytest.fixture
def sim(monkeypatch, tmp_path):
    """Run the cell's source as a notebook would, with every side effect recorded instead.

    The installed packages are a dict that a simulated `pip install` may change (`pip_changes`)."""
    calls = SimpleRecorder()
    monkeypatch.setattr(subprocess, "run", calls.run)
    monkeypatch.setattr(os, "chdir", calls.chdir)
    monkeypatch.setattr(os, "getcwd", lambda: calls.cwd)
    monkeypatch.setattr(sys, "path", list(sys.path))
    import importlib.metadata as md
    monkeypatch.setattr(md, "distributions", lambda: [FakeDist(n, v) for n, v in calls.packages.items()])
    monkeypatch.setattr(md, "packages_distributions", lambda: IMPORTS)

    def run_cell(on_colab: bool, cloned: bool = False, source: str = C.CELL_SOURCE):
        if on_colab:
            monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
        else:
            monkeypatch.delitem(sys.modules, "google.colab", raising=False)
        real_isdir = os.path.isdir
        monkeypatch.setattr(os.path, "isdir", lambda p: cloned if str(p).startswith("/content/") else real_isdir(p))
        exec(compile(source, "<colab-setup cell>", "exec"), {"__name__": "__main__"})
        return calls

    run_cell.calls = calls
    return run_cell


class SimpleRecorder:
    """subprocess.run on a simulated Colab: records commands; `fail` makes one fail with `stderr`."""

    def __init__(self):
        self.commands, self.cwd = [], "/content"
        self.packages, self.pip_changes = dict(COLAB_PACKAGES), {}
        self.fail, self.stderr = None, ""

    def run(self, cmd, check=False, **kwargs):
        self.commands.append(list(cmd))
        if self.fail and self.fail in cmd:
            return subprocess.CompletedProcess(cmd, 1 if self.fail == "pip" else 128, stdout="", stderr=self.stderr)
        if "pip" in cmd:
            self.packages.update(self.pip_changes)
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    def chdir(self, path):
        self.cwd = str(path)


URL = "https://github.com/someone/face-recognition-course"
COURSE = "/content/face-recognition-course"


def published(url: str = URL) -> str:
    """The cell as it will be once COURSE_REPO_URL points at the published course."""
    return C.CELL_TEMPLATE.format(url=url, branch=C.COURSE_BRANCH, not_on_colab=C.NOT_ON_COLAB,
                                  mark=C.PLACEHOLDER_MARK, placeholder=C.PLACEHOLDER_MESSAGE, restart=C.RESTART_NOTE)


def test_not_on_colab_runs_nothing_and_prints_one_stable_line(sim, capsys):
    calls = sim(on_colab=False)
    assert calls.commands == [] and calls.cwd == "/content"
    assert capsys.readouterr().out == C.NOT_ON_COLAB + "\n"


def test_the_placeholder_address_says_what_to_do_and_runs_nothing(sim):
    assert C.is_placeholder() == (C.PLACEHOLDER_MARK in C.COURSE_REPO_URL)
    with pytest.raises(SystemExit) as stop:
        sim(on_colab=True, source=published("https://github.com/YOUR-GITHUB-ACCOUNT/face-recognition-course"))
    message = str(stop.value)
    assert "COURSE_REPO_URL" in message and "placeholder" in message and "run this cell again" in message
    assert "CalledProcessError" not in message


def test_placeholder_stops_before_git(sim, monkeypatch):
    ran = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: ran.append(cmd))
    with pytest.raises(SystemExit):
        sim(on_colab=True, source=published("https://github.com/YOUR-GITHUB-ACCOUNT/x"))
    assert ran == []


def test_on_colab_clones_installs_and_moves_into_notebooks(sim, capsys):
    calls = sim(on_colab=True, source=published())
    clone, pip = calls.commands
    assert clone[:2] == ["git", "clone"] and clone[-2:] == [URL, COURSE]
    assert clone[clone.index("--branch") + 1] == C.COURSE_BRANCH
    assert pip == [sys.executable, "-m", "pip", "install", "-e", COURSE + "[notebooks]"]
    assert calls.cwd == COURSE + "/notebooks"
    assert sys.path[0] == COURSE                     # `import helpers` works in the same kernel
    out = capsys.readouterr().out
    assert out.startswith("On Colab: cloned ") and "installed it with pip" in out
    assert out.strip().endswith(f"working in {COURSE}/notebooks.")
    assert C.RESTART_NOTE not in out                 # Colab's torch and ipywidgets satisfied the course


def test_on_colab_a_second_run_does_not_clone_again(sim, capsys):
    calls = sim(on_colab=True, cloned=True, source=published())
    assert [c[:2] for c in calls.commands] == [[sys.executable, "-m"]]   # pip only
    assert sys.path.count(COURSE) == 1
    out = capsys.readouterr().out
    assert "cloned" not in out and out.startswith("On Colab: installed it with pip")


def test_a_failed_clone_shows_gits_own_message(sim, monkeypatch):
    rec = sim.calls
    rec.fail, rec.stderr = "git", "fatal: repository 'https://github.com/someone/x/' not found\n"
    with pytest.raises(SystemExit) as stop:
        sim(on_colab=True, source=published())
    message = str(stop.value)
    assert message.startswith(f"git clone {URL} failed (exit 128):") and "repository" in message and "not found" in message
    assert [c[0] for c in rec.commands] == ["git"]                       # pip never ran


def test_a_failed_pip_shows_pips_own_message(sim, monkeypatch, capsys):
    rec = sim.calls
    rec.fail = "pip"
    rec.stderr = "noise\n" * 40 + "ERROR: Could not find a version that satisfies the requirement torch>=2.9\n"
    with pytest.raises(SystemExit) as stop:
        sim(on_colab=True, source=published())
    message = str(stop.value)
    assert message.startswith("pip install failed (exit 1):")
    assert message.endswith("ERROR: Could not find a version that satisfies the requirement torch>=2.9")
    assert message.count("noise") < 20                                   # the tail, not 40 lines
    assert "On Colab" not in capsys.readouterr().out


def test_restart_note_when_pip_replaced_an_imported_package(sim, monkeypatch, capsys):
    sim.calls.pip_changes = {"numpy": "2.3.0", "pandas": "2.3.1"}         # numpy imported, pandas not
    monkeypatch.setitem(sys.modules, "numpy", sys.modules.get("numpy") or types.ModuleType("numpy"))
    monkeypatch.delitem(sys.modules, "pandas", raising=False)
    sim(on_colab=True, source=published())
    out = capsys.readouterr().out
    note = [ln for ln in out.splitlines() if ln.startswith(C.RESTART_NOTE)]
    assert len(note) == 1 and "numpy 2.0.2 -> 2.3.0" in note[0] and "pandas" not in note[0]
    assert "Runtime > Restart session" in note[0]
    assert "which changed 2 of Colab's packages" in out


def test_no_restart_note_when_only_packages_not_yet_imported_changed(sim, monkeypatch, capsys):
    sim.calls.pip_changes = {"pandas": "2.3.1", "new-package": "1.0"}
    monkeypatch.delitem(sys.modules, "pandas", raising=False)
    sim(on_colab=True, source=published())
    assert C.RESTART_NOTE not in capsys.readouterr().out


def test_colabs_own_ipywidgets_and_torch_satisfy_the_notebooks_extra():
    """So pip leaves them alone: the floors the cell installs against are at or under Colab's versions."""
    try:
        import tomllib
    except ModuleNotFoundError:
        from pip._vendor import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["notebooks"]
    floors = {r.split(">=")[0].strip(): r.split(">=")[1].split(",")[0].strip() for r in reqs if ">=" in r}
    version = lambda v: tuple(int(x) for x in v.split("."))
    assert version(floors["ipywidgets"]) <= version(COLAB_PACKAGES["ipywidgets"])


def test_cell_is_plain_python_with_the_repo_address():
    compile(C.CELL_SOURCE, "cell", "exec")
    assert not any(line.lstrip().startswith(("!", "%")) for line in C.CELL_SOURCE.splitlines())
    assert f'COURSE_REPO_URL = "{C.COURSE_REPO_URL}"' in C.CELL_SOURCE
    compile(published(), "cell", "exec")


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


def test_an_untagged_copy_from_an_old_branch_is_dropped():
    """A merge brought back an untagged copy of the cell (same first line): one cell stays, tagged."""
    untagged = _code(C.CELL_SOURCE.splitlines()[0] + "\nprint('older version')")
    nb = _nb([_md("# T"), A.make_cell(), untagged, _code("X = 1", ["parameters"])])
    assert A.apply(nb) is True
    setup = [c for c in nb["cells"] if "".join(c["source"]).startswith(C.CELL_SOURCE.splitlines()[0])]
    assert len(setup) == 1 and setup[0]["metadata"]["tags"] == [C.CELL_TAG]
    assert A.apply(nb) is False


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
