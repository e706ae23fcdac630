"""What notebook 05 shows about unfreezing: the comparison of methods, its tables and plot, the
speed of the cache, and the pitfalls (BatchNorm in train mode, feature drift, frozen checks)."""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.backbone_tail import last_stage
from ..models.backbones import Backbone
from ..models.face_model import FaceModel, build_model
from ..runtime import set_seed
from ..train.cached_unfreezing import train_cached_steps
from ..train.unfreezing import (RunResult, StagePlan, UnfreezeData, evaluate_run, full_schedule, gradual_schedule,
                                model_features, prepare_data, run_chain, run_schedule)
from .experiments import SeedComparison, t_interval


def compare_methods(data: UnfreezeData, gradual: Sequence[StagePlan], full: Sequence[StagePlan],
                    seed: int = 0, progress: bool = False, measure_memory: bool = True,
                    strangers_each_epoch: bool = False) -> list[RunResult]:
    """Frozen (stage 1 alone), gradual after stage 2, gradual (3 stages), full fine-tuning: same split.

    The three gradual results are one chain (`run_chain`): stage 2 continues from stage 1's model,
    stage 3 from stage 2's, so stage 1 is shared, not repeated. `strangers_each_epoch`: the chain also
    records the strangers' EER after every epoch (for `plot_chain`).
    """
    gradual = list(gradual)
    if len(gradual) != 3:
        raise ValueError("the gradual schedule has three stages")
    chain = run_chain(data, gradual, ["frozen (stage 1 only)", "gradual, stages 1-2", "gradual, stages 1-3"],
                      seed, measure_memory=measure_memory, progress=progress,
                      strangers_each_epoch=strangers_each_epoch)
    f = run_schedule(data, full, "full fine-tuning", seed, measure_memory=measure_memory, progress=progress)
    evaluate_run(f, data, seed)
    return [*chain, f]


def gradual_chain(data: UnfreezeData, epochs: tuple[int, int, int] = (30, 3, 3), lr: float = 1e-2,
                  backbone_lr: float = 3e-4, seed: int = 0) -> list[RunResult]:
    """The panel's chain: the guide's three stages with the head's lr falling 1 -> 1/10 -> 1/30 and the
    backbone's 1 -> 1/10 (the defaults 1e-2 / 3e-4 give `gradual_schedule`'s rates); the strangers'
    EER is measured after every epoch."""
    plans = gradual_schedule(data.backbone, epochs, lr=(lr, lr / 10, lr / 30), backbone_lr=(backbone_lr, backbone_lr / 10))
    return run_chain(data, plans, ["stage 1", "stages 1-2", "stages 1-3"], seed, measure_memory=False,
                     strangers_each_epoch=True)


def compare_schedules_over_seeds(backbone: Backbone, faces, seeds: Sequence[int], n_known: int, shots: int | None,
                       size: int, epochs: dict[str, int], n_threads: int | None = None,
                       first: Sequence[RunResult] | None = None) -> SeedComparison:
    """Fine-tuning schedules over seeds (notebook 05): `compare_methods` on each seed's people and
    split; val / test accuracy and strangers' EER per seed.

    `first`: the results already computed for `seeds[0]` (not run again). Memory is not measured.
    """
    runs: dict[str, dict[str, list[float]]] = {}
    for k, seed in enumerate(seeds):
        if k == 0 and first is not None:
            results = list(first)
        else:
            data = prepare_data(backbone, faces, n_known=n_known, size=size, seed=seed, shots=shots,
                                n_threads=n_threads)
            gradual = gradual_schedule(backbone, (epochs["stage 1"], epochs["stage 2"], epochs["stage 3"]))
            results = compare_methods(data, gradual, full_schedule(backbone, epochs["full"]), seed,
                                      measure_memory=False)
        for r in results:
            row = runs.setdefault(r.method, {"val": [], "test": [], "eer": []})
            row["val"].append(r.metrics.val_acc)
            row["test"].append(r.metrics.test_acc)
            row["eer"].append(r.metrics.strangers_eer)
    task = f"{n_known} known people x {'all' if shots is None else shots} training photos at {size} px"
    return SeedComparison(task, list(seeds), runs)


# ---------------------------------------------------------------------- the powered comparison (stages 1-2)


def cached_arms(cut: str, steps: tuple[int, int] = (30, 8), lr: tuple[float, float] = (1e-2, 1e-3),
                backbone_lr: float = 3e-4, warmup: int = 3) -> dict[str, list[StagePlan]]:
    """Three arms with the same optimiser steps, batch and input size (stage 1 identical in all three):
    the head alone for both stages; + `cut` in stage 2 without warm-up; + `cut` with a `warmup`-step warm-up."""
    s1 = StagePlan("stage 1", (), steps[0], lr[0], cache=True)
    arms = {"frozen (head only, both stages)": [s1, StagePlan("stage 2", (), steps[1], lr[1], cache=True)],
            "gradual, no warm-up": [s1, StagePlan("stage 2", (cut,), steps[1], lr[1], backbone_lr, cache=True)]}
    if warmup:
        arms[f"gradual, {warmup}-step warm-up"] = [s1, StagePlan("stage 2", (cut,), steps[1], lr[1], backbone_lr,
                                                                 cache=True, warmup=warmup)]
    return arms


def compare_cached_over_seeds(backbone: Backbone, faces, seeds: Sequence[int], arms: dict[str, list[StagePlan]],
                              n_known: int, shots: int | None, size: int, all_inputs: torch.Tensor,
                              n_threads: int | None = None, trace: bool = True) -> SeedComparison:
    """Each arm of `cached_arms` on each seed's people and split (`train_cached_steps`).

    Per arm and seed: final val / test accuracy and strangers' EER ("val", "test", "eer"), and with
    `trace` the validation accuracy and strangers' EER after each stage-2 step, the end of stage 1
    first ("val_trace", "eer_trace": one list per seed).
    """
    runs = {name: {"val": [], "test": [], "eer": [], "val_trace": [], "eer_trace": []} for name in arms}
    for seed in seeds:
        data = prepare_data(backbone, faces, n_known=n_known, size=size, seed=seed, shots=shots,
                            n_threads=n_threads, all_inputs=all_inputs)
        for name, plans in arms.items():
            r = train_cached_steps(data, plans, name, seed, trace=trace)
            row = runs[name]
            row["val"].append(r.metrics.val_acc)
            row["test"].append(r.metrics.test_acc)
            row["eer"].append(r.metrics.strangers_eer)
            if trace:
                h1, h2 = r.histories[0], r.histories[-1]
                row["val_trace"].append([h1.val_acc[-1], *h2.val_acc])
                row["eer_trace"].append([h1.extra["strangers_eer"][-1], *h2.extra["strangers_eer"]])
    task = (f"{n_known} known people x {'all' if shots is None else shots} training photos at {size} px, "
            f"{sum(p.epochs for p in next(iter(arms.values())))} optimiser steps per arm")
    return SeedComparison(task, list(seeds), runs)


def choose_warmup(backbone: Backbone, faces, dev_seeds: Sequence[int], candidates: Sequence[int], n_known: int,
                  shots: int | None, size: int, all_inputs: torch.Tensor, n_threads: int | None = None,
                  steps: tuple[int, int] = (30, 8)) -> tuple[int, SeedComparison]:
    """The warm-up length (steps) with the highest mean validation accuracy over `dev_seeds`, among
    `candidates`, and the comparison it was chosen from. Only validation photos decide; never the test
    photos, never the strangers, never the seeds that later confirm the choice."""
    cut = last_stage(backbone)
    arms = {f"{w}-step warm-up": list(cached_arms(cut, steps, warmup=w).values())[-1] for w in candidates}
    comp = compare_cached_over_seeds(backbone, faces, dev_seeds, arms, n_known, shots, size, all_inputs,
                                     n_threads, trace=False)
    best = max(zip(candidates, arms), key=lambda wa: float(np.mean(comp.runs[wa[1]]["val"])))[0]
    return best, comp


def verdict(comp: SeedComparison, a: str, b: str, metric: str, what: str) -> str:
    """What the paired comparison a - b could detect, in points: the difference with its 95 % interval
    when it excludes 0, else "no difference larger than X points" (X: the interval's farther end)."""
    mean, half = comp.difference(a, b, metric)
    mean, half = 100 * mean, 100 * half
    n = len(comp.seeds)
    if abs(mean) > half:
        return f"{what}: {a} minus {b} = {mean:+.1f} ± {half:.1f} points over {n} seeds, a clear difference"
    return (f"{what}: {a} minus {b} = {mean:+.1f} ± {half:.1f} points over {n} seeds: "
            f"no difference larger than {abs(mean) + half:.1f} points")


def plot_warmup(comp: SeedComparison):
    """Validation accuracy and strangers' EER after each stage-2 step (step 0: the end of stage 1), mean over
    seeds with a 95 % t-interval band, one line per arm (10 x 3 inches)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    for name, row in comp.runs.items():
        for ax, key in zip(axes, ("val_trace", "eer_trace")):
            values = 100 * np.array(row[key])            # seeds x steps
            stats = [t_interval(col) for col in values.T]
            mean, half = np.array([m for m, _ in stats]), np.array([h for _, h in stats])
            steps = np.arange(values.shape[1])
            ax.plot(steps, mean, marker="o", ms=3, label=name)
            ax.fill_between(steps, mean - half, mean + half, alpha=0.15)
    axes[0].set(xlabel="stage-2 step (0 = end of stage 1)", ylabel="%", title="validation accuracy (known people)")
    axes[1].set(xlabel="stage-2 step (0 = end of stage 1)", ylabel="%", title="strangers' EER (lower is better)")
    axes[0].legend(fontsize=7)
    for ax in axes:
        ax.title.set_fontsize(9)
    fig.suptitle(f"mean and 95 % interval over {len(comp.seeds)} seeds", fontsize=9)
    fig.tight_layout()
    return fig


def plot_chain(chain: Sequence[RunResult]):
    """One curve across the chained stages of `run_chain`: training and validation loss, validation accuracy,
    and the strangers' EER after each stage; dotted lines mark where a stage ends (10 x 3 inches)."""
    import matplotlib.pyplot as plt

    last = chain[-1]
    h = last.combined_history()
    ep = np.arange(1, h.epochs + 1)
    ends = last.stage_ends()
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(10, 3))
    a1.plot(ep, h.loss, label="train (augmented in stage 3)")
    if h.val_loss:
        a1.plot(ep, h.val_loss, label="validation")
    a1.set(xlabel="epoch (all stages)", ylabel="loss", title="loss", yscale="log")
    a2.plot(ep, 100 * np.array(h.val_acc), color="tab:orange")
    a2.set(xlabel="epoch (all stages)", ylabel="%", title="validation accuracy (known people)")
    per_epoch = h.extra.get("strangers_eer", [])
    if len(per_epoch) == h.epochs:
        a3.plot(ep, 100 * np.array(per_epoch), color="tab:red", alpha=0.6, label="after each epoch")
    a3.plot(ends[:len(chain)], [100 * r.metrics.strangers_eer for r in chain], "o", color="tab:red",
            label="after each stage")
    a3.set(xlabel="epoch (all stages)", ylabel="%", title="strangers' EER (lower is better)")
    a3.legend(fontsize=7)
    for ax in (a1, a2, a3):
        for k, e in enumerate(ends[:-1]):
            ax.axvline(e + 0.5, ls=":", color="k", lw=1)
        ax.title.set_fontsize(9)
    for k, (start, e) in enumerate(zip([0, *ends[:-1]], ends)):
        a2.text((start + e) / 2 + 0.5, 0.02, f"stage {k + 1}", transform=a2.get_xaxis_transform(),
                ha="center", fontsize=7)
    a1.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.1f} %"


def accuracy_table(results: Sequence[RunResult]) -> str:
    """Accuracy columns only (deterministic for fixed seeds and threads), one line per method."""
    head = ("| method | train acc | val acc | cos to own person, train / val | test acc (known) | "
            "1-shot new people | strangers' EER |")
    lines = [head, "|" + "---|" * 7]
    for r in results:
        m = r.metrics
        lines.append(f"| {r.method} | {_pct(m.train_acc)} | {_pct(m.val_acc)} | {m.train_cos:.2f} / {m.val_cos:.2f} | "
                     f"{_pct(m.test_acc)} | {_pct(m.new_people_1shot)} | {_pct(m.strangers_eer)} |")
    return "\n".join(lines)


def comparison_table(results: Sequence[RunResult]) -> str:
    """What each method costs: parameters, epochs, time per epoch, caching, memory (pipe table; the
    accuracy columns are `accuracy_table`'s)."""
    head = ("| method | trainable params | epochs | s/epoch by stage | training time | one-off caching | "
            "peak extra memory |")
    lines = [head, "|" + "---|" * 7]
    for r in results:
        spe = " / ".join(f"{s:.2f} s" for s in r.seconds_per_epoch())
        mem = "n/a" if r.peak_mb is None else f"{r.peak_mb:.0f} MiB"
        lines.append(f"| {r.method} | {r.trainable:,} | {r.epochs} | {spe} | {r.train_seconds:.1f} s | "
                     f"{r.one_off_seconds:.1f} s | {mem} |")
    return "\n".join(lines)


def show_table(table: str) -> None:
    """Display a pipe table rendered as a table (Markdown), with the same text as its plain form."""
    from IPython.display import display

    display({"text/markdown": table, "text/plain": table}, raw=True)


def plot_comparison(results: Sequence[RunResult], raw: dict | None = None):
    """Four panels, one bar per method: accuracy (validation, test, 1-shot new people), strangers' EER,
    seconds per epoch of the last stage, peak memory (13 x 3.2 inches)."""
    import matplotlib.pyplot as plt

    names = [r.method.replace(", ", "\n").replace(" (", "\n(") for r in results]
    x = np.arange(len(results))
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
    w = 0.27
    for k, (attr, label) in enumerate([("val_acc", "validation"), ("test_acc", "test (known)"),
                                       ("new_people_1shot", "1-shot new people")]):
        axes[0].bar(x + (k - 1) * w, [100 * getattr(r.metrics, attr) for r in results], w, label=label)
    axes[0].axhspan(85, 92, color="tab:gray", alpha=0.15, label="guide: frozen 85-92 %")
    axes[0].set(title="accuracy (%)", ylim=(0, 105))
    axes[0].legend(fontsize=7, loc="lower left")
    axes[1].bar(x, [100 * r.metrics.strangers_eer for r in results], color="tab:red")
    if raw:
        axes[1].axhline(100 * raw["strangers_eer"], ls="--", color="k", label="raw frozen features")
        axes[1].legend(fontsize=7)
    axes[1].set(title="strangers' EER (%, lower is better)")
    axes[2].bar(x, [r.seconds_per_epoch()[-1] for r in results], color="tab:green")
    axes[2].set(title="seconds per epoch (last stage, log)", yscale="log")
    axes[3].bar(x, [r.peak_mb or 0 for r in results], color="tab:purple")
    axes[3].set(title="peak extra memory (MiB)")
    for ax in axes:
        ax.set_xticks(x, names, fontsize=7)
        ax.title.set_fontsize(9)
    fig.tight_layout()
    return fig


def cache_speedup(data: UnfreezeData, epochs: int = 2, lr: float = 1e-3, backbone_lr: float = 1e-3,
                  seed: int = 0) -> dict[str, float]:
    """Seconds per epoch of stage 2 (last stage + head) on cached inputs vs the whole backbone each epoch."""
    last = data.cut_stage
    cached = run_schedule(data, [StagePlan("cached", (last,), epochs, lr, backbone_lr, cache=True)],
                          seed=seed, measure_memory=False)
    uncached = run_schedule(data, [StagePlan("uncached", (last,), epochs, lr, backbone_lr)],
                            seed=seed, measure_memory=False)
    c, u = cached.seconds_per_epoch()[0], uncached.seconds_per_epoch()[0]
    return {"cached_s_per_epoch": c, "uncached_s_per_epoch": u, "speedup": u / c,
            "one_off_s": data.one_off_seconds}


def _bn_running_stats(module: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for b in (m.running_mean, m.running_var)]


def frozen_bn_pitfall(data: UnfreezeData, epochs: int = 10, lr: float = 1e-2, seed: int = 0) -> dict:
    """Train the head on photos through a frozen backbone, twice: BatchNorm kept in eval mode, and
    BatchNorm left in train mode (the pitfall). Same data, seed and epochs.

    For each: whether any weight changed, how far the BN running statistics moved (largest
    relative change), validation/test accuracy in eval mode, and the backbone (for more checks).
    """
    out = {}
    for name, keep_eval in (("bn eval", True), ("bn train", False)):
        bb = copy.deepcopy(data.backbone)
        bb.keep_frozen_bn_eval = keep_eval
        set_seed(seed)
        model = build_model(data.num_classes, backbone=bb, freeze_backbone=True)
        weights = {k: v.clone() for k, v in bb.state_dict().items() if "running" not in k and "num_batches" not in k}
        stats = _bn_running_stats(bb)
        res = run_schedule(data, [StagePlan("stage 1 on photos", (), epochs, lr)], seed=seed, model=model,
                           measure_memory=False, bn_train=not keep_eval)
        after = _bn_running_stats(bb)
        moved = max(float(((a - b).abs() / (b.abs() + 1e-3)).max()) for a, b in zip(after, stats))
        res.bn_stats_changed = moved > 0
        evaluate_run(res, data, seed, strangers=False)
        changed = any(not torch.equal(v, bb.state_dict()[k]) for k, v in weights.items())
        out[name] = {"weights_changed": changed, "bn_stats_moved": moved, "val_acc": res.metrics.val_acc,
                     "test_acc": res.metrics.test_acc, "train_acc_during_training": res.histories[0].train_acc[-1],
                     "backbone": bb, "result": res}
    return out


def imagenet_top1(backbone: Backbone, image, size: int = 224) -> tuple[str, float]:
    """The backbone's ImageNet top-1 (class, probability) for one PIL image (its classifier, unchanged)."""
    return backbone.predict_imagenet(backbone.transform(size=size)(image).unsqueeze(0), k=1)[0][0]


def feature_drift(result: RunResult, data: UnfreezeData) -> float:
    """Mean cosine similarity between pretrained and fine-tuned features of the strangers' photos."""
    a = F.normalize(data.features("strangers"), dim=1)
    b = F.normalize(model_features(result, data, "strangers"), dim=1)
    return float((a * b).sum(1).mean())


def frozen_report(model: FaceModel, pretrained: Backbone | None = None) -> str:
    """How to know a backbone is frozen, per stage: trainable parameters, BatchNorm layers that
    would be in train mode after `model.train()`, and (given the pretrained backbone) whether any
    weight or BatchNorm statistic differs from the pretrained one."""
    bb = model.backbone
    was = model.training
    model.train()
    ref = dict(pretrained.named_parameters()) | dict(pretrained.named_buffers()) if pretrained is not None else {}
    mine = dict(bb.named_parameters()) | dict(bb.named_buffers())
    lines = []
    for stage in bb.stage_names:
        if not bb.stage_paths[stage]:
            continue
        params = list(bb.stage_parameters(stage))
        trainable = sum(p.numel() for p in params if p.requires_grad)
        bns = [m for mod in bb.stage_modules(stage) for m in mod.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        line = (f"{stage:7s} trainable {trainable:>9,} of {sum(p.numel() for p in params):>9,} parameters; "
                f"BatchNorm in train mode {sum(m.training for m in bns):>2} of {len(bns):>2}")
        if ref:
            prefixes = tuple(f"body.{path}." for path in bb.stage_paths[stage])
            keys = [k for k in mine if k.startswith(prefixes) and "num_batches" not in k]
            same = all(torch.equal(mine[k].detach().cpu(), ref[k].detach().cpu()) for k in keys)
            line += f"; identical to the pretrained weights: {'yes' if same else 'NO'}"
        lines.append(line)
    model.train(was)
    return "\n".join(lines)


def show_augmentations(data: UnfreezeData, index: int = 0, n: int = 6, seed: int = 0):
    """One training photo and `n` augmented versions of it, as the network sees them (denormalised)."""
    import matplotlib.pyplot as plt

    img = data.images("train")[index]
    tf = data.transform(train=True)
    mean, std = torch.tensor(data.backbone.mean)[:, None, None], torch.tensor(data.backbone.std)[:, None, None]
    torch.manual_seed(seed)
    views = [data.transform()(img)] + [tf(img) for _ in range(n)]
    fig, axes = plt.subplots(1, n + 1, figsize=(1.4 * (n + 1), 1.7))
    for k, (ax, v) in enumerate(zip(axes, views)):
        ax.imshow((v * std + mean).clamp(0, 1).permute(1, 2, 0).numpy())
        ax.set_title("as evaluated" if k == 0 else f"augmented {k}", fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    return fig


def describe_result(res: RunResult, previous: RunResult | None = None) -> str:
    """One line: 'Result: ...' with accuracy, gap, EER, time per epoch, trainable parameters, memory;
    with `previous` (the panel's last click), how test accuracy and the strangers' EER moved since."""
    if res.diverged:
        return f"Result: training diverged ({res.diverged})"
    m = res.metrics
    mem = "n/a" if res.peak_mb is None else f"{res.peak_mb:.0f} MiB"
    line = (f"Result: test acc {_pct(m.test_acc)}, val acc {_pct(m.val_acc)}, train-val gap "
            f"{100 * m.gap:+.1f} pts (cos {m.cos_gap:+.2f}), strangers' EER {_pct(m.strangers_eer)}; "
            f"TAR {_pct(m.strangers_tar)} at FAR 1 %; {res.seconds_per_epoch()[-1]:.2f} s/epoch, {res.trainable:,} trainable parameters, "
            f"peak extra memory {mem}")
    if previous is not None and previous.metrics is not None and not previous.diverged:
        p = previous.metrics
        line += (f" | vs previous click: test acc {100 * (m.test_acc - p.test_acc):+.1f} pts, "
                 f"strangers' EER {100 * (m.strangers_eer - p.strangers_eer):+.1f} pts")
    return line
