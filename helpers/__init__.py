"""Shared code of the course "Face recognition by transfer learning".

The library: each module holds one concern (no plotting, widgets or notebook code):
runtime (seeds, device, caches), images/data/facecrop (faces in), backbones, heads, model,
features (cached frozen features), training, evaluation, recognizer, export, cli.
What the notebooks show (experiments, plots, widgets, exercises) lives in `helpers.course`.
"""
from .backbones import Backbone, BackboneUnavailable, load_backbone
from .data import (FaceDataError, FaceSet, Split, load_faces, load_folder, load_orl, split_people,
                   split_known_strangers, split_per_person)
from .features import extract_features
from .model import build_model, count_parameters, set_trainable_stages
from .runtime import cache_dir, pick_device, set_seed, threads
from .training import History, fit, train_head_on_features

__all__ = [
    "Backbone", "BackboneUnavailable", "load_backbone", "FaceDataError", "FaceSet", "Split",
    "load_faces", "load_folder", "load_orl", "split_known_strangers", "split_people", "split_per_person",
    "extract_features", "build_model", "count_parameters", "set_trainable_stages", "cache_dir",
    "pick_device", "set_seed", "threads", "History", "fit", "train_head_on_features",
]
