"""The enrol-yourself panel of notebook 06: its callbacks, driven as a learner would (uploads set
programmatically as ipywidgets 8 stores them; `Button.click()` fires the handlers)."""
from __future__ import annotations

import datetime as dt
import io

import numpy as np
import pytest

from helpers import recognizer_pipeline as P
from helpers.course.enrol_panel import EnrolPanel, enrol_panel, read_uploads

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 64


def _upload(name: str, data: bytes) -> dict:
    return {"name": name, "type": "image/png", "size": len(data), "content": memoryview(data),
            "last_modified": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)}


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def rec(orl, effnet):
    idx = np.flatnonzero(orl.labels < 3)
    feats = P.features_for(effnet, [orl.images[i] for i in idx], SIZE, 1)
    r = P.fit_recognizer(effnet, feats, orl.labels[idx], orl.names[:3], SIZE, "raw")
    r.threshold = 0.5
    return r


def test_enrol_then_recognise_the_new_person(rec, orl):
    panel = EnrolPanel(rec)
    photos = [orl.images[i] for i in np.flatnonzero(orl.labels == 30)]  # s31, not in the gallery
    panel.photos.value = tuple(_upload(f"me{i}.png", _png(p)) for i, p in enumerate(photos[:3]))
    panel.name.value = "Ada"
    panel.enrol_button.click()
    assert "Enrolled 'Ada' from 3 photo(s)." in panel.status.value and rec.names[-1] == "Ada"
    assert panel.photos.value == () and panel.name.value == ""   # the bytes are not kept
    panel.query.value = (_upload("new.png", _png(photos[5])),)
    panel.ask_button.click()
    assert panel.answer.value.startswith("Answer: ") and "threshold 0.50" in panel.answer.value
    assert "Ada" in panel.answer.value and panel.query.value == ()


def test_bad_files_get_the_loaders_message_and_nothing_is_enrolled(rec, orl):
    panel = EnrolPanel(rec)
    panel.photos.value = (_upload("notes.jpg", b"hello, I am text"), _upload("empty.png", b""))
    panel.name.value = "Bob"
    text = panel.on_enrol()
    assert "No usable photo" in text and "notes.jpg: skipped: not an image" in text
    assert "empty.png: skipped: empty file" in text and "Bob" not in rec.names
    good = _png(orl.images[0])
    assert panel.name.value == "Bob"                        # kept to try again
    panel.photos.value, panel.name.value = (_upload("a.png", good),), "  "
    assert "Type a name first" in panel.on_enrol()          # no name: refused, upload cleared anyway
    assert panel.photos.value == ()
    panel.photos.value, panel.name.value = (_upload("a.png", good),), "s1"
    assert "already enrolled" in panel.on_enrol()
    assert panel.on_ask() == "Upload a photo first."


def test_read_uploads_clears_the_widget_even_on_errors(orl):
    import ipywidgets as widgets

    up = widgets.FileUpload(multiple=True)
    up.value = (_upload("x.png", _png(orl.images[1])), _upload("y.gif", b"GIF89a broken"))
    images, messages = read_uploads(up)
    assert len(images) == 1 and images[0].mode == "RGB" and len(messages) == 1 and "y.gif" in messages[0]
    assert up.value == ()


def test_panel_widget_exposes_its_parts(rec):
    box = enrol_panel(rec)
    assert isinstance(box.panel, EnrolPanel) and "Enrolled: 3 people" in box.panel.status.value
