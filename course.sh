#!/usr/bin/env bash
# The course's one entry point (a thin wrapper: the work is done by course.py, which also runs
# on its own where there is no bash: `python course.py lab`, e.g. on Windows).
#   bash course.sh lab           set up (first time only) and open JupyterLab on notebooks/
#   bash course.sh test          set up (first time only) and run every test: unit tests, the
#                                notebooks under nbval, and the widgets in a real browser
#   bash course.sh quick         unit tests only, without the slow and browser ones (= test --quick)
#   bash course.sh notebooks     only the notebooks under nbval
#   bash course.sh bench         run the benchmarks and refresh the README's performance table
# Needs Python 3.10+ with pip ($PYTHON, default python3; an older one gets a version message). The
# environment lives in .venv (FACE_COURSE_VENV to change) and is rebuilt when broken; `lab` installs
# no test tools; FACE_COURSE_TORCH=cpu takes PyTorch's CPU-only wheels; NUMBA_CACHE_DIR defaults to
# .cache/numba. Ctrl-C stops it cleanly ("interrupted; run again", status 130).
set -euo pipefail
cd "$(dirname "$0")"
exec "${PYTHON:-python3}" course.py "$@"
