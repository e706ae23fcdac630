"""The recogniser's parts (helpers.recognize.embedders): one configuration object, a registry of embedders, and
each embedder's state round trip (what a recogniser file stores gives the same embeddings).

A tiny random backbone and synthetic features: the whole file runs in about a second.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from helpers import cli_args
from helpers.recognize import embedders as E
from helpers.recognize import pipeline as P
from helpers.features import representations as RP
from tests.tiny_backbone import tiny_backbone

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_configuration_holds_the_development_defaults():
    cfg = E.RecognizerConfig()
    assert (cfg.method, cfg.layers, cfg.views, cfg.background) == (E.DEFAULT_METHOD, RP.DEFAULT_LAYERS,
                                                                    RP.DEFAULT_VIEWS, P.USE_BACKGROUND)
    assert cfg.lam is None and cfg.phone_views is None            # the development choices, per background
    other = cfg.replace(method="head", layers=["layer3"], size=64)
    assert other.layers == ("layer3",) and other.method == "head" and cfg.method == E.WHITEN
    assert other.input_size(tiny_backbone()) == 64 and cfg.input_size(tiny_backbone()) == 32
    with pytest.raises(ValueError, match="unknown method 'pca'"):
        E.RecognizerConfig("pca")
    with pytest.raises(AttributeError):
        cfg.method = "raw"                                         # frozen: a setting changes by replace()
    assert [E.RecognizerConfig(m).uses_background() for m in E.METHODS] == [True, False, False]
    assert not cfg.replace(background=False).uses_background()


def test_the_registry_is_the_command_lines_methods():
    assert E.METHODS == tuple(E.EMBEDDERS) == P.METHODS == cli_args.METHOD_CHOICES
    assert all(cls.name == name for name, cls in E.EMBEDDERS.items())
    assert isinstance(E.RecognizerConfig("raw").embedder(tiny_backbone()), E.RawEmbedder)


def _data(dim: int = 8, people: int = 3, per: int = 4):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(people), per)
    feats = rng.normal(size=(people, dim))[labels] + 0.3 * rng.normal(size=(len(labels), dim))
    return torch.tensor(feats, dtype=torch.float32), labels


def _whitened(bb) -> E.WhitenedEmbedder:
    feats, labels = _data()
    x = np.vstack([feats.numpy(), feats.numpy() + 0.1])
    w = RP.fit_whitening(x, np.tile(labels, 2), 1e-3)
    return E.WhitenedEmbedder(bb, representation=RP.Representation(bb, layers=(), tta=True, whitening=w))


def _fitted(name: str, bb):
    feats, labels = _data()
    if name == E.WHITEN:
        return _whitened(bb)
    return E.RecognizerConfig(name, epochs=2).embedder(bb).fit(feats, labels)


@pytest.mark.parametrize("name", E.METHODS)
def test_state_round_trip_gives_the_same_embeddings(name):
    bb = tiny_backbone()
    emb = _fitted(name, bb)
    buf = io.BytesIO()
    torch.save(emb.state(), buf)                                   # plain types and tensors only
    buf.seek(0)
    again = E.embedder_from_state(bb, torch.load(buf, weights_only=True))
    assert type(again) is type(emb) and again.dim == emb.dim
    feats, _ = _data()
    e = emb.embed(feats)
    assert e.shape == (len(feats), emb.dim) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert np.abs(again.embed(feats) - e).max() < 1e-6
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(again(x), emb(x), atol=1e-5)       # the exported path too
    assert emb.embed(feats[:0]).shape == (0, emb.dim)


def test_cross_fit_refits_without_each_fold_and_skips_folds_with_too_few_people():
    bb = tiny_backbone()
    feats, labels = _data(people=2, per=3)
    fold = np.array([0, 1, 2, 0, 1, 2])
    fits = list(E.RecognizerConfig("head", epochs=1).embedder(bb).cross_fit(feats, labels, fold, 3))
    assert [f for f, _ in fits] == [0, 1, 2] and all(isinstance(e, E.HeadEmbedder) for _, e in fits)
    one = list(E.RecognizerConfig("head").embedder(bb).cross_fit(feats, labels, np.r_[0, 0, 0, 1, 1, 1], 2))
    assert [e for _, e in one] == [None, None]                     # one person left: no head to train
    assert all(isinstance(e, E.RawEmbedder) for _, e in E.RawEmbedder(bb).cross_fit(feats, labels, fold, 3))


def test_the_recogniser_runs_its_embedder():
    from helpers.recognize.recognizer import Recognizer

    bb = tiny_backbone()
    emb = _whitened(bb)
    rec = Recognizer(bb, size=32, names=["a", "b", "c"], embedder=emb)
    assert rec.representation is emb.representation and rec.embedding is None and rec.embedding_dim == 8
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(rec(x), torch.nn.functional.normalize(emb(x), dim=1))
    assert rec.payload()["embedder"]["kind"] == E.WHITEN
    with pytest.raises(ValueError, match="own backbone"):
        Recognizer(tiny_backbone(1), embedder=emb)


def test_the_whitening_map_is_the_same_on_arrays_and_tensors():
    feats, labels = _data()
    w = RP.fit_whitening(feats.numpy(), labels, 1e-2)
    s = w.state()
    on_tensors = RP.whiten(feats, s["mean"], s["basis"], s["scale"], s["base"])
    assert np.abs(on_tensors.numpy() - w.apply(feats.numpy())).max() < 1e-4
