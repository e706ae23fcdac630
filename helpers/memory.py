"""Peak extra memory of a block of code: GPU allocations, or the process's resident set on a CPU."""
from __future__ import annotations

import ctypes
import sys
import threading

import torch

from .runtime import pick_device


def _proc_status(field_name: str) -> int | None:
    """A `kB` field of /proc/self/status, in bytes (Linux only)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    """Reset the kernel's resident-set high-water mark (VmHWM) to the current RSS (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _proc_status("VmHWM") is not None
    except OSError:
        return False


def _release_free_memory() -> None:
    """Give freed heap memory back to the OS so it is not reused unseen inside a measurement."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


class PeakMemory:
    """Context manager: peak extra memory (MiB, `peak_mb`) used inside a block, and how it was measured.

    GPU: `torch.cuda.max_memory_allocated` above the allocation at the start (tensors only).
    Linux CPU: the process's resident-set high-water mark (VmHWM, reset through
    /proc/self/clear_refs) minus the resident set at the start, after freed memory has been
    handed back to the OS (malloc_trim). It counts everything the block touched: activations,
    gradients, optimizer state, the allocator's slack. Elsewhere: psutil RSS sampled every 5 ms
    (can miss short peaks), or nothing (`peak_mb` None).

    Notebook 05, inside `run_schedule`.
    """

    def __init__(self, device: torch.device | str | None = None):
        self.device = pick_device(device)
        self.peak_mb: float | None = None
        self.method = ""

    def __enter__(self) -> "PeakMemory":
        _release_free_memory()
        self._sampler = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "GPU: torch.cuda.max_memory_allocated above the start"
        elif _reset_rss_peak():
            self._base = _proc_status("VmRSS") or 0
            self.method = "CPU: process resident-set peak (VmHWM) above the start, Linux"
        else:
            try:
                import psutil
            except ImportError:
                self.method = "not measured (no /proc and no psutil)"
                return self
            proc = psutil.Process()
            self._base = proc.memory_info().rss
            self._peak = self._base
            self._stop = threading.Event()

            def sample():
                while not self._stop.wait(0.005):
                    self._peak = max(self._peak, proc.memory_info().rss)

            self._sampler = threading.Thread(target=sample, daemon=True)
            self._sampler.start()
            self.method = "CPU: psutil RSS sampled every 5 ms above the start"
        return self

    def __exit__(self, *exc) -> bool:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            peak = max(self._peak, __import__("psutil").Process().memory_info().rss)
        elif self.method.startswith("CPU"):
            peak = _proc_status("VmHWM") or 0
        else:
            return False
        self.peak_mb = max(0.0, (peak - self._base) / 2**20)
        return False
