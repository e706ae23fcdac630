"""Every notebook from 00 to 06 runs without an error on a learner's own folder of photos.

The folder is generated, and is deliberately not ORL's layout: 14 people with names that contain spaces,
6 colour JPEG/PNG photos each of different sizes, made from ORL photos with tints and resizes. Each
notebook runs as a learner would run it: a cell injected after its `parameters` cell (as papermill does)
sets `SOURCE` to the folder and `N_KNOWN` below its number of people; only to keep the test cheap it
lowers `SEEDS` and `EPOCHS` where a notebook has them. Nothing else of a notebook is assumed.

Slow (about 15 minutes on 2 idle cores, over 30 on busy ones), so it runs only when asked:
`FACE_COURSE_OWN_PHOTOS=1 python -m pytest tests/test_own_photos_notebooks.py` (CI's 35 minutes hold the
unit tests and every notebook twice; run this before changing a notebook's parameters or checks).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ["00_setup_and_data", "01_transfer_learning", "02_frozen_training", "03_arcface_margins",
             "04_embedding_visualization", "05_gradual_unfreezing", "06_recognize_and_deploy"]
PEOPLE, PHOTOS, N_KNOWN = 14, 6, 9

INJECTED = '''# injected by tests/test_own_photos_notebooks.py: a learner's own folder
SOURCE = {source!r}
N_KNOWN = {n_known}
# cheaper runs, only for the knobs this notebook has
if isinstance(globals().get("SEEDS"), (tuple, list, range)) and len(SEEDS) > 2:
    SEEDS = tuple(SEEDS)[:2]
if isinstance(globals().get("EPOCHS"), dict):
    EPOCHS = {{k: min(v, 3) for k, v in EPOCHS.items()}}
elif isinstance(globals().get("EPOCHS"), int):
    EPOCHS = min(EPOCHS, 10)
'''


def make_own_folder(root: Path, people: int = PEOPLE, photos: int = PHOTOS, seed: int = 0) -> Path:
    """`people` folders named like a learner's ("Ada Lovelace 3"), each with `photos` colour photos of one
    ORL person: tinted, resized to different sizes, saved as JPEG (some PNG), with camera-like names."""
    from helpers.data.folders import orl_root

    rng = np.random.default_rng(seed)
    orl = orl_root()
    root.mkdir(parents=True, exist_ok=True)
    for p in range(people):
        person = root / f"Person {p + 1:02d} {('Ada', 'Alan', 'Grace', 'Edsger')[p % 4]}"
        person.mkdir()
        tint = rng.uniform(0.6, 1.0, size=3)
        for k in range(photos):
            grey = np.asarray(Image.open(orl / f"s{p + 11}" / f"{k + 1}.pgm").convert("L"), dtype=np.float32)
            rgb = np.clip(grey[..., None] * tint + rng.uniform(0, 20, size=3), 0, 255).astype(np.uint8)
            scale = rng.uniform(0.8, 2.2)
            img = Image.fromarray(rgb).resize((int(92 * scale), int(112 * scale * rng.uniform(0.95, 1.1))))
            name = f"IMG {2024 + k} {p}"
            if k == photos - 1:
                img.save(person / f"{name}.png")
            else:
                img.save(person / f"{name}.jpg", quality=int(rng.integers(70, 95)))
    return root


def test_the_generated_folder_is_a_learners_folder(tmp_path):
    from helpers.data.folders import load_faces

    folder = make_own_folder(tmp_path / "my photos", people=3, photos=5)
    faces = load_faces(str(folder))
    assert faces.num_people == 3 and len(faces.images) == 15
    sizes = {im.size for im in faces.images}
    assert len(sizes) > 5 and all(im.mode == "RGB" for im in faces.images)
    assert any(" " in name for name in faces.names)
    arr = np.asarray(faces.images[0], dtype=np.int16)
    assert np.abs(arr[..., 0] - arr[..., 2]).max() > 5            # colour, not three equal channels


@pytest.fixture(scope="module")
def own_folder(tmp_path_factory):
    return make_own_folder(tmp_path_factory.mktemp("learner") / "my photos")


def _run(name: str, folder: Path):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    path = ROOT / "notebooks" / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(INJECTED.format(source=str(folder), n_known=N_KNOWN)))
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env_path) if p)   # this checkout's helpers
    client = NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except CellExecutionError as e:
        pytest.fail(f"{name} failed on a learner's folder ({PEOPLE} people x {PHOTOS} photos, "
                    f"N_KNOWN={N_KNOWN}):\n{str(e)[-3000:]}")
    finally:
        os.environ["PYTHONPATH"] = env_path
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, errors
    return nb


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("FACE_COURSE_OWN_PHOTOS") != "1",
                    reason="notebooks 00-06 on a generated folder of photos take ~15 min: "
                           "FACE_COURSE_OWN_PHOTOS=1 .venv/bin/python -m pytest tests/test_own_photos_notebooks.py")
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_on_a_learners_folder(name, own_folder):
    nb = _run(name, own_folder)
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "400 photos" not in printed                        # it really ran on the folder, not on ORL


@pytest.mark.parametrize("name", [*NOTEBOOKS, "07_scaling_up"])
def test_every_notebook_has_one_parameters_cell_with_source(name):
    """The cell papermill and this test inject after (merges have dropped its tag before); its folder
    hint is relative to notebooks/, where the notebooks run."""
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code", f"{name}: {len(tagged)} cells tagged 'parameters'"
    source = tagged[0].source
    assert "'data/" not in source and '"data/' not in source, "from notebooks/ a folder is '../data/...'"
    if name != "07_scaling_up":
        assert "SOURCE" in source
