"""Do the notebook tests catch real regressions? Break the library on purpose, run nbval, restore.

    python tools/regression_check.py [NAME ...]      (names: see MUTATIONS; default: all)

Each mutation edits one file of `helpers/` in place, runs the listed notebooks under nbval with
the tolerant comparison (`notebooks/conftest.py`), and restores the file whatever happens. A
mutation is *caught* when nbval fails. Prints one line per mutation and exits 1 if any was
missed. Takes a few minutes (it executes notebooks); the feature cache makes reruns faster.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (file, text to find, replacement, notebooks to run, what it simulates)
MUTATIONS = {
    "margin-ignored": (
        "helpers/heads.py",
        "        sin = torch.sqrt((1.0 - cos * cos).clamp(min=EPS))\n",
        "        return cos  # MUTATION: the margin is ignored\n",
        ["notebooks/03_arcface_margins.ipynb"],
        "an ArcFace head whose margin is ignored"),
    "frozen-stage-trains": (
        "helpers/backbones.py",
        "    def visit(m: nn.Module) -> None:\n",
        "    return module  # MUTATION: frozen parts stay in train mode (BatchNorm statistics move)\n"
        "    def visit(m: nn.Module) -> None:\n",
        ["notebooks/05_gradual_unfreezing.ipynb"],
        "a 'frozen' stage that trains (its BatchNorm statistics and drop-connect stay live)"),
    "frozen-weights-train": (
        "helpers/model.py",
        "        p.requires_grad_(False)\n",
        "        p.requires_grad_(True)  # MUTATION: freezing does nothing\n",
        ["notebooks/01_transfer_learning.ipynb"],
        "freezing that leaves every backbone weight trainable"),
    "shuffled-labels": (
        "helpers/training.py",
        "    train_y = torch.as_tensor(np.asarray(train_y)).long()\n",
        "    train_y = torch.as_tensor(np.asarray(train_y)).long()\n"
        "    train_y = train_y[torch.randperm(len(train_y))]  # MUTATION: labels shuffled\n",
        ["notebooks/02_frozen_training.ipynb"],
        "training labels shuffled"),
}


def run(name: str) -> bool:
    file, find, replace, notebooks, what = MUTATIONS[name]
    path = ROOT / file
    original = path.read_text()
    if original.count(find) != 1:
        raise SystemExit(f"{name}: the text to mutate is not found exactly once in {file}")
    path.write_text(original.replace(find, replace))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", *notebooks, "--nbval", "--nbval-current-env",
                               "--nbval-sanitize-with", ".ci/nbval_sanitize.cfg", "-p", "no:cacheprovider",
                               "-x", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    finally:
        path.write_text(original)
    caught = proc.returncode != 0
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
