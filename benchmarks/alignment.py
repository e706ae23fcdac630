"""Which face finder for photos as phones take them: Haar box, dlib box, dlib aligned (two geometries).

    python -m benchmarks.alignment --phase dev                      # every candidate, development people
    python -m benchmarks.alignment --phase test --candidates haar dlib-orl   # the one look (log it)

Protocol: benchmarks/protocols/alignment.md. Per seed, the threshold protocol's folder draw
(`benchmarks.threshold.write_folder`'s people and photos) with every photo made into a scene
(`benchmarks.scenes`, JPEG files with EXIF tags, read back through `helpers.data.images.read_image`);
each candidate finds the faces, the product is trained on the enrolment crops (`train_recognizer`,
calibration strangers: none) and scores the query crops. Per-query results go to
`benchmarks/results_alignment_<phase>/seed<S>-<candidates>.json` (one process per seed and candidate list; `--report`
prints the table from them); intervals as in `benchmarks.threshold.measures`.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.scenes import scene
from benchmarks.threshold import KNOWN, enrol_and_queries, measures, partition, pct
from helpers.data.folders import FaceSet, load_folder, load_orl
from helpers.data.images import read_image

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)      # 5 planned; cut to 3 before any result (CPU time, see the protocol)
CANDIDATES = ("haar", "dlib-box", "dlib-orl", "dlib-wide")
FAMILY = "scenes"


def finder_for(name: str):
    from helpers.data.alignment import DlibAligner, HaarFinder

    return {"haar": HaarFinder, "dlib-box": lambda: DlibAligner(align=False),
            "dlib-orl": lambda: DlibAligner("orl"), "dlib-wide": lambda: DlibAligner("wide")}[name]()


def write_scenes(orl, phase: str, seed: int, where: Path, people: dict) -> dict:
    """The seed's enrolment folder and query photos, all as scenes; the truth of every query."""
    rng = np.random.default_rng([seed, 7])            # the threshold protocol's draw
    pool = people[phase]
    known = sorted(int(p) for p in rng.choice(pool, KNOWN[phase], replace=False))
    others = {p: [q for q in pool if q != p] for p in pool}

    def write(i: int, path: Path) -> None:
        r = np.random.default_rng([seed, i, 11])
        p2 = int(r.choice(others[int(orl.labels[i])]))
        second = orl.images[int(r.choice(np.flatnonzero(orl.labels == p2)))]
        data, _ = scene(orl.images[i], [seed, i], second)
        path.write_bytes(data)

    queries = enrol_and_queries(orl, pool, known, rng, where, lambda i, d, j: write(i, d / f"{j}.jpg"))
    qdir = where / "queries"
    qdir.mkdir(parents=True)
    for i, _, _ in queries:
        write(i, qdir / f"{i}.jpg")
    return {"known": [orl.names[p] for p in known], "queries": queries, "dir": str(qdir)}


def run_candidate(name: str, where: Path, truth: dict, backbone, threads: int) -> dict:
    from helpers.evaluate.metrics import best_match
    from helpers.recognize.pipeline import RecognizerConfig, embed_features, method_features, train_recognizer

    finder = finder_for(name)
    t0 = time.perf_counter()
    enrol: FaceSet = load_folder(where / "enrol", crop_faces=True, finder=finder)
    crops, missed = [], []
    for i, _, _ in truth["queries"]:
        found = finder.find(read_image(Path(truth["dir"]) / f"{i}.jpg"))
        crops.append(found[0].image if found else None)
        if not found:
            missed.append(i)
    t_find = time.perf_counter() - t0
    rec, _ = train_recognizer(enrol, backbone, RecognizerConfig(threads=threads), strangers=None)
    have = [k for k, c in enumerate(crops) if c is not None]
    closest = [None] * len(crops)
    score = [-1.0] * len(crops)
    if have:
        feats = method_features(backbone, [crops[k] for k in have], RecognizerConfig(size=rec.size, threads=threads))
        idx, sc = best_match(rec.gallery_np, embed_features(rec, feats))
        for k, j, s in zip(have, idx, sc):
            closest[k], score[k] = rec.names[j], float(s)
    q = [{"family": FAMILY, "photo": i, "person": person, "known": known, "closest": c, "score": s}
         for (i, person, known), c, s in zip(truth["queries"], closest, score)]
    return {"threshold": float(rec.threshold), "queries": q, "query_missed": missed,
            "enrol_photos": len(enrol), "enrol_skipped": [p for p, _ in enrol.report.skipped],
            "enrol_notes": list(enrol.report.notes), "find_seconds": round(t_find, 1),
            "seconds": round(time.perf_counter() - t0, 1)}


def cli_check(where: Path, truth: dict, rec_run: dict, name: str, backbone, threads: int) -> list:
    """Spot check for the test look: `python -m helpers recognize --crop-faces` on 4 queries gives the
    scores computed here (the product's own face finder must be `name`)."""
    from helpers.recognize.pipeline import RecognizerConfig, train_recognizer

    enrol = load_folder(where / "enrol", crop_faces=True, finder=finder_for(name))
    rec, _ = train_recognizer(enrol, backbone, RecognizerConfig(threads=threads), strangers=None)
    model = where / "m.pt"
    rec.save(model)
    picks = [0, 1, len(truth["queries"]) - 2, len(truth["queries"]) - 1]
    files = [str(Path(truth["dir"]) / f"{truth['queries'][k][0]}.jpg") for k in picks]
    r = subprocess.run([sys.executable, "-m", "helpers", "recognize", "--model", str(model), "--json",
                        "--crop-faces", "--threads", str(threads), *files], capture_output=True, text=True,
                       cwd=ROOT)
    rows = json.loads(r.stdout)
    for k, row in zip(picks, rows):
        want = rec_run["queries"][k]
        if row["score"] is not None and (row["closest"] != want["closest"] or abs(row["score"] - want["score"]) > 2e-3):
            raise RuntimeError(f"recognize disagrees: {row} vs {want}")
    return rows


def stored_runs(phase: str, seeds=SEEDS) -> list[dict]:
    """The stored per-query results of `phase`, one dict per seed (the files of every process merged)."""
    parts = ROOT / "benchmarks" / f"results_alignment_{phase}"
    runs = []
    for seed in seeds:
        run = {}
        for f in sorted(parts.glob(f"seed{seed}-*.json")):
            run.update(json.loads(f.read_text()))
        runs.append(run)
    return runs


def table_lines(runs: list[dict], candidates, phase: str) -> list[str]:
    """The markdown table of `candidates` on stored runs (intervals as `benchmarks.threshold.measures`)."""
    out = ["| candidate | identification % [95 % CI] | strangers' EER % (mean [min, max]) | known accepted % "
           "| strangers accepted % | query faces missed | enrolment photos skipped | find s/photo |",
           "|---|---|---|---|---|---|---|---|"]
    for name in candidates:
        m = measures(runs, name, FAMILY)
        nq = sum(len(r[name]["queries"]) for r in runs)
        miss = sum(len(r[name]["query_missed"]) for r in runs)
        skip = sum(len(r[name]["enrol_skipped"]) for r in runs)
        sec = sum(r[name]["find_seconds"] for r in runs) / sum(nq / len(runs) + 3 * KNOWN[phase] for _ in runs)
        out.append(f"| {name} | {pct(m['identification'])} | {pct(m['eer'])} | {pct(m['known_accepted'])} | "
                   f"{pct(m['strangers_accepted'])} | {miss}/{nq} | {skip}/{3 * KNOWN[phase] * len(runs)} | "
                   f"{sec:.2f} |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phase", choices=("dev", "test"), required=True)
    ap.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=CANDIDATES)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--report", action="store_true", help="only print the table from the stored seed files")
    ap.add_argument("--check-cli", default=None, help="candidate the product uses: spot-check the CLI")
    args = ap.parse_args(argv)
    from helpers.models.backbones import load_backbone
    from helpers.runtime import threads as n_threads

    people = partition()
    orl = load_orl()
    backbone = load_backbone("efficientnet_lite0", verbose=False)
    parts = ROOT / "benchmarks" / f"results_alignment_{args.phase}"
    parts.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, n_threads(args.threads):
        for seed in ([] if args.report else args.seeds):
            where = Path(tmp) / f"{args.phase}-{seed}"
            truth = write_scenes(orl, args.phase, seed, where, people)
            run = {"seed": seed, "known": truth["known"]}
            for name in args.candidates:
                run[name] = run_candidate(name, where, truth, backbone, args.threads)
                print(f"  {args.phase} seed {seed} {name}: threshold {run[name]['threshold']:.3f}, "
                      f"query faces missed {len(run[name]['query_missed'])}, enrol skipped "
                      f"{len(run[name]['enrol_skipped'])} ({run[name]['seconds']} s)", flush=True)
            part = parts / f"seed{seed}-{'+'.join(args.candidates)}.json"
            part.write_text(json.dumps(run, indent=0))
            if args.check_cli and seed == args.seeds[0]:
                try:
                    run["cli_check"] = cli_check(where, truth, run[args.check_cli], args.check_cli, backbone,
                                                 args.threads)
                except (RuntimeError, ValueError) as e:       # recorded, never hidden
                    run["cli_check"] = f"FAILED: {e}"
                print(f"  CLI spot check: {run['cli_check']}", flush=True)
                part.write_text(json.dumps(run, indent=0))
    print("\n".join(table_lines(stored_runs(args.phase, args.seeds), args.candidates, args.phase)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
