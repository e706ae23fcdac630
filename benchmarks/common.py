"""What every benchmark shares: the machine description, timing (median of repeats), memory
peaks, and the row format of the results file.

A benchmark section returns a dict:
    {"title": ..., "figures": [Figure...], "details": {...}, "notes": [...]}
and `run_section` adds the machine, the date and the load average before and after it, because
on a shared machine a timing is only as good as the load it was measured under.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch


# ------------------------------------------------------------------------------ machine

def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Cores, memory, torch version and the device the benchmarks ran on."""
    import torchvision

    cuda = torch.cuda.is_available()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "device": f"GPU ({torch.cuda.get_device_name(0)})" if cuda else "CPU",
        "os": platform.platform(terse=True),
    }


def loadavg() -> list[float]:
    """1, 5 and 15-minute load averages (other processes competing for the cores)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


OUTPUTS = ("benchmarks/results.json", "benchmarks/RESULTS.md", "README.md")  # what a run itself rewrites


def git_commit() -> str:
    """The checkout's commit (short), '+dirty' when tracked files other than the benchmarks' own outputs
    (OUTPUTS: rewritten after each section) differ from it; '?' outside git."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                *[f":(exclude){p}" for p in OUTPUTS]], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return (head or "?") + ("+dirty" if dirty else "")


# ------------------------------------------------------------------------------ timing

@dataclass
class Timing:
    """Wall-clock seconds of several repeats of the same work; `median` is the figure quoted."""

    seconds: list[float]

    @property
    def median(self) -> float:
        return float(statistics.median(self.seconds))

    def as_dict(self) -> dict:
        return {"median_s": round(self.median, 4), "runs_s": [round(s, 4) for s in self.seconds]}


def time_repeats(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> Timing:
    """Run `fn` `warmup` times untimed, then `repeats` times timed."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return Timing(out)


class PeakRSS:
    """Context manager: the peak extra memory (MiB) of this process inside a block.

    Uses the course's own meter (helpers.memory.PeakMemory: the kernel's resident-set
    high-water mark, reset at entry, after freed memory is handed back to the OS).
    """

    def __enter__(self):
        from helpers.memory import PeakMemory

        self._meter = PeakMemory("cpu").__enter__()
        return self

    def __exit__(self, *exc):
        self._meter.__exit__(*exc)
        return False

    @property
    def delta_mb(self) -> float:
        return float(self._meter.peak_mb or 0.0)

    @property
    def method(self) -> str:
        return self._meter.method


# ------------------------------------------------------------------------------ figures

@dataclass
class Figure:
    """One quoted figure and what it is compared with, measured in the same run.

    `ratio` is comparison / value for "lower is better" figures (a speed-up) and value /
    comparison for "higher is better" ones; `target` is the issue's goal, `met` whether the
    figure reaches it.
    """

    key: str
    label: str
    value: float
    unit: str
    vs_label: str = ""
    vs_value: float | None = None
    ratio: float | None = None
    ratio_label: str = ""
    target: str = ""
    met: bool | None = None
    spread: float | None = None  # 95 % interval (accuracy) or half the min-max range (timings), same unit
    reference: str = ""          # a typed constant (e.g. a guide's claim): never measured, shown apart
    measured: str = ""           # when, if not in this section's run (a row kept from an earlier run)
    commit: str = ""             # ... and at which commit

    def as_dict(self) -> dict:
        d = asdict(self)
        for k in ("value", "vs_value", "ratio", "spread"):
            if isinstance(d[k], float):
                d[k] = round(d[k], 4)
        return d


@dataclass
class Section:
    """What a benchmark returns: its figures, the details behind them and caveats."""

    title: str
    figures: list[Figure] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)


def run_section(name: str, fn: Callable[..., Section], **kwargs) -> dict:
    """Run one benchmark and wrap its Section with the machine, date, load and duration."""
    before = loadavg()
    started, commit = now(), git_commit()  # the code as it was when the measurement began
    t0 = time.perf_counter()
    sec = fn(**kwargs)
    seconds = time.perf_counter() - t0
    return {
        "title": sec.title,
        "started": started,
        "commit": commit,
        "seconds": round(seconds, 1),
        "machine": machine(),
        "loadavg_before": before,
        "loadavg_after": loadavg(),
        "config": sec.config,
        "figures": [f.as_dict() for f in sec.figures],
        "details": sec.details,
        "notes": sec.notes,
    }


def fmt_s(seconds: float) -> str:
    """Seconds in a readable unit: 0.41 s, 12.3 s, 4 min 05 s."""
    if seconds is None:
        return "—"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 120:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s"
