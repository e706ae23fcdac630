"""Caches and saved files survive faults: an interrupt mid-write never leaves a half-written file.

(tests/test_features.py covers damaged cache files being detected and rebuilt.)
"""
from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from helpers.features.extract import extract_features
from helpers.io import atomic_save
from tiny_backbone import tiny_backbone


def _images(n: int = 6) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(n)]


def _interrupting_save(monkeypatch):
    """torch.save that writes half a file and then gets Ctrl-C."""
    real = torch.save

    def save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", save)
    return real


def test_interrupt_while_caching_features_leaves_nothing_half_written(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("FACE_COURSE_CACHE", str(cache))
    images, backbone = _images(), tiny_backbone()
    with monkeypatch.context() as m:
        _interrupting_save(m)
        with pytest.raises(KeyboardInterrupt):
            extract_features(backbone, images, progress=False)
    assert list((cache / "features").iterdir()) == []          # neither a cache file nor a temp file
    feats = extract_features(backbone, images, progress=False)  # the rerun computes and caches
    assert "computed" in capsys.readouterr().out
    again = extract_features(backbone, images, progress=False)
    assert "read from cache" in capsys.readouterr().out and torch.equal(feats, again)


def test_interrupt_while_overwriting_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "model.pt"
    atomic_save({"w": torch.arange(4)}, target)
    with monkeypatch.context() as m:
        _interrupting_save(m)
        with pytest.raises(KeyboardInterrupt):
            atomic_save({"w": torch.zeros(4)}, target)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.arange(4))


# ------------------------------------------------------------------ saved recognisers (helpers/recognize/recognizer.py)

@pytest.fixture(scope="module")
def saved_recognizer(tmp_path_factory):
    """A small recogniser (EfficientNet-Lite0 architecture, no download) saved to a file."""
    recognizer = pytest.importorskip("helpers.recognize.recognizer")
    from helpers.models.backbones import load_backbone

    torch.manual_seed(0)
    backbone = load_backbone("efficientnet_lite0", pretrained=False, verbose=False)
    gallery = torch.nn.functional.normalize(torch.randn(2, backbone.feature_dim), dim=1)
    rec = recognizer.Recognizer(backbone, None, 64, ["alice", "bob"], gallery, threshold=0.4)
    path = rec.save(tmp_path_factory.mktemp("models") / "recognizer.pt")
    return recognizer, path


def test_interrupted_recognizer_save_keeps_the_previous_file(saved_recognizer, tmp_path, monkeypatch):
    recognizer, path = saved_recognizer
    target = tmp_path / "recognizer.pt"
    target.write_bytes(path.read_bytes())
    rec = recognizer.Recognizer.load(target)
    rec.threshold = 0.9
    with monkeypatch.context() as m:
        _interrupting_save(m)
        with pytest.raises(KeyboardInterrupt):
            rec.save(target)
    assert [p.name for p in tmp_path.iterdir()] == ["recognizer.pt"]   # no temp file left
    assert recognizer.Recognizer.load(target).threshold == pytest.approx(0.4)  # the old file, whole


def test_truncated_recognizer_file_gets_a_clear_error(saved_recognizer, tmp_path):
    recognizer, path = saved_recognizer
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(recognizer.RecognizerFileError, match="truncated or corrupted"):
        recognizer.Recognizer.load(cut)


def test_recognizer_for_other_people_or_backbone_gets_a_clear_error(saved_recognizer):
    recognizer, path = saved_recognizer
    with pytest.raises(recognizer.RecognizerFileError, match="enrolled for other people"):
        recognizer.Recognizer.load(path, expect_names=["alice", "carol"])
    with pytest.raises(recognizer.RecognizerFileError, match="but resnet18 was expected"):
        recognizer.Recognizer.load(path, expect_backbone="resnet18")
    assert recognizer.Recognizer.load(path, expect_names=["alice", "bob"]).names == ["alice", "bob"]


# ------------------------------------------------------------------ the end-to-end trainer (helpers/train/trainer.py)

from test_distributed import config, max_difference, people, run, weights  # noqa: E402,F401 - shared fixture

from helpers.train.distributed import DistContext, explain_failure, rng_state  # noqa: E402
from helpers.data.streaming import PhotoStream, scan_people  # noqa: E402
from helpers.train.trainer import TrainError  # noqa: E402


def _with_bad_photos(src, dst, bad: int):
    import shutil

    shutil.copytree(src, dst)
    paths = []
    for j in range(bad):
        path = dst / f"person{j % 6}" / f"bad{j}.jpg"
        path.write_bytes(b"" if j % 2 == 0 else b"\xff\xd8 not a jpeg")
        paths.append(path)
    return paths


def test_unreadable_photos_are_listed_and_skipped_before_training(people, tmp_path, capsys):
    """Two bad files (empty, not an image): each named with its reason, once, before epoch 1;
    the run trains on the 36 good photos with DataLoader workers."""
    bad = _with_bad_photos(people, tmp_path / "data", 2)
    result = run(config(tmp_path / "data", tmp_path / "run", epochs=1, workers=1, verbose=True))
    log = capsys.readouterr().out
    assert "skipping 2 unreadable photo(s) (at most --max-bad-photos 10)" in log
    assert f"{bad[0]}: empty file (0 bytes)" in log and f"{bad[1]}: " in log
    assert log.index("skipping") < log.index("epoch 1/1") and "36 photos of 6 people" in log
    assert len(result.history["step_loss"]) == 3


def test_more_bad_photos_than_the_cap_stop_the_run(people, tmp_path):
    bad = _with_bad_photos(people, tmp_path / "data", 3)
    with pytest.raises(TrainError, match=r"3 unreadable photo\(s\), more than --max-bad-photos 2") as e:
        run(config(tmp_path / "data", tmp_path / "run", epochs=1, max_bad_photos=2))
    assert all(str(p) in str(e.value) for p in bad) and not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_worker_error_keeps_the_path_and_the_reason(people, tmp_path):
    """A photo that breaks after the check (mid-run): the error from the DataLoader worker says
    which file and why, not only "Caught FaceDataError in DataLoader worker process 0"."""
    from torch.utils.data import DataLoader

    bad = _with_bad_photos(people, tmp_path / "data", 1)[0]
    index = scan_people(tmp_path / "data")
    stream = PhotoStream(index.paths, index.labels, lambda img: torch.zeros(3, 4, 4))
    with pytest.raises(Exception) as e:
        list(DataLoader(stream, batch_size=4, num_workers=1))
    assert str(e.value).startswith("Caught FaceDataError in DataLoader worker process 0")
    line = explain_failure(DistContext(), e.value)
    assert line.startswith(f"[rank 0/1] failed: FaceDataError: {bad}: empty file (0 bytes)"), line
    assert "Caught" not in line and "Traceback" not in line


def test_checkpoints_are_fsynced_and_keep_the_last_good_copy(people, tmp_path, monkeypatch):
    """fsync before every rename; after epoch 2 the last good copy holds epoch 1; a damaged
    checkpoint.pt is passed over for it, and the resumed run ends as the uninterrupted one."""
    import os

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    full = run(config(people, tmp_path / "full"))
    assert len(synced) >= 3 * 2  # every epoch: the checkpoint and history.json (file and folder)
    ckpt, last_good = tmp_path / "full" / "checkpoint.pt", tmp_path / "full" / "checkpoint.last-good.pt"
    assert torch.load(ckpt, weights_only=True)["epochs_done"] == 3
    assert torch.load(last_good, weights_only=True)["epochs_done"] == 2
    monkeypatch.setenv("FACE_COURSE_FAULT", "rank=0,epoch=2,step=0,kind=raise")
    with pytest.raises(RuntimeError, match="injected fault"):
        run(config(people, tmp_path / "cut"))
    monkeypatch.delenv("FACE_COURSE_FAULT")
    cut = tmp_path / "cut" / "checkpoint.pt"
    cut.write_bytes(cut.read_bytes()[:1000])   # a crash that damaged the newest file
    resumed = run(config(people, tmp_path / "cut", resume=True))
    assert resumed.resumed_at_epoch == 1       # from the last good copy (epoch 1)
    assert max_difference(weights(tmp_path / "full"), weights(tmp_path / "cut")) == 0.0
    assert resumed.history["step_loss"] == full.history["step_loss"]


def test_rng_state_keeps_only_this_process_gpu(monkeypatch):
    """1 x 8 GPUs resumed as 2 x 4 needs one CUDA state per rank, not every visible GPU's."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.arange(3, dtype=torch.uint8))

    def every_gpu():
        raise AssertionError("get_rng_state_all saves the state of every visible GPU")

    monkeypatch.setattr(torch.cuda, "get_rng_state_all", every_gpu)
    state = rng_state()
    assert torch.equal(state["cuda"], torch.arange(3, dtype=torch.uint8))
