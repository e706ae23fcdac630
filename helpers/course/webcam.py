"""Take photos with the browser's camera: a small `anywidget` (JavaScript in the page, photos to Python).

`Camera()` shows three buttons and a live preview: **Start camera** asks the browser for the camera
(`navigator.mediaDevices.getUserMedia`; nothing is asked before the click), **Take photo** draws the
current frame on a canvas and sends it to Python as JPEG bytes in a custom widget message, **Stop
camera** stops the camera (its light goes off). `camera.on_photo(callback)` calls `callback(photo)`
with a `Photo`: a PIL image read through `helpers.data.images.read_image_bytes`, or, for bad bytes, no image
and the loader's one-line reason.

The camera needs a secure page: https://, or http://localhost / http://127.0.0.1. A remote Jupyter
opened over plain http, a denied permission, no camera, or a front end that forbids cameras (VS Code's
notebooks) each get a one-line message in the widget (and in `camera.error`), never a traceback.

Privacy: the photo's bytes travel in a comm message, not in a synced trait, so they are never part of
the widget's state (which JupyterLab writes into the notebook only if you turn on "Save Widget State
Automatically"). Python reads them once and drops them; `camera.get_state()` holds text only. The
last photo's small preview in the widget lives in the page only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import anywidget
import traitlets
from PIL import Image

from helpers.data.images import ImageSkip, read_image_bytes

MAX_SIDE = 640   # the browser shrinks photos to this longer side before sending them


@dataclass
class Photo:
    """One photo from the camera: `image` None when it could not be read (`problem` says why)."""

    name: str
    image: Image.Image | None
    problem: str = ""


_ESM = r"""
const TEXT = {
  insecure: (origin) => `The camera needs a secure page, and this one is ${origin}: browsers give the ` +
    `camera only to https:// pages and to http://localhost or http://127.0.0.1. Open Jupyter through ` +
    `one of those (for a remote server, an SSH tunnel: ssh -L 8888:localhost:8888 HOST, then ` +
    `http://localhost:8888), or use the upload buttons.`,
  missing: "This browser or notebook front end gives no camera access (getUserMedia is missing): " +
    "use the upload buttons.",
  denied: "Camera permission denied (by you, the browser's site settings, or the notebook front end: " +
    "VS Code's notebooks allow no camera). Allow the camera for this page (the icon in the address bar) " +
    "and press Start camera again, or use the upload buttons.",
  none: "No camera found: use the upload buttons.",
  busy: "The camera is in use by another program (a video call?): close it and press Start camera again.",
};

function explain(e) {
  const name = (e && e.name) || "";
  if (name === "NotAllowedError" || name === "SecurityError" || name === "PermissionDeniedError")
    return TEXT.denied;
  if (name === "NotFoundError" || name === "OverconstrainedError" || name === "DevicesNotFoundError")
    return TEXT.none;
  if (name === "NotReadableError" || name === "TrackStartError" || name === "AbortError") return TEXT.busy;
  return `The camera could not start (${name || "error"}: ${(e && e.message) || e}): use the upload buttons.`;
}

function render({ model, el }) {
  el.classList.add("course-camera");
  const bar = document.createElement("div");
  bar.className = "course-camera-bar";
  const button = (label, cls) => {
    const b = document.createElement("button");
    b.className = `jupyter-button widget-button ${cls}`;
    b.textContent = label;
    bar.appendChild(b);
    return b;
  };
  const start = button("Start camera", "course-camera-start");
  const take = button("Take photo", "course-camera-take");
  const stop = button("Stop camera", "course-camera-stop");
  const video = document.createElement("video");
  video.autoplay = true; video.muted = true; video.playsInline = true;
  const last = document.createElement("img");
  last.className = "course-camera-last";
  last.alt = "last photo";
  const row = document.createElement("div");
  row.className = "course-camera-row";
  row.append(video, last);
  const error = document.createElement("div");
  error.className = "course-camera-error";
  const note = document.createElement("div");
  note.className = "course-camera-note";
  el.append(bar, row, error, note);

  let stream = null;
  let lastUrl = null;
  const show = () => {
    const state = model.get("state");
    start.disabled = state === "on" || state === "starting";
    take.disabled = state !== "on";
    stop.disabled = state !== "on";
    row.style.display = state === "on" || lastUrl ? "" : "none";
    video.style.display = state === "on" ? "" : "none";
    error.textContent = model.get("error");
    note.textContent = model.get("note");
  };
  const setState = (state, message = "") => {
    model.set("state", state);
    model.set("error", message);
    model.save_changes();
    show();
  };
  const release = () => {
    if (stream) stream.getTracks().forEach((t) => t.stop());
    stream = null;
    video.srcObject = null;
  };

  start.addEventListener("click", async () => {
    if (!window.isSecureContext) return setState("error", TEXT.insecure(window.location.origin));
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) return setState("error", TEXT.missing);
    setState("starting");
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
      video.srcObject = stream;
      await video.play().catch(() => {});
      setState("on");
    } catch (e) {
      release();
      setState("error", explain(e));
    }
  });
  stop.addEventListener("click", () => { release(); setState("off"); });
  take.addEventListener("click", () => {
    const w = video.videoWidth, h = video.videoHeight;
    if (!stream || !w || !h) return setState("on", "No picture from the camera yet: wait a second and try again.");
    const scale = Math.min(1, model.get("max_side") / Math.max(w, h));
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(w * scale);
    canvas.height = Math.round(h * scale);
    canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
    canvas.toBlob(async (blob) => {
      if (!blob) return setState("on", "The browser could not encode the photo: try again.");
      if (lastUrl) URL.revokeObjectURL(lastUrl);
      lastUrl = URL.createObjectURL(blob);       // this page only: never sent back, never saved
      last.src = lastUrl;
      const bytes = await blob.arrayBuffer();
      model.send({ type: "photo", width: canvas.width, height: canvas.height }, undefined, [bytes]);
      show();
    }, "image/jpeg", 0.92);
  });
  model.on("change:note", show);
  model.on("change:error", show);
  model.on("change:state", show);
  model.set("rendered", true);   // tells Python that this front end can show the widget
  model.save_changes();
  show();
  return () => {                 // the view is removed (cell cleared or re-run): let go of the camera
    for (const what of ["change:note", "change:error", "change:state"]) model.off(what, show);
    release();
    if (lastUrl) URL.revokeObjectURL(lastUrl);
  };
}

export default { render };
"""

_CSS = """
.course-camera { display: flex; flex-direction: column; gap: 4px; }
.course-camera-bar { display: flex; gap: 4px; flex-wrap: wrap; }
.course-camera-bar button { width: auto; padding: 0 10px; }
.course-camera-row { display: flex; gap: 8px; align-items: flex-end; }
.course-camera video { width: 240px; max-width: 100%; transform: scaleX(-1); background: #222; }
.course-camera-last { width: 80px; }
.course-camera-last:not([src]) { display: none; }
.course-camera-error { color: #c62828; max-width: 640px; }
.course-camera-error:empty, .course-camera-note:empty { display: none; }
.course-camera-note { color: #555; font-size: small; }
"""


class Camera(anywidget.AnyWidget):
    """The browser's camera as a widget: `on_photo(callback)` gets each photo taken as a `Photo`.

    Synced state is text only: `state` (off | starting | on | error, set by the browser), `error`
    (the browser's one-line reason), `note` (Python's word on the last photo), `rendered` (the front
    end showed the widget), `max_side`. Photos arrive as custom messages and are never stored.
    """

    _esm = _ESM
    _css = _CSS
    state = traitlets.Unicode("off").tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)
    note = traitlets.Unicode("").tag(sync=True)
    rendered = traitlets.Bool(False).tag(sync=True)
    max_side = traitlets.Int(MAX_SIDE).tag(sync=True)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._callbacks: list[Callable[[Photo], None]] = []
        self.taken = 0
        self.on_msg(self._on_custom_msg)

    def on_photo(self, callback: Callable[[Photo], None], remove: bool = False) -> None:
        """Call `callback(photo)` for every photo taken (`remove=True` stops that)."""
        if remove:
            self._callbacks = [c for c in self._callbacks if c != callback]   # == : bound methods are new objects
        else:
            self._callbacks.append(callback)

    def _on_custom_msg(self, _widget, content, buffers) -> None:
        if isinstance(content, dict) and content.get("type") == "photo":
            self.receive(bytes(buffers[0]) if buffers else b"")

    def receive(self, data: bytes) -> Photo:
        """Read one photo's JPEG bytes (as the browser sends them), tell the callbacks, drop the bytes."""
        self.taken += 1
        name = f"camera photo {self.taken}"
        try:
            photo = Photo(name, read_image_bytes(data, f"{name}.jpg"))
            self.note = f"{name}: {photo.image.width} x {photo.image.height} px received"
        except ImageSkip as e:
            photo = Photo(name, None, f"{name}: skipped: {e}")
            self.note = photo.problem
        finally:
            del data
        for callback in list(self._callbacks):
            callback(photo)
        return photo
