"""The recogniser: enrol, answer name or unknown, one-file save/load (atomic, clear errors), export.

Uses the packaged EfficientNet-Lite0 at 64 px on three ORL people: features take about a second.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from helpers.evaluate import metrics as ev
from helpers.recognize import export as X
from helpers import io as io_module
from helpers.recognize import recognizer as R
from helpers.recognize import pipeline as P
from helpers.course import demo, recognizer_views
from tests.old_payloads import as_version

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 64


@pytest.fixture(scope="module")
def three(orl):
    """ORL people s1..s3 (30 photos) and one photo of each of s4, s5 (strangers)."""
    faces = orl.subset(np.flatnonzero(orl.labels < 3), relabel=True)
    strangers = [orl.images[i] for i in (np.flatnonzero(orl.labels == 3)[0], np.flatnonzero(orl.labels == 4)[0])]
    return faces, strangers


@pytest.fixture(scope="module")
def trained(three, effnet):
    faces, _ = three
    return P.train_recognizer(faces, effnet, P.RecognizerConfig("head", SIZE, epochs=20, threads=1), strangers=None)


@pytest.fixture()
def rec(trained):
    return trained[0]


def _answers(rec, images):
    """Names and scores (scores to 1e-4: a reloaded model may pick other conv kernels)."""
    ms = rec.recognize(images)
    return [(m.name, m.closest) for m in ms], pytest.approx([m.score for m in ms], abs=1e-4)


# ---------------------------------------------------------------------- answers


def test_known_people_are_named_and_a_threshold_is_set(rec, three):
    faces, _ = three
    assert rec.names == ["s1", "s2", "s3"] and rec.gallery.shape == (3, 512)
    assert 0 < rec.threshold < 1
    matches = rec.recognize(faces.images)
    named = np.array([m.name for m in matches])
    truth = np.array(faces.names)[faces.labels]
    assert (named == truth).mean() >= 0.9          # the enrolled photos themselves
    assert all(m.closest in rec.names for m in matches)


def test_low_scores_are_answered_unknown(rec, three):
    _, strangers = three
    rec2 = R.Recognizer(rec.backbone, rec.embedding, rec.size, rec.names, rec.gallery, threshold=1.01)
    assert all(not m.known and str(m).startswith("unknown (closest: ") for m in rec2.recognize(strangers))
    rec3 = R.Recognizer(rec.backbone, rec.embedding, rec.size, rec.names, rec.gallery, threshold=-1.0)
    assert all(m.known for m in rec3.recognize(strangers))


def test_add_person_without_training(rec, orl):
    rec = R.Recognizer(rec.backbone, rec.embedding, rec.size, rec.names, rec.gallery.clone(), rec.threshold)
    idx = np.flatnonzero(orl.labels == 7)
    rec.add_person("s8", [orl.images[idx[0]], orl.images[idx[1]]])
    assert rec.names[-1] == "s8" and rec.gallery.shape == (4, 512)
    hits = [m.closest for m in rec.recognize([orl.images[i] for i in idx[2:]])]
    assert hits.count("s8") >= 5
    with pytest.raises(ValueError, match="already enrolled"):
        rec.add_person("s8", [orl.images[idx[0]]])


def test_stand_in_strangers_leave_out_the_learners_people(three):
    faces, _ = three                                   # ORL s1..s3, as if they were a learner's folder
    others = P.stand_in_strangers(faces)
    assert others.num_people == 37 and len(others) == 370
    assert not {"s1", "s2", "s3"} & set(others.names)


def test_open_set_report_is_the_evaluation_report_at_the_recognisers_threshold(rec, three):
    faces, strangers = three
    known_emb, s_emb = rec.embed(faces.images[::5]), rec.embed(strangers)
    labels = np.asarray(faces.labels)[::5]
    r = R.open_set_report(rec, known_emb, labels, s_emb)
    assert r == ev.open_set(rec.gallery_np, known_emb, labels, s_emb, rec.threshold)
    assert r.threshold == rec.threshold and r.known_correct + r.known_wrong_name + r.known_rejected == pytest.approx(1)
    assert np.isnan(R.open_set_report(rec, known_emb, labels).strangers_rejected)   # no strangers given


# ---------------------------------------------------------------------- one file


def test_save_load_round_trip_gives_the_same_answers(rec, three, tmp_path):
    faces, strangers = three
    path = rec.save(tmp_path / "model.pt")
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]             # no temporary file left
    assert (path.stat().st_mode & 0o777) == 0o666 & ~_umask()        # usual rights, not the temp file's 0600
    back = R.load_recognizer(path)
    assert back.names == rec.names and back.size == SIZE and back.threshold == pytest.approx(rec.threshold)
    photos = faces.images[:4] + strangers
    (names, scores), (want_names, want_scores) = _answers(back, photos), _answers(rec, photos)
    assert names == want_names and scores.expected == want_scores
    assert np.abs(back.embed(photos) - rec.embed(photos)).max() < 1e-6
    payload = torch.load(path, weights_only=True)                    # plain data only: safe to load
    assert payload["preprocessing"]["size"] == SIZE and payload["backbone"]["name"] == "efficientnet_lite0"


def test_a_file_written_before_the_calibration_record_still_loads(rec, tmp_path):
    payload = rec.payload()
    assert payload["version"] == R.VERSION == 4 and "calibration" in payload
    del payload["calibration"]
    payload = as_version(payload, 2)
    torch.save(payload, tmp_path / "old.pt")
    back = R.load_recognizer(tmp_path / "old.pt")
    assert back.calibration is None and back.threshold == pytest.approx(rec.threshold)
    assert back.describe().endswith(f"threshold {rec.threshold:.2f}")            # no rates to state


@pytest.mark.parametrize("version", [1, 2, 3])
def test_files_of_earlier_formats_still_load(rec, three, tmp_path, version):
    """Before format 4 the head's weights were under "embedding_state" (and a representation under its key)."""
    payload = rec.payload()
    assert payload["embedder"]["kind"] == "head" and "embedding_state" not in payload
    torch.save(as_version(payload, version), tmp_path / "old.pt")
    back = R.load_recognizer(tmp_path / "old.pt")
    assert back.embedding is not None and (back.calibration is None) == (version < 3)
    photos = three[0].images[:3]
    assert np.abs(back.embed(photos) - rec.embed(photos)).max() < 1e-6


def test_match_states_its_margin():
    assert str(R.Match("Sam", "Sam", 0.44, 0.38).explain()) == "Sam (score 0.44, +0.06 over the threshold 0.38)"
    assert R.Match(None, "Sam", 0.30, 0.38).explain() == "unknown (closest: Sam, score 0.30, -0.08 under the threshold 0.38)"


def test_raw_feature_recogniser_round_trip(three, effnet, tmp_path):
    faces, _ = three
    rec, _ = P.train_recognizer(faces, effnet, P.RecognizerConfig("raw", SIZE, threads=1), strangers=None)
    assert rec.embedding is None and rec.gallery.shape == (3, 1280)
    back = R.load_recognizer(rec.save(tmp_path / "raw.pt"))
    assert back.embedding is None
    assert _answers(back, faces.images[:3])[0] == _answers(rec, faces.images[:3])[0]
    assert np.abs(back.embed(faces.images[:3]) - rec.embed(faces.images[:3])).max() < 1e-5


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_interrupted_save_keeps_the_old_file_and_leaves_no_temp(rec, tmp_path, monkeypatch):
    path = rec.save(tmp_path / "model.pt")
    before = path.read_bytes()

    def interrupted(obj, fh, *a, **k):
        fh.write(b"PK\x03\x04 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(io_module.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rec.save(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]
    R.load_recognizer(path)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[: len(b) // 2], "truncated or corrupted"),
    (lambda b: b[:100], "truncated or corrupted"),
    (lambda b: b"", "truncated or corrupted"),
    (lambda b: b"this is not a model" * 20, "not a recogniser file"),
])
def test_damaged_files_get_a_clear_error(rec, tmp_path, damage, message):
    good = rec.save(tmp_path / "model.pt").read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(damage(good))
    with pytest.raises(R.RecognizerFileError, match=message) as e:
        R.load_recognizer(bad)
    assert "bad.pt" in str(e.value) and str(tmp_path) not in str(e.value)   # file name, not a machine path


def test_other_files_get_a_clear_error(tmp_path):
    with pytest.raises(R.RecognizerFileError, match="no such file"):
        R.load_recognizer(tmp_path / "missing.pt")
    with pytest.raises(R.RecognizerFileError, match="is a folder"):
        R.load_recognizer(tmp_path)
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(R.RecognizerFileError, match="not a recogniser saved by this course"):
        R.load_recognizer(tmp_path / "tensor.pt")
    torch.save({"format": R.FORMAT, "version": R.VERSION + 1}, tmp_path / "future.pt")
    with pytest.raises(R.RecognizerFileError, match="newer course version"):
        R.load_recognizer(tmp_path / "future.pt")


def test_mismatched_backbone_or_people_are_refused(rec, tmp_path):
    path = rec.save(tmp_path / "model.pt")
    with pytest.raises(R.RecognizerFileError, match="backbone efficientnet_lite0 .* but resnet18 was expected"):
        R.load_recognizer(path, expect_backbone="resnet18")
    R.load_recognizer(path, expect_backbone="efficientnet_lite0")
    with pytest.raises(R.RecognizerFileError, match=r"other people \(missing \['s9'\]; not expected \['s3'\]\)"):
        R.load_recognizer(path, expect_names=["s1", "s2", "s9"])
    R.load_recognizer(path, expect_names=["s1", "s2", "s3"])


def test_weights_for_another_backbone_are_refused(rec, tmp_path):
    payload = rec.payload()
    payload["backbone"]["name"] = "resnet18"          # EfficientNet weights labelled ResNet-18
    torch.save(payload, tmp_path / "relabelled.pt")
    with pytest.raises(R.RecognizerFileError, match="do not fit a resnet18 backbone"):
        R.load_recognizer(tmp_path / "relabelled.pt")
    payload = rec.payload()
    payload["gallery"] = payload["gallery"][:, :100]
    torch.save(payload, tmp_path / "gallery.pt")
    with pytest.raises(R.RecognizerFileError, match="gallery shape"):
        R.load_recognizer(tmp_path / "gallery.pt")


# ---------------------------------------------------------------------- export


def test_torchscript_and_onnx_give_the_same_embeddings(rec, three, tmp_path):
    faces, strangers = three
    ts = X.export_torchscript(rec, tmp_path / "model.ts")
    onnx = X.export_onnx(rec, tmp_path / "model.onnx")
    check = X.check_exports(rec, faces.images[:3] + strangers, ts, onnx, n_threads=1)
    assert check["images"] == 5
    assert check["torchscript_max_abs_diff"] < 1e-5 and check["onnx_max_abs_diff"] < 1e-4
    assert sorted(os.listdir(tmp_path)) == ["model.onnx", "model.ts"]
    lat = X.measure_latency(rec, ts, onnx, faces.images[0], runs=2, warmup=1, n_threads=1)
    assert set(lat) == {"pytorch_ms", "torchscript_ms", "onnx_ms", "preprocess_ms"}
    assert all(v > 0 for v in lat.values())


def test_show_answers_and_demo_folder(rec, three, tmp_path):
    import matplotlib.pyplot as plt

    faces, strangers = three
    photos = [faces.images[0], strangers[0]]
    fig = recognizer_views.show_answers(photos, rec.recognize(photos), ["s1", None])
    assert len([ax for ax in fig.axes if ax.images]) == 2
    plt.close(fig)
    root = demo.write_demo_folder(faces, [0, 2], tmp_path / "people", per_person=3)
    assert sorted(p.name for p in root.iterdir()) == ["s1", "s3"]
    assert sorted(p.name for p in (root / "s3").iterdir()) == ["1.png", "2.png", "3.png"]


def test_pick_examples_mixes_kinds_of_answers():
    M = R.Match
    matches = [M("a", "a", 0.9, 0.5), M("b", "b", 0.9, 0.5), M(None, "a", 0.2, 0.5), M(None, "b", 0.3, 0.5),
               M("b", "b", 0.8, 0.5), M(None, "a", 0.4, 0.5), M("a", "a", 0.7, 0.5), M("a", "a", 0.6, 0.5)]
    truth = ["a", "b", None, None, "a", "b", None, None]
    wins, mistakes = recognizer_views.pick_examples(matches, truth, n=4)
    assert wins == [0, 2, 1, 3]                     # known and strangers alternately
    assert mistakes == [4, 5, 6]                    # wrong name, called unknown, one stranger named "a"
