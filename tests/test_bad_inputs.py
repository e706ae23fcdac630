"""Learners' bad inputs: every one gives a named message or a listed skip, never a traceback.

The cases live in tests/bad_inputs.py; data/README.md shows the table of what the learner sees,
and test_readme_table_is_current keeps that table true.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bad_inputs import (ALICE_FACES, BOB_FACES, CASES, Case, build_table, huge_asset, markdown_table,
                        noise_image, orl_face, run_case, two_faces)
from helpers.data.folders import FaceDataError, load_folder
from helpers.data.facecrop import FaceCropper
from helpers.data.images import ImageSkip, read_image

REPO = Path(__file__).resolve().parent.parent
README = REPO / "data" / "README.md"
ISSUE_LIST = {  # the inputs the issue names, by case id
    "zero_byte_file", "truncated_jpeg", "text_named_jpg", "cmyk_jpeg", "png_16bit", "rgba_png",
    "palette_gif", "exif_rotated", "one_by_one_pixel", "huge_jpeg", "huge_png", "no_images",
    "one_photo_person", "fewer_than_two_people", "ds_store", "unicode_and_spaces",
    "nested_subfolders", "symlink_loop_folder", "same_photo_two_people", "no_face_found",
    "several_faces", "unreadable_file", "root_missing", "root_is_file", "empty_folder",
}
# every message tells the learner what to do (or that nothing needs doing)
ACTION_WORDS = ("copy", "use ", "save", "export", "shrink", "fix", "ignored", "move", "replace",
                "kept", "left out", "make", "give", "add", "check")
_OUTCOMES: dict[str, object] = {}  # case id -> Outcome, reused by the README table test


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> Path:
    """Shared, write-once inputs (the 10,000 x 10,000 images)."""
    return tmp_path_factory.mktemp("assets")


def test_the_issue_list_is_covered():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 20
    assert ISSUE_LIST <= set(ids), ISSUE_LIST - set(ids)


def test_face_fixtures_are_what_the_cases_assume():
    """The face cases are only meaningful if the detector sees what they claim."""
    cropper = FaceCropper()
    for person, photo in ALICE_FACES + BOB_FACES:
        assert cropper.crop(orl_face(person, photo))[1] == 1, (person, photo)
    assert cropper.crop(two_faces())[1] == 2
    assert cropper.crop(noise_image(100, (92, 112)))[1] == 0


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, assets, monkeypatch):
    out = run_case(case, tmp_path, assets, monkeypatch)
    _OUTCOMES[case.id] = out
    assert out.kind == case.kind, f"expected {case.kind}, got {out.kind}: {out.message}"
    assert case.expect in out.message, out.message
    if case.kind != "loaded":
        assert any(w in out.message for w in ACTION_WORDS), f"not actionable: {out.message}"
        assert "Traceback" not in out.message and len(out.message.splitlines()) == 1
    if out.faces is None:
        return
    faces = out.faces
    # the good photos around the bad one still load
    assert faces.counts()["alice"] >= 2 and faces.counts()["bob"] >= 2, faces.counts()
    assert len(faces.images) == len(faces.labels) == len(faces.paths)
    assert all(im.mode == "RGB" and min(im.size) >= 16 for im in faces.images)
    if case.kind == "skip":
        target = (out.root / case.target).absolute()
        assert str(target) not in faces.paths
    if case.check is not None:
        case.check(faces, out.root)


def test_same_photo_under_two_people_leaves_both_out(tmp_path, assets):
    out = run_case(next(c for c in CASES if c.id == "same_photo_two_people"), tmp_path, assets)
    reasons = dict(out.faces.report.skipped)
    assert "also filed under bob" in reasons["alice/1.png"]
    assert "also filed under alice" in reasons["bob/who_is_this.png"]
    assert out.faces.counts() == {"alice": 2, "bob": 3}


def test_one_photo_person_is_named_and_left_out(tmp_path, assets):
    out = run_case(next(c for c in CASES if c.id == "one_photo_person"), tmp_path, assets)
    assert out.faces.names == ["alice", "bob"]


def test_fewer_than_two_people_error_carries_the_report(tmp_path, assets):
    case = next(c for c in CASES if c.id == "fewer_than_two_people")
    root = tmp_path / "mine"
    from bad_inputs import make_good_folder
    make_good_folder(root)
    case.build(root, assets)
    (root / "alice" / "empty.jpg").write_bytes(b"")
    with pytest.raises(FaceDataError) as err:
        load_folder(root, verbose=False)
    msg = str(err.value)
    assert "person 'bob' has 1 usable photo(s)" in msg
    assert "alice/empty.jpg: empty file (0 bytes)" in msg


def test_verbose_load_says_what_it_did(tmp_path, assets, capsys):
    from bad_inputs import make_good_folder
    root = make_good_folder(tmp_path / "mine")
    (root / "alice" / "empty.jpg").write_bytes(b"")
    load_folder(root)
    assert capsys.readouterr().out == ""        # quiet by default (the CLI keeps stdout clean)
    faces = load_folder(root, verbose=True)
    printed = capsys.readouterr().out
    assert f"Loaded 6 photos of 2 people from {root} (alice 3, bob 3)" in printed
    assert "alice/empty.jpg: empty file (0 bytes)" in printed
    assert len(faces) == 6


def test_loading_twice_gives_the_same_faces(tmp_path, assets):
    case = next(c for c in CASES if c.id == "nested_subfolders")
    out = run_case(case, tmp_path, assets)
    again = load_folder(out.root, verbose=False)
    assert again.names == out.faces.names and again.paths == out.faces.paths
    assert (again.labels == out.faces.labels).all()
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(again.images, out.faces.images))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root reads files whatever their permissions; test_bad_input[unreadable_file] "
                           "simulates the refusal instead")
def test_really_unreadable_file(tmp_path):
    from bad_inputs import make_good_folder
    root = make_good_folder(tmp_path / "mine")
    locked = root / "alice" / "locked.jpg"
    noise_image(110).save(locked)
    locked.chmod(0)
    try:
        faces = load_folder(root, verbose=False)
    finally:
        locked.chmod(0o644)
    assert "permission denied" in dict(faces.report.skipped)["alice/locked.jpg"]


# ---------------------------------------------------------------- read_image directly

def test_read_image_on_a_folder_and_a_missing_file(tmp_path):
    with pytest.raises(ImageSkip, match="a folder, not a photo file"):
        read_image(tmp_path)
    with pytest.raises(ImageSkip, match="file not found"):
        read_image(tmp_path / "nope.jpg")


def test_read_image_damaged_exif_keeps_the_photo(tmp_path):
    path = tmp_path / "odd_exif.jpg"
    exif = Image.Exif()
    exif[0x0112] = 99  # no such orientation
    Image.new("RGB", (40, 30), (10, 200, 10)).save(path, exif=exif)
    assert read_image(path).size == (40, 30)


MEASURE = textwrap.dedent("""
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("images", sys.argv[1])
    images = importlib.util.module_from_spec(spec); spec.loader.exec_module(images)
    from PIL import Image
    def peak_mb():  # VmHWM: this process's peak RSS (ru_maxrss would include the parent's at fork)
        with open("/proc/self/status") as fh:
            return int(next(l for l in fh if l.startswith("VmHWM")).split()[1]) / 1024
    base = peak_mb()
    img = images.read_image(sys.argv[2])
    print("jpeg", img.size, peak_mb() - base)
    base = peak_mb()
    try:
        images.read_image(sys.argv[3])
        print("png loaded")
    except images.ImageSkip as e:
        print("png skipped", peak_mb() - base, e)
    base = peak_mb()
    Image.MAX_IMAGE_PIXELS = None
    Image.open(sys.argv[2]).load()  # control: the naive full decode
    print("naive", peak_mb() - base)
""")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory is read from /proc (Linux)")
def test_huge_images_keep_memory_small(tmp_path, assets):
    """10,000 x 10,000: the JPEG is decoded at 1/8 size, the PNG is refused before decoding.

    Peak memory (VmHWM) is measured in a fresh process that imports only images.py; the
    naive full decode in the same process shows the measurement would catch a regression.
    """
    script = tmp_path / "measure.py"
    script.write_text(MEASURE)
    res = subprocess.run([sys.executable, str(script), str(REPO / "helpers" / "data" / "images.py"),
                          str(huge_asset(assets, "jpg")), str(huge_asset(assets, "png"))],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = dict(line.split(" ", 1) for line in res.stdout.splitlines())
    size, jpeg_mb = re.fullmatch(r"(\(\d+, \d+\)) ([\d.]+)", lines["jpeg"]).groups()
    assert size == "(1024, 1024)"
    assert float(jpeg_mb) < 40, res.stdout
    assert lines["png"].startswith("skipped"), res.stdout
    assert float(lines["png"].split()[1]) < 10, res.stdout
    assert float(lines["naive"]) > 80, res.stdout  # the full decode costs 100 MB: the probe works


# ---------------------------------------------------------------- the face cropper

def test_cropper_tiny_and_odd_modes():
    cropper = FaceCropper()
    for size in [(1, 1), (5, 5), (23, 40)]:
        assert cropper.crop(Image.new("RGB", size)) == (None, 0)
    face = orl_face(*ALICE_FACES[0])
    for mode in ("L", "RGBA", "LA", "P", "CMYK", "F", "I"):
        cut, n = cropper.crop(face.convert(mode))
        assert n == 1 and cut is not None, mode


def test_cropper_finds_a_face_in_a_large_photo_at_its_real_place():
    """Large photos are searched shrunk; the box comes back in the photo's own pixels."""
    fw, fh = 92 * 6, 112 * 6
    canvas = Image.new("RGB", (3000, 2000), (128, 128, 128))
    canvas.paste(orl_face(*ALICE_FACES[0]).resize((fw, fh)), (1500, 700))
    boxes = FaceCropper().detect(canvas)
    assert len(boxes) == 1
    x, y, w, h = boxes[0]
    tol = 0.1 * fw
    assert 1500 - tol <= x and x + w <= 1500 + fw + tol, boxes[0]   # inside the pasted face
    assert 700 - tol <= y and y + h <= 700 + fh + tol, boxes[0]
    assert w > 0.6 * fw, boxes[0]                                    # and about its size
    cut, n = FaceCropper().crop(canvas)
    assert n == 1 and cut.width > 0.6 * fw


# ---------------------------------------------------------------- the learner-facing table

def test_readme_table_is_current(tmp_path):
    """data/README.md shows exactly what the loader now says for each bad input."""
    if all(c.id in _OUTCOMES for c in CASES):
        table = markdown_table([(c, _OUTCOMES[c.id]) for c in CASES])
    else:
        table = build_table(tmp_path)
    text = README.read_text(encoding="utf-8")
    m = re.search(r"<!-- bad-inputs-table -->\n(.*?)\n?<!-- /bad-inputs-table -->", text, re.S)
    assert m, "data/README.md lost its <!-- bad-inputs-table --> markers"
    assert m.group(1).strip() == table.strip(), (
        "data/README.md is out of date; paste the output of `python tests/bad_inputs.py`:\n" + table)
