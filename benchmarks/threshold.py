"""The saved threshold, measured as a learner meets it: `python -m helpers train`, then `recognize`.

    python -m benchmarks.threshold --phase dev     # choose the rule (development people only)
    python -m benchmarks.threshold --phase test    # one look at the test people (log it in the looks log)

Protocol: benchmarks/protocols/threshold.md (people, seeds, candidate rules, selection rule, targets).
For each seed, a folder is written from ORL people of the phase: `known` people with 3 enrolment
photos each (the recogniser's folder), their other 7 photos and every photo of the other people of
the phase (strangers) as queries, clean and at low resolution (`lowres`: shrunk to 24 px wide and
back, not one of the enrolment augmentations). Both recognisers, BEFORE (main at `BEFORE_COMMIT`,
run from an extracted copy of its `helpers/`) and AFTER (this tree), are trained and asked through
the command line. Rates at the saved threshold: known people's photos accepted (any name) and
strangers' photos accepted; identification (closest = the right person); the open-set EER between
known photos (their score when the closest is right) and strangers' photos. Intervals: a percentile
bootstrap over people (each (seed, person) a cluster, 2,000 resamples). Per-query results are
written to `benchmarks/results_threshold_<phase>.json`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_curve

from helpers.data.background import BACKGROUND_PEOPLE
from helpers.evaluate.calibration import RULES, threshold_for
from helpers.data.folders import load_orl
from helpers.evaluate.metrics import eer_from_roc

ROOT = Path(__file__).resolve().parents[1]
BEFORE_COMMIT = "12b1f81"        # main when this branch started
PARTITION_SEED = 23              # shuffles ORL s11-s40 into development and test people
N_DEV = 10
SHOTS = 3
KNOWN = {"dev": 5, "test": 9}
SEEDS = (0, 1, 2, 3, 4)
FAMILIES = ("clean", "lowres")
TARGETS = {"clean": (0.95, 0.02), "lowres": (0.90, 0.05)}   # known accepted >=, strangers accepted <=


def partition() -> dict[str, list[int]]:
    """ORL labels (0-based: s11 is 10) of the development and test people; never a background person."""
    pool = np.array([p for p in range(40) if p not in BACKGROUND_PEOPLE])
    perm = np.random.default_rng(PARTITION_SEED).permutation(pool)
    return {"dev": sorted(int(p) for p in perm[:N_DEV]), "test": sorted(int(p) for p in perm[N_DEV:])}


def lowres(img: Image.Image) -> Image.Image:
    """Shrunk to 24 px wide (bilinear, area-preserving) and enlarged back to its size."""
    w, h = img.size
    return img.resize((24, max(1, round(24 * h / w))), Image.BILINEAR).resize((w, h), Image.BILINEAR)


def before_tree(cache: Path) -> Path:
    """main's `helpers/` at BEFORE_COMMIT, extracted once (so BEFORE runs the shipped code unchanged)."""
    out = cache / f"before-{BEFORE_COMMIT}"
    if not (out / "helpers" / "__init__.py").exists():
        blob = subprocess.run(["git", "-C", str(ROOT), "archive", BEFORE_COMMIT, "helpers"], check=True,
                              capture_output=True).stdout
        with tarfile.open(fileobj=BytesIO(blob)) as tar:
            tar.extractall(out, filter="data")
    return out


def enrol_and_queries(orl, pool, known, rng, where: Path, save) -> list[tuple[int, str, bool]]:
    """Writes `SHOTS` shuffled enrolment photos of each known person with `save(photo, folder, j)` (j from
    1); the known people's other photos and every stranger's photos are the queries (photo, name, known).
    Shared by the threshold, families and alignment protocols, so their folders are drawn alike."""
    queries = []
    for p in pool:
        idx = np.flatnonzero(orl.labels == p)
        idx = rng.permutation(idx) if p in known else idx
        if p in known:
            d = where / "enrol" / orl.names[p]
            d.mkdir(parents=True)
            for j, i in enumerate(idx[:SHOTS]):
                save(int(i), d, j + 1)
        for i in (idx[SHOTS:] if p in known else idx):
            queries.append((int(i), orl.names[p], p in known))
    return queries


def write_folder(orl, phase: str, seed: int, where: Path, people: dict) -> dict:
    """The seed's enrolment folder and queries; returns the truth of every query."""
    rng = np.random.default_rng([seed, 7])
    pool = people[phase]
    known = sorted(int(p) for p in rng.choice(pool, KNOWN[phase], replace=False))
    queries = enrol_and_queries(orl, pool, known, rng, where, lambda i, d, j: orl.images[i].save(d / f"{j}.png"))
    files = {}
    for fam in FAMILIES:
        d = where / "queries" / fam
        d.mkdir(parents=True)
        for i, _, _ in queries:
            im = orl.images[i] if fam == "clean" else lowres(orl.images[i])
            im.save(d / f"{i}.png")
            files[(fam, i)] = str(d / f"{i}.png")
    return {"known": [orl.names[p] for p in known], "queries": queries, "files": files}


def cli(tree: Path, *args: str, threads: int) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree), "FACE_COURSE_OFFLINE": "1",   # one feature cache for both
           "FACE_COURSE_CACHE": os.environ.get("FACE_COURSE_CACHE", str(ROOT / ".cache"))}
    r = subprocess.run([sys.executable, "-m", "helpers", *args, "--threads", str(threads)], env=env,
                       capture_output=True, text=True, cwd=tree)   # `-m` puts the cwd first: the tree's helpers
    if r.returncode not in (0, 1):
        raise RuntimeError(f"helpers {args[0]} failed: {r.stderr[-2000:]}")
    return r.stdout


def query_features(backbone, orl) -> dict[str, np.ndarray]:
    """Unwhitened vectors (the default method's multi-layer + mirror TTA) of all 400 ORL photos per
    family, from the library's feature cache: every recogniser here shares the frozen backbone."""
    from helpers.recognize.pipeline import method_features

    return {fam: np.asarray(method_features(backbone, list(orl.images) if fam == "clean"
                                            else [lowres(im) for im in orl.images]))
            for fam in FAMILIES}


def scores_of(model: Path, unwhitened: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(closest name, best score) of each vector under a saved recogniser (what `recognize` computes)."""
    from helpers.evaluate.metrics import best_match
    from helpers.recognize.recognizer import load_recognizer
    from helpers.recognize.pipeline import embed_features

    rec = load_recognizer(model)
    idx, score = best_match(rec.gallery_np, embed_features(rec, unwhitened))
    return [rec.names[i] for i in idx], score


def run_seed(orl, phase: str, seed: int, people: dict, trees: dict, threads: int, strangers_dir: Path | None,
             tmp: Path, feats: dict) -> dict:
    where = tmp / f"{phase}-{seed}"
    truth = write_folder(orl, phase, seed, where, people)
    out = {"known": truth["known"]}
    for version, tree in trees.items():
        model = where / f"{version}.pt"
        t0 = time.perf_counter()
        said = cli(tree, "train", "--data", str(where / "enrol"), "--out", str(model), "--backbone",
                   "efficientnet_lite0", "--strangers",
                   str(strangers_dir) if strangers_dir else "none", threads=threads)
        saved = torch.load(model, map_location="cpu", weights_only=True)
        q = []
        for fam in FAMILIES:
            ids = [i for i, _, _ in truth["queries"]]
            closest, score = scores_of(model, feats[fam][ids])
            q += [{"family": fam, "photo": i, "person": name, "known": known, "closest": c, "score": float(sc)}
                  for (i, name, known), c, sc in zip(truth["queries"], closest, score)]
        # spot check: the command line's answers equal these for a few photos (first and last of each family)
        picks = [k for k in (0, len(truth["queries"]) - 1, len(truth["queries"]),  len(q) - 1)]
        rows = json.loads(cli(tree, "recognize", "--model", str(model), "--json",
                              *[truth["files"][(q[k]["family"], q[k]["photo"])] for k in picks], threads=threads))
        for k, row in zip(picks, rows):
            if row["closest"] != q[k]["closest"] or abs(row["score"] - q[k]["score"]) > 2e-3:
                raise RuntimeError(f"recognize disagrees with the cached scores: {row} vs {q[k]}")
        out[version] = {"threshold": float(saved["threshold"]), "train_output": said.strip().splitlines(),
                        "calibration": saved.get("calibration"), "queries": q,
                        "recognize_check": rows, "seconds": round(time.perf_counter() - t0, 1)}
        print(f"  {phase} seed {seed} {version}: threshold {saved['threshold']:.3f} "
              f"({out[version]['seconds']} s)", flush=True)
    return out


# ---------------------------------------------------------------------- measures

def measures(runs: list[dict], version: str, fam: str, thresholds: list[float] | None = None,
             n_boot: int = 2000, seed: int = 0) -> dict:
    """Rates at each run's threshold (saved, or `thresholds` per run), bootstrap over (seed, person)."""
    clusters = []     # (is_known, accepted, n, identified)
    eers = []
    for k, run in enumerate(runs):
        t = run[version]["threshold"] if thresholds is None else thresholds[k]
        q = [r for r in run[version]["queries"] if r["family"] == fam]
        by = {}
        for r in q:
            by.setdefault((r["person"], r["known"]), []).append(r)
        for (person, known), rs in by.items():
            clusters.append((known, sum(r["score"] >= t for r in rs), len(rs),
                             sum(r["closest"] == person for r in rs)))
        gen = [r["score"] if r["closest"] == r["person"] else -1.0 for r in q if r["known"]]
        imp = [r["score"] for r in q if not r["known"]]
        fpr, tpr, _ = roc_curve(np.r_[np.ones(len(gen)), np.zeros(len(imp))], np.r_[gen, imp],
                                drop_intermediate=False)
        eers.append(eer_from_roc(fpr, tpr))
    c = np.array(clusters, dtype=float)
    kn, st = c[c[:, 0] == 1], c[c[:, 0] == 0]
    rng = np.random.default_rng(seed)

    def rate(rows, col):
        return rows[:, col].sum() / rows[:, 2].sum()

    def boot(rows, col):
        draws = [rate(rows[rng.integers(0, len(rows), len(rows))], col) for _ in range(n_boot)]
        return float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))

    return {"known_accepted": (rate(kn, 1), *boot(kn, 1)), "strangers_accepted": (rate(st, 1), *boot(st, 1)),
            "identification": (rate(kn, 3), *boot(kn, 3)),
            "eer": (float(np.mean(eers)), float(np.min(eers)), float(np.max(eers))),
            "known_photos": int(kn[:, 2].sum()), "stranger_photos": int(st[:, 2].sum())}


def pct(v) -> str:
    return f"{100 * v[0]:5.1f} [{100 * v[1]:.1f}, {100 * v[2]:.1f}]"


def table(runs: list[dict], rows: dict[str, tuple[str, list | None]]) -> list[str]:
    """Markdown rows: label -> (version, per-run thresholds or None for the saved one)."""
    out = ["| recogniser | family | threshold (mean) | known accepted % [95 % CI] | strangers accepted % "
           "[95 % CI] | identification % [95 % CI] | open-set EER % (mean [min, max] over seeds) |",
           "|---|---|---|---|---|---|---|"]
    for label, (version, thr) in rows.items():
        ts = [r[version]["threshold"] for r in runs] if thr is None else thr
        for fam in FAMILIES:
            m = measures(runs, version, fam, thr)
            out.append(f"| {label} | {fam} | {np.mean(ts):.3f} | {pct(m['known_accepted'])} | "
                       f"{pct(m['strangers_accepted'])} | {pct(m['identification'])} | {pct(m['eer'])} |")
    return out


def rule_thresholds(runs: list[dict], rule: str) -> list[float]:
    """The threshold `rule` picks from each run's stored AFTER calibration scores."""
    return [threshold_for(rule, r["after"]["calibration"]["genuine_scores"],
                          r["after"]["calibration"]["impostor_scores"]) for r in runs]


def slack(runs: list[dict], thr: list[float]) -> float:
    """The selection criterion: the worst of the four targets' slacks, each over its error budget."""
    worst = np.inf
    for fam, (ka_min, sa_max) in TARGETS.items():
        m = measures(runs, "after", fam, thr, n_boot=1)
        worst = min(worst, (m["known_accepted"][0] - ka_min) / (1 - ka_min),
                    (sa_max - m["strangers_accepted"][0]) / sa_max)
    return float(worst)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phase", choices=("dev", "test"), required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reuse", action="store_true", help="re-read the stored results instead of running")
    args = ap.parse_args(argv)
    people = partition()
    result_file = ROOT / "benchmarks" / f"results_threshold_{args.phase}.json"
    print(f"development people: {', '.join(f's{p + 1}' for p in people['dev'])}")
    print(f"test people: {', '.join(f's{p + 1}' for p in people['test'])}")
    if args.reuse:
        runs = json.loads(result_file.read_text())["runs"]
    else:
        orl = load_orl()
        cache = ROOT / ".cache"
        cache.mkdir(exist_ok=True)
        trees = {"before": before_tree(cache), "after": ROOT}
        from helpers.models.backbones import load_backbone
        from helpers.runtime import threads as n_threads

        t0 = time.perf_counter()
        with n_threads(args.threads):
            feats = query_features(load_backbone("efficientnet_lite0", verbose=False), orl)
        print(f"query features: {time.perf_counter() - t0:.0f} s", flush=True)
        runs = []
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            sdir = None
            if args.phase == "test":   # the packaged stand-in strangers, without any test person
                sdir = tmp / "strangers"
                for p in people["dev"]:
                    (sdir / orl.names[p]).mkdir(parents=True)
                    for j, i in enumerate(np.flatnonzero(orl.labels == p)):
                        orl.images[i].save(sdir / orl.names[p] / f"{j + 1}.png")
            for seed in args.seeds:
                runs.append({"seed": seed, **run_seed(orl, args.phase, seed, people, trees, args.threads, sdir, tmp,
                                                        feats)})
        result_file.write_text(json.dumps({"phase": args.phase, "people": people, "runs": runs}, indent=0))
    rows = {"BEFORE (main, saved)": ("before", None), "AFTER (saved)": ("after", None)}
    if args.phase == "dev":
        for rule in RULES:
            rows[f"AFTER rule {rule}"] = ("after", rule_thresholds(runs, rule))
    print("\n".join(table(runs, rows)))
    if args.phase == "dev":
        scores = {rule: slack(runs, rule_thresholds(runs, rule)) for rule in RULES}
        for rule, s in scores.items():
            print(f"selection criterion (worst slack over the error budget) {rule}: {s:+.3f}")
        print(f"chosen: {max(RULES, key=lambda r: (scores[r], -RULES.index(r)))}")
    cal = [r["after"]["calibration"] for r in runs]
    print(f"AFTER's recorded estimates (mean over seeds): FAR {100 * np.mean([c['far'] for c in cal]):.1f} %, "
          f"FRR {100 * np.mean([c['frr'] for c in cal]):.1f} %, on {np.mean([c['genuine'] for c in cal]):.0f} "
          f"genuine / {np.mean([c['impostor'] for c in cal]):.0f} impostor scores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
