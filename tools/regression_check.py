"""Do the notebook tests catch real regressions? Break the library on purpose, run nbval, restore.

    python tools/regression_check.py [NAME ...]      (names: see MUTATIONS; default: all)

The first, "none", is the control: the same notebooks in the same kind of copy, unchanged, must pass.

Each mutation edits one file of `helpers/` in a temporary copy of the repository (your working tree
is never touched), runs the listed notebooks there under nbval with the tolerant comparison
(`notebooks/conftest.py`), the copy first on PYTHONPATH. A mutation is *caught* when nbval fails. Prints one line per mutation and exits 1 if any was
missed. Takes a few minutes (it executes notebooks); the feature cache makes reruns faster.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (file, text to find, replacement, notebooks to run, what it simulates)
MUTATIONS = {
    "none": (  # the control: the same run without any change must pass
        "helpers/models/heads.py", "", "", [
            "notebooks/01_transfer_learning.ipynb", "notebooks/02_frozen_training.ipynb",
            "notebooks/03_arcface_margins.ipynb", "notebooks/05_gradual_unfreezing.ipynb"],
        "no change (control: must pass)"),
    "margin-ignored": (
        "helpers/models/heads.py",
        "        sin = torch.sqrt((1.0 - cos * cos).clamp(min=EPS))\n",
        "        return cos  # MUTATION: the margin is ignored\n",
        ["notebooks/03_arcface_margins.ipynb"],
        "an ArcFace head whose margin is ignored"),
    "frozen-stage-trains": (
        "helpers/models/backbones.py",
        "    def visit(m: nn.Module) -> None:\n",
        "    return module  # MUTATION: frozen parts stay in train mode (BatchNorm statistics move)\n"
        "    def visit(m: nn.Module) -> None:\n",
        ["notebooks/05_gradual_unfreezing.ipynb"],
        "a 'frozen' stage that trains (its BatchNorm statistics and drop-connect stay live)"),
    "frozen-weights-train": (
        "helpers/models/face_model.py",
        "        p.requires_grad_(False)\n",
        "        p.requires_grad_(True)  # MUTATION: freezing does nothing\n",
        ["notebooks/01_transfer_learning.ipynb"],
        "freezing that leaves every backbone weight trainable"),
    "shuffled-labels": (
        "helpers/train/fit.py",
        "    train_y = torch.as_tensor(np.asarray(train_y)).long()\n",
        "    train_y = torch.as_tensor(np.asarray(train_y)).long()\n"
        "    train_y = train_y[torch.randperm(len(train_y))]  # MUTATION: labels shuffled\n",
        ["notebooks/02_frozen_training.ipynb"],
        "training labels shuffled"),
}


def run(name: str) -> bool:
    file, find, replace, notebooks, what = MUTATIONS[name]
    with tempfile.TemporaryDirectory(prefix="face-course-mutation-") as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".venv", ".git", ".cache", "screenshots",
                                                                  "__pycache__", "*.egg-info"))
        path = copy / file
        original = path.read_text()
        if find and original.count(find) != 1:
            raise SystemExit(f"{name}: the text to mutate is not found exactly once in {file}")
        if find:
            path.write_text(original.replace(find, replace))
        # the course is installed in editable mode, whose import hook would find the real helpers/
        # before anything on PYTHONPATH: a sitecustomize in the copy removes that hook
        site = Path(tmp) / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(
            "import sys\nsys.meta_path[:] = [f for f in sys.meta_path\n"
            "                 if '__editable__' not in str(getattr(f, '__module__', ''))]\n")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(copy), os.environ.get("PYTHONPATH", "")])}
        env.setdefault("FACE_COURSE_CACHE", str(ROOT / ".cache"))  # features of unmutated code: reuse them
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", *notebooks, "--nbval", "--nbval-current-env",
                               "--nbval-sanitize-with", ".ci/nbval_sanitize.cfg", "-p", "no:cacheprovider",
                               "-x", "-q"], cwd=copy, env=env, capture_output=True, text=True, timeout=1800)
        where_from = subprocess.run([sys.executable, "-c", "import helpers; print(helpers.__file__)"], cwd=copy,
                                    env=env, capture_output=True, text=True).stdout.strip()
        if not where_from.startswith(str(copy)):
            raise SystemExit(f"{name}: the notebooks would import {where_from}, not the mutated copy")
    caught = proc.returncode != 0
    if name == "none":
        print(f"{name:22s} {'PASSED' if not caught else 'FAILED'} in {time.perf_counter() - t0:5.0f} s: {what}"
              + ("" if not caught else f"; {proc.stdout[-300:]}"), flush=True)
        return not caught
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
    where = failed[0].split(" - ")[0].replace("FAILED ", "") if failed else "no failing cell"
    print(f"{name:22s} {'CAUGHT' if caught else 'MISSED'} in {time.perf_counter() - t0:5.0f} s: {what}; "
          f"first failure: {where}", flush=True)
    return caught


if __name__ == "__main__":
    names = sys.argv[1:] or list(MUTATIONS)
    unknown = [n for n in names if n not in MUTATIONS]
    if unknown:
        raise SystemExit(f"unknown mutation(s) {unknown}; choose from {list(MUTATIONS)}")
    results = [run(n) for n in names]
    sys.exit(0 if all(results) else 1)
