"""Shared code of the course "Face recognition by transfer learning".

The library: each module holds one concern (no plotting, widgets or notebook code):
runtime (seeds, device, caches), images/data/facecrop (faces in), backbones, heads, model,
features (cached frozen features), train_step (the one training step), training, evaluation,
recognizer, export, cli.
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
    "Backbone": "backbones", "BackboneUnavailable": "backbones", "load_backbone": "backbones",
    "FaceDataError": "data", "FaceSet": "data", "Split": "data", "load_faces": "data", "load_folder": "data",
    "load_orl": "data", "split_people": "data", "split_known_strangers": "data", "split_per_person": "data",
    "extract_features": "features",
    "build_model": "model", "count_parameters": "model", "set_trainable_stages": "model",
    "cache_dir": "runtime", "pick_device": "runtime", "set_seed": "runtime", "threads": "runtime",
    "History": "training", "fit": "training", "train_head_on_features": "training",
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
