"""Seeds, device, threads and cache folders: the run-time settings every notebook shares."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir(*parts: str) -> Path:
    """Folder for caches (features, numba, models); never inside a learner's data folder.

    `FACE_COURSE_CACHE` overrides it; otherwise `<repo>/.cache` for a checkout,
    `~/.cache/face-course` for an installed package.
    """
    root = os.environ.get("FACE_COURSE_CACHE")
    if root:
        base = Path(root)
    elif (REPO_ROOT / "pyproject.toml").exists():
        base = REPO_ROOT / ".cache"
    else:
        base = Path.home() / ".cache" / "face-course"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def setup_numba_cache() -> None:
    """Point numba (used by umap-learn) at a writable cache, unless the user chose one."""
    os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_dir("numba")))


def set_seed(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a rerun prints the same numbers."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def pick_device(prefer: str | None = None) -> torch.device:
    """CUDA when present (or `prefer`), otherwise CPU. Never assumes a GPU."""
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class threads:
    """Context manager: run a block with `n` torch threads, then restore the old number.

    One thread is fastest for small-tensor work (heads on cached features); backbone passes
    use all cores.
    """

    def __init__(self, n: int):
        self.n = max(1, int(n))

    def __enter__(self):
        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)
        return False


def describe_environment() -> dict:
    """Versions and hardware, for the top of notebook 00 and for benchmark results."""
    import platform

    import sklearn
    import torchvision

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
