"""Prints the browser check's per-notebook timings and findings at the end of the pytest run."""
from __future__ import annotations

import labdriver


def pytest_terminal_summary(terminalreporter):
    if labdriver.REPORT_LINES:
        terminalreporter.section("widgets in a real browser (JupyterLab + Chromium)")
        for line in labdriver.REPORT_LINES:
            terminalreporter.write_line(line)
