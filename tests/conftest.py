"""Shared fixtures of the helpers' unit tests: ORL faces, the packaged backbone, cached features.

Everything here works offline. Expensive things are session-scoped and read-only: a test
that needs to change an image or a model makes its own copy.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import load_backbone, load_orl, split_known_strangers
from helpers.features.extract import extract_features


@pytest.fixture(scope="session")
def orl():
    """The 400 ORL photos (do not modify the images: copy them)."""
    return load_orl()


@pytest.fixture(scope="session")
def orl_known(orl):
    """(known, strangers) as the course splits them: 9 known people (seed 0), 31 strangers."""
    return split_known_strangers(orl, n_known=9, seed=0)


@pytest.fixture(scope="session")
def effnet():
    """The packaged EfficientNet-Lite0 with its ImageNet weights, in eval mode (do not train it)."""
    return load_backbone("efficientnet_lite0", verbose=False)


@pytest.fixture(scope="session")
def known_features(effnet, orl_known):
    """EfficientNet-Lite0 features (224 px) of the 90 photos of the 9 known people, and labels.

    Uses the course's feature cache (`FACE_COURSE_CACHE` or `<repo>/.cache`): the notebooks
    compute the same file, so this is a few seconds the first time and instant afterwards.
    """
    known, _ = orl_known
    x = extract_features(effnet, known.images, batch_size=16, progress=False, verbose=False)
    return x, torch.as_tensor(np.asarray(known.labels)).long()


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: small tensors stall badly on two busy cores."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
