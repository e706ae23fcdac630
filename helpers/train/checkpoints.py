"""Checkpoints of helpers.train.trainer: written durably (fsync, rename, last good copy), and resumed.

Rank 0 writes OUT/checkpoint.pt after every epoch; the file it replaces stays as
OUT/checkpoint.last-good.pt. `resume_run` loads the one rank 0 chose on every rank, checks that
every rank sees the same one, and refuses other settings (except the rates with
--resume-with-new-lr).
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import torch

from .distributed import DistContext, PeerReported, set_rng_state
from ..models.face_model import FaceModel
from .run_checks import LAST_GOOD, TrainError, agree

# `cfg` below is a helpers.train.trainer.TrainConfig (not imported: the trainer imports this module)

CHECKPOINT_FORMAT = "face-course-trainer/2"
# what --resume-with-new-lr may change (after a NaN, for instance)
RATE_FIELDS = ("lr", "backbone_lr", "clip", "warmup_epochs", "lr_scaling", "base_batch")


def durable_write(data: bytes, path: Path) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, rename it over `path`, fsync the
    folder: after a crash (even of the machine) `path` is the old file or the new one, never empty.

    Notebook 07, inside `train`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make renames in `folder` durable (a no-op where folders cannot be opened, e.g. Windows).

    Notebook 07, inside `train`.
    """
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_durably(obj, path: Path) -> None:
    """torch.save (or JSON for a .json path), written atomically and durably: never half a file.

    Notebook 07, inside `train`.
    """
    if path.suffix == ".json":
        durable_write(json.dumps(obj, indent=1).encode(), path)
    else:
        buf = io.BytesIO()
        torch.save(obj, buf)
        durable_write(buf.getvalue(), path)


def save_checkpoint(obj: dict, path: Path) -> None:
    """Write the checkpoint; the one it replaces stays as the last good copy (LAST_GOOD name).

    Notebook 07, inside `train`.
    """
    if path.exists():
        os.replace(path, path.with_name(LAST_GOOD))
    save_durably(obj, path)


def resume_run(path: Path, epochs_done: int, cfg: "TrainConfig", ctx: DistContext, model: FaceModel, opt, scaler,
            signature: dict) -> tuple[int, dict, str]:
    """Every rank loads the checkpoint rank 0 chose and checks it is the same one; returns
    (epochs done, history, a note for the log).

    Notebook 07, inside `train`.
    """
    problem, ckpt = None, None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            problem = f"{path} is not a checkpoint of helpers.train.trainer ({CHECKPOINT_FORMAT}): use another --out"
        elif int(ckpt["epochs_done"]) != epochs_done:
            problem = (f"{path} holds epoch {ckpt['epochs_done']} where rank 0 resumes after epoch {epochs_done}: "
                       "--out must be one folder that every machine sees")
    except FileNotFoundError:
        problem = (f"no {path} here while rank 0 resumes from it after epoch {epochs_done}: --out must be "
                   "one folder that every machine sees")
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        problem = f"{path} cannot be read here ({type(e).__name__})"
    if not ctx.distributed and problem:
        raise TrainError(problem)
    agree(ctx, problem)
    allowed = RATE_FIELDS if cfg.resume_with_new_lr else ()
    diff = [f"{k}: checkpoint {ckpt['signature'].get(k)!r}, now {v!r}" for k, v in signature.items()
            if ckpt["signature"].get(k) != v and k not in allowed]
    if diff:  # the same on every rank: rank 0 says it
        if not ctx.is_main:
            raise PeerReported(2)
        said = "; ".join(diff)
        rates = [k for k in diff if k.split(":")[0] in RATE_FIELDS]
        raise TrainError(f"{path} was made with other settings ({said}): use the same settings to resume"
                         + (", or --resume-with-new-lr to change the rates" if rates else "")
                         + ", or another --out to start a new run")
    changed = [f"{k} {ckpt['signature'].get(k)!r} -> {signature[k]!r}" for k in allowed
               if ckpt["signature"].get(k) != signature[k]]
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    note = f" with new rates ({', '.join(changed)}; --resume-with-new-lr)" if changed else ""
    if path.name == LAST_GOOD:
        note += f" from the last good copy {path.name}"
    if len(ckpt["rng"]) == ctx.world_size:
        set_rng_state(ckpt["rng"][ctx.rank])
    else:
        note += (f"; checkpoint made by {len(ckpt['rng'])} process(es), resumed with {ctx.world_size}: "
                 "random states re-seeded (the weights' math is unchanged)")
    return int(ckpt["epochs_done"]), ckpt["history"], note
