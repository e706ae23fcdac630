"""The learner's data is never written: loader, cropper, feature cache and training only read it."""
from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
import torch

from bad_inputs import HTML, noise_image, orl_face, two_faces
from helpers.data.folders import load_folder
from helpers.data.splits import split_per_person
from helpers.features.extract import extract_features
from helpers.models.face_model import build_model
from helpers.runtime import REPO_ROOT, cache_dir, threads
from helpers.train.fit import ImageDataset, fit, train_head_on_features
from tiny_backbone import tiny_backbone


@pytest.fixture
def single_thread():
    """One torch thread: small tensors stall badly on two busy cores."""
    with threads(1):
        yield


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under `root` (links not followed): kind, mode, size, mtime and content hash."""
    snap = {".": ("dir", os.lstat(root).st_mode, os.lstat(root).st_mtime_ns)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            rel = path.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                snap[rel] = ("link", os.readlink(path), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                snap[rel] = ("dir", st.st_mode, st.st_mtime_ns)  # mtime: catches files made and deleted
            else:
                snap[rel] = ("file", st.st_mode, st.st_size, st.st_mtime_ns,
                             hashlib.sha256(path.read_bytes()).hexdigest())
    return snap


@pytest.fixture
def learner_folder(tmp_path) -> Path:
    """Three people of real faces (JPEG and PNG, nested, unicode) plus the usual junk."""
    root = tmp_path / "my photos"
    people = {"alice": [(1, 1), (1, 3), (1, 7), (1, 8)], "bob": [(3, 1), (3, 2), (3, 3), (3, 4)],
              "Zoë": [(5, 1), (5, 2), (5, 3), (5, 4)]}
    for person, picks in people.items():
        (root / person / "old").mkdir(parents=True)
        for i, pick in enumerate(picks):
            target = root / person / ("old" if i == 3 else "") / f"photo {i + 1}.{'jpg' if i % 2 else 'png'}"
            orl_face(*pick).save(target)
    two_faces().save(root / "alice" / "group.png")
    noise_image(1, (92, 112)).save(root / "bob" / "no face.png")
    (root / "bob" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "bob" / "empty.jpg").write_bytes(b"")
    (root / "bob" / "saved.jpg").write_bytes(HTML)
    (root / "Zoë" / "notes.txt").write_text("holiday 2019")
    os.symlink(".", root / "Zoë" / "loop")
    (root / "README.md").write_text("my photos")
    return root


def test_pipeline_never_writes_the_learners_folder(learner_folder, tmp_path, monkeypatch, single_thread):
    cache = tmp_path / "elsewhere" / "cache"
    monkeypatch.setenv("FACE_COURSE_CACHE", str(cache))
    monkeypatch.chdir(learner_folder)         # even run from inside it, nothing lands there
    before = snapshot(learner_folder)

    faces = load_folder(learner_folder, crop_faces=True, verbose=False)
    # people in natural order, case ignored (data.natural_key), as every folder reader numbers them
    assert faces.names == ["alice", "bob", "Zoë"] and len(faces.report.skipped) >= 6
    backbone = tiny_backbone()
    feats = extract_features(backbone, faces.images, batch_size=4, progress=False, verbose=False)
    again = extract_features(backbone, faces.images, batch_size=4, progress=False, verbose=False)
    assert torch.equal(feats, again)
    assert list((cache / "features").glob("*.pt")), "the feature cache went somewhere else"
    split = split_per_person(faces.labels, val=0.0, test=0.25, seed=0)
    y = torch.as_tensor(faces.labels)
    model, hist = train_head_on_features(feats[split.train], y[split.train], feats[split.test],
                                         y[split.test], epochs=3, progress=False)
    assert hist.epochs == 3 and not hist.diverged
    # end to end through the images as well (augmentation reads the PIL images only)
    e2e = build_model(faces.num_people, backbone=tiny_backbone(), freeze_backbone=False)
    data = ImageDataset(faces.images, faces.labels, e2e.backbone.transform(train=True))
    assert fit(e2e, data, epochs=1, batch_size=4, progress=False, device="cpu").epochs == 1

    after = snapshot(learner_folder)
    assert after.keys() == before.keys(), f"new: {after.keys() - before.keys()}, gone: {before.keys() - after.keys()}"
    changed = [k for k in before if before[k] != after[k]]
    assert not changed, changed


def test_snapshot_would_notice_a_write(learner_folder):
    """The comparison above is sensitive: a file made and removed again changes a folder's mtime."""
    before = snapshot(learner_folder)
    tmp = learner_folder / "alice" / ".tmp"
    tmp.write_bytes(b"x")
    tmp.unlink()
    after = snapshot(learner_folder)
    assert before.keys() == after.keys() and before["alice"] != after["alice"]


def test_default_cache_is_outside_data(monkeypatch):
    monkeypatch.delenv("FACE_COURSE_CACHE", raising=False)
    where = cache_dir().resolve()
    assert not where.is_relative_to((REPO_ROOT / "data").resolve()), where
