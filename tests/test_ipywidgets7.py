"""Colab ships ipywidgets 7.7 and the `notebooks` extra accepts it (pyproject.toml), so the one widget
whose API changed between 7 and 8 — FileUpload, in the enrol panel of notebook 06 — reads both forms.

ipywidgets 7: `value` is a read-only dict {file name: {'metadata': ..., 'content': bytes}} fed by the
`metadata` and `data` traits; ipywidgets 8: `value` is a tuple of dicts with 'name' and 'content'.
The 7 form is simulated here with a stand-in (the course's environment has 8); docs/VERSIONS.md says
how the panels were also run against a real ipywidgets 7.7.1."""
from __future__ import annotations

import datetime as dt
import io

import ipywidgets
import numpy as np
import pytest
from PIL import Image

from helpers.course.enrol_panel import read_uploads


def _png(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random((64, 64)) * 255).astype("uint8")).save(buf, "PNG")
    return buf.getvalue()


class Upload7:
    """What ipywidgets 7.7's FileUpload holds after a browser upload of `files` {name: bytes}."""

    def __init__(self, files: dict[str, bytes]):
        self.metadata = [{"name": n, "type": "image/png", "size": len(b), "lastModified": 0} for n, b in files.items()]
        self.data = list(files.values())
        self.value = {m["name"]: {"metadata": m, "content": d} for m, d in zip(self.metadata, self.data)}

    def set_trait(self, name, value):       # how ipywidgets 7 itself writes the read-only `value`
        setattr(self, name, value)


def test_ipywidgets_7_uploads_are_read_and_cleared():
    upload = Upload7({"me.png": _png(), "notes.txt.png": b"hello, I am text"})
    images, messages = read_uploads(upload)
    assert len(images) == 1 and np.asarray(images[0]).shape[:2] == (64, 64)
    assert len(messages) == 1 and messages[0].startswith("notes.txt.png: skipped: ")
    assert upload.value == {} and upload.data == [] and upload.metadata == []   # the bytes are not kept


def test_ipywidgets_8_uploads_still_read_and_cleared():
    if int(ipywidgets.__version__.split(".")[0]) < 8:
        pytest.skip("ipywidgets 7 here: its FileUpload.value is read-only")
    upload = ipywidgets.FileUpload(multiple=True)
    upload.value = ({"name": "me.png", "type": "image/png", "size": 1, "content": memoryview(_png(1)),
                     "last_modified": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)},)
    images, messages = read_uploads(upload)
    assert len(images) == 1 and messages == [] and upload.value == ()


def test_real_ipywidgets_7_fileupload_when_installed():
    """Runs where ipywidgets 7 is what imports (e.g. PYTHONPATH=<a --target install of 7.7.1>)."""
    if int(ipywidgets.__version__.split(".")[0]) >= 8:
        pytest.skip(f"ipywidgets {ipywidgets.__version__} here")
    upload = ipywidgets.FileUpload(multiple=True)
    upload.metadata = [{"name": "a.png", "type": "image/png", "size": 1, "lastModified": 0}]
    upload.data = [_png(2)]
    upload._counter = 1                     # what the browser's upload does; it fills `value`
    assert list(upload.value) == ["a.png"]
    images, messages = read_uploads(upload)
    assert len(images) == 1 and messages == [] and upload.value == {} and upload.data == []
