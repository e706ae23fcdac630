"""Recogniser files as earlier course versions wrote them (formats 1-3), made from a current payload."""
from __future__ import annotations


def as_version(payload: dict, version: int) -> dict:
    """The payload of format `version` (1-3): the embedder's parts under their own keys
    ("embedding_state"; from 2 on "representation"; from 3 on "calibration") instead of "embedder"."""
    old = {k: v for k, v in payload.items() if k != "embedder"}
    state = payload["embedder"]
    old["embedding_state"] = state.get("embedding")
    if version >= 2:
        old["representation"] = state.get("representation")
    if version < 3:
        old.pop("calibration", None)
    old["version"] = version
    return old
