"""ipywidgets panels. Building a panel never trains: a Train button does, into an Output area.

Each panel is a function returning the container widget; its callbacks call plain helpers
functions, so the logic is testable without a browser (set values, then `button.click()`).
"""
from __future__ import annotations
