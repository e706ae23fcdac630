"""Shared code of the course "Face recognition by transfer learning".

The library, in packages by pipeline stage (each module holds one concern; no plotting, widgets or
notebook code), each importing only from the stages before it:
  data      photos and folders in, faces found and aligned, batches out
  models    backbones with a stage API, embedding + margin heads, freezing by structure
  features  the one frozen-feature extractor and its cache, ONNX Runtime, robust representations
  evaluate  identification, verification, open set, the threshold's calibration
  train     one training step; loops on cached features or end to end; torchrun
  recognize the recogniser: embedders, gallery, file format, export
and, beside them, runtime (seeds, device, caches), io (safe writes, ONNX sessions), memory, config
and cli (`python -m helpers`).
What the notebooks show (experiments, plots, widgets, exercises) lives in `helpers.course`.

The names below are imported on first use (PEP 562 module `__getattr__`): `import helpers` itself
loads no PyTorch, so `python -m helpers --help` answers at once; `helpers.set_seed`,
`from helpers import load_backbone` and `helpers.runtime` work as before.
"""
from __future__ import annotations

import importlib
import importlib.util

# public name -> the module that defines it
_EXPORTS = {
    "Backbone": "models.backbones", "BackboneUnavailable": "models.backbones", "load_backbone": "models.backbones",
    "FaceDataError": "data.folders", "FaceSet": "data.folders", "Split": "data.splits", "load_faces": "data.folders", "load_folder": "data.folders",
    "load_orl": "data.folders", "split_people": "data.splits", "split_known_strangers": "data.splits", "split_per_person": "data.splits",
    "extract_features": "features.extract",
    "build_model": "models.face_model", "count_parameters": "models.face_model", "set_trainable_stages": "models.face_model",
    "cache_dir": "runtime", "pick_device": "runtime", "set_seed": "runtime", "threads": "runtime",
    "History": "train.fit", "fit": "train.fit", "train_head_on_features": "train.fit",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:   # helpers.runtime, helpers.course ...
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
