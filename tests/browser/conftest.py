"""The browser check runs last in a session and prints its timings and findings at the end."""
from __future__ import annotations

from pathlib import Path

import labdriver


def pytest_collection_modifyitems(session, config, items):
    """Move the browser tests after everything else (nbval included): by then the feature and
    numba caches are warm, so the browser's Run All does not pay for them (the total is the same:
    whichever runs first computes them)."""
    here = Path(__file__).resolve().parent
    browser = [it for it in items if here in Path(str(it.path)).resolve().parents]
    if browser and len(browser) < len(items):
        ids = {id(it) for it in browser}
        items[:] = [it for it in items if id(it) not in ids] + browser


def pytest_terminal_summary(terminalreporter):
    if labdriver.REPORT_LINES:
        terminalreporter.section("widgets in a real browser (JupyterLab + Chromium)")
        for line in labdriver.REPORT_LINES:
            terminalreporter.write_line(line)


# FACE_COURSE_SKIP_BROWSER=1 leaves the browser check out of a run (e.g. a quick local run of the
# other tests); CI runs it and sets FACE_COURSE_REQUIRE_BROWSER=1 so that it cannot skip there.
import os

if os.environ.get("FACE_COURSE_SKIP_BROWSER") == "1":
    collect_ignore_glob = ["test_*.py"]
