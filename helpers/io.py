"""Files that are never half-written, and ONNX Runtime sessions: a leaf module (imports no helpers)."""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    import onnxruntime


def normal_rights(path: str | Path) -> None:
    """Temporary files are created private (0600); give the finished file the usual rights.

    Notebook 01, inside `cache_demo`.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def atomic_write_bytes(data: bytes, path: str | Path) -> Path:
    """Write `data` to a temporary file next to `path`, then rename it: never half a file.

    Notebook 01, inside `cache_demo`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    normal_rights(path)
    return path


def atomic_save(obj: object, path: str | Path) -> Path:
    """`torch.save(obj)` written atomically (temporary file + rename), with the usual file rights.

    Notebook 01, inside `cache_demo`.
    """
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(buf.getvalue(), path)


def onnx_session(path: str | Path, n_threads: int | None = None) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session for an exported model; `n_threads` defaults to `default_threads()`.

    Notebook 01, inside `cache_demo`.
    """
    import onnxruntime as ort

    from .runtime import default_threads

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(n_threads or default_threads())
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
