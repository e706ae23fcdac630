"""Execute notebooks in place (as a learner would, top to bottom), strip widget state, print time.

    python tools/execute_notebook.py notebooks/02_frozen_training.ipynb [...]
    python tools/execute_notebook.py --allow-errors NOTEBOOK   (keep going past a failing cell, to read
                                                               every output while writing a check)

Outputs are committed so readers on the web see the plots and nbval has something to compare.
`metadata.widgets` (new ids every run) is removed for clean diffs.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def execute(path: Path, timeout: int = 900, allow_errors: bool = False) -> float:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=allow_errors,
                            resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - t0
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nbformat.write(nb, path)
    return seconds


if __name__ == "__main__":
    allow = "--allow-errors" in sys.argv[1:]
    for arg in (a for a in sys.argv[1:] if a != "--allow-errors"):
        print(f"{arg}: executed in {execute(Path(arg), allow_errors=allow):.1f} s", flush=True)
