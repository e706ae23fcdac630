"""Chromium's fake camera fed with a packaged face, and a small notebook with a camera enrol panel.

`write_y4m` writes a `.y4m` video (the YUV4MPEG2 header, then raw 4:2:0 frames) with numpy:
Chromium plays it in a loop to `getUserMedia` when started with `FAKE_CAMERA_ARGS + [file flag]`
(`--use-fake-ui-for-media-stream` grants the permission prompt; the others replace the device).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

FAKE_CAMERA_ARGS = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]


def camera_args(y4m: Path) -> list[str]:
    """Chromium flags that make `y4m` the only camera, with the permission granted."""
    return [*FAKE_CAMERA_ARGS, f"--use-file-for-fake-video-capture={y4m}"]


def write_y4m(path: Path, face: Image.Image, size: tuple[int, int] = (320, 240), frames: int = 3) -> Path:
    """A still video of `face` (grey, scaled to the frame's height, centred on mid-grey) as `.y4m`."""
    w, h = size
    grey = face.convert("L")
    grey = grey.resize((round(grey.width * h / grey.height), h), Image.Resampling.BILINEAR)
    frame = Image.new("L", (w, h), 128)
    frame.paste(grey, ((w - grey.width) // 2, 0))
    y = np.asarray(frame, dtype=np.uint8)
    chroma = np.full((h // 2, w // 2), 128, np.uint8).tobytes()   # no colour: U = V = 128
    with open(path, "wb") as fh:
        fh.write(f"YUV4MPEG2 W{w} H{h} F10:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            fh.write(b"FRAME\n" + y.tobytes() + chroma + chroma)
    return path


# ORL s2 and s3 are enrolled (one photo each); the camera shows s1, whom the panel enrols as "Cam".
CAMERA_NOTEBOOK_CODE = [
    """\
from helpers.models.backbones import load_backbone
from helpers.course.enrol_panel import enrol_panel
from helpers.data.folders import load_orl
from helpers.recognize.recognizer import Recognizer

orl = load_orl()
rec = Recognizer(load_backbone("efficientnet_lite0", verbose=False), size=112, threshold=0.5)
rec.enrol([orl.images[10], orl.images[20]], [0, 1], ["s2", "s3"])""",
    "box = enrol_panel(rec, camera=True)\nbox",
]


def write_camera_notebook(folder: Path) -> Path:
    """`camera.ipynb`: a recogniser of two ORL people and `enrol_panel(rec, camera=True)`."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# Enrol from the (fake) camera")]
    nb.cells += [nbformat.v4.new_code_cell(code) for code in CAMERA_NOTEBOOK_CODE]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "camera.ipynb"
    nbformat.write(nb, path)
    return path
