"""Enrol yourself: a notebook panel that enrols a person from uploaded photos and names a new one.

Upload a few photos of one person (ipywidgets `FileUpload`), type a name, press **Enrol**: the
recogniser adds that person's mean embedding to its gallery (no training). Upload another photo
and press **Who is it?**: the answer, with its score against the threshold.

Privacy: the uploaded bytes are read once through `helpers.images.read_image` (which gives one-line
reasons for bad files: empty, truncated, not an image, too small ...), then the upload widget is
cleared, so the bytes never stay in the kernel, the widget state or the saved notebook; the panel
prints text only (no photo is displayed, so none lands in the notebook's outputs).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import ipywidgets as widgets

from helpers.images import ImageSkip, read_image
from helpers.recognizer import Recognizer


def _upload_items(value) -> list[dict]:
    """A FileUpload's files as dicts with 'name' and 'content': ipywidgets 8 gives a tuple of such
    dicts; ipywidgets 7 (Colab's) a dict {name: {'metadata': ..., 'content': bytes}}."""
    if isinstance(value, dict):
        return [{"name": name, "content": item.get("content", b"")} for name, item in value.items()]
    return list(value or ())


def _clear_upload(upload: widgets.FileUpload) -> None:
    if isinstance(upload.value, dict):      # ipywidgets 7: `value` is read-only, fed by data/metadata
        upload.metadata, upload.data = [], []
        upload.set_trait("value", {})
    else:
        upload.value = ()


def read_uploads(upload: widgets.FileUpload) -> tuple[list, list[str]]:
    """(images, messages) from a FileUpload's value (ipywidgets 8: a tuple of dicts whose 'content'
    is a memoryview; 7: a dict by file name); bad files get the loader's message. Clears the upload's
    value afterwards."""
    images, messages = [], []
    items = _upload_items(upload.value)
    try:
        for item in items:
            name = str(item.get("name", "photo"))
            data = bytes(item.get("content", b""))
            fd, tmp = tempfile.mkstemp(suffix=Path(name).suffix[:10] or ".img", prefix="enrol-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                images.append(read_image(tmp))
            except ImageSkip as e:
                messages.append(f"{name}: skipped: {e}")
            finally:
                Path(tmp).unlink(missing_ok=True)
                del data
    finally:
        _clear_upload(upload)  # the bytes leave the widget (and its saved state) right away
    return images, messages


class EnrolPanel:
    """Widgets + callbacks around a `Recognizer` (enrolments change that recogniser's gallery)."""

    def __init__(self, rec: Recognizer):
        self.rec = rec
        self.photos = widgets.FileUpload(accept="image/*", multiple=True, description="Photos to enrol")
        self.name = widgets.Text(placeholder="their name", description="Name")
        self.enrol_button = widgets.Button(description="Enrol", button_style="primary")
        self.query = widgets.FileUpload(accept="image/*", multiple=False, description="Photo to name")
        self.ask_button = widgets.Button(description="Who is it?")
        self.status = widgets.HTML(value=self._people())
        self.answer = widgets.HTML(value="")
        self.enrol_button.on_click(lambda _: self.on_enrol())
        self.ask_button.on_click(lambda _: self.on_ask())

    def _people(self) -> str:
        return f"Enrolled: {len(self.rec.names)} people; threshold {self.rec.threshold:.2f}."

    def on_enrol(self) -> str:
        """Enrol the uploaded photos under the typed name; returns (and shows) what happened."""
        name = self.name.value.strip()
        images, messages = read_uploads(self.photos)
        if not name:
            msg = "Type a name first (the photos were not kept: upload them again)."
        elif name in self.rec.names:
            msg = f"{name!r} is already enrolled: choose another name."
        elif not images:
            msg = "No usable photo to enrol: upload one or more photos of the person."
        else:
            self.rec.add_person(name, images)
            msg = f"Enrolled {name!r} from {len(images)} photo(s)."
            self.name.value = ""
        text = " ".join([msg, *messages, self._people()])
        self.status.value = text
        return text

    def on_ask(self) -> str:
        """Name the person in the uploaded photo (or say unknown), with the score and the threshold."""
        images, messages = read_uploads(self.query)
        if not images:
            text = " ".join(messages) or "Upload a photo first."
        else:
            m = self.rec.recognize(images[:1])[0]
            text = f"Answer: {m}"
        self.answer.value = text
        return text

    def widget(self) -> widgets.Widget:
        return widgets.VBox([
            widgets.HTML("<b>1.</b> Photos of one person (a few, different days or light), a name, Enrol."),
            widgets.HBox([self.photos, self.name, self.enrol_button]), self.status,
            widgets.HTML("<b>2.</b> Another photo: who is it?"),
            widgets.HBox([self.query, self.ask_button]), self.answer])


def enrol_panel(rec: Recognizer) -> widgets.Widget:
    """The panel as one widget (keep `EnrolPanel` to reach its parts, e.g. in tests)."""
    panel = EnrolPanel(rec)
    box = panel.widget()
    box.panel = panel  # reachable from the displayed widget
    return box
