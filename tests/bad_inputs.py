"""The bad inputs learners bring, built programmatically, each with the outcome the course promises.

Used by tests/test_bad_inputs.py (one test per case) and to print the learner-facing table in
data/README.md:  python tests/bad_inputs.py  (prints the table's Markdown).

Every case starts from a small good folder (alice and bob, 3 distinct photos each), adds one
bad thing, runs `load_folder` and records what the learner sees: a skip with its reason, a
note, a FaceDataError, or the photo loaded as promised (converted, uprighted, shrunk).
"""
from __future__ import annotations

import builtins
import os
import shutil
import struct
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from helpers.data import images as images_module
from helpers.data.folders import FaceDataError, FaceSet, load_folder, orl_root

HUGE = 10_000  # side of the "very large image" cases (100 megapixels)


# ---------------------------------------------------------------- image makers

def noise_image(seed: int, size=(64, 64)) -> Image.Image:
    """A distinct RGB picture for each seed (good, non-face photos)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def orl_face(person: int, photo: int) -> Image.Image:
    """ORL photo `photo` of person `person` as RGB (92x112)."""
    return Image.open(orl_root() / f"s{person}" / f"{photo}.pgm").convert("RGB")


# ORL photos the Haar cascade finds exactly one face in (checked in test_bad_inputs.py)
ALICE_FACES = [(1, 1), (1, 3), (1, 7)]
BOB_FACES = [(3, 1), (3, 2), (3, 3)]


def two_faces() -> Image.Image:
    """Two ORL people side by side on a grey canvas: the cascade finds 2 faces."""
    canvas = Image.new("RGB", (92 * 2 + 20 + 40, 112 + 40), (128, 128, 128))
    canvas.paste(orl_face(1, 1), (20, 20))
    canvas.paste(orl_face(2, 1), (20 + 92 + 20, 20))
    return canvas


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    import io
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def write_huge_png(path: Path, side: int = HUGE) -> None:
    """A valid side x side RGB PNG written row by row (a few MB of memory, under a second)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(1)
    row = b"\x00" + b"\x80" * (3 * side)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n")
        fh.write(chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)))
        fh.write(chunk(b"IDAT", idat))
        fh.write(chunk(b"IEND", b""))


def write_huge_jpeg(path: Path, side: int = HUGE) -> None:
    """A side x side greyscale JPEG (about 1 s to write; decoding it in full needs 100 MB)."""
    Image.new("L", (side, side), 120).save(path, quality=10)


def huge_asset(assets: Path, kind: str) -> Path:
    """The 10,000 x 10,000 JPEG or PNG in `assets`, written once per test session."""
    path = assets / f"huge.{kind}"
    if not path.exists():
        (write_huge_jpeg if kind == "jpg" else write_huge_png)(path)
    return path


# ---------------------------------------------------------------- the good folder

def make_good_folder(root: Path, faces: bool = False) -> Path:
    """root/alice and root/bob with 3 distinct photos each (ORL faces when `faces`)."""
    for person, picks, seed in (("alice", ALICE_FACES, 0), ("bob", BOB_FACES, 10)):
        folder = root / person
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(3):
            img = orl_face(*picks[i]) if faces else noise_image(seed + i)
            img.save(folder / f"{i + 1}.png")
    return root


# ---------------------------------------------------------------- the cases

@dataclass
class Case:
    """One bad input: how to build it, and what the learner must see."""

    id: str
    what: str                              # the bad input, in the learner's words
    build: Callable[[Path, Path], None]    # (root, assets) -> adds the bad input under root
    kind: str                              # "skip" | "note" | "error" | "loaded"
    expect: str                            # substring of the reason / note / error
    target: str = ""                       # file (relative to root) the skip or note is about
    faces: bool = False                    # good folder of real faces and crop_faces=True
    check: Callable[[FaceSet, Path], None] | None = None  # for "loaded": what must hold
    good_folder: bool = True               # start from the good folder
    root_name: str = "mine"                # the folder given to load_folder (under tmp)
    patch: Callable[[Path, object], None] | None = None   # (root, monkeypatch) before loading


def _write(rel: str, data: bytes | None = None, img: Image.Image | None = None, **save):
    def build(root: Path, assets: Path) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if img is not None:
            img.save(path, **save)
        else:
            path.write_bytes(data or b"")
    return build


def _image_at(faces: FaceSet, root: Path, rel: str) -> Image.Image:
    paths = [Path(p).resolve() for p in faces.paths]
    target = (root / rel).resolve()
    assert target in paths, f"{rel} was not loaded; report:\n{faces.report}"
    return faces.images[paths.index(target)]


def _mean_rgb(img: Image.Image, box=None) -> np.ndarray:
    return np.asarray(img.crop(box) if box else img, dtype=float).reshape(-1, 3).mean(0)


# builders and checks for the cases that load

def _build_truncated(root: Path, assets: Path) -> None:
    data = jpeg_bytes(noise_image(40, (200, 200)))
    (root / "alice" / "half_copied.jpg").write_bytes(data[: len(data) // 2])


def _build_cmyk(root: Path, assets: Path) -> None:
    Image.new("RGB", (64, 64), (200, 40, 40)).convert("CMYK").save(root / "alice" / "print.jpg", quality=95)


def _check_cmyk(faces: FaceSet, root: Path) -> None:
    img = _image_at(faces, root, "alice/print.jpg")
    assert img.mode == "RGB"
    assert np.abs(_mean_rgb(img) - (200, 40, 40)).max() < 25, _mean_rgb(img)


def _build_png16(root: Path, assets: Path) -> None:
    ramp = np.tile(np.linspace(1000, 60000, 64), (64, 1)).astype(np.uint16)
    Image.fromarray(ramp).save(root / "alice" / "scan16.png")


def _check_png16(faces: FaceSet, root: Path) -> None:
    img = _image_at(faces, root, "alice/scan16.png")
    arr = np.asarray(img)
    assert img.mode == "RGB" and arr.min() == 0 and arr.max() == 255  # stretched, not clipped to white
    assert (np.diff(arr[0, :, 0].astype(int)) >= 0).all()              # the ramp survives


def _build_rgba(root: Path, assets: Path) -> None:
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    img.paste(Image.new("RGBA", (32, 64), (30, 60, 200, 255)), (0, 0))
    img.save(root / "alice" / "cutout.png")


def _check_rgba(faces: FaceSet, root: Path) -> None:
    img = _image_at(faces, root, "alice/cutout.png")
    assert img.mode == "RGB"
    assert np.allclose(_mean_rgb(img, (0, 0, 32, 64)), (30, 60, 200))
    assert np.allclose(_mean_rgb(img, (32, 0, 64, 64)), (255, 255, 255))  # transparent -> white


def _build_gif(root: Path, assets: Path) -> None:
    frames = [Image.new("RGB", (64, 64), c).convert("P", palette=Image.Palette.ADAPTIVE)
              for c in ((20, 160, 60), (250, 250, 0))]
    frames[0].save(root / "alice" / "animated.gif", save_all=True, append_images=frames[1:])


def _check_gif(faces: FaceSet, root: Path) -> None:
    img = _image_at(faces, root, "alice/animated.gif")
    assert img.mode == "RGB" and np.abs(_mean_rgb(img) - (20, 160, 60)).max() < 8  # first frame


def _build_exif(root: Path, assets: Path) -> None:
    upright = Image.new("RGB", (60, 100), (20, 20, 220))            # portrait: red top, blue bottom
    upright.paste(Image.new("RGB", (60, 50), (220, 20, 20)), (0, 0))
    stored = upright.transpose(Image.Transpose.ROTATE_90)            # as the phone's sensor wrote it
    exif = Image.Exif()
    exif[0x0112] = 6                                                 # "rotate 90 CW to display"
    stored.save(root / "alice" / "IMG_phone.jpg", exif=exif, quality=95)


def _check_exif(faces: FaceSet, root: Path) -> None:
    img = _image_at(faces, root, "alice/IMG_phone.jpg")
    assert img.size == (60, 100), img.size
    top, bottom = _mean_rgb(img, (0, 0, 60, 40)), _mean_rgb(img, (0, 60, 60, 100))
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0], (top, bottom)


def _build_huge_jpeg(root: Path, assets: Path) -> None:
    shutil.copy(huge_asset(assets, "jpg"), root / "alice" / "huge.jpg")


def _check_huge_jpeg(faces: FaceSet, root: Path) -> None:
    img = _image_at(faces, root, "alice/huge.jpg")
    assert max(img.size) == images_module.MAX_SIDE and img.mode == "RGB", img.size


def _build_huge_png(root: Path, assets: Path) -> None:
    shutil.copy(huge_asset(assets, "png"), root / "alice" / "huge.png")


def _build_png_as_jpg(root: Path, assets: Path) -> None:
    noise_image(41).save(root / "alice" / "really_a_png.jpg", format="PNG")


def _check_png_as_jpg(faces: FaceSet, root: Path) -> None:
    _image_at(faces, root, "alice/really_a_png.jpg")


def _build_empty_root(root: Path, assets: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")


def _build_no_images(root: Path, assets: Path) -> None:
    for person in ("alice", "bob"):
        (root / person).mkdir(parents=True)
        (root / person / "notes.txt").write_text("no photos here")


def _build_loose(root: Path, assets: Path) -> None:
    root.mkdir(parents=True)
    for i in range(4):
        noise_image(50 + i).save(root / f"IMG_{i}.jpg")


def _build_root_is_file(root: Path, assets: Path) -> None:
    root.parent.mkdir(parents=True, exist_ok=True)
    noise_image(60).save(root, format="PNG")


def _build_one_photo(root: Path, assets: Path) -> None:
    (root / "carol").mkdir()
    noise_image(70).save(root / "carol" / "only.jpg")


def _build_one_person(root: Path, assets: Path) -> None:
    shutil.rmtree(root / "bob")
    (root / "bob").mkdir()
    noise_image(71).save(root / "bob" / "only.jpg")


def _build_hidden(root: Path, assets: Path) -> None:
    (root / "alice" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "alice" / "._1.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (root / "alice" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / "alice" / ".thumbnails").mkdir()
    noise_image(72).save(root / "alice" / ".thumbnails" / "t.jpg")


def _build_unicode(root: Path, assets: Path) -> None:
    name = unicodedata.normalize("NFD", "Zoë Ñúñez")   # as macOS writes names
    (root / name).mkdir()
    for i in range(2):
        noise_image(80 + i).save(root / name / f"été photo {i + 1} – plage.jpg")


def _check_unicode(faces: FaceSet, root: Path) -> None:
    assert "Zoë Ñúñez" in faces.names, faces.names                   # shown in NFC
    assert faces.counts()["Zoë Ñúñez"] == 2


def _build_nested(root: Path, assets: Path) -> None:
    deep = root / "alice" / "2019" / "summer holiday"
    deep.mkdir(parents=True)
    noise_image(90).save(deep / "beach.png")


def _check_nested(faces: FaceSet, root: Path) -> None:
    _image_at(faces, root, "alice/2019/summer holiday/beach.png")
    assert faces.counts()["alice"] == 4


def _build_symlink_loop(root: Path, assets: Path) -> None:
    os.symlink(".", root / "alice" / "loop_to_alice")             # alice/loop_to_alice -> alice
    os.symlink("..", root / "bob" / "loop_to_top")                # bob/loop_to_top -> the top folder


def _build_file_link_loop(root: Path, assets: Path) -> None:
    os.symlink("self.jpg", root / "alice" / "self.jpg")


def _build_broken_link(root: Path, assets: Path) -> None:
    os.symlink("/nonexistent/IMG_0001.jpg", root / "alice" / "moved.jpg")


def _build_same_two_people(root: Path, assets: Path) -> None:
    shutil.copy(root / "alice" / "1.png", root / "bob" / "who_is_this.png")


def _build_same_one_person(root: Path, assets: Path) -> None:
    shutil.copy(root / "alice" / "1.png", root / "alice" / "1 (copy).png")


def _build_no_face(root: Path, assets: Path) -> None:
    noise_image(100, (92, 112)).save(root / "alice" / "landscape.png")


def _build_two_faces(root: Path, assets: Path) -> None:
    two_faces().save(root / "alice" / "group.png")


def _check_two_faces(faces: FaceSet, root: Path) -> None:
    img = _image_at(faces, root, "alice/group.png")
    assert img.width < 200, img.size        # cropped to one face, not the whole canvas


def _build_unreadable(root: Path, assets: Path) -> None:
    noise_image(110).save(root / "alice" / "locked.jpg")
    os.chmod(root / "alice" / "locked.jpg", 0)


def _patch_unreadable(root: Path, monkeypatch) -> None:
    """Root reads any file: make opening this one fail the way it does for other users."""
    locked = os.path.realpath(root / "alice" / "locked.jpg")

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.realpath(file) == locked:
            raise PermissionError(13, "Permission denied", str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(images_module, "open", guarded_open, raising=False)


def _build_unreadable_folder(root: Path, assets: Path) -> None:
    (root / "alice" / "private").mkdir()
    noise_image(111).save(root / "alice" / "private" / "x.jpg")


def _patch_unreadable_folder(root: Path, monkeypatch) -> None:
    locked = os.path.realpath(root / "alice" / "private")
    real_scandir = os.scandir

    def guarded_scandir(path="."):
        if os.path.realpath(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", guarded_scandir)


TEXT = b"Shopping list:\n- eggs\n- milk\n"
HTML = b"<!DOCTYPE html><html><head><title>404 Not Found</title></head></html>"
HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64

CASES: list[Case] = [
    Case("zero_byte_file", "zero-byte file", _write("alice/empty.jpg", b""),
         "skip", "empty file (0 bytes)", "alice/empty.jpg"),
    Case("truncated_jpeg", "truncated JPEG (half-copied)", _build_truncated,
         "skip", "damaged or truncated image", "alice/half_copied.jpg"),
    Case("text_named_jpg", "text file named .jpg", _write("alice/list.jpg", TEXT),
         "skip", "not an image: the file holds plain text", "alice/list.jpg"),
    Case("html_named_jpg", "web page saved as .jpg (failed download)", _write("alice/saved.jpg", HTML),
         "skip", "holds a web page", "alice/saved.jpg"),
    Case("heic_named_jpg", "iPhone HEIC photo renamed to .jpg", _write("alice/IMG_0002.jpg", HEIC),
         "skip", "HEIC/HEIF photo", "alice/IMG_0002.jpg"),
    Case("heic_file", "iPhone .HEIC photo", _write("alice/IMG_0001.HEIC", HEIC),
         "skip", "HEIC/HEIF photo", "alice/IMG_0001.HEIC"),
    Case("not_a_photo_extension", "other file (.txt) in a person folder", _write("alice/notes.txt", TEXT),
         "skip", "not a photo file (.txt)", "alice/notes.txt"),
    Case("cmyk_jpeg", "CMYK JPEG (from print software)", _build_cmyk,
         "loaded", "converted to RGB", check=_check_cmyk),
    Case("png_16bit", "16-bit PNG", _build_png16,
         "loaded", "scaled to 8-bit RGB", check=_check_png16),
    Case("rgba_png", "RGBA PNG with transparency", _build_rgba,
         "loaded", "transparent parts become white", check=_check_rgba),
    Case("palette_gif", "palette (animated) GIF", _build_gif,
         "loaded", "first frame, converted to RGB", check=_check_gif),
    Case("exif_rotated", "phone photo with EXIF rotation", _build_exif,
         "loaded", "turned upright from its EXIF orientation", check=_check_exif),
    Case("png_named_jpg", "PNG named .jpg", _build_png_as_jpg,
         "loaded", "read by its content, not its extension", check=_check_png_as_jpg),
    Case("one_by_one_pixel", "1x1 image", _write("alice/pixel.png", img=Image.new("RGB", (1, 1))),
         "skip", "too small (1x1 px", "alice/pixel.png"),
    Case("huge_jpeg", "very large JPEG (10,000 x 10,000)", _build_huge_jpeg,
         "loaded", "decoded at 1/8 size, shrunk to 1024 px (memory stays small)", check=_check_huge_jpeg),
    Case("huge_png", "very large PNG (10,000 x 10,000)", _build_huge_png,
         "skip", "image too large to load safely (10000x10000 px", "alice/huge.png"),
    Case("root_missing", "folder that does not exist", lambda root, assets: None,
         "error", "does not exist. Make it and add one folder per person", good_folder=False),
    Case("root_is_file", "a file given instead of a folder", _build_root_is_file,
         "error", "is a file; give the folder", good_folder=False),
    Case("empty_folder", "empty folder (only .DS_Store)", _build_empty_root,
         "error", "is empty: add one sub-folder per person", good_folder=False),
    Case("no_images", "folder with no images", _build_no_images,
         "error", "no person with at least 2 usable photos", good_folder=False),
    Case("photos_without_person_folders", "photos directly in the folder, no person folders",
         _build_loose, "error", "holds photos but no person folders", good_folder=False),
    Case("one_photo_person", "a person with one photo", _build_one_photo,
         "note", "person 'carol' has 1 usable photo(s) and needs at least 2"),
    Case("fewer_than_two_people", "fewer than 2 people", _build_one_person,
         "error", "recognition needs at least 2 people"),
    Case("ds_store", "hidden .DS_Store", _build_hidden,
         "skip", "hidden file (.DS_Store", "alice/.DS_Store"),
    Case("appledouble", "macOS ._ copy of a photo", _build_hidden,
         "skip", "hidden file", "alice/._1.png"),
    Case("thumbs_db", "Windows Thumbs.db", _build_hidden,
         "skip", "system file", "alice/Thumbs.db"),
    Case("hidden_folder", "hidden sub-folder", _build_hidden,
         "skip", "hidden folder: ignored", "alice/.thumbnails"),
    Case("unicode_and_spaces", "unicode and spaces in names", _build_unicode,
         "loaded", "person names kept (shown in NFC form)", check=_check_unicode),
    Case("nested_subfolders", "nested sub-folders", _build_nested,
         "loaded", "photos in sub-folders count for the person", check=_check_nested),
    Case("symlink_loop_folder", "folder link loop", _build_symlink_loop,
         "skip", "which is already read (a link loop or a second copy)", "alice/loop_to_alice"),
    Case("symlink_to_top", "folder link to the top folder", _build_symlink_loop,
         "skip", "which is already read (a link loop or a second copy)", "bob/loop_to_top"),
    Case("symlink_loop_file", "file link pointing to itself", _build_file_link_loop,
         "skip", "link loop", "alice/self.jpg"),
    Case("broken_link", "link to a moved photo", _build_broken_link,
         "skip", "broken link", "alice/moved.jpg"),
    Case("same_photo_two_people", "same photo under two people", _build_same_two_people,
         "skip", "also filed under alice: left out of both", "bob/who_is_this.png"),
    Case("same_photo_twice", "same photo twice for one person", _build_same_one_person,
         "skip", "the same photo as alice/1 (copy).png", "alice/1.png"),
    Case("no_face_found", "photo with no face (crop_faces=True)", _build_no_face,
         "skip", "no face found", "alice/landscape.png", faces=True),
    Case("several_faces", "photo with several faces (crop_faces=True)", _build_two_faces,
         "note", "alice/group.png: 2 faces found; kept the largest", faces=True, check=_check_two_faces),
    Case("unreadable_file", "unreadable file (permissions)", _build_unreadable,
         "skip", "permission denied", "alice/locked.jpg", patch=_patch_unreadable),
    Case("unreadable_folder", "unreadable sub-folder (permissions)", _build_unreadable_folder,
         "skip", "cannot open this folder (Permission denied)", "alice/private",
         patch=_patch_unreadable_folder),
]


@dataclass
class Outcome:
    kind: str        # "skip" | "note" | "error" | "loaded"
    message: str     # what the learner sees about this input
    faces: FaceSet | None
    root: Path


def run_case(case: Case, tmp: Path, assets: Path, monkeypatch=None) -> Outcome:
    """Build `case` under `tmp` and load it; the outcome as the learner sees it."""
    root = tmp / case.root_name
    if case.good_folder:
        make_good_folder(root, faces=case.faces)
    case.build(root, assets)
    if case.patch is not None:
        case.patch(root, monkeypatch)
    try:
        faces = load_folder(root, crop_faces=case.faces, verbose=False)
    except FaceDataError as e:
        return Outcome("error", str(e).splitlines()[0].replace(str(root), "data/mine"), None, root)
    if case.target:
        for path, reason in faces.report.skipped:
            if path == case.target:
                return Outcome("skip", reason, faces, root)
    for note in faces.report.notes:
        if case.expect in note:
            return Outcome("note", note, faces, root)
    return Outcome("loaded", case.expect, faces, root)


def markdown_table(outcomes: list[tuple[Case, Outcome]]) -> str:
    """The learner-facing table: bad input | what happens | message shown."""
    what_happens = {"skip": "skipped, listed in the report", "note": "note in the report",
                    "error": "stops with FaceDataError", "loaded": "loaded"}
    lines = ["| bad input | what happens | message the learner sees |", "|---|---|---|"]
    for case, out in outcomes:
        msg = out.message.replace("|", "\\|")
        where = f"`{case.target}`: " if out.kind == "skip" else ""
        lines.append(f"| {case.what} | {what_happens[out.kind]} | {where}{msg} |")
    return "\n".join(lines)


def build_table(tmp: Path) -> str:
    """Run every case (each in its own folder under `tmp`) and return the Markdown table."""
    import pytest

    assets = tmp / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    rows = []
    with pytest.MonkeyPatch.context() as mp:
        for i, case in enumerate(CASES):
            rows.append((case, run_case(case, tmp / f"case{i}", assets, mp)))
            mp.undo()
    return markdown_table(rows)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        print(build_table(Path(d)))
