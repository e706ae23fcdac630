#!/usr/bin/env bash
# The course's one entry point.
#   bash course.sh lab    set up (first time only) and open JupyterLab on notebooks/
#   bash course.sh test   set up (first time only) and run every test: unit tests, the notebooks
#                         under nbval, and the widgets in a real browser
#   bash course.sh bench  run the benchmarks and refresh the README's performance table
# Needs Python 3.10+ with pip. The environment lives in .venv (FACE_COURSE_VENV to change).
set -euo pipefail
cd "$(dirname "$0")"
VENV="${FACE_COURSE_VENV:-.venv}"
PY="${PYTHON:-python3}"

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[course] creating the environment in $VENV"
    "$PY" -m venv "$VENV"
  fi
  local stamp="$VENV/.course-requirements.sha256"
  local want
  want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[course] installing requirements (first time: a few minutes)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -r requirements.txt
    "$VENV/bin/python" -m pip install --quiet --no-deps -e .
    echo "$want" > "$stamp"
  fi
  export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PWD/.cache/numba}"
}

browser_ready() {
  # The widget test drives Debian's Chromium through Playwright (never 'playwright install').
  if command -v chromium >/dev/null 2>&1; then return 0; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[course] installing chromium for the browser test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 || true
  fi
  command -v chromium >/dev/null 2>&1 || echo "[course] chromium not found: the browser test will be skipped (apt-get install chromium)"
}

case "${1:-}" in
  lab)
    setup
    exec "$VENV/bin/jupyter" lab --notebook-dir=notebooks "${@:2}"
    ;;
  test)
    setup
    browser_ready
    exec "$VENV/bin/python" -m pytest tests notebooks --nbval --nbval-current-env \
      --nbval-sanitize-with .ci/nbval_sanitize.cfg -p no:cacheprovider "${@:2}"
    ;;
  bench)
    setup
    exec "$VENV/bin/python" -m benchmarks "${@:2}"
    ;;
  *)
    echo "usage: bash course.sh lab | test | bench" >&2
    exit 2
    ;;
esac
