"""The camera widget's Python side (helpers/course/webcam.py), without a browser: the JPEG bytes the
page sends become a PIL image, bad bytes a one-line reason, and no bytes stay in the widget's state.
(tests/browser drives the JavaScript side with Chromium's fake camera.)"""
from __future__ import annotations

import io

import pytest
from PIL import Image

pytest.importorskip("anywidget")

from ipywidgets.widgets.widget import _remove_buffers  # noqa: E402

from helpers.course.webcam import Camera, Photo  # noqa: E402


def _jpeg(size=(320, 240), colour=(90, 110, 130)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _no_bytes_in_state(widget) -> None:
    state = widget.get_state()
    _, _, buffers = _remove_buffers(state)
    assert buffers == [], "binary data in the widget's synced state"
    text = {k: v for k, v in state.items() if isinstance(v, str) and k not in ("_esm", "_css")}
    assert all(len(v) < 300 for v in text.values()), text      # no base64 photo either


def test_a_photo_message_becomes_an_image_for_every_callback():
    cam, got, also = Camera(), [], []
    cam.on_photo(got.append)
    cam.on_photo(also.append)
    cam._on_custom_msg(cam, {"type": "photo", "width": 320, "height": 240}, [memoryview(_jpeg())])
    assert len(got) == 1 and got == also and isinstance(got[0], Photo)
    photo = got[0]
    assert photo.name == "camera photo 1" and photo.problem == ""
    assert photo.image.mode == "RGB" and photo.image.size == (320, 240)
    assert cam.note == "camera photo 1: 320 x 240 px received"
    _no_bytes_in_state(cam)
    cam.on_photo(also.append, remove=True)
    cam._on_custom_msg(cam, {"type": "photo"}, [memoryview(_jpeg((64, 48)))])
    assert len(got) == 2 and len(also) == 1 and got[1].name == "camera photo 2"


def test_bad_bytes_give_a_one_line_reason_and_no_image():
    cam, got = Camera(), []
    cam.on_photo(got.append)
    for data in (b"", b"hello, I am text", _jpeg()[:200], _jpeg((8, 8))):
        photo = cam.receive(data)
        assert photo.image is None and "\n" not in photo.problem
        assert photo.problem.startswith(f"{photo.name}: skipped: ") and cam.note == photo.problem
    reasons = [p.problem for p in got]
    assert "empty file" in reasons[0] and "not an image" in reasons[1]
    assert "damaged or truncated" in reasons[2] and "too small (8x8 px" in reasons[3]
    _no_bytes_in_state(cam)


def test_other_messages_are_ignored_and_state_is_text_only():
    cam, got = Camera(), []
    cam.on_photo(got.append)
    cam._on_custom_msg(cam, {"kind": "anywidget-command", "name": "x"}, [])   # anywidget's own messages
    cam._on_custom_msg(cam, "not a dict", [])
    assert got == [] and cam.taken == 0
    state = cam.get_state()
    assert state["state"] == "off" and state["error"] == "" and state["rendered"] is False
    assert "getUserMedia" in state["_esm"] and "isSecureContext" in state["_esm"]   # the page checks both
    assert "https" in state["_esm"] and "localhost" in state["_esm"]              # and says what to do
