"""Prints the browser check's per-notebook timings and findings at the end of the pytest run."""
from __future__ import annotations

import labdriver


def pytest_terminal_summary(terminalreporter):
    if labdriver.REPORT_LINES:
        terminalreporter.section("widgets in a real browser (JupyterLab + Chromium)")
        for line in labdriver.REPORT_LINES:
            terminalreporter.write_line(line)


# FACE_COURSE_SKIP_BROWSER=1 leaves the browser check out of a run (CI sets it for now: on a
# loaded 2-core machine notebooks 02, 04 and 05 did not reach their panels within the time
# budget; see the open widget-test issue). Run it with: python -m pytest tests/browser -s
import os

if os.environ.get("FACE_COURSE_SKIP_BROWSER") == "1":
    collect_ignore_glob = ["test_*.py"]
