"""Multi-layer features, mirror TTA and within-class whitening (helpers.features.representations), and the
recogniser built on them: the module and the cached-feature path agree, it saves, loads and exports.

Uses the packaged EfficientNet-Lite0 at 64 px on a few ORL people, 1-2 augmented views.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.recognize import recognizer as R
from helpers.recognize import pipeline as P
from helpers.features import extract as FE
from helpers.features import taps as TA
from helpers.features import representations as RP
from helpers.data.degrade import degrade
from tests.old_payloads import as_version
from tests.tiny_backbone import tiny_backbone

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 64


def test_whitening_shrinks_within_person_variation():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 20)) * 3
    nuisance = np.zeros(20)
    nuisance[0] = 1.0  # photos of one person vary along one direction only
    y = np.repeat(np.arange(5), 30)
    x = centres[y] + rng.normal(size=(150, 1)) * 10 * nuisance + rng.normal(size=(150, 20)) * 0.1
    w = RP.fit_whitening(x, y, lam=0.01)

    def ratio(z):  # within-person spread along the nuisance direction / spread between people
        return np.mean([z[y == c].std(0)[0] for c in range(5)]) / z[:, 1:].std()

    assert ratio(x) > 2 and ratio(w.apply(x)) < 0.5
    again = RP.Whitening.from_state(w.state())  # what a saved recogniser stores (float32)
    assert np.allclose(again.apply(x), w.apply(x), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("bad", [dict(lam=0.0), dict(lam=-1.0)])
def test_whitening_refuses_bad_settings(bad):
    with pytest.raises(ValueError, match="lam"):
        RP.fit_whitening(np.random.default_rng(0).normal(size=(6, 4)), [0, 0, 0, 1, 1, 1], **bad)
    with pytest.raises(ValueError, match="differ within a person"):
        RP.fit_whitening(np.ones((4, 3)), [0, 0, 1, 1])


def test_module_and_cached_path_agree_on_a_tiny_backbone():
    bb = tiny_backbone()
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.normal(size=(6, 3, 32, 32)), dtype=torch.float32)
    plain = RP.Representation(bb, layers=(), tta=True)
    with torch.no_grad():
        f = plain(x).numpy()
        parts = {RP.FINAL: bb(x).numpy()}
        mirror = {RP.FINAL: bb(torch.flip(x, dims=[3])).numpy()}
    assert np.allclose(plain.unwhitened(parts, mirror), f, atol=1e-5)
    w = RP.fit_whitening(np.vstack([f, f + rng.normal(size=f.shape) * 0.1]), np.tile([0, 0, 0, 1, 1, 1], 2))
    white = RP.Representation(bb, layers=(), tta=True, whitening=w)
    with torch.no_grad():
        assert np.allclose(white(x).numpy(), white.finish(white.unwhitened(parts, mirror)), atol=1e-4)
    with pytest.raises(ValueError, match="mirror"):
        white.unwhitened(parts)


@pytest.fixture(scope="module")
def four(orl):
    return orl.subset(np.flatnonzero(orl.labels < 4), relabel=True)


@pytest.fixture(scope="module")
def whitened(four, effnet):
    idx = np.flatnonzero(np.isin(np.arange(len(four)) % 10, [0, 1, 2]))  # 3 photos per person
    cfg = P.RecognizerConfig(P.WHITEN, SIZE, views=2, threads=1)
    feats = P.method_features(effnet, [four.images[i] for i in idx], cfg)
    return P.fit_recognizer(effnet, feats, four.labels[idx], four.names, cfg,
                            train_images=[four.images[i] for i in idx])


def test_whitened_recogniser_embeds_photos_as_enrolment_did(whitened, four, effnet):
    rec = whitened
    assert rec.representation is not None and rec.embedding is None
    assert rec.gallery.shape == (4, 1280 + 112 * 16)  # final + layer3 over a 4 x 4 grid, EfficientNet-Lite0
    photos = [four.images[i] for i in (3, 14, 25, 36)]
    direct = rec.embed(photos)  # PIL -> preprocessing -> Representation.forward (what `recognize` runs)
    cached = P.embed_features(rec, P.method_features(effnet, photos, P.RecognizerConfig(P.WHITEN, SIZE)))
    assert np.abs(direct - cached).max() < 1e-4
    assert [m.closest for m in rec.recognize(photos)] == ["s1", "s2", "s3", "s4"]
    assert "mirror TTA" in rec.describe() and "whitening" in rec.describe()


@pytest.mark.slow
def test_whitened_recogniser_saves_loads_and_exports(whitened, four, tmp_path):
    from helpers.recognize import export as X

    path = whitened.save(tmp_path / "m.pt")
    obj = torch.load(path, weights_only=True)  # plain tensors and types only
    rep = obj["embedder"]["representation"]
    assert obj["version"] == R.VERSION and obj["embedder"]["kind"] == P.WHITEN and rep["layers"] == list(RP.DEFAULT_LAYERS)
    assert rep["tta"] is True and rep["whitening"]["basis"].ndim == 2
    again = R.load_recognizer(path)
    photos = four.images[5:8]
    assert np.abs(again.embed(photos) - whitened.embed(photos)).max() < 1e-4
    ts, onnx = X.export_torchscript(again, tmp_path / "m.ts"), X.export_onnx(again, tmp_path / "m.onnx")
    diffs = X.check_exports(again, photos, ts, onnx, n_threads=1)
    assert diffs["torchscript_max_abs_diff"] < 1e-4 and diffs["onnx_max_abs_diff"] < 1e-3


def test_a_file_without_representation_settings_still_loads(whitened, tmp_path):
    """Version-1 files (no 'representation' key) are recognisers on raw features or a head."""
    rec = R.Recognizer(whitened.backbone, None, SIZE, ["a", "b"], torch.zeros(2, 1280))
    torch.save(as_version(rec.payload(), 1), tmp_path / "v1.pt")
    assert R.load_recognizer(tmp_path / "v1.pt").representation is None


def test_degrade_is_deterministic_and_mild(orl):
    img = orl.images[0]
    a, b = degrade(img, 0, 3), degrade(img, 0, 3)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and a.size == img.size and a.mode == "RGB"
    assert not np.array_equal(np.asarray(degrade(img, 1, 3)), np.asarray(a))
    diff = np.abs(np.asarray(a, float) - np.asarray(img.convert("RGB"), float)).mean()
    assert 1 < diff < 60  # changed, still the same photo


def test_augmented_views_are_deterministic(orl):
    img = orl.images[0]
    assert np.array_equal(np.asarray(RP.augmented_view(img, 2, 5)), np.asarray(RP.augmented_view(img, 2, 5)))
    assert not np.array_equal(np.asarray(RP.augmented_view(img, 2, 5)), np.asarray(RP.augmented_view(img, 3, 5)))


@pytest.mark.parametrize("h, w, g", [(7, 7, 2), (14, 14, 3), (7, 7, 4), (2, 2, 3), (5, 9, 2)])
def test_grid_pool_is_adaptive_average_pooling(h, w, g):
    x = torch.randn(2, 5, h, w)
    assert torch.allclose(TA.grid_pool(x, g), torch.nn.functional.adaptive_avg_pool2d(x, g).flatten(1), atol=1e-6)


def test_grid_taps_are_named_and_checked():
    assert TA.tap_stage("layer3") == ("layer3", 1) and TA.tap_stage("layer3:3x3") == ("layer3", 3)
    for bad in ("layer3:2x3", "layer3:x", "layer3:0x0"):
        with pytest.raises(ValueError, match="GxG"):
            TA.tap_stage(bad)


def test_grid_taps_agree_between_onnx_runtime_and_pytorch(orl, effnet):
    photos = orl.images[:3]
    layers = ("layer3", "layer3:3x3")
    a = FE.compute(effnet, photos, layers, SIZE)
    b = FE.compute(effnet, photos, layers, SIZE, engine="torch")
    assert a["layer3:3x3"].shape == (3, 112 * 9) and set(a) == {RP.FINAL, *layers}
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4), k
    # the grid's cells average back to the global average (equal cells: 64 px -> layer3 is 4 x 4 -> not equal
    # for 3 x 3, so compare a 2 x 2 grid)
    two = FE.compute(effnet, photos, ("layer3", "layer3:2x2"), SIZE, engine="torch")
    assert torch.allclose(two["layer3:2x2"].view(3, 112, 4).mean(2), two["layer3"], atol=1e-5)
    empty = FE.compute(effnet, [], layers, SIZE)
    assert empty["layer3:3x3"].shape == (0, 112 * 9)


def test_the_whitened_recogniser_takes_other_layers(four, effnet):
    """`layers` reaches the representation: whole-face averages of layer3 and layer2 instead of the grid."""
    idx = np.flatnonzero(np.isin(np.arange(len(four)) % 10, [0, 1]))
    photos = [four.images[i] for i in idx]
    layers = ("layer3", "layer2")
    cfg = P.RecognizerConfig(P.WHITEN, SIZE, views=1, threads=1, layers=layers)
    feats = P.method_features(effnet, photos, cfg)
    rec = P.fit_recognizer(effnet, feats, four.labels[idx], four.names, cfg, train_images=photos)
    assert rec.representation.layers == layers and rec.gallery.shape == (4, 1280 + 112 + 40)
    assert np.abs(rec.embed(photos[:2]) - P.embed_features(rec, feats[:2])).max() < 1e-4
