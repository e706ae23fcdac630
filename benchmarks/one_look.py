"""The one-look protocols, regenerated from their stored per-query results: the saved threshold, the
degradation families (dlib beside the product) and faces inside larger photos.

Each protocol in benchmarks/protocols/ was written before its runs. Its development phase made every
choice; its test phase looked once at the 20 test people and stored every query's result
(`benchmarks/results_threshold_<phase>.json`, `results_families_<phase>.json`,
`results_alignment_<phase>/`). This section recomputes every table and headline figure from those
files, so that the README, `benchmarks/ONE_LOOK.md` and `benchmarks/FAMILIES.md` hold no hand-copied
number. It computes no new scores: running a test phase again would be another look at the test
people, so it is done by hand and logged in the protocol's looks file
(`python -m benchmarks.threshold --phase test`, `benchmarks.families`, `benchmarks.alignment`); a
development phase reruns the same way with `--phase dev`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import alignment, families, threshold
from .common import Figure, Section

ROOT = Path(__file__).resolve().parents[1]
CHOSEN_FINDER = "dlib-orl"      # the development choice of protocols/alignment.md
REFERENCE_FINDER = "haar"       # the finder before it, tested beside it in the same look


def _load(name: str) -> dict | None:
    path = ROOT / "benchmarks" / name
    return json.loads(path.read_text()) if path.exists() else None


def committed(*paths: str) -> tuple[str, str]:
    """When and at which commit the stored results were last committed (the look's measurement); empty
    strings outside a git checkout (a downloaded zip), where the report then shows no date."""
    import subprocess

    out = subprocess.run(["git", "log", "-1", "--format=%cd %h", "--date=format:%Y-%m-%d %H:%M", "--", *paths],
                         cwd=ROOT, capture_output=True, text=True).stdout.split()
    return (" ".join(out[:2]), out[2]) if len(out) == 3 else ("", "")


def _rate_figure(key: str, label: str, est, target: str, met: bool, stored: tuple[str, str]) -> Figure:
    """A rate (value, low, high) as a percentage, its 95 % interval in the label (it is not symmetric)."""
    v, lo, hi = (100 * x for x in est)
    return Figure(key, f"{label} [95 % CI {lo:.1f}, {hi:.1f}]", v, "%", target=target, met=met,
                  measured=stored[0], commit=stored[1])


def dev_halves() -> list[list[str]]:
    """The development people split in two fixed halves (alternate people in ORL order): the nested check
    that a winner chosen on all development people is also the winner on each half."""
    names = [f"s{p + 1}" for p in sorted(threshold.partition()["dev"])]
    return [names[0::2], names[1::2]]


def _only(runs: list[dict], keys, people: list[str]) -> list[dict]:
    """`runs` with the queries of `keys` (versions or candidates) kept for `people` only."""
    return [{**r, **{k: {**r[k], "queries": [q for q in r[k]["queries"] if q["person"] in people]} for k in keys}}
            for r in runs]


def threshold_winner(runs: list[dict]) -> tuple[str, dict[str, float]]:
    """protocols/threshold.md's selection rule on `runs`: the largest worst-slack, ties to the earlier rule."""
    scores = {rule: threshold.slack(runs, threshold.rule_thresholds(runs, rule)) for rule in threshold.RULES}
    return max(threshold.RULES, key=lambda r: (scores[r], -threshold.RULES.index(r))), scores


def alignment_winner(runs: list[dict]) -> tuple[str, dict[str, float]]:
    """protocols/alignment.md's selection rule: lowest mean EER among candidates whose identification is
    within 2 points of the best; EER ties (within 0.5 points) to the earlier candidate."""
    m = {c: threshold.measures(runs, c, alignment.FAMILY, n_boot=1) for c in alignment.CANDIDATES}
    best_id = max(v["identification"][0] for v in m.values())
    alive = [c for c in alignment.CANDIDATES if m[c]["identification"][0] >= best_id - 0.02]
    low = min(m[c]["eer"][0] for c in alive)
    return next(c for c in alive if m[c]["eer"][0] <= low + 0.005), {c: m[c]["eer"][0] for c in alignment.CANDIDATES}


def nested_line(what: str, winner: str, halves: list[tuple[str, dict]]) -> str:
    same = all(w == winner for w, _ in halves)
    return (f"Nested check on the development halves ({', '.join(' '.join(h) for h in dev_halves())}): {what} chosen "
            f"on all development people: `{winner}`; on each half: " + ", ".join(f"`{w}`" for w, _ in halves)
            + (" (the same winner)." if same else " (**not** the same winner: the choice rests on few people)."))


def paired_before_after(runs: list[dict], fam: str, n_boot: int = 2000, seed: int = 0) -> dict[str, tuple]:
    """AFTER - BEFORE (the previous default threshold rule) on the same query photos: rate differences with a
    95 % percentile bootstrap over (seed, person) clusters, both recognisers resampled together."""
    rows = []           # per cluster: known?, n, accepted BEFORE, accepted AFTER
    for run in runs:
        by = {}
        for version in ("before", "after"):
            t = run[version]["threshold"]
            for q in run[version]["queries"]:
                if q["family"] == fam:
                    c = by.setdefault((q["person"], q["known"]), {"before": [], "after": []})
                    c[version].append((q["photo"], q["score"] >= t))
        for (_, known), c in by.items():
            assert sorted(p for p, _ in c["before"]) == sorted(p for p, _ in c["after"]), "unpaired queries"
            rows.append((known, len(c["after"]), sum(a for _, a in c["before"]), sum(a for _, a in c["after"])))
    a = np.array(rows, dtype=float)
    rng = np.random.default_rng(seed)
    out = {}
    for name, part in (("known_accepted", a[a[:, 0] == 1]), ("strangers_accepted", a[a[:, 0] == 0])):
        def diff(r):
            return float((r[:, 3].sum() - r[:, 2].sum()) / r[:, 1].sum())
        draws = [diff(part[rng.integers(0, len(part), len(part))]) for _ in range(n_boot)]
        out[name] = (diff(part), float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5)))
    return out


def threshold_part() -> tuple[list[Figure], list[str], dict]:
    """The saved threshold's operating point on test people (clean and low-resolution queries)."""
    test, dev = _load("results_threshold_test.json"), _load("results_threshold_dev.json")
    if test is None:
        return [], ["threshold: no stored test results (benchmarks/results_threshold_test.json)"], {}
    runs = test["runs"]
    stored = committed("benchmarks/results_threshold_test.json")
    figs = []
    for fam, (ka_min, sa_max) in threshold.TARGETS.items():
        m = threshold.measures(runs, "after", fam)
        figs.append(_rate_figure(f"threshold_{fam}_known",
                                 f"saved threshold, {fam} queries (test people): known people accepted",
                                 m["known_accepted"], f">= {100 * ka_min:g} % (by the bound)",
                                 m["known_accepted"][1] >= ka_min, stored))
        figs.append(_rate_figure(f"threshold_{fam}_strangers",
                                 f"saved threshold, {fam} queries (test people): strangers accepted",
                                 m["strangers_accepted"], f"<= {100 * sa_max:g} % (by the bound)",
                                 m["strangers_accepted"][2] <= sa_max, stored))
    cal = [r["after"]["calibration"] for r in runs]
    lines = ["## The saved threshold (protocol `protocols/threshold.md`, looks `protocols/threshold_looks.md`)", "",
             f"Test people: {len(runs)} seeds, folders of 9 known × 3 enrolment photos and 11 strangers; BEFORE = "
             f"main at {threshold.BEFORE_COMMIT}, AFTER = the product's rule. The threshold's own estimates "
             f"(recorded in the recogniser file, mean over seeds): false accepts "
             f"{100 * np.mean([c['far'] for c in cal]):.1f} %, false rejects {100 * np.mean([c['frr'] for c in cal]):.1f} %"
             f" on {np.mean([c['genuine'] for c in cal]):.0f} genuine and {np.mean([c['impostor'] for c in cal]):.0f} "
             "impostor calibration scores.", ""]
    lines += threshold.table(runs, {"BEFORE (main, saved)": ("before", None), "AFTER (saved)": ("after", None)})
    lines += ["", "Paired differences, AFTER − BEFORE (the previous default rule), same query photos "
              "(percentage points, 95 % bootstrap over (seed, person) clusters):", "",
              "| family | known accepted | strangers accepted |", "|---|---|---|"]
    paired = {}
    for fam in threshold.FAMILIES:
        d = paired_before_after(runs, fam)
        paired[fam] = {k: [round(100 * x, 1) for x in v] for k, v in d.items()}
        lines.append(f"| {fam} | {threshold.pct(d['known_accepted'])} | {threshold.pct(d['strangers_accepted'])} |")
    if dev is not None:
        rows = {}
        for rule in threshold.RULES:
            rows[f"AFTER rule {rule}"] = ("after", threshold.rule_thresholds(dev["runs"], rule))
        lines += ["", "Development people (where the rule was chosen):", ""] + threshold.table(dev["runs"], rows)
        winner, _ = threshold_winner(dev["runs"])
        halves = [threshold_winner(_only(dev["runs"], ("after",), h)) for h in dev_halves()]
        lines += ["", nested_line("the rule", winner, halves)]
        return figs, lines, {"threshold_nested": {"all": winner, "halves": [w for w, _ in halves]},
                             "threshold_after_minus_before": paired}
    return figs, lines, {"threshold_after_minus_before": paired}


def families_part(families_md: Path) -> tuple[list[Figure], list[str], dict]:
    """Targets met by the bound in the ten query families, the product and dlib; FAMILIES.md rewritten."""
    phases = {ph: _load(f"results_families_{ph}.json") for ph in ("dev", "test")}
    if phases["test"] is None:
        return [], ["families: no stored test results (benchmarks/results_families_test.json)"], {}
    tables = {ph: families.tables(r) for ph, r in phases.items() if r is not None}
    families.write_report({ph: t[0] for ph, t in tables.items()}, families_md)
    verdicts = tables["test"][1]
    stored = committed("benchmarks/results_families_test.json")
    n = {who: sum(v == "met" for (w, _, _), (v, _) in verdicts.items() if w == who) for who in ("product", "dlib")}
    total = len(families.FAMILIES) * len(families.MEASURES)
    figs = [Figure("families_targets", f"degradation families (test people): issue targets met by the 95 % "
                   f"bound, of {total}", n["product"], f"/ {total}", vs_label="dlib, same photos and protocol",
                   vs_value=n["dlib"], target=f"{total} / {total}", met=n["product"] == total,
                   measured=stored[0], commit=stored[1])]
    per_family = ["| family | " + " | ".join(f"product: {families.HEAD[m]}" for m in families.MEASURES) + " |",
                  "|---|" + "---|" * len(families.MEASURES)]
    for fam in families.FAMILIES:
        cells = [f"{families.pct(verdicts['product', fam, m][1])} {families.MARK[verdicts['product', fam, m][0]]}"
                 for m in families.MEASURES]
        per_family.append(f"| {fam} | " + " | ".join(cells) + " |")
    lines = ["## Degradation families (protocol `protocols/families.md`, looks `protocols/families_looks.md`)", "",
             f"Targets met by the interval's bound: product {n['product']} of {total}, dlib {n['dlib']} of {total}. "
             "Full tables with dlib and the paired differences: `benchmarks/FAMILIES.md`.", ""] + per_family
    details = {fam: {m: [round(100 * x, 1) for x in verdicts["product", fam, m][1]] for m in families.MEASURES}
               for fam in families.FAMILIES}
    return figs, lines, {"families_product": details}


def alignment_part() -> tuple[list[Figure], list[str], dict]:
    """Faces inside larger colour photos: the chosen face finder against the Haar box, on test people."""
    runs = alignment.stored_runs("test")
    if not all(CHOSEN_FINDER in r and REFERENCE_FINDER in r for r in runs):
        return [], ["alignment: no stored test results (benchmarks/results_alignment_test/)"], {}
    m = {c: threshold.measures(runs, c, alignment.FAMILY) for c in (CHOSEN_FINDER, REFERENCE_FINDER)}
    ident = m[CHOSEN_FINDER]["identification"]
    figs = [_rate_figure("scenes_identification", f"faces inside larger photos (test people): identification, "
                         f"{CHOSEN_FINDER}", ident, ">= 95 % (by the bound)", ident[1] >= 0.95,
                         committed("benchmarks/results_alignment_test"))]
    figs[0].vs_label, figs[0].vs_value = f"{REFERENCE_FINDER} (before)", 100 * m[REFERENCE_FINDER]["identification"][0]
    lines = ["## Faces inside larger photos (protocol `protocols/alignment.md`, looks `protocols/alignment_looks.md`)",
             ""] + alignment.table_lines(runs, (REFERENCE_FINDER, CHOSEN_FINDER), "test")
    dev = alignment.stored_runs("dev")
    if all(all(c in r for c in alignment.CANDIDATES) for r in dev):
        lines += ["", "Development people (where the finder was chosen):", ""]
        lines += alignment.table_lines(dev, alignment.CANDIDATES, "dev")
        winner, _ = alignment_winner(dev)
        halves = [alignment_winner(_only(dev, alignment.CANDIDATES, h)) for h in dev_halves()]
        lines += ["", nested_line("the face finder", winner, halves)]
        return figs, lines, {"alignment_nested": {"all": winner, "halves": [w for w, _ in halves]}}
    return figs, lines, {}


def run(smoke: bool = False, out: Path | None = None) -> Section:
    """Every one-look table from the stored results: the same work in smoke mode (it is cheap), written to
    a temporary folder there, so that a smoke run leaves the repository's reports as they are."""
    if out is None:
        import tempfile

        out = Path(tempfile.mkdtemp(prefix="one-look-")) if smoke else ROOT / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    figs, text, notes = [], ["# One-look protocols", "",
                             "Generated by `python -m benchmarks --only one_look` from the stored per-query results "
                             "(do not edit by hand). No new scores: see `benchmarks/one_look.py`.", ""], []
    details = {"report": str(out / "ONE_LOOK.md")}
    for part in (threshold_part, lambda: families_part(out / "FAMILIES.md"), alignment_part):
        f, lines, more = part()
        details.update(more)
        if f:
            figs += f
            text += lines + [""]
        else:
            notes += lines
    (out / "ONE_LOOK.md").write_text("\n".join(text))
    return Section("One-look protocols (stored test results)", figs, details=details,
                   notes=notes + ["recomputed from the stored per-query results of each protocol's one look; "
                                  "no new evaluation of test people"])
