"""Shared code of the course "Face recognition by transfer learning".

Notebooks call these functions; each lives in one module by concern:
runtime (seeds, device, caches), images/data/facecrop (faces in), backbones, heads, model,
features (cached frozen features), training, evaluation, plots, widgets.
"""
from .runtime import setup_numba_cache

setup_numba_cache()  # umap-learn's numba needs a writable cache; set before anything imports it

from .backbones import Backbone, BackboneUnavailable, load_backbone  # noqa: E402
from .data import (FaceDataError, FaceSet, Split, load_faces, load_folder, load_orl,  # noqa: E402
                   split_known_strangers, split_per_person)
from .features import extract_features  # noqa: E402
from .model import build_model, count_parameters, set_trainable_stages  # noqa: E402
from .runtime import cache_dir, pick_device, set_seed, threads  # noqa: E402
from .training import History, fit, train_head_on_features  # noqa: E402

__all__ = [
    "Backbone", "BackboneUnavailable", "load_backbone", "FaceDataError", "FaceSet", "Split",
    "load_faces", "load_folder", "load_orl", "split_known_strangers", "split_per_person",
    "extract_features", "build_model", "count_parameters", "set_trainable_stages", "cache_dir",
    "pick_device", "set_seed", "threads", "History", "fit", "train_head_on_features",
]
