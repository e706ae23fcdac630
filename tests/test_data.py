"""Face data: the packaged ORL faces, the known/stranger and per-person splits, a learner's folder."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from helpers.data.folders import FaceDataError, load_faces, load_folder

from helpers.data.splits import split_known_strangers, split_per_person


# ------------------------------------------------------------------ ORL

def test_load_orl_400_photos_40_people_numeric_order(orl):
    assert len(orl) == 400 and orl.num_people == 40
    assert orl.names == [f"s{i}" for i in range(1, 41)]
    assert list(orl.counts().values()) == [10] * 40
    assert sorted(set(orl.labels.tolist())) == list(range(40))


def test_orl_labels_match_folders(orl):
    """Label i holds only photos from folder names[i] (alphabetical sorting would mix s10 / s2)."""
    for path, label in zip(orl.paths, orl.labels):
        assert Path(path).parent.name == orl.names[label]


def test_orl_has_no_stray_target_jpg(orl):
    assert not any(p.endswith("target.jpg") for p in orl.paths)
    assert all(p.endswith(".pgm") for p in orl.paths)
    assert any("target.jpg" in p for p, _ in orl.report.skipped)  # and the report says so


def test_orl_images_rgb_92x112(orl):
    assert {im.mode for im in orl.images} == {"RGB"}
    assert {im.size for im in orl.images} == {(92, 112)}
    a = np.asarray(orl.images[0])
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()  # grey in 3 channels


def test_split_known_strangers_sizes_and_disjoint(orl):
    known, strangers = split_known_strangers(orl, n_known=9, seed=0)
    assert (len(known), known.num_people) == (90, 9)
    assert (len(strangers), strangers.num_people) == (310, 31)
    assert set(known.names).isdisjoint(strangers.names)
    assert set(known.names) | set(strangers.names) == set(orl.names)
    assert set(known.paths).isdisjoint(strangers.paths)
    # relabelled 0..k-1, names still match the photos
    assert sorted(set(known.labels.tolist())) == list(range(9))
    assert sorted(set(strangers.labels.tolist())) == list(range(31))
    for faces in (known, strangers):
        for path, label in zip(faces.paths, faces.labels):
            assert Path(path).parent.name == faces.names[label]


def test_split_known_strangers_deterministic_by_seed(orl):
    a, _ = split_known_strangers(orl, 9, seed=0)
    b, _ = split_known_strangers(orl, 9, seed=0)
    c, _ = split_known_strangers(orl, 9, seed=1)
    assert a.names == b.names and a.paths == b.paths and (a.labels == b.labels).all()
    assert a.names != c.names


def test_split_known_strangers_bad_counts(orl):
    for n in (1, 41):
        with pytest.raises(FaceDataError, match="n_known"):
            split_known_strangers(orl, n_known=n)
    known, strangers = split_known_strangers(orl, n_known=40)
    assert len(known) == 400 and strangers is None


# ------------------------------------------------------------------ per-person split

def _check_split(labels, split):
    parts = [set(split.train.tolist()), set(split.val.tolist()), set(split.test.tolist())]
    assert parts[0].isdisjoint(parts[1]) and parts[0].isdisjoint(parts[2]) and parts[1].isdisjoint(parts[2])
    for part in (split.train, split.test):
        assert set(labels[part].tolist()) == set(labels.tolist())  # everyone in train and test


def test_split_per_person_orl_sizes(orl_known):
    known, _ = orl_known
    split = split_per_person(known.labels, seed=0)
    assert split.sizes() == {"train": 45, "val": 18, "test": 27}
    _check_split(known.labels, split)
    assert len(set(split.train) | set(split.val) | set(split.test)) == 90  # covers every photo
    for person in range(9):
        assert (known.labels[split.train] == person).sum() == 5
        assert (known.labels[split.test] == person).sum() == 3


def test_split_per_person_deterministic(orl_known):
    labels = orl_known[0].labels
    a, b = split_per_person(labels, seed=3), split_per_person(labels, seed=3)
    assert all((x == y).all() for x, y in zip((a.train, a.val, a.test), (b.train, b.val, b.test)))
    c = split_per_person(labels, seed=4)
    assert not (a.test == c.test).all()


@pytest.mark.parametrize("shots", [1, 2, 5])
def test_split_per_person_shots(orl_known, shots):
    labels = orl_known[0].labels
    split = split_per_person(labels, shots=shots, seed=0)
    assert np.bincount(labels[split.train], minlength=9).tolist() == [shots] * 9
    assert split.sizes()["test"] == 27 and split.sizes()["val"] == 18  # test/val do not move
    _check_split(labels, split)


def test_split_per_person_errors():
    with pytest.raises(FaceDataError, match="at least 2"):
        split_per_person([0, 0, 0, 1, 2, 2])  # person 1 has one photo
    with pytest.raises(FaceDataError, match="shots=6"):
        split_per_person(np.repeat(np.arange(3), 10), shots=6)  # 5 remain after val + test


def test_split_per_person_two_photos_each():
    labels = np.repeat(np.arange(4), 2)
    split = split_per_person(labels, seed=0)
    assert split.sizes() == {"train": 4, "val": 0, "test": 4}
    _check_split(labels, split)


# ------------------------------------------------------------------ a learner's folder

@pytest.fixture
def learner_folder(tmp_path, orl):
    """alice: 3 JPEGs; bob: 2 PNGs + a truncated JPEG + notes.txt; carol: empty folder."""
    root = tmp_path / "my_faces"
    (root / "alice").mkdir(parents=True)
    (root / "bob").mkdir()
    (root / "carol").mkdir()
    for i in range(3):
        orl.images[i].save(root / "alice" / f"alice_{i}.jpg", quality=90)
    for i in range(2):
        orl.images[10 + i].save(root / "bob" / f"bob_{i}.png")
    orl.images[12].save(root / "bob" / "broken.jpg", quality=90)
    data = (root / "bob" / "broken.jpg").read_bytes()
    (root / "bob" / "broken.jpg").write_bytes(data[: len(data) // 2])
    (root / "bob" / "notes.txt").write_text("bob's photos from the trip\n")
    return root


def _listing(root: Path) -> list[tuple[str, int, float]]:
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime) for p in root.rglob("*"))


def test_load_folder_keeps_good_reports_rest(learner_folder):
    before = _listing(learner_folder)
    faces = load_folder(learner_folder)
    assert faces.names == ["alice", "bob"]
    assert faces.labels.tolist() == [0, 0, 0, 1, 1]
    assert [Path(p).name for p in faces.paths] == ["alice_0.jpg", "alice_1.jpg", "alice_2.jpg",
                                                  "bob_0.png", "bob_1.png"]
    assert {im.mode for im in faces.images} == {"RGB"}
    skipped = {Path(p).name: reason for p, reason in faces.report.skipped}
    assert set(skipped) == {"broken.jpg", "notes.txt"}
    assert "truncated" in skipped["broken.jpg"] or "corrupt" in skipped["broken.jpg"]
    assert ".txt" in skipped["notes.txt"]
    assert any("carol" in n and "0 usable" in n for n in faces.report.notes)
    text = str(faces.report)
    assert "broken.jpg" in text and "notes.txt" in text and "carol" in text
    assert _listing(learner_folder) == before  # nothing written into the learner's folder


def test_load_faces_routes_a_path_to_load_folder(learner_folder):
    faces = load_faces(str(learner_folder))
    assert faces.names == ["alice", "bob"] and len(faces) == 5


def test_load_folder_fewer_than_two_people(learner_folder):
    for name in os.listdir(learner_folder / "bob"):
        (learner_folder / "bob" / name).unlink()
    with pytest.raises(FaceDataError) as err:
        load_folder(learner_folder)
    msg = str(err.value)
    assert "at least 2 people" in msg and "alice" in msg   # what is missing, who was found
    assert str(learner_folder) in msg                      # and where


def test_every_folder_reader_numbers_people_in_the_same_order(tmp_path):
    """load_folder (notebooks, recogniser) and scan_people (the distributed trainer) used to sort
    people as text and naturally: s10 came before s2 in one and after it in the other."""
    from PIL import Image

    from helpers.data.streaming import scan_people

    for p, name in enumerate(("s10", "s2", "Bob", "alice")):
        (tmp_path / name).mkdir()
        for k in range(2):   # every photo different (the loader leaves out photos filed twice)
            Image.new("RGB", (40, 48), (10 * k + 30, 40 * p + 20, 120)).save(tmp_path / name / f"{k}.png")
    loaded = load_folder(tmp_path).names
    assert loaded == ["alice", "Bob", "s2", "s10"]
    assert scan_people(tmp_path).names == loaded
