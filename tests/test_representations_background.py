"""The whitening's background people (helpers.data.background) and phone views: the rule that keeps
enrolled or evaluated people out of the background, the whitening with background samples, the
recogniser fitted with one (saved, loaded, old files still load), and the benchmark's guards.

Uses the packaged EfficientNet-Lite0 at 64 px on a few ORL people, 1 augmented and 1 phone view.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.data import background as B
from helpers.recognize import recognizer as R
from helpers.recognize import pipeline as P
from helpers.features import representations as RP

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 64


def _jpeg(img, quality=60):
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def test_background_samples_teach_the_whitening_a_variation_the_enrolment_lacks():
    rng = np.random.default_rng(0)
    d = 20
    nuisance = np.zeros(d)
    nuisance[0] = 1.0
    # enrolment: 4 people, their copies vary a little in every direction but not along `nuisance`
    y = np.repeat(np.arange(4), 5)
    x = rng.normal(size=(4, d))[y] * 3 + rng.normal(size=(20, d)) * 0.1
    # background: 6 other people whose real photos vary strongly along `nuisance`
    by = np.repeat(np.arange(6), 10)  # labels 0..5 overlap the enrolled ones' numbers: still other classes
    bx = rng.normal(size=(6, d))[by] * 3 + rng.normal(size=(60, 1)) * 5 * nuisance + rng.normal(size=(60, d)) * 0.1
    plain, with_bg = RP.fit_whitening(x, y, 1e-3), RP.fit_whitening(x, y, 1e-3, (bx, by))
    step = np.vstack([np.zeros(d), nuisance])  # a query moved along the nuisance direction

    def moved(w):
        z = w.apply(step)
        return np.linalg.norm(z[1] - z[0]) / np.linalg.norm(w.apply(x) - w.apply(x).mean(0), axis=1).mean()

    assert moved(with_bg) < 0.2 * moved(plain)
    assert np.allclose(RP.fit_whitening(x, y, 1e-3, (bx[:0], by[:0])).apply(x), plain.apply(x))
    with pytest.raises(ValueError, match="length"):
        RP.fit_whitening(x, y, 1e-3, (bx, by[:-1]))


def test_phone_views_are_deterministic_and_mild(orl):
    img = orl.images[0]
    a = RP.phone_view(img, 1, 7)
    assert np.array_equal(np.asarray(a), np.asarray(RP.phone_view(img, 1, 7))) and a.size == img.size
    assert not np.array_equal(np.asarray(a), np.asarray(RP.phone_view(img, 2, 7)))
    diff = np.abs(np.asarray(a, float) - np.asarray(img.convert("RGB"), float)).mean()
    assert 0.5 < diff < 20  # blurred and re-compressed, not moved


def test_background_drops_anyone_enrolled_or_evaluated_even_as_a_jpeg_copy(orl):
    bg = B.background_faces()
    assert bg.names == [f"s{i}" for i in range(1, 11)] and len(bg) == 100   # ORL s1-s10, as shipped
    s2_photo = orl.images[int(np.flatnonzero(orl.labels == 1)[3])]
    s5_copy = _jpeg(orl.images[int(np.flatnonzero(orl.labels == 4)[0])])   # other pixels, same photo
    outsider = orl.images[int(np.flatnonzero(orl.labels == 20)[0])]        # s21: not in the background
    assert B.people_seen(bg, [s2_photo], [s5_copy, outsider]) == {1, 4}
    left = B.background_faces([s2_photo], [s5_copy, outsider])
    assert left.num_people == 8 and not {"s2", "s5"} & set(left.names) and len(left) == 80
    assert B.background_faces([outsider]).num_people == 10
    everyone = [orl.images[int(np.flatnonzero(orl.labels == p)[0])] for p in range(9)]
    assert B.background_faces(everyone) is None  # one person left: no background
    assert B.drop_people_in(None, everyone) is None


def test_the_product_background_is_never_a_test_person():
    from benchmarks import accuracy as A

    assert set(B.BACKGROUND_PEOPLE) == set(A.DEV_PEOPLE.tolist())
    assert not set(B.BACKGROUND_PEOPLE) & set(A.TEST_PEOPLE.tolist())


@pytest.fixture(scope="module")
def bg_rec(orl, effnet):
    """s11, s12, s13 enrolled (3 photos each) with background ORL s1-s4 of which s2 is 'evaluated'."""
    idx = np.concatenate([np.flatnonzero(orl.labels == p)[:3] for p in (10, 11, 12)])
    photos = [orl.images[i] for i in idx]
    background = orl.subset(np.flatnonzero(orl.labels < 4), relabel=True)
    evaluated = [orl.images[int(np.flatnonzero(orl.labels == 1)[9])]]
    cfg = P.RecognizerConfig(P.WHITEN, SIZE, views=1, phone_views=1, threads=1)
    feats = P.method_features(effnet, photos, cfg)
    rec = P.fit_recognizer(effnet, feats, orl.labels[idx] - 10, ["s11", "s12", "s13"], cfg,
                           train_images=photos, background=background, exclude_images=evaluated)
    return rec, photos, feats


def test_recogniser_with_background_drops_evaluated_people_and_says_so(bg_rec, orl, effnet):
    rec, photos, feats = bg_rec
    assert rec.representation.background == {"people": 3, "photos": 30}   # s1, s3, s4 (s2 evaluated)
    assert "background: 3 other people" in rec.describe()
    assert np.abs(rec.embed(photos[:3]) - P.embed_features(rec, feats[:3])).max() < 1e-4
    assert [m.closest for m in rec.recognize([orl.images[int(np.flatnonzero(orl.labels == p)[5])]
                                              for p in (10, 11, 12)])] == ["s11", "s12", "s13"]


def test_a_background_with_an_enrolled_person_loses_that_person(orl, effnet):
    idx = np.concatenate([np.flatnonzero(orl.labels == p)[:2] for p in (0, 1)])  # s1, s2 enrolled
    photos = [orl.images[i] for i in idx]
    background = orl.subset(np.flatnonzero(orl.labels < 3), relabel=True)     # s1, s2, s3
    rep = RP.fit_representation(effnet, photos, orl.labels[idx], SIZE, n_views=1, background=background)
    assert rep.background is None  # only s3 would be left: no background, the stage-1 settings
    with pytest.raises(ValueError, match="background must be"):
        P.fit_recognizer(effnet, np.zeros((4, 1432)), orl.labels[idx], ["s1", "s2"], P.RecognizerConfig(P.WHITEN, SIZE),
                         train_images=photos, background="everyone")


def test_saved_recogniser_keeps_its_background_note_and_old_files_load(bg_rec, tmp_path):
    rec = bg_rec[0]
    path = rec.save(tmp_path / "bg.pt")
    again = R.load_recognizer(path)
    assert again.representation.background == rec.representation.background
    assert np.abs(again.embed(bg_rec[1][:2]) - rec.embed(bg_rec[1][:2])).max() < 1e-4
    obj = torch.load(path, weights_only=True)
    obj["embedder"]["representation"].pop("background")  # a file written before backgrounds existed
    torch.save(obj, tmp_path / "old.pt")
    old = R.load_recognizer(tmp_path / "old.pt")
    assert old.representation.background is None and "background" not in old.describe()
    assert np.abs(old.embed(bg_rec[1][:2]) - rec.embed(bg_rec[1][:2])).max() < 1e-4


def test_stand_in_strangers_leave_out_the_background_when_it_is_used(orl):
    faces = orl.subset(np.flatnonzero(orl.labels >= 37), relabel=True)   # s38-s40 as a learner's folder
    assert P.stand_in_strangers(faces).num_people == 37
    without = P.stand_in_strangers(faces, without_background=True)
    assert without.num_people == 27 and not {f"s{i}" for i in range(1, 11)} & set(without.names)
    bg = P.background_for(faces.images, without.images)
    assert bg is None if not P.USE_BACKGROUND else bg.num_people == 10
    assert P.background_for(faces.images, P.stand_in_strangers(faces).images) is None  # all of s1-s10 evaluated


# ------------------------------------------------------------------ the benchmark's guards

def test_benchmark_refuses_a_background_that_overlaps_the_evaluated_people():
    from benchmarks import accuracy as A
    from benchmarks.methods import Ctx, Frozen

    ctx = Ctx(data=None, bank=None, seed=0, background=(0, 1))
    with pytest.raises(AssertionError, match="overlap"):
        A._evaluated(ctx, np.arange(1, 5))
    A._evaluated(ctx, np.arange(2, 5))
    for seed in A.DEV_SEEDS:  # stage 2: the halves are disjoint and cover the development people
        a, b = A.halves(A.DEV_PEOPLE, seed)
        assert not set(a) & set(b) and sorted([*a, *b]) == A.DEV_PEOPLE.tolist()

    class Data:
        labels = np.repeat(np.arange(4), 10)

    method = Frozen("bg", "bg", whiten=True, background=True)
    with pytest.raises(AssertionError, match="enrolled"):
        method.fit(Ctx(Data(), None, 0, background=(1,)), np.array([10, 20]), np.array([0, 1]))


def test_stage_two_lists_the_candidates_cheapest_first():
    from benchmarks import accuracy as A
    from benchmarks.methods import Frozen

    w = Frozen("whiten[x]", "w", ("layer3",), True, True, 0.001, 8)
    cands = A.crossfit_candidates(w)
    assert not cands[0].background and all(c.background for c in cands[1:])
    assert [c.cost for c in cands] == sorted(c.cost for c in cands)
    assert {c.lam for c in cands[1:]} == set(A.CROSSFIT_LAMBDAS) and len({c.key for c in cands}) == len(cands)
    assert all(A.family(c.key) == P.WHITEN for c in cands)
