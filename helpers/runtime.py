"""Seeds, device, threads, cache folders, batched inference and whether the internet answers: the run-time
settings every notebook shares."""
from __future__ import annotations

import os
import random
import socket
import threading
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir(*parts: str) -> Path:
    """Folder for caches (features, numba, models); never inside a learner's data folder.

    `FACE_COURSE_CACHE` overrides it; otherwise `<repo>/.cache` for a checkout,
    `~/.cache/face-course` for an installed package.

    Notebook 01, inside `cache_demo`.
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
    """Point numba (used by umap-learn) at a writable cache, unless the user chose one.

    Notebook 04, inside `import_umap`.
    """
    os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_dir("numba")))


def set_seed(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a rerun prints the same numbers.

    Notebook 00.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def pick_device(prefer: str | None = None) -> torch.device:
    """CUDA when present (or `prefer`), otherwise CPU. Never assumes a GPU.

    Notebook 00.
    """
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_threads() -> int:
    """Torch/ONNX threads for backbone passes: the CPUs this process may use, at most 8.

    `FACE_COURSE_THREADS` overrides it. Small-tensor work (heads on cached features) uses 1.

    Notebook 01, inside `cache_demo`.
    """
    env = os.environ.get("FACE_COURSE_THREADS")
    if env:
        return max(1, int(env))
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(8, n))


class threads:
    """Context manager: run a block with `n` torch threads, then restore the old number.

    One thread is fastest for small-tensor work (heads on cached features); backbone passes
    use all cores.

    Notebook 02, inside `train_and_report`.
    """

    def __init__(self, n: int | None = None):
        self.n = max(1, int(n or default_threads()))

    def __enter__(self):
        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)
        return False


def describe_environment() -> dict:
    """Versions and hardware, for the top of notebook 00 and for benchmark results.

    Notebook 00.
    """
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


def run_batched(fn: Callable[[torch.Tensor], torch.Tensor], items: torch.Tensor | Sequence | torch.utils.data.Dataset,
                batch_size: int = 256,
                device: torch.device | str | None = None,
                prepare: Callable[[Sequence], torch.Tensor] | None = None) -> torch.Tensor:
    """`fn` over `items` in batches, without gradients; outputs concatenated on the CPU.

    items: a tensor (N, ...), a list (e.g. PIL images; `prepare` turns a slice into a batch
    tensor), or a Dataset of (x, y) pairs. Returns (N, ...) float32 (an ordinary tensor, usable
    outside inference mode); an empty input gives an empty tensor.

    Notebook 02, inside `compare_heads_over_seeds`.
    """
    device = pick_device(device) if device is None or isinstance(device, str) else device
    out = []
    with torch.no_grad():
        if isinstance(items, (torch.Tensor, list, tuple)):
            for i in range(0, len(items), batch_size):
                chunk = items[i:i + batch_size]
                xb = prepare(chunk) if prepare is not None else torch.as_tensor(chunk)
                out.append(fn(xb.to(device)).float().cpu())
        else:
            from torch.utils.data import DataLoader
            for xb, _ in DataLoader(items, batch_size=batch_size):
                out.append(fn(xb.to(device)).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def internet_reachable(host: str = "download.pytorch.org", timeout_s: float = 3.0) -> bool:
    """True if `host:443` answers within `timeout_s` (DNS included); False offline, never hangs.

    `FACE_COURSE_OFFLINE=1` forces False without touching the network.

    Notebook 00, inside `backbone_availability`.
    """
    if os.environ.get("FACE_COURSE_OFFLINE") == "1":
        return False
    result = []

    def probe():
        try:
            socket.create_connection((host, 443), timeout=timeout_s).close()
            result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout_s + 0.5)
    return bool(result and result[0])
