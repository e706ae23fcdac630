"""Checks before and during a run of helpers.train.trainer: settings, ranks that agree, readable photos.

Rank 0 alone walks the photo folder and decides whether to resume (`plan_run`); every other rank
receives that plan (`from_main`), checks it against its own machine (`check_local_view`), and
`agree` turns any rank's problem into one message on rank 0 while the others leave quietly
(`PeerReported`). `skip_unreadable` decodes every photo once, shared over the ranks.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from .distributed import DistContext, PeerReported, broadcast_object, gather_objects, main_print
from ..data.streaming import scan_people, unreadable_photos

# `cfg` below is a helpers.train.trainer.TrainConfig (not imported: the trainer imports this module)

CHECKPOINT, LAST_GOOD = "checkpoint.pt", "checkpoint.last-good.pt"


class TrainError(ValueError):
    """A training setting that cannot work as given; the message says what to change.

    Notebook 07, inside `train`.
    """


def agree(ctx: DistContext, problem: str | None) -> None:
    """Every rank says whether its view is fine; on any problem rank 0 raises one TrainError naming
    the ranks, the others raise PeerReported (they leave without a message of their own).

    Notebook 07, inside `train`.
    """
    problems = gather_objects(problem, ctx)
    if any(problems):
        if not ctx.is_main:
            raise PeerReported(2)
        said = "; ".join(f"rank {r}: {p}" for r, p in enumerate(problems) if p)
        raise TrainError(f"the processes disagree ({said})")


def from_main(ctx: DistContext, fn):
    """Run `fn()` on rank 0 only and hand its result to every rank; if it raises, rank 0 raises
    the error and the other ranks PeerReported (one message, not one per rank).

    Notebook 07, inside `train`.
    """
    result = error = None
    if ctx.is_main:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, after the others know
            error = e
    ok, result = broadcast_object((error is None, result), ctx)
    if error is not None:
        raise error
    if not ok:
        raise PeerReported(2)
    return result


def check_local_view(plan: dict, ctx: DistContext) -> str | None:
    """On ranks other than 0: does this machine see rank 0's photos (a sample of sizes) and digest?

    Notebook 07, inside `train`.
    """
    index = plan["index"]
    if index.digest() != plan["digest"]:
        return "the photo index arrived damaged (its SHA-256 differs from rank 0's)"
    if ctx.is_main or ctx.local_rank != 0:  # one rank per machine looks at its files
        return None
    n = len(index.paths)
    for i in sorted(set(np.linspace(0, n - 1, min(n, 200)).astype(int).tolist())):
        try:
            size = os.stat(index.paths[i]).st_size
        except OSError:
            size = -1
        if size != index.sizes[i]:
            seen = "no file" if size < 0 else f"{size} bytes"
            return (f"sees {seen} at {index.paths[i]} where rank 0 saw {index.sizes[i]} bytes: the machines "
                    "see different photo folders; give every machine the same copy (or a shared folder)")
    return None


def skip_unreadable(index, cfg: "TrainConfig", ctx: DistContext):
    """Decode every photo once, shared over the ranks; skip the unreadable ones (listed on rank 0),
    or stop when there are more than --max-bad-photos.

    Notebook 07, inside `train`.
    """
    mine = unreadable_photos(index.paths, range(ctx.rank, len(index.paths), ctx.world_size))
    bad = sorted(b for part in gather_objects(mine, ctx) for b in part)
    if not bad:
        return index
    lines = [f"  {index.paths[i]}: {reason}" for i, reason in bad]
    if len(bad) > cfg.max_bad_photos:
        if not ctx.is_main:
            raise PeerReported(2)
        raise TrainError(f"{len(bad)} unreadable photo(s), more than --max-bad-photos {cfg.max_bad_photos}; "
                         "replace or remove them (or raise the cap):\n" + "\n".join(lines[:20]) +
                         (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""))
    main_print(ctx, f"trainer: skipping {len(bad)} unreadable photo(s) (at most --max-bad-photos "
                    f"{cfg.max_bad_photos}):\n" + "\n".join(lines))
    return index.without([i for i, _ in bad], min_photos=cfg.min_photos)


def plan_run(cfg: "TrainConfig", ctx: DistContext) -> dict:
    """Rank 0's view of the run: the photo index (with sizes) and whether to resume from where.

    Notebook 07, inside `train`.
    """
    index = scan_people(cfg.data, min_photos=cfg.min_photos).with_sizes()
    plan = {"index": index, "digest": index.digest(), "resume_from": None, "epochs_done": 0, "notes": []}
    if cfg.resume:
        out = Path(cfg.out)
        for name in (CHECKPOINT, LAST_GOOD):
            path = out / name
            if not path.exists():
                continue
            try:
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
                done = int(ckpt["epochs_done"])
            except Exception as e:  # noqa: BLE001 - an unreadable file: try the last good copy
                damaged = path.with_name(path.stem + ".damaged.pt")
                os.replace(path, damaged)  # else the next save would keep it as the "last good" copy
                plan["notes"].append(f"{path} cannot be read ({type(e).__name__}; kept as {damaged.name})")
                continue
            plan["resume_from"], plan["epochs_done"] = name, done
            break
        else:
            if plan["notes"]:
                raise TrainError(" ".join(plan["notes"]) + f"; no readable checkpoint in {out}: "
                                 "delete them to start again")
    return plan


def injected_fault(ctx: DistContext, epoch: int, step: int, loss: torch.Tensor) -> torch.Tensor:
    """The FACE_COURSE_FAULT test hook: "rank=1,epoch=0,step=1,kind=raise" makes that rank raise at
    that step (kind 'hang' sleeps forever, 'nan' turns its loss into NaN); returns `loss`.

    Notebook 07, inside `train`.
    """
    spec = os.environ.get("FACE_COURSE_FAULT")
    if not spec:
        return loss
    f = dict(kv.split("=", 1) for kv in spec.split(","))
    if (int(f.get("rank", 0)), int(f.get("epoch", 0)), int(f.get("step", 0))) != (ctx.rank, epoch, step):
        return loss
    kind = f.get("kind", "raise")
    if kind == "hang":
        time.sleep(10 ** 6)
    if kind == "nan":
        return loss * float("nan")
    raise RuntimeError(f"injected fault on rank {ctx.rank} at epoch {epoch} step {step} "
                       f"(FACE_COURSE_FAULT={spec})")


def hold_out_people(index, people: int, max_photos: int, seed: int):
    """(index without `people` seeded-random people, their photo paths, their labels): the people
    verification is measured on, never trained on; at most `max_photos` photos (seeded choice).

    Notebook 07, inside `train`.
    """
    if people <= 0:
        return index, [], np.zeros(0, dtype=int)
    if people < 2 or index.num_people - people < 2:
        raise TrainError(f"--verify-people {people}: give 0, or 2 to {index.num_people - 2} "
                         f"({index.num_people} people; 2 or more must remain for training)")
    rng = np.random.default_rng(seed + 1)
    held = set(rng.choice(index.num_people, people, replace=False).tolist())
    photos = [i for i in range(len(index)) if int(index.labels[i]) in held]
    keep = sorted(rng.choice(photos, min(max_photos, len(photos)), replace=False).tolist())
    return index.without(photos), [index.paths[i] for i in keep], index.labels[keep].copy()
