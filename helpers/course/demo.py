"""Example folders: one with typical problems (notebook 00) and learner-style copies of people (notebook 06);
`run_cli`, the command line run from a notebook cell (notebook 06)."""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.folders import FaceSet, load_folder, load_orl


def make_problem_folder(dst: str | Path) -> Path:
    """Build `dst/` as a learner's photo folder with typical problems, from ORL photos.

    Three usable people (s1, s2, s3: 4, 3 and 3 JPEG photos); s4 with a single photo (too few);
    an empty folder s5; in s2 a half-copied JPEG, a 0-byte file, a text file and a hidden
    .DS_Store; a second photo of s4 lying at the top level, outside any person folder. Returns `dst`.
    """
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise FileExistsError(f"{dst} exists and is not empty; give a new folder")
    orl = load_orl()
    per_person = {"s1": 4, "s2": 3, "s3": 3, "s4": 1, "s5": 0}
    for label, (person, n) in enumerate(per_person.items()):
        folder = dst / person
        folder.mkdir(parents=True, exist_ok=True)
        idx = [i for i, y in enumerate(orl.labels) if y == label][:n]
        for k, i in enumerate(idx, start=1):
            orl.images[i].save(folder / f"photo{k}.jpg", quality=92)
    buf = io.BytesIO()
    orl.images[35].save(buf, format="JPEG", quality=92)
    (dst / "s2" / "half_copied.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (dst / "s2" / "empty.jpg").write_bytes(b"")
    (dst / "s2" / "notes.txt").write_text("taken at the 2019 party\n")
    (dst / "s2" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    orl.images[31].save(dst / "loose_photo.jpg", quality=92)  # a second photo of s4's man
    return dst


def folder_tree(root: str | Path) -> str:
    """The files and folders under `root`, relative to it (empty ones marked): the same text on every machine."""
    root = Path(root)
    lines = [f"{root.name}/"]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = Path(dirpath).relative_to(root)
        depth = len(rel.parts)
        if depth:
            lines.append("  " * depth + f"{rel.name}/" + ("  (empty)" if not dirnames and not filenames else ""))
        for name in sorted(filenames):
            empty = (Path(dirpath) / name).stat().st_size == 0
            lines.append("  " * (depth + 1) + name + ("  (0 bytes)" if empty else ""))
    return "\n".join(lines)


def problem_folder_demo() -> FaceSet:
    """Build the problem folder in a temporary place, show it, load it (the loader prints its report).

    The folder is loaded by its relative name, so everything printed is machine-independent.
    """
    with tempfile.TemporaryDirectory(prefix="face-course-demo-") as tmp:
        root = make_problem_folder(Path(tmp) / "my_photos")
        print(folder_tree(root))
        print()
        old = os.getcwd()
        os.chdir(tmp)
        try:
            return load_folder("my_photos", verbose=True)
        finally:
            os.chdir(old)


def write_demo_folder(faces, people: Sequence[int], dest: str | Path, per_person: int | None = None) -> Path:
    """Copy some people's photos into `dest/<name>/<n>.png`: a learner-style folder for the CLI demo."""
    dest = Path(dest)
    for p in people:
        folder = dest / faces.names[p]
        folder.mkdir(parents=True, exist_ok=True)
        idx = np.flatnonzero(np.asarray(faces.labels) == p)[:per_person]
        for k, i in enumerate(idx, start=1):
            faces.images[i].save(folder / f"{k}.png")
    return dest


def run_cli(args: Sequence[str], cwd: str | Path | None = None, timeout_s: float = 600) -> tuple[int, str]:
    """Run `python -m helpers ARGS` in a fresh process (as from a shell, notebook 06); (exit status, transcript).

    The transcript starts with the command line, then stderr (messages such as which backbone
    ran, or the error), then stdout (the results).
    """
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]  # the folder holding `helpers`
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root),
                                                                    os.environ.get("PYTHONPATH", "")]))}
    r = subprocess.run([sys.executable, "-m", "helpers", *map(str, args)], cwd=cwd, capture_output=True,
                       text=True, timeout=timeout_s, env=env)
    text = f"$ python -m helpers {' '.join(map(str, args))}\n{r.stderr}{r.stdout}"
    return r.returncode, text.rstrip("\n") + f"\n[exit status {r.returncode}]"
