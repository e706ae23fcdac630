"""Enrol yourself: a notebook panel that enrols a person from uploaded photos and names a new one.

Upload a few photos of one person (ipywidgets `FileUpload`), type a name, press **Enrol**: the
recogniser adds that person's mean embedding to its gallery (no training). The panel shows the face
it used from each photo (a thumbnail of exactly what the recogniser sees) and every photo it
skipped, with the reason. Upload another photo and press **Who is it?**: the answer, the query's face
beside the closest enrolled person's, and the score on a bar against the threshold.

Faces: a photo no larger than `SMALL_FACTOR` x the recogniser's input size is taken as a face crop
already (as ORL's 92 x 112 photos are); a larger one is searched with `helpers.data.alignment.face_finder()`
(dlib's detector and 5 landmarks, aligned to an ORL-like 92 x 112 crop; OpenCV's Haar box when dlib is
not installed: the panel names the one it uses) and its largest face is used (the thumbnail shows
that crop and says how many faces there were); a large photo with no face found is skipped.

`enrol_panel(rec, camera=True)` adds the browser's camera (`helpers.course.webcam.Camera`, an
anywidget): each photo taken waits for **Enrol** or **Who is it?** (a switch beside the camera says
which) and then takes exactly the uploads' path. Without anywidget, or where the front end cannot show
it, the panel says so in one line and the uploads still work.

Privacy: uploaded and camera bytes are read once through `helpers.data.images.read_image_bytes` (one-line
reasons for bad files: empty, truncated, not an image, too small ...; a private temporary file, deleted
at once), then the upload widget is cleared; camera bytes come in a message, never in a synced trait.
The thumbnails live in this panel's widgets only (JupyterLab does not save widget state in the notebook
unless you turn that on) and **Clear** drops them and any camera photo still waiting.
"""
from __future__ import annotations

import html
import io
from dataclasses import dataclass
from typing import Mapping

import ipywidgets as widgets
from PIL import Image, ImageOps

from helpers.data.images import ImageSkip, read_image_bytes
from helpers.recognize.recognizer import Match, Recognizer

SMALL_FACTOR = 3      # photos up to 3 x the input size are taken as face crops already
THUMB = 96            # thumbnail side in pixels


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


@dataclass
class Face:
    """The face used from one uploaded photo (`image` None when the photo was skipped)."""

    source: str
    image: Image.Image | None
    note: str


def read_named_uploads(upload: widgets.FileUpload) -> tuple[list[tuple[str, Image.Image]], list[str]]:
    """([(file name, image)], messages) from a FileUpload's value (ipywidgets 8: a tuple of dicts whose
    'content' is a memoryview; 7: a dict by file name); bad files get the loader's message. Clears the upload's
    value afterwards."""
    images, messages = [], []
    items = _upload_items(upload.value)
    try:
        for item in items:
            name = str(item.get("name", "photo"))
            data = bytes(item.get("content", b""))
            try:
                images.append((name, read_image_bytes(data, name)))
            except ImageSkip as e:
                messages.append(f"{name}: skipped: {e}")
            finally:
                del data
    finally:
        _clear_upload(upload)  # the bytes leave the widget (and its saved state) right away
    return images, messages


def read_uploads(upload: widgets.FileUpload) -> tuple[list, list[str]]:
    """(images, messages): `read_named_uploads` without the file names."""
    named, messages = read_named_uploads(upload)
    return [img for _, img in named], messages


def find_face(img: Image.Image, size: int, source: str = "photo", cropper=None) -> Face:
    """The face to embed from one photo: the photo itself when it is small (at most SMALL_FACTOR x
    `size` on its longer side), else the largest face `cropper` (a `helpers.data.alignment` finder, or a
    `FaceCropper`: anything with `.find(img)`) finds in it."""
    if max(img.size) <= SMALL_FACTOR * size:
        return Face(source, img, "whole photo (small: taken as a face crop)")
    if cropper is None:
        return Face(source, img, "whole photo (no face detector: install opencv-python-headless<5)")
    found = cropper.find(img)
    if not found:
        return Face(source, None, f"skipped: no face found in a {img.width} x {img.height} photo; "
                                  "crop it to the face and upload it again")
    n = len(found)
    return Face(source, found[0].image, "face found" if n == 1 else f"{n} faces found: the largest used")


def seen_by_model(img: Image.Image, size: int) -> Image.Image:
    """What the recogniser sees: resized and centre-cropped to size x size (as its preprocessing)."""
    return ImageOps.fit(img.convert("RGB"), (size, size), Image.Resampling.BILINEAR)


def score_bar(score: float, threshold: float, width: int = 260) -> str:
    """HTML: the cosine score as a bar on [0, 1] with a mark at the threshold (green when accepted)."""
    fill = min(1.0, max(0.0, score))
    colour = "#2e7d32" if score >= threshold else "#9e9e9e"
    mark = min(1.0, max(0.0, threshold))
    return (f'<div title="score {score:.2f}, threshold {threshold:.2f}" style="position:relative;width:{width}px;'
            f'height:14px;background:#eee;border:1px solid #bbb">'
            f'<div class="score" style="width:{100 * fill:.1f}%;height:100%;background:{colour}"></div>'
            f'<div class="threshold" style="position:absolute;left:{100 * mark:.1f}%;top:-3px;width:2px;height:20px;'
            f'background:#c62828"></div></div>'
            f'<small>score {score:.2f} {"&ge;" if score >= threshold else "&lt;"} threshold {threshold:.2f} '
            f'(red mark)</small>')


def _thumb(img: Image.Image, caption: str) -> widgets.Widget:
    buf = io.BytesIO()
    img.convert("RGB").resize((THUMB, THUMB), Image.Resampling.BILINEAR).save(buf, format="PNG")
    return widgets.VBox([widgets.Image(value=buf.getvalue(), format="png", width=THUMB, height=THUMB),
                         widgets.HTML(f"<small>{html.escape(caption)}</small>",
                                      layout=widgets.Layout(width=f"{THUMB + 30}px"))])


def make_camera() -> tuple[object | None, str]:
    """(a `helpers.course.webcam.Camera`, "") or (None, a one-line reason why there is no camera)."""
    try:
        from helpers.course.webcam import Camera
    except ImportError as e:
        return None, (f"Camera unavailable here ({e.name or 'anywidget'} is not installed: pip install anywidget, "
                      "then restart the kernel); the upload buttons work without it.")
    try:
        return Camera(), ""
    except Exception as e:  # noqa: BLE001 - e.g. an anywidget too old for this ipywidgets: uploads still work
        return None, f"Camera unavailable here ({type(e).__name__}: {e}); the upload buttons work without it."


def _cropper():
    try:
        from helpers.data.alignment import face_finder

        return face_finder()
    except ImportError:
        return None


class EnrolPanel:
    """Widgets + callbacks around a `Recognizer` (enrolments change that recogniser's gallery).

    `examples`: one photo per already enrolled person (name -> image), shown beside an answer.
    `camera=True` adds the browser's camera (`helpers.course.webcam.Camera`): each photo taken waits,
    in this object only, for **Enrol** or **Who is it?** (as the switch beside the camera says), then
    goes through exactly the path of an uploaded photo. Without anywidget the panel says so in one line
    and works with uploads."""

    def __init__(self, rec: Recognizer, examples: Mapping[str, Image.Image] | None = None,
                 camera: bool = False):
        self.rec = rec
        self.examples = {k: seen_by_model(v, rec.size) for k, v in (examples or {}).items()}
        self._mine: set[str] = set()   # people enrolled here: their thumbnail came from an upload
        self.cropper = _cropper()
        fits = widgets.Layout(width="auto", min_width="190px")   # room for the label and its "(3)"
        self.photos = widgets.FileUpload(accept="image/*", multiple=True, description="Photos to enrol",
                                         layout=fits)
        self.name = widgets.Text(placeholder="their name", description="Name",
                                 layout=widgets.Layout(width="240px"))
        self.enrol_button = widgets.Button(description="Enrol", button_style="primary",
                                           layout=widgets.Layout(width="auto", min_width="90px"))
        self.query = widgets.FileUpload(accept="image/*", multiple=False, description="Photo to name",
                                        layout=fits)
        self.ask_button = widgets.Button(description="Who is it?",
                                         layout=widgets.Layout(width="auto", min_width="110px"))
        self.clear_button = widgets.Button(description="Clear pictures", tooltip="drop the thumbnails shown",
                                           layout=widgets.Layout(width="auto", min_width="130px"))
        self.status = widgets.HTML(value=self._people())
        self.faces = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap"))
        self.answer = widgets.HTML(value="")
        self.compare = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap", align_items="center"))
        self.camera, self.camera_note = None, widgets.HTML(value="")
        self.camera_for = widgets.ToggleButtons(options=[("for Enrol", "enrol"), ("for Who is it?", "ask")],
                                                value="enrol", description="Camera photos",
                                                style={"description_width": "initial", "button_width": "auto"})
        self._camera_photos: list[tuple[str, Image.Image]] = []   # waiting for Enrol (never in a widget)
        self._camera_query: tuple[str, Image.Image] | None = None  # waiting for Who is it?
        self.use_camera = camera
        if camera:
            self.camera, why = make_camera()
            if self.camera is None:
                self.camera_note.value = html.escape(why, quote=False)
            else:
                self.camera.on_photo(self.on_photo)
                self.camera_note.value = ("<small>No camera buttons here? This notebook front end cannot show the "
                                          "camera widget: use the upload buttons.</small>")
                self.camera.observe(self._camera_rendered, "rendered")
        self.enrol_button.on_click(lambda _: self.on_enrol())
        self.ask_button.on_click(lambda _: self.on_ask())
        self.clear_button.on_click(lambda _: self.on_clear())

    def finder_line(self) -> str:
        """One line: how faces are found in large photos here."""
        small = SMALL_FACTOR * self.rec.size
        if self.cropper is None:
            return (f"Photos over {small} px are used whole: no face detector here (pip install dlib-bin "
                    "face-recognition-models, or opencv-python-headless<5).")
        return f"Faces in photos over {small} px found with: {self.cropper.name}."

    def _say_camera(self, text: str) -> None:
        """Show `text` under the camera's preview (or on the panel's camera line when there is no camera)."""
        if self.camera is not None:
            self.camera.note = text      # the browser shows it as text (textContent), not HTML
        else:
            self.camera_note.value = html.escape(text, quote=False)

    def _camera_rendered(self, change) -> None:
        if change["new"]:            # the front end shows the camera: the fallback hint goes
            self.camera_note.value = ""

    def on_photo(self, photo) -> str:
        """A photo from the camera (a `webcam.Photo`): keep it for Enrol or for Who is it?; returns what happened."""
        if photo.image is None:
            text = photo.problem
        elif self.camera_for.value == "ask":
            self._camera_query = (photo.name, photo.image)
            text = f"{photo.name} is ready: press Who is it?"
        else:
            self._camera_photos.append((photo.name, photo.image))
            text = (f"{photo.name} kept for Enrol ({len(self._camera_photos)} waiting): "
                    "take a few (turn your head a little), type a name and press Enrol.")
        self._say_camera(text)
        return text

    def _people(self) -> str:
        return f"Enrolled: {len(self.rec.names)} people; threshold {self.rec.threshold:.2f}."

    def on_enrol(self) -> str:
        """Enrol the faces found in the uploaded photos under the typed name; returns what happened."""
        name = self.name.value.strip()
        named, messages = read_named_uploads(self.photos)
        waiting = len(self._camera_photos)
        named += self._camera_photos      # camera photos take the uploads' path from here on
        faces = [find_face(img, self.rec.size, src, self.cropper) for src, img in named]
        used = [f for f in faces if f.image is not None]
        messages += [f"{f.source}: {f.note}" for f in faces if f.image is None]
        keep = f" ({waiting} camera photo(s) still wait for Enrol.)" if waiting else ""
        if not name:
            msg, used = f"Type a name first (the photos were not kept: upload them again).{keep}", []
        elif name in self.rec.names:
            msg, used = f"{name!r} is already enrolled: choose another name.{keep}", []
        elif not used:
            msg, self._camera_photos = "No usable photo to enrol: upload one or more photos of the person.", []
        else:
            self._camera_photos = []
            self.rec.add_person(name, [f.image for f in used])
            self.examples[name] = seen_by_model(used[0].image, self.rec.size)
            self._mine.add(name)
            msg = f"Enrolled {name!r} from {len(used)} photo(s)."
            self.name.value = ""
            if waiting:
                self._say_camera(f"{waiting} camera photo(s) used for {name!r}.")
        self.faces.children = [_thumb(seen_by_model(f.image, self.rec.size), f"{f.source}: {f.note}")
                               for f in used]
        text = " ".join([msg, *messages, self._people()])
        self.status.value = html.escape(text, quote=False)
        return text

    def on_ask(self) -> str:
        """Name the person in the uploaded photo (or say unknown); show it beside the closest person."""
        named, messages = read_named_uploads(self.query)
        if not named and not messages and self._camera_query is not None:
            named, self._camera_query = [self._camera_query], None
        faces = [find_face(img, self.rec.size, src, self.cropper) for src, img in named[:1]]
        messages += [f"{f.source}: {f.note}" for f in faces if f.image is None]
        self.compare.children = []
        if not faces or faces[0].image is None:
            text = " ".join(messages) or ("Upload a photo first." if not self.use_camera else
                                          "Upload a photo first, or take one with the camera set to 'for Who is it?'.")
            self.answer.value = html.escape(text, quote=False)
            return text
        face = faces[0]
        m: Match = self.rec.recognize([face.image])[0]
        text = f"Answer: {m}"
        query = _thumb(seen_by_model(face.image, self.rec.size), f"{face.source}: {face.note}")
        closest = (_thumb(self.examples[m.closest], f"closest: {m.closest}") if m.closest in self.examples
                   else widgets.HTML(f"<small>closest: {html.escape(m.closest)} (no photo of them here)</small>"))
        self.compare.children = [query, closest, widgets.HTML(score_bar(m.score, m.threshold))]
        self.answer.value = html.escape(text, quote=False)
        return text

    def on_clear(self) -> None:
        """Drop every thumbnail made from an upload (the enrolled gallery stays)."""
        self.faces.children, self.compare.children = [], []
        self.examples = {k: v for k, v in self.examples.items() if k not in self._mine}
        self._mine.clear()
        self._camera_photos, self._camera_query = [], None

    def widget(self) -> widgets.Widget:
        row = widgets.Layout(flex_flow="row wrap", align_items="center")
        camera = []
        if self.use_camera:
            camera = [widgets.HTML("<b>or</b> take photos with your camera (a secure page only: https or localhost; "
                                   "photos are read once and never saved):")]
            if self.camera is not None:
                camera.append(widgets.HBox([self.camera, self.camera_for],
                                           layout=widgets.Layout(flex_flow="row wrap", align_items="flex-start")))
            camera.append(self.camera_note)
        return widgets.VBox([
            widgets.HTML("<b>1.</b> Photos of one person (a few, different days or light), a name, Enrol."),
            widgets.HBox([self.photos, self.name, self.enrol_button], layout=row), *camera,
            widgets.HTML(f"<small>{html.escape(self.finder_line())}</small>"), self.status, self.faces,
            widgets.HTML("<b>2.</b> Another photo: who is it?"),
            widgets.HBox([self.query, self.ask_button, self.clear_button], layout=row), self.answer,
            self.compare])


def enrol_panel(rec: Recognizer, examples: Mapping[str, Image.Image] | None = None,
                camera: bool = False) -> widgets.Widget:
    """The panel as one widget (keep `EnrolPanel` to reach its parts, e.g. in tests); `camera=True` adds
    the browser's camera beside the uploads."""
    panel = EnrolPanel(rec, examples, camera=camera)
    box = panel.widget()
    box.panel = panel  # reachable from the displayed widget
    return box
