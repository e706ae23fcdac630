"""The whole course, headless: every notebook executed in order with nbclient, as a learner would.

Copies of `notebooks/*.ipynb` run in a temporary folder (the committed notebooks are never
rewritten; `data/` is linked beside them so relative paths work) with a fresh, empty feature
cache (FACE_COURSE_CACHE), i.e. a first-time learner's run. For each notebook: wall time of
its execution (kernel start included) and the kernel's peak resident memory, read from the
kernel process itself (VmHWM; see PEAK_CELL) by a cell appended to the copy; child processes
it started are reported apart.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from helpers.runtime import REPO_ROOT

from .common import Figure, Section, fmt_s

MARK = "__BENCH_PEAK_RSS__"
# The kernel's own peak: VmHWM of /proc/self/status (the high-water mark of this process's memory
# since its exec). Not ru_maxrss: Linux carries it over from the parent across fork and exec, so a
# kernel started by a 2.6 GB benchmark process "peaked" at 2.6 GB before importing anything.
# Child processes (the command line that notebook 06 runs) come from RUSAGE_CHILDREN, an upper
# bound for the same reason (a child starts with its parent's peak).
PEAK_CELL = (
    "import resource, json\n"
    "def _hwm():\n"
    "    try:\n"
    "        with open('/proc/self/status') as fh:\n"
    "            return next(int(l.split()[1]) for l in fh if l.startswith('VmHWM:'))\n"
    "    except (OSError, StopIteration):\n"
    "        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "_s = _hwm()\n"
    "_c = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    f"print('{MARK}' + json.dumps({{'self_kb': _s, 'children_kb': _c}}))"
)
TARGET_TOTAL_S = 8 * 60
TARGET_KERNEL_GB = 3.0

BASELINE_NOTEBOOK = [  # what every kernel pays before a notebook does anything: the imports
    "import helpers, torch, torchvision, matplotlib.pyplot as plt, numpy as np\nprint(torch.__version__)",
]
SMOKE_NOTEBOOK = [
    "from helpers import load_orl, set_seed\nset_seed(0)\nfaces = load_orl()\nprint(len(faces))",
    "import numpy as np\nprint(np.asarray(faces.images[0]).shape)",
]


def execute(path: Path, workdir: Path, env: dict[str, str], timeout: int) -> dict:
    """Run one notebook copy; return seconds and the kernel's peak RSS in MiB."""
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PEAK_CELL))
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    t0 = time.perf_counter()
    error = ""
    try:
        client.execute()
    except Exception as e:  # a failing notebook is reported with its time so far
        error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:200] if str(e).strip() else ''}"
    finally:
        seconds = time.perf_counter() - t0
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    peak = {}
    for out in nb.cells[-1].get("outputs", []):
        text = out.get("text", "")
        if MARK in text:
            peak = json.loads(text.split(MARK, 1)[1].strip().splitlines()[0])
    mb = peak["self_kb"] / 1024 if peak else None  # the kernel itself
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(mb, 1) if mb else None,
            "kernel_rss_mb": round(peak["self_kb"] / 1024, 1) if peak else None,
            "children_rss_mb": round(peak["children_kb"] / 1024, 1) if peak else None, "error": error}


def _notebook(cells: list[str]):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def run(smoke: bool = False, repeats: int = 1, timeout: int = 1200, notebooks: list[str] | None = None) -> Section:
    with tempfile.TemporaryDirectory(prefix="bench-course-") as tmp:
        tmp = Path(tmp)
        nbdir = tmp / "notebooks"
        nbdir.mkdir()
        nbformat.write(_notebook(BASELINE_NOTEBOOK), tmp / "baseline.ipynb")
        if smoke:
            nbformat.write(_notebook(SMOKE_NOTEBOOK), nbdir / "00_smoke.ipynb")
            paths = [nbdir / "00_smoke.ipynb"]
        else:
            sources = sorted((REPO_ROOT / "notebooks").glob("[0-9]*.ipynb")) if notebooks is None \
                else [Path(p) for p in notebooks]
            paths = []
            for src in sources:
                shutil.copy2(src, nbdir / src.name)
                paths.append(nbdir / src.name)
        if (REPO_ROOT / "data").exists():
            (tmp / "data").symlink_to(REPO_ROOT / "data")
        runs: list[dict[str, dict]] = []
        baseline = execute(tmp / "baseline.ipynb", tmp, {"MPLBACKEND": "module://matplotlib_inline.backend_inline"},
                           timeout)
        print(f"  [course] baseline kernel (imports only): {fmt_s(baseline['seconds'])}, "
              f"peak {baseline['peak_rss_mb']} MiB", flush=True)
        for r in range(max(1, repeats)):
            cache = tmp / f"cache-{r}"  # a first-time learner's run: empty caches
            env = {"FACE_COURSE_CACHE": str(cache), "NUMBA_CACHE_DIR": str(cache / "numba"),
                   "MPLBACKEND": "module://matplotlib_inline.backend_inline", "FACE_COURSE_OFFLINE": "1"}
            res = {}
            for p in paths:
                work = tmp / f"run-{r}"
                work.mkdir(exist_ok=True)
                copy = work / p.name
                shutil.copy2(p, copy)
                res[p.name] = execute(copy, work, env, timeout)
                print(f"  [course] run {r + 1}: {p.name}: {fmt_s(res[p.name]['seconds'])}, kernel peak "
                      f"{res[p.name]['peak_rss_mb']} MiB{'  ERROR ' + res[p.name]['error'] if res[p.name]['error'] else ''}",
                      flush=True)
            runs.append(res)
    names = list(runs[0])
    per_nb = {n: {"seconds": statistics.median(r[n]["seconds"] for r in runs),
                  "peak_rss_mb": max((r[n]["peak_rss_mb"] or 0) for r in runs),
                  "kernel_rss_mb": max((r[n]["kernel_rss_mb"] or 0) for r in runs),
                  "children_rss_mb": max((r[n]["children_rss_mb"] or 0) for r in runs),
                  "runs_s": [r[n]["seconds"] for r in runs],
                  "errors": sorted({r[n]["error"] for r in runs if r[n]["error"]})} for n in names}
    totals = [sum(r[n]["seconds"] for n in names) for r in runs]
    total = statistics.median(totals)
    peak_mb = max(v["peak_rss_mb"] for v in per_nb.values()) if per_nb else 0.0
    worst = max(per_nb, key=lambda n: per_nb[n]["peak_rss_mb"]) if per_nb else ""
    failed = [n for n, v in per_nb.items() if v["errors"]]
    sec = Section("Whole course", config={"notebooks": names, "repeats": repeats, "cache": "empty (first run)",
                                          "executor": "nbclient, kernel python3", "timeout_s": timeout})
    sec.details = {"notebooks": per_nb, "totals_s": [round(t, 1) for t in totals],
                   "baseline_kernel": baseline}
    sec.figures = [
        Figure("course.total", f"All {len(names)} notebooks, executed in order", total, "s",
               "", None, TARGET_TOTAL_S / total if total else None, "× under target",
               "≤ 8 min on 2 CPU cores", total <= TARGET_TOTAL_S and not failed, reference="target 8 min"),
        Figure("course.peak_kernel", f"Largest kernel peak memory ({worst})", peak_mb / 1024, "GiB",
               "", None, TARGET_KERNEL_GB / (peak_mb / 1024) if peak_mb else None,
               "× under target", "≤ 3 GiB per kernel", peak_mb / 1024 <= TARGET_KERNEL_GB, reference="target 3 GiB"),
    ]
    sec.notes.append(f"A kernel that only imports helpers, torch, torchvision and matplotlib peaks at "
                     f"{baseline['peak_rss_mb']:,.0f} MiB (torch {__import__('torch').__version__}); "
                     "each notebook's peak includes that.")
    sec.notes.append("Peak memory is the kernel's own high-water mark (VmHWM). Child processes (notebook 06 "
                     "runs the command line) are listed apart: their figure is an upper bound, because "
                     "Linux starts a child's peak at its parent's.")
    if failed:
        sec.notes.append(f"notebooks that raised: {', '.join(failed)}")
    return sec
