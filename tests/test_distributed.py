"""helpers.train.trainer / helpers.train.distributed / helpers.data.streaming on CPU: DDP over 2 gloo processes
(torchrun) against 1 process, resume after an interruption, and runs that fail loudly and fast.

The torchrun tests start 3 Python processes (the launcher and 2 ranks): ~15-25 s each here,
mostly imports. They use `ddp_backbone` below, a seeded 32-px network with no randomness.
"""
from __future__ import annotations

import dataclasses
import math
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from helpers.models.backbones import Backbone, PretrainedConfig, SequentialStages
from helpers.train.distributed import SyncBatchNorm, convert_sync_batchnorm
from helpers.data.streaming import PhotoStream, scan_people
from helpers.train.trainer import TrainConfig, TrainError, main, train
from helpers.train.fit import TrainingDiverged

REPO = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 180  # a torchrun test taking longer than this has hung


def ddp_backbone() -> Backbone:
    """conv (no bias) -> BN -> ReLU -> conv -> ReLU -> pool: 32 px, 16 features, two stages.

    No parameter here has a gradient that is zero by construction (a bias right before a
    BatchNorm would: Adam turns its rounding noise into steps of size lr, which differ between
    1 and 2 processes). `python -m helpers.train.trainer --backbone tests.test_distributed:ddp_backbone`.
    """
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    body = SequentialStages(OrderedDict(
        conv1=nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), bn1=nn.BatchNorm2d(8), relu=nn.ReLU(),
        layer1=nn.Conv2d(8, 16, 3, stride=2, padding=1), relu1=nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(1)), OrderedDict(stem=["conv1", "bn1"], layer1=["layer1"]))
    torch.random.set_rng_state(state)
    return Backbone(body, 16, "ddp-test", "random init seed 0", "test", PretrainedConfig(input_size=32)).eval()


@pytest.fixture(scope="module")
def people(tmp_path_factory, orl):
    """6 ORL people x 6 photos as small JPEGs in person folders (36 photos: 30 train, 6 val)."""
    root = tmp_path_factory.mktemp("people")
    for p in range(6):
        folder = root / f"person{p}"
        folder.mkdir()
        for j, i in enumerate([i for i, lab in enumerate(orl.labels) if lab == p][:6]):
            orl.images[i].resize((46, 56)).save(folder / f"{j}.jpg", quality=90)
    return root


def config(data: Path, out: Path, **kw) -> TrainConfig:
    """The test run: both stages train (stem's BatchNorm too), sync BN, augmentation on."""
    base = dict(data=str(data), out=str(out), backbone="tests.test_distributed:ddp_backbone",
                stages="all", epochs=3, batch_size=8, lr=3e-3, workers=0, sync_bn=True, threads=1,
                verbose=False)
    return TrainConfig(**{**base, **kw})


def run(cfg: TrainConfig):
    """The run in this process (the backbone passed as an object: no import by name)."""
    return train(cfg, backbone=ddp_backbone())


def _flags(cfg: TrainConfig) -> list[str]:
    """The command-line flags that give `cfg`."""
    args = []
    for name, value in vars(cfg).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            args += [flag, str(value)]
    return args


def torchrun(cfg: TrainConfig, nproc: int = 2, env: dict | None = None, timeout: int = RUN_TIMEOUT_S):
    """`python -m torch.distributed.run --standalone` on helpers.train.trainer; returns (process, seconds)."""
    args = _flags(cfg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "helpers.train.trainer", *args]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)
    return done, time.perf_counter() - t0


def weights(out: Path) -> dict:
    return torch.load(out / "final.pt", map_location="cpu", weights_only=True)["model"]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


# ---------------------------------------------------------------------- streaming


def test_scan_people_lists_paths_in_natural_order(tmp_path):
    for name, n in [("s10", 3), ("s2", 2), ("solo", 1), (".hidden", 4)]:
        (tmp_path / name).mkdir()
        for j in range(n):
            (tmp_path / name / f"{j}.jpg").write_bytes(b"not decoded by scan")
    (tmp_path / "s2" / ".copy.jpg").write_bytes(b"")
    index = scan_people(tmp_path)
    assert index.names == ["s2", "s10"] and len(index) == 5
    assert any("solo" in n for n in index.notes)
    train_idx, val_idx = index.split(val_per_person=1, seed=0)
    assert len(val_idx) == 2 and sorted([*train_idx, *val_idx]) == list(range(5))


def test_scan_orl_reads_only_the_pgm_photos():
    index = scan_people("orl")
    assert index.num_people == 40 and len(index) == 400
    assert all(p.endswith(".pgm") for p in index.paths) and index.names[:3] == ["s1", "s2", "s3"]


def test_photo_stream_augments_by_epoch_not_by_process(people):
    index = scan_people(people)
    transform = ddp_backbone().transform(train=True)
    a = PhotoStream(index.paths, index.labels, transform, seed=0)
    b = PhotoStream(index.paths, index.labels, transform, seed=0)
    torch.manual_seed(123)  # the global RNG does not matter
    assert torch.equal(a[3][0], b[3][0])
    b.set_epoch(1)
    assert not torch.equal(a[3][0], b[3][0]) and a[3][0].shape == (3, 32, 32)


# ---------------------------------------------------------------------- SyncBatchNorm


@pytest.fixture
def one_rank_group(tmp_path):
    """A gloo process group of one rank in this process (SyncBatchNorm then takes its synced path)."""
    import torch.distributed as dist

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 5, 5)])
def test_sync_batchnorm_equals_batchnorm(one_rank_group, shape):
    """Forward, gradients and running statistics of the all-reduce path = torch's BatchNorm."""
    torch.manual_seed(0)
    ref = (nn.BatchNorm1d if len(shape) == 2 else nn.BatchNorm2d)(shape[1])
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-0.5, 0.5)
    sync = SyncBatchNorm(shape[1])
    sync.load_state_dict(ref.state_dict())
    x = torch.randn(shape) * 3 + 1
    xs, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    w = torch.randn(shape)
    for _ in range(2):
        (sync(xs) * w).sum().backward()
        (ref(xr) * w).sum().backward()
    close = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sync(xs), ref(xr), **close)
    torch.testing.assert_close(xs.grad, xr.grad, **close)
    torch.testing.assert_close(sync.weight.grad, ref.weight.grad, **close)
    torch.testing.assert_close(sync.bias.grad, ref.bias.grad, **close)
    torch.testing.assert_close(sync.running_mean, ref.running_mean, **close)
    torch.testing.assert_close(sync.running_var, ref.running_var, **close)
    assert int(sync.num_batches_tracked) == int(ref.num_batches_tracked) == 3


def test_convert_leaves_frozen_batchnorm_alone():
    net = nn.Sequential(nn.BatchNorm1d(4), nn.BatchNorm1d(4))
    net[0].requires_grad_(False)
    keys = set(net.state_dict())
    convert_sync_batchnorm(net, torch.device("cpu"))
    assert type(net[0]) is nn.BatchNorm1d and isinstance(net[1], SyncBatchNorm)
    assert set(net.state_dict()) == keys


# ---------------------------------------------------------------------- one vs two processes


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_two_gloo_processes_end_with_the_weights_of_one(people, tmp_path, optimizer):
    """Same global batch (8 = 2 x 4) and seed: the 2-process weights equal the 1-process ones to 1e-5.

    Why equality is expected: DistributedSampler(seed, drop_last) shuffles once for everybody and
    rank r takes every W-th photo, so the k-th batches of the ranks together are exactly the k-th
    batch of one process; each photo's augmentation is seeded by (seed, epoch, photo), not by
    the process; DDP averages the ranks' gradients of their mean losses = the gradient of the
    mean over the global batch. BatchNorm in train mode would break this (statistics over 4
    photos per rank instead of 8): `--sync-bn` makes every trainable BatchNorm (the stem's and
    the embedding's) use the statistics of all 8, with the matching gradient. The embedding's
    Linear bias, whose gradient is zero up to rounding, is frozen by the trainer. What is left is
    float summation order: ~1e-6 after 9 AdamW steps. DataLoader workers (1 vs 0) change nothing.

    AdamW divides each gradient by its own running size, so it hides a constant factor on the
    gradient: with the loss x 2 on 2 ranks (a sum instead of a mean), the AdamW case still passed. Plain SGD
    (no momentum, lr 0.05, no clipping, which would rescale the gradient too) steps by lr x
    gradient: with that bug this case failed (max weight difference 0.06, tolerance 1e-5).
    """
    kw = dict(optimizer="sgd", momentum=0.0, lr=0.05, clip=0.0) if optimizer == "sgd" else {}
    one = run(config(people, tmp_path / "one", **kw))
    done, secs = torchrun(config(people, tmp_path / "two", workers=1, **kw))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert max_difference(weights(tmp_path / "one"), weights(tmp_path / "two")) < 1e-5
    hist_two = torch.load(tmp_path / "two" / "final.pt", weights_only=True)["history"]
    assert len(one.history["step_loss"]) == len(hist_two["step_loss"]) == 9
    assert max(abs(a - b) for a, b in zip(one.history["step_loss"], hist_two["step_loss"])) < 1e-5
    assert one.world_size == 1 and secs < RUN_TIMEOUT_S


# ---------------------------------------------------------------------- resume


def test_interrupted_then_resumed_run_ends_with_the_same_weights(people, tmp_path, monkeypatch):
    """A crash in epoch 2 (after epoch 1's checkpoint), then --resume: bit-identical final weights."""
    full = run(config(people, tmp_path / "full"))
    monkeypatch.setenv("FACE_COURSE_FAULT", "rank=0,epoch=1,step=1,kind=raise")
    with pytest.raises(RuntimeError, match="injected fault"):
        run(config(people, tmp_path / "cut"))
    ckpt = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert ckpt["epochs_done"] == 1 and not (tmp_path / "cut" / "final.pt").exists()
    monkeypatch.delenv("FACE_COURSE_FAULT")
    resumed = run(config(people, tmp_path / "cut", resume=True))
    assert resumed.resumed_at_epoch == 1
    assert max_difference(weights(tmp_path / "full"), weights(tmp_path / "cut")) == 0.0
    assert resumed.history["step_loss"] == full.history["step_loss"]
    assert not list((tmp_path / "cut").glob("*.tmp"))  # atomic writes leave no temporary file


def test_resume_refuses_a_checkpoint_of_other_settings(people, tmp_path):
    run(config(people, tmp_path, epochs=1))
    with pytest.raises(TrainError, match="lr: checkpoint 0.003, now 0.01"):
        run(config(people, tmp_path, epochs=1, lr=1e-2, resume=True))


# ---------------------------------------------------------------------- failing loudly


def test_nan_loss_stops_with_a_clear_message(people, tmp_path, monkeypatch):
    monkeypatch.setenv("FACE_COURSE_FAULT", "rank=0,epoch=0,step=2,kind=nan")
    with pytest.raises(TrainingDiverged, match=r"NaN/inf at epoch 1 step 3 .*start again with a lower --lr"):
        run(config(people, tmp_path))


def test_nan_advice_is_a_resume_that_works(people, tmp_path, monkeypatch, capsys):
    """After a NaN in epoch 2 the message proposes --resume --resume-with-new-lr --lr X; that
    command resumes after epoch 1 at the new rate (stated in the log); without the flag the
    checkpoint refuses the new lr and names the flag."""
    monkeypatch.setenv("FACE_COURSE_FAULT", "rank=0,epoch=1,step=0,kind=nan")
    with pytest.raises(TrainingDiverged, match=r"--resume --resume-with-new-lr --lr 0.0003 \(now 0.003\)"):
        run(config(people, tmp_path))
    monkeypatch.delenv("FACE_COURSE_FAULT")
    with pytest.raises(TrainError, match=r"lr: checkpoint 0.003, now 0.0003.*--resume-with-new-lr"):
        run(config(people, tmp_path, lr=3e-4, resume=True))
    resumed = run(config(people, tmp_path, lr=3e-4, resume=True, resume_with_new_lr=True, verbose=True))
    log = capsys.readouterr().out
    assert resumed.resumed_at_epoch == 1
    assert "resumed after epoch 1 with new rates (lr 0.003 -> 0.0003; --resume-with-new-lr)" in log
    assert resumed.history["lr"][1] < 3e-4 < resumed.history["lr"][0]  # epoch 2 ran at the new rate


def test_cli_reports_a_bad_setting_in_one_line(people, tmp_path, capfd, monkeypatch):
    """One process: one line on stderr and exit status 2, returned (the caller's process lives on)."""
    monkeypatch.syspath_prepend(str(REPO))
    code = main(["--data", str(people), "--out", str(tmp_path), "--stages", "layer9", "--batch-size", "8",
                 "--backbone", "tests.test_distributed:ddp_backbone"])
    assert code == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err == ["[rank 0/1] failed: TrainError: --stages: ['layer9'] not in ddp-test's stages "
                   "['stem', 'layer1']; give 'none', 'all' or a comma list of those"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["raise", "hang", "nan"])
def test_a_failing_rank_fails_the_run_quickly(people, tmp_path, kind):
    """Rank 1 raises (hangs, gets a NaN loss) at its 2nd step: torchrun exits non-zero with the
    reason, no hang.

    'raise': rank 0's all-reduce sees the closed connection, both ranks report, torchrun stops.
    'hang': rank 0's all-reduce times out after --timeout-s 5 and names rank 1 as the one behind.
    'nan': the NaN on rank 1 alone stops both ranks at the same step, with one message (rank 0's).
    """
    done, secs = torchrun(config(people, tmp_path, timeout_s=5.0),
                          env={"FACE_COURSE_FAULT": f"rank=1,epoch=0,step=1,kind={kind}"})
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert secs < 90, f"took {secs:.0f} s"
    if kind == "raise":
        assert "[rank 1/2] failed: RuntimeError: injected fault on rank 1" in out
    elif kind == "hang":
        assert "[rank 0/2] failed" in out and "--timeout-s 5" in out
        assert "rank 1 stopped before epoch 1 step 2 (last reached epoch 1 step 1)" in out
    else:
        said = "] failed: TrainingDiverged: the loss became NaN/inf at epoch 1 step 2 (on 1 of 2 micro-batch(es))"
        assert out.count(said) == 1, out  # rank 0's line; rank 1 leaves without one
        assert "[rank 1/2]" not in out
    assert not (tmp_path / "final.pt").exists()


# ---------------------------------------------------------------------- GPU check script


def _gpu_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "tools" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    return gpu_check


def test_gpu_check_without_a_gpu_runs_nothing_and_succeeds(monkeypatch, capsys):
    gpu_check = _gpu_check()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    assert capsys.readouterr().out.startswith("no CUDA device: nothing run")


def test_gpu_check_plans_at_least_two_processes_within_the_data():
    plan = _gpu_check().plan_processes
    assert plan(1, 360, 64) == (2, 64)          # one GPU: 2 processes share it
    assert plan(0, 54, 8) == (2, 8)            # CPU smoke
    assert plan(8, 360, 64) == (8, 45)         # 8 x 64 = 512 > 360 training photos: capped
    for gpus in range(1, 17):
        procs, batch = plan(gpus, 360, 64)
        assert procs >= 2 and procs * batch <= 360


@pytest.mark.slow
def test_gpu_check_cpu_smoke_compares_one_and_two_processes(capsys):
    """The CI run of tools/gpu_check.py: every section passes on the CPU, and the 2-process loss
    curve matched the 1-process one (this check caught the trainer seeding its head before a
    named backbone drew random numbers: a 0.28 loss gap)."""
    assert _gpu_check().main(["--cpu-smoke"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("=== CPU smoke run"):]
    assert "FAILED" not in table and "max_loss_gap_vs_1" in table and "amp_speedup" in table
    print(table)


# ---------------------------------------------------------------------- ranks that agree


def test_photo_index_digest_sees_sizes_labels_and_paths(people):
    index = scan_people(people).with_sizes()
    digest = index.digest()
    assert len(digest) == 64 and scan_people(people).with_sizes().digest() == digest
    for change in (dict(sizes=[index.sizes[0] + 1, *index.sizes[1:]]),
                   dict(labels=index.labels[::-1].copy()),
                   dict(paths=[index.paths[1], index.paths[0], *index.paths[2:]])):
        assert dataclasses.replace(index, **change).digest() != digest, change


def test_a_rank_that_sees_other_photos_says_so(people):
    """What rank 1 on another machine checks: a file whose size differs from rank 0's index."""
    from helpers.train.distributed import DistContext
    from helpers.train.run_checks import check_local_view

    index = scan_people(people).with_sizes()
    plan = {"index": index, "digest": index.digest()}
    rank1 = DistContext(rank=1, world_size=2, local_rank=0)
    assert check_local_view(plan, rank1) is None
    other = dataclasses.replace(index, sizes=[index.sizes[0] + 5, *index.sizes[1:]])
    said = check_local_view({"index": other, "digest": other.digest()}, rank1)
    assert said and index.paths[0] in said and "different photo folders" in said
    assert check_local_view({"index": other, "digest": index.digest()}, rank1).startswith("the photo index arrived")


def test_resume_refuses_a_changed_photo_folder(people, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(people, data)
    run(config(data, tmp_path / "run", epochs=1))
    (data / "person0" / "0.jpg").write_bytes((people / "person1" / "0.jpg").read_bytes())
    with pytest.raises(TrainError, match=r"photos: checkpoint '36 photos of 6 people, index sha256 \w+', now"):
        run(config(data, tmp_path / "run", epochs=1, resume=True))


def test_verification_people_are_held_out_of_training(people, tmp_path, capsys):
    """2 of the 6 people never train (the head has 4 classes); their pairs give an EER per epoch."""
    from helpers.train.run_checks import hold_out_people

    result = run(config(people, tmp_path, verify_people=2, verify_max_photos=10, batch_size=4, verbose=True))
    assert len(result.names) == 4 and result.model.head.weight.shape[0] == 4
    eer = result.history["val_eer"]
    assert len(eer) == 3 and all(0 <= e <= 1 for e in eer)
    assert re.search(r"epoch 3/3: .*, EER [\d.]+ % on 10 photos of 2 held-out people", capsys.readouterr().out)
    index, paths, labels = hold_out_people(scan_people(people), 2, 10, seed=0)
    assert len(paths) == 10 and len(set(labels.tolist())) == 2
    assert not set(paths) & set(index.paths) and index.num_people == 4
    with pytest.raises(TrainError, match="--verify-people 5"):
        hold_out_people(scan_people(people), 5, 10, seed=0)


@pytest.mark.slow
def test_machines_with_different_photo_copies_stop_with_one_message(people, tmp_path):
    """2 'machines' (2 torchrun launchers, static rendezvous on this host), each with its own copy
    of the folder, as with node-local copies: machine 2's copy has one photo re-saved. Rank 1
    (machine 2) finds it in rank 0's index and every rank stops with one message, in seconds."""
    for node in ("node0", "node1"):
        shutil.copytree(people, tmp_path / node / "faces")
    photo = tmp_path / "node1" / "faces" / "person3" / "2.jpg"
    photo.write_bytes(photo.read_bytes() + b"\0" * 10)
    port = str(29400 + os.getpid() % 500)
    args = _flags(config(Path("faces"), Path("run"), timeout_s=30.0))
    procs = []
    t0 = time.perf_counter()
    for rank, node in enumerate(("node0", "node1")):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
               "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}",
               "-m", "helpers.train.trainer", *args]
        procs.append(subprocess.Popen(cmd, cwd=tmp_path / node, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env={**os.environ, "PYTHONPATH": str(REPO)}))
    outs = [p.communicate(timeout=RUN_TIMEOUT_S) for p in procs]
    out = "".join(o + e for o, e in outs)
    assert all(p.returncode != 0 for p in procs), out
    assert out.count("] failed: TrainError: the processes disagree") == 1, out  # rank 0's line only
    assert "[rank 1/2]" not in out
    assert "rank 1: sees 1" in out and "faces/person3/2.jpg where rank 0 saw" in out
    assert time.perf_counter() - t0 < 90


@pytest.mark.slow
def test_resume_under_torchrun_with_another_process_count(people, tmp_path, monkeypatch):
    """1 process cut after epoch 1, resumed by 2 processes under torchrun: the same final weights
    as the uninterrupted 1-process run (ddp_backbone draws no random numbers, so re-seeded RNG
    states change nothing), and the log says the process count changed."""
    kw = dict(verify_people=2, batch_size=4)  # 2 people held out: verification sharded over the ranks
    full = run(config(people, tmp_path / "full", **kw))
    monkeypatch.setenv("FACE_COURSE_FAULT", "rank=0,epoch=1,step=0,kind=raise")
    with pytest.raises(RuntimeError, match="injected fault"):
        run(config(people, tmp_path / "cut", **kw))
    monkeypatch.delenv("FACE_COURSE_FAULT")
    done, _ = torchrun(config(people, tmp_path / "cut", resume=True, verbose=True, workers=1, **kw))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("resumed after epoch 1") == 1
    assert "checkpoint made by 1 process(es), resumed with 2" in done.stdout
    assert max_difference(weights(tmp_path / "full"), weights(tmp_path / "cut")) < 1e-5
    # each rank embedded half of the held-out photos; rank 0's EER = the 1-process one
    cut_eer = json.loads((tmp_path / "cut" / "history.json").read_text())["val_eer"]
    assert len(cut_eer) == 3 and max(abs(a - b) for a, b in zip(full.history["val_eer"], cut_eer)) < 1e-6


# ---------------------------------------------------------------------- large-batch recipe


def test_per_step_warmup_then_cosine_and_lr_scaling_stated():
    from helpers.train.lr_schedule import lr_factor, scaled_lr

    f = [lr_factor(t, total_steps=10, warmup_steps=4) for t in range(10)]
    cosine = [0.5 * (1 + math.cos(math.pi * t / 10)) for t in range(10)]
    assert f[:4] == pytest.approx([0.25 * cosine[0], 0.5 * cosine[1], 0.75 * cosine[2], cosine[3]])
    assert f[3:] == pytest.approx(cosine[3:]) and all(a > b for a, b in zip(f[3:], f[4:])) and 0 < f[-1] < 0.1
    lr, bb, said = scaled_lr(TrainConfig(data="x", lr=0.01, backbone_lr=0.001, batch_size=1024,
                                         lr_scaling="sqrt", base_batch=64))
    assert lr == pytest.approx(0.04) and bb == pytest.approx(0.004)
    assert said == "lr 0.01 x sqrt(16) = 0.04 for the global batch 1024 (sqrt rule from --base-batch 64)"
    lr, _, said = scaled_lr(TrainConfig(data="x", lr=0.1, batch_size=256, lr_scaling="linear", base_batch=1024))
    assert lr == pytest.approx(0.025) and "x 0.25 = 0.025" in said


def test_accumulated_steps_and_warmup_in_a_run(people, tmp_path, capsys):
    """--accumulate 2: the same optimizer steps per epoch as without (3 of 8 photos), micro-batches
    of 4, and the log says so; 1 epoch of warm-up: at its last step the rate is the cosine's (2 of 9 steps
    done), then it decays."""
    result = run(config(people, tmp_path, accumulate=2, warmup_epochs=1, verbose=True))
    log = capsys.readouterr().out
    assert "batch 8 = 1 x 4 x 2 accumulated" in log and "warm-up 1 epoch(s), cosine per step" in log
    assert len(result.history["step_loss"]) == 9 and all(np.isfinite(result.history["step_loss"]))
    assert result.history["lr"][0] == pytest.approx(3e-3 * 0.5 * (1 + math.cos(math.pi * 2 / 9)))  # warm-up done
    assert result.history["lr"][2] < result.history["lr"][1] < 3e-3
