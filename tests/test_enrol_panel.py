"""The enrol-yourself panel of notebook 06: its callbacks, driven as a learner would (uploads set
programmatically as ipywidgets 8 stores them; `Button.click()` fires the handlers)."""
from __future__ import annotations

import datetime as dt
import io

import numpy as np
import pytest

from helpers.recognize import pipeline as P
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
    r = P.fit_recognizer(effnet, feats, orl.labels[idx], orl.names[:3], P.RecognizerConfig("raw", SIZE))
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


def test_enrol_shows_the_faces_used_and_the_answer_beside_the_closest_person(rec, orl):
    from PIL import Image

    from helpers.course.enrol_panel import find_face

    panel = EnrolPanel(rec, examples={"s1": orl.images[0]})
    photos = [orl.images[i] for i in np.flatnonzero(orl.labels == 30)]
    big_blank = Image.new("RGB", (900, 700), (128, 128, 128))        # large, and no face in it
    panel.photos.value = (_upload("a.png", _png(photos[0])), _upload("b.png", _png(photos[1])),
                          _upload("scene.png", _png(big_blank)))
    panel.name.value = "Ada"
    text = panel.on_enrol()
    assert "Enrolled 'Ada' from 2 photo(s)." in text
    assert "scene.png: skipped: no face found in a 900 x 700 photo" in text   # skipped, and why
    assert len(panel.faces.children) == 2                                      # one thumbnail per face used
    captions = [box.children[1].value for box in panel.faces.children]
    assert "a.png: whole photo" in captions[0] and "b.png" in captions[1]
    assert find_face(photos[0], SIZE).image is photos[0]                       # small photos: used as they are

    panel.query.value = (_upload("new.png", _png(photos[5])),)
    answer = panel.on_ask()
    query, closest, bar = panel.compare.children
    assert "Ada" in answer and "closest: Ada" in closest.children[1].value     # the closest face, shown
    m = rec.recognize([photos[5]])[0]
    assert f"score {m.score:.2f} &ge; threshold 0.50" in bar.value and 'class="threshold"' in bar.value

    panel.query.value = (_upload("s2.png", _png(orl.images[12])),)              # s2 has no example photo
    panel.on_ask()
    assert "closest: s2 (no photo of them here)" in panel.compare.children[1].value
    panel.on_clear()
    assert panel.faces.children == () and panel.compare.children == () and "Ada" not in panel.examples
    assert "s1" in panel.examples                                              # not an upload: kept


def test_score_bar_marks_the_threshold_and_colours_by_the_answer():
    from helpers.course.enrol_panel import score_bar

    accepted, rejected = score_bar(0.62, 0.38), score_bar(0.15, 0.38)
    assert "width:62.0%" in accepted and "left:38.0%" in accepted and "#2e7d32" in accepted
    assert "width:15.0%" in rejected and "&lt; threshold 0.38" in rejected and "#2e7d32" not in rejected
    assert "width:0.0%" in score_bar(-0.2, 0.3) and "width:100.0%" in score_bar(1.3, 0.3)   # clamped to the bar


def test_large_photo_with_a_face_is_cropped_to_it(orl):
    from PIL import Image

    from helpers.course.enrol_panel import find_face
    from helpers.data.facecrop import FaceCropper

    scene = Image.new("RGB", (800, 600), (90, 120, 150))
    face = orl.images[0].convert("RGB").resize((184, 224))
    scene.paste(face, (300, 200))
    found = find_face(scene, SIZE, "scene.jpg", FaceCropper())
    assert found.image is not None and found.note.endswith("found" if "faces" not in found.note else "used")
    assert max(found.image.size) < 400                                       # cut out of the scene, not the whole photo
    assert find_face(scene, SIZE, "scene.jpg", None).note.startswith("whole photo (no face detector")


def test_upload_buttons_have_room_for_their_count(rec):
    panel = EnrolPanel(rec)
    for w in (panel.photos, panel.query):
        assert w.layout.width == "auto" and int(w.layout.min_width.rstrip("px")) >= 180


# ---------------------------------------------------------------- the camera (enrol_panel(rec, camera=True))

def _jpeg(img) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=92)   # what the browser sends
    return buf.getvalue()


def test_camera_photos_take_the_uploads_path(rec, orl):
    pytest.importorskip("anywidget")
    from ipywidgets.widgets.widget import _remove_buffers

    panel = EnrolPanel(rec, examples={"s1": orl.images[0]}, camera=True)
    assert panel.camera is not None and "No camera buttons here?" in panel.camera_note.value
    panel.camera.rendered = True                                   # what the page says once it shows it
    assert panel.camera_note.value == ""
    photos = [orl.images[i] for i in np.flatnonzero(orl.labels == 30)]   # s31, not in the gallery
    for p in photos[:2]:
        panel.camera.receive(_jpeg(p))
    assert panel.camera.note.startswith("camera photo 2 kept for Enrol (2 waiting)")
    panel.camera.receive(b"\xff\xd8\xff broken")
    assert panel.camera.note.startswith("camera photo 3: skipped: ")   # the loader's reason, one line
    panel.photos.value = (_upload("me.png", _png(photos[2])),)         # an upload beside them
    panel.name.value = "  "
    assert "camera photo(s) still wait" in panel.on_enrol()            # no name: camera photos wait
    panel.photos.value = (_upload("me.png", _png(photos[2])),)
    panel.name.value = "Ada"
    text = panel.on_enrol()
    assert "Enrolled 'Ada' from 3 photo(s)." in text and rec.names[-1] == "Ada"
    captions = [box.children[1].value for box in panel.faces.children]
    assert captions[0].startswith("<small>me.png: whole photo") and "camera photo 1: whole photo" in captions[1]
    assert panel._camera_photos == [] and "2 camera photo(s) used for 'Ada'" in panel.camera.note

    panel.camera_for.value = "ask"
    panel.camera.receive(_jpeg(photos[5]))
    assert panel.camera.note == "camera photo 4 is ready: press Who is it?"
    answer = panel.on_ask()
    assert answer.startswith("Answer: Ada") and "closest: Ada" in panel.compare.children[1].children[1].value
    assert panel.compare.children[0].children[1].value.startswith("<small>camera photo 4: whole photo")
    assert panel._camera_query is None
    assert panel.on_ask() == "Upload a photo first, or take one with the camera set to 'for Who is it?'."
    panel.camera_for.value = "enrol"
    panel.camera.receive(_jpeg(photos[6]))
    panel.on_clear()                                                   # Clear drops waiting photos too
    assert panel._camera_photos == [] and panel._camera_query is None
    assert _remove_buffers(panel.camera.get_state())[2] == []          # no photo bytes in the camera's state
    assert panel.camera in panel.widget().children[3].children          # shown beside its for-Enrol switch


def test_without_anywidget_the_panel_says_so_and_uploads_work(rec, orl, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "anywidget", None)                # `import anywidget` raises ImportError
    monkeypatch.delitem(sys.modules, "helpers.course.webcam", raising=False)
    box = enrol_panel(rec, camera=True)
    panel = box.panel
    assert panel.camera is None
    note = panel.camera_note.value
    assert note.startswith("Camera unavailable here (anywidget is not installed: pip install anywidget")
    assert "\n" not in note and "Traceback" not in note and panel.camera_note in box.children
    panel.photos.value = (_upload("a.png", _png(orl.images[300])),)
    panel.name.value = "Ada"
    assert "Enrolled 'Ada' from 1 photo(s)." in panel.on_enrol()
    assert panel.on_ask() == "Upload a photo first, or take one with the camera set to 'for Who is it?'."


def test_no_camera_unless_asked(rec):
    panel = EnrolPanel(rec)
    assert panel.camera is None and panel.camera_note not in panel.widget().children
