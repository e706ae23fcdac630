"""The notebooks' test machinery: nbval compares by meaning (notebooks/conftest.py), and every
marker nbval relies on is written so that nbval recognises it."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _meaning():
    spec = importlib.util.spec_from_file_location("nb_meaning", ROOT / "notebooks" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


M = _meaning()


@pytest.mark.parametrize("ref,new", [
    ("Egyptian cat 38 %", "Egyptian cat 39 %"),
    ("final loss 5.226", "final loss 5.227"),
    ("gap 48°", "gap 47°"),
    ("| arcface |  95.6 % | 0.59 |", "| arcface | 95.6 % | 0.60 |"),
    ("trainable 268,288 / 11,444,800", "trainable 268,288 / 11,444,800"),
])
def test_last_digit_noise_is_accepted(ref, new):
    assert M.outputs_agree(ref, new)


@pytest.mark.parametrize("ref,new,why", [
    ("trainable 268,288", "trainable 268,289", "counts are exact"),
    ("trainable 268,288", "trainable 11,444,800", "counts are exact"),
    ("test accuracy 95.6 %", "test accuracy 11.1 %", "shuffled labels: chance level"),
    ("test accuracy 95.6 %", "test accuracy 88.9 %", "two photos of 30 is a real change"),
    ("identical to the pretrained weights: yes", "identical to the pretrained weights: NO", "words are exact"),
    ("loss 5.226", "loss 6.100", "a 17 % change of a loss"),
    ("9 people", "10 people", "counts are exact"),
    ("a 7 b", "a 7 b 8", "a number appeared"),
])
def test_real_changes_fail(ref, new, why):
    assert not M.outputs_agree(ref, new), why


def test_cell_tolerance_widens_only_that_cell():
    assert not M.outputs_agree("acc 80.0 %", "acc 72.0 %")
    assert M.outputs_agree("acc 80.0 %", "acc 72.0 %", {"percent": 8.5})


def test_nbval_run_uses_the_tolerant_comparison(tmp_path):
    """A real nbval run next to notebooks/conftest.py: last-digit noise passes, a real change fails."""
    import shutil
    import subprocess
    import sys

    import nbformat

    shutil.copy(ROOT / "notebooks" / "conftest.py", tmp_path / "conftest.py")
    nb = nbformat.v4.new_notebook()
    for i, (code, stored) in enumerate([('print("acc 93.8 %, loss 5.227")', "acc 94.4 %, loss 5.226\n"),
                                        ('print("acc 83.8 %")', "acc 94.4 %\n")], start=1):
        cell = nbformat.v4.new_code_cell(code, execution_count=i)
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=stored)]
        nb.cells.append(cell)
    nbformat.write(nb, tmp_path / "t.ipynb")
    out = subprocess.run([sys.executable, "-m", "pytest", "t.ipynb", "--nbval", "--nbval-current-env",
                          "-p", "no:cacheprovider", "-q"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert "1 failed, 1 passed" in out.stdout, out.stdout[-2000:]
    assert "t.ipynb::Cell 1" in out.stdout  # the 10-point change, not the noise


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_nbval_markers_stand_alone(path):
    """nbval only honours `# NBVAL_...` alone on its line; a reason belongs on the next line."""
    for i, cell in enumerate(json.loads(path.read_text())["cells"]):
        if cell["cell_type"] != "code":
            continue
        for line in "".join(cell["source"]).splitlines():
            if line.strip().startswith("# NBVAL_"):
                assert line.strip() in {"# NBVAL_IGNORE_OUTPUT", "# NBVAL_SKIP", "# NBVAL_CHECK_OUTPUT",
                                        "# NBVAL_RAISES_EXCEPTION"}, f"cell {i}: {line!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_cell_tolerances_say_why(path):
    for i, cell in enumerate(json.loads(path.read_text())["cells"]):
        tol = cell.get("metadata", {}).get("nbval_tolerance")
        if tol is not None:
            assert tol.get("why"), f"cell {i} widens its tolerance without saying why"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_stored_output_without_a_run(path):
    """nbval fails a cell with outputs but no execution count ("unrun reference cell has outputs")."""
    for i, cell in enumerate(json.loads(path.read_text())["cells"]):
        if cell["cell_type"] == "code" and cell.get("outputs"):
            assert cell.get("execution_count") is not None, f"cell {i} has outputs but never ran"
