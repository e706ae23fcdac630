"""Accuracy protocol on the offline ORL faces: development people choose, test people measure.

People (fixed before any measurement, by this rule): the **development people** are ORL's
s1–s10 (the loader's labels 0–9); the **test people** are s11–s40 (30 people). Every choice —
the method, its layers, mirror TTA, the whitening strength and number of augmented views, the
ArcFace epochs, the open-set threshold — is made on development people only; test people are
only ever measured. Ties on development people go to the cheaper candidate: candidates are listed
cheapest first (`dev_candidates`) and the first of equal scores wins.

Development runs in two stages (both fixed before measuring them):
  1. every candidate on the 10 development people (`dev_measure`): the best whitening's layers,
     λ and views, and whether whitening beats the other families;
  2. a background for the whitening (`crossfit_candidates`: other people's photos as extra
     within-class samples, with or without "phone" views, λ re-tuned, optionally `layer3` pooled
     over a 2 x 2, 3 x 3 or 4 x 4 grid beside the global averages): development people are
     halved per seed, one half evaluated with the other half as the background, then swapped
     (`crossfit_measure`), so development choices never see test people; stage 1's best whitening
     without a background competes on the same cross-fitted tasks. Its score adds 100 − the EER on
     degraded photos (the product's robustness target) to stage 1's four terms.
In test runs the background is the development people (ORL s1–s10, all their photos), disjoint
from the test people s11–s40 that every task draws from (checked in `_evaluated`).

Tasks on test people, per seed (5 seeds; mean ± 95 % t-interval over seeds):
  * identification k = 1, 3, 5: all 30 people known, k enrolment photos each, 5 test photos each
    (the same test photos for every k), 1-NN by cosine to the enrolled photos;
  * k = 3 on degraded test photos (helpers.data.degrade; enrolment photos clean);
  * strangers: the 30 people halved with the seed; a method is fitted on one half (all photos),
    the other half are strangers: EER (helpers.evaluate.metrics, interpolated on the full ROC) and TAR at
    FAR = 1 % over every pair of the strangers' photos, also on their degraded copies;
  * open set: the fitted half enrolled with 3 photos each (centroid gallery), their 5 test photos
    as queries, every photo of the other half as strangers, at the threshold fixed on development
    people (the same task there, threshold = helpers.evaluate.metrics.threshold_from_strangers, mean over
    the development seeds);
  * the product's case: 9 known people (3 enrolment photos each) and 11 strangers drawn from the
    test people with the seed; identification of the known people's degraded test photos
    (centroid gallery, as the recogniser answers) and EER over pairs of the strangers' degraded photos.
Targets (issue 15): k=1 ≥ 90 %, k=3 ≥ 97 %, k=3 degraded ≥ 93 %, strangers' EER ≤ 4 %; the
product's case: identification ≥ 90 %, EER ≤ 10 %.
"""
from __future__ import annotations

import time

import numpy as np
from scipy import stats
from threadpoolctl import threadpool_limits

from helpers import load_backbone
from helpers.data.folders import load_orl
from helpers.evaluate.metrics import best_match, class_centroids, nearest_neighbour_accuracy, open_set, \
    threshold_from_strangers, verification
from helpers.data.background import BACKGROUND_PEOPLE
from helpers.features.extract import GRID_LAYERS
from helpers.recognize.pipeline import DEFAULT_METHOD, USE_BACKGROUND, WHITEN
from helpers.features.representations import BACKGROUND_LAMBDA, DEFAULT_LAMBDA, DEFAULT_LAYERS, DEFAULT_PHONE_STRENGTH, \
    DEFAULT_PHONE_VIEWS, DEFAULT_VIEWS

from .common import Figure, Section, now
from .methods import LAYER_SETS, ArcFace, Bank, Ctx, Dlib, Frozen, Method, Probe, RawPixels, dlib_available
from .protocol import ProtocolData, identification_split, protocol_text

DEV_PEOPLE = np.arange(10)        # ORL s1-s10
TEST_PEOPLE = np.arange(10, 40)   # ORL s11-s40
DEV_SEEDS = (0, 1, 2)
PRODUCT = (9, 11)                 # the product's case: known people (3 photos each), strangers
KS = (1, 3, 5)
FAR = 0.01
COLUMNS = [("id_k1", "k=1"), ("id_k3", "k=3"), ("id_k5", "k=5"), ("id_k3_deg", "k=3, degraded"),
           ("eer", "strangers' EER"), ("tar", "TAR at FAR 1 %"), ("eer_deg", "strangers' EER, degraded"),
           ("open_known", "open set: known named right"), ("open_strangers", "open set: strangers rejected"),
           ("prod_id_deg", "9 known × 3, degraded: identification"),
           ("prod_eer_deg", "9 known × 3, degraded: strangers' EER")]
TARGETS = [("id_k1", "k=1", 90.0, True), ("id_k3", "k=3", 97.0, True), ("id_k3_deg", "k=3, degraded", 93.0, True),
           ("eer", "strangers' EER", 4.0, False), ("prod_id_deg", "product: 9 known × 3, degraded, identification",
                                                    90.0, True),
           ("prod_eer_deg", "product: 9 known × 3, degraded, strangers' EER", 10.0, False)]
DEV_COLS = ("k=1", "k=3", "k=3 degraded", "EER", "EER degraded")
CROSSFIT_LAMBDAS = (0.001, 0.0001)
PHONE_VIEWS = 4                   # phone views per photo in the stage-2 candidates
PHONE_STRENGTHS = (1.0, 2.0)      # blur U(0, s) px, JPEG quality U(90 - 30 s, 90)
GRID_TAPS = GRID_LAYERS           # stage 2 also tries each: layer3's means over a G x G grid, beside the rest


# ------------------------------------------------------------------------------ tasks

def halves(people: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng([seed, 17]).permutation(people)
    return np.sort(perm[:len(people) // 2]), np.sort(perm[len(people) // 2:])


def _evaluated(ctx: Ctx, people) -> None:
    """Refuse a task whose people (enrolled, queried or strangers) include a background person."""
    if np.isin(np.asarray(ctx.background, dtype=int), np.asarray(people)).any():
        raise AssertionError(f"background people {ctx.background} overlap the evaluated people {people}")


def _fit(method: Method, ctx: Ctx, idx: np.ndarray, people: np.ndarray):
    relabel = {int(p): i for i, p in enumerate(people)}
    y = np.array([relabel[int(v)] for v in ctx.data.labels[idx]])
    return method.fit(ctx, idx, y), y


def identification(method: Method, ctx: Ctx, people, k: int) -> dict[str, float]:
    _evaluated(ctx, people)
    sp = identification_split(ctx.data.labels, k, ctx.seed, people=people)
    ytr, yte = sp.labels[sp.train], sp.labels[sp.test]
    if method.classifier:
        return {s: 100 * method.score(ctx, sp.train, ytr, sp.test, yte, s) for s in ("clean", "deg")}
    fitted = method.fit(ctx, sp.train, ytr)
    gallery = fitted.embed("clean", sp.train)
    return {s: 100 * nearest_neighbour_accuracy(gallery, ytr, fitted.embed(s, sp.test), yte) for s in ("clean", "deg")}


def strangers(method: Method, ctx: Ctx, people) -> dict[str, float]:
    _evaluated(ctx, people)
    tr, st = halves(people, ctx.seed)
    labels = ctx.data.labels
    fitted, _ = _fit(method, ctx, np.flatnonzero(np.isin(labels, tr)), tr)
    s_idx = np.flatnonzero(np.isin(labels, st))
    v = verification(fitted.embed("clean", s_idx), labels[s_idx], far=FAR)
    vd = verification(fitted.embed("deg", s_idx), labels[s_idx], far=FAR)
    return {"eer": 100 * v.eer, "tar": 100 * v.tar_at_far, "eer_deg": 100 * vd.eer}


def open_set_task(method: Method, ctx: Ctx, people, threshold: float | None = None):
    """threshold None: the threshold this split gives (development); else the open-set report at it."""
    _evaluated(ctx, people)
    known, st = halves(people, ctx.seed)
    labels = ctx.data.labels
    sp = identification_split(labels, 3, ctx.seed, people=known)
    ytr, yte = sp.labels[sp.train], sp.labels[sp.test]
    fitted = method.fit(ctx, sp.train, ytr)
    gallery = class_centroids(fitted.embed("clean", sp.train), ytr, len(known))
    s_idx = np.flatnonzero(np.isin(labels, st))
    q, s = fitted.embed("clean", sp.test), fitted.embed("clean", s_idx)
    if threshold is None:
        return threshold_from_strangers(gallery, q, yte, s)
    r = open_set(gallery, q, yte, s, threshold)
    return {"open_known": 100 * r.known_correct, "open_strangers": 100 * r.strangers_rejected}


def product_case(method: Method, ctx: Ctx, people) -> dict[str, float]:
    _evaluated(ctx, people)
    n_known, n_strangers = PRODUCT
    rng = np.random.default_rng([ctx.seed, 29])
    chosen = rng.permutation(people)
    known, st = np.sort(chosen[:n_known]), np.sort(chosen[n_known:n_known + n_strangers])
    labels = ctx.data.labels
    sp = identification_split(labels, 3, ctx.seed, people=known)
    ytr, yte = sp.labels[sp.train], sp.labels[sp.test]
    fitted = method.fit(ctx, sp.train, ytr)
    gallery = class_centroids(fitted.embed("clean", sp.train), ytr, len(known))
    idx, _ = best_match(gallery, fitted.embed("deg", sp.test))
    s_idx = np.flatnonzero(np.isin(labels, st))
    eer = verification(fitted.embed("deg", s_idx), labels[s_idx]).eer
    return {"prod_id_deg": 100 * float((idx == yte).mean()), "prod_eer_deg": 100 * eer}


def run_seed(method: Method, ctx: Ctx, threshold: float | None) -> dict[str, float]:
    res = {}
    for k in KS:
        r = identification(method, ctx, TEST_PEOPLE, k)
        res[f"id_k{k}"] = r["clean"]
        if k == 3:
            res["id_k3_deg"] = r["deg"]
    if not method.classifier:
        res.update(strangers(method, ctx, TEST_PEOPLE))
        if threshold is not None:
            res.update(open_set_task(method, ctx, TEST_PEOPLE, threshold))
        res.update(product_case(method, ctx, TEST_PEOPLE))
    return res


# ------------------------------------------------------------------------------ development

def dev_candidates(n_views_max: int, epochs: int) -> list[Method]:
    """Every candidate, cheapest first (the tie-break order, fixed before measuring)."""
    out: list[Method] = [Frozen("frozen", "frozen features (final layer), 1-NN", cost=1),
                         Frozen("frozen+tta", "frozen features + mirror TTA", tta=True, cost=2)]
    for views in sorted({0, 2, n_views_max}):
        for name, layers in LAYER_SETS.items():
            for lam in (0.1, 0.01, 0.001):
                out.append(Frozen(f"whiten[{name},views={views},lam={lam:g}]",
                                  f"{name} + mirror TTA + within-class whitening (λ={lam:g}, {views} views)",
                                  layers, tta=True, whiten=True, lam=lam, n_views=views, cost=3))
    out.append(ArcFace("arcface", "ArcFace head on final features (course default)", epochs=epochs, cost=5))
    for ep in (30, epochs):
        out.append(ArcFace(f"arcface+[epochs={ep}]", f"ArcFace on multi-layer + {n_views_max} views + mirror TTA "
                           f"({ep} epochs)", ("layer3", "layer2"), n_views_max, True, ep, cost=6))
    return out


def _dev_row(method: Method, ctx: Ctx, people) -> dict[str, float]:
    """One development run: k=1, k=3, k=3 degraded, EER (clean, degraded) and the open-set threshold."""
    r1, r3 = identification(method, ctx, people, 1), identification(method, ctx, people, 3)
    st = strangers(method, ctx, people)
    return {"k=1": r1["clean"], "k=3": r3["clean"], "k=3 degraded": r3["deg"], "EER": st["eer"],
            "EER degraded": st["eer_deg"], "threshold": open_set_task(method, ctx, people)}


def _dev_means(rows: list[dict]) -> dict[str, float]:
    out = {c: round(float(np.mean([r[c] for r in rows])), 2) for c in DEV_COLS}
    out["threshold"] = round(float(np.mean([r["threshold"] for r in rows])), 4)
    return out


def dev_measure(method: Method, data: ProtocolData, bank: Bank) -> dict[str, float]:
    """Mean over the development seeds of k=1, k=3, k=3 degraded and EER among development people,
    and the open-set threshold there."""
    out = _dev_means([_dev_row(method, Ctx(data, bank, seed), DEV_PEOPLE) for seed in DEV_SEEDS])
    out["score"] = round((out["k=1"] + out["k=3"] + out["k=3 degraded"] + (100 - out["EER"])) / 4, 2)
    return out


def crossfit_candidates(w: Frozen) -> list[Frozen]:
    """Stage 2, cheapest first: stage 1's best whitening `w` as it is, then with a background (λ
    re-tuned), then with a background and phone views of each photo (blur + JPEG, two strengths); the
    same again with each grid tap of `layer3` (GRID_TAPS, smallest grid first) added to `w`'s layers."""
    out = [Frozen(f"bg:{w.key}", f"{w.label} [stage 2: no background]", w.layers, True, True, w.lam, w.n_views, 3)]
    for extra, grid in enumerate((None, *GRID_TAPS)):
        layers = w.layers + ((grid,) if grid else ())
        name = "+".join(["final", *layers])
        for n_phone, strength in [(0, 1.0)] + [(PHONE_VIEWS, s) for s in PHONE_STRENGTHS]:
            phone = f", {n_phone} phone views (blur ≤ {strength:g} px, JPEG ≥ {90 - 30 * strength:g})" if n_phone else ""
            for lam in CROSSFIT_LAMBDAS:
                out.append(Frozen(f"bg[{name},views={w.n_views},phone={n_phone}x{strength:g},lam={lam:g}]",
                                  f"{name} + mirror TTA + whitening with background (λ={lam:g}, {w.n_views} views"
                                  f"{phone}) [stage 2]", layers, True, True, lam, w.n_views,
                                  4 + bool(n_phone) + 2 * extra, background=True, n_phone=n_phone, strength=strength))
    return out


def crossfit_measure(method: Method, data: ProtocolData, bank: Bank) -> dict[str, float]:
    """Stage 2's measure: per development seed, the development people halved; each half evaluated
    (identification among its 5 people; strangers: 2 fitted, 3 strangers; the open-set threshold)
    with the other half as the background, then swapped; means over the 2 × seeds runs."""
    rows = []
    for seed in DEV_SEEDS:
        a, b = halves(DEV_PEOPLE, seed)
        for evaluated, background in ((a, b), (b, a)):
            rows.append(_dev_row(method, Ctx(data, bank, seed, tuple(int(p) for p in background)), evaluated))
    out = _dev_means(rows)
    out["score"] = round((out["k=1"] + out["k=3"] + out["k=3 degraded"] + (100 - out["EER"])
                          + (100 - out["EER degraded"])) / 5, 2)
    return out


def choose(dev: dict[str, dict], keys: list[str]) -> str:
    """The highest development score among `keys` (listed cheapest first); ties: the first."""
    best = keys[0]
    for k in keys[1:]:
        if dev[k]["score"] > dev[best]["score"]:
            best = k
    return best


def family(key: str) -> str:
    """The recogniser's --method that runs this candidate."""
    return WHITEN if key.startswith(("whiten[", "bg[", "bg:")) else ("head" if key == "arcface" else
                                                     "raw" if key == "frozen" else "")


# ------------------------------------------------------------------------------ statistics

def summary(vals: list[float]) -> dict:
    n = len(vals)
    mean = float(np.mean(vals))
    half = float(stats.t.ppf(0.975, n - 1) * np.std(vals, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return {"mean": round(mean, 2), "ci95": round(half, 2), "std": round(float(np.std(vals, ddof=1)) if n > 1
                                                                          else 0.0, 2),
            "seeds": n, "runs": [round(v, 2) for v in vals]}


# ------------------------------------------------------------------------------ the benchmark

def run(smoke: bool = False, seeds: int = 5, backbone: str = "auto", size: int = 224, n_views: int = 8,
        epochs: int = 50, methods: list[str] | None = None, previous: dict | None = None) -> Section:
    faces = load_orl()
    global DEV_PEOPLE, TEST_PEOPLE, DEV_SEEDS, PRODUCT, GRID_TAPS
    if smoke:  # 12 people: 8 development, 4 test, one grid (shapes only)
        faces = faces.subset(np.flatnonzero(faces.labels < 12), relabel=True)
        seeds, size, n_views, epochs = 2, 32, 1, 2
        DEV_PEOPLE, TEST_PEOPLE, DEV_SEEDS, PRODUCT, GRID_TAPS = np.arange(8), np.arange(8, 12), (0,), (2, 2), \
            GRID_LAYERS[1:2]
    with threadpool_limits(1):  # small BLAS/LAPACK problems stall when two threads share busy cores
        return _run(faces, smoke, seeds, backbone, size, n_views, epochs, methods, previous)


def _run(faces, smoke, seeds, backbone, size, n_views, epochs, only, previous) -> Section:
    data = ProtocolData(faces, n_views=n_views)
    bb = load_backbone(backbone, allow_download=False, verbose=False)
    bank = Bank(bb, data, size)
    t0 = time.perf_counter()
    print(f"  [accuracy] features of {len(faces)} photos ({size}px, {bb.name}): clean, mirrored, {n_views} views, "
          f"degraded + mirrored × {seeds} seeds (cached on disk)", flush=True)
    for src in ["clean", "flip"] + [f"view{v}" for v in range(n_views)]:
        bank.get(src)
    for s in range(seeds):
        bank.get("deg", s), bank.get("degflip", s)
    feat_s = time.perf_counter() - t0

    # development: every candidate on development people only
    t1 = time.perf_counter()
    cands = dev_candidates(n_views, epochs)
    dev = {}
    for m in cands:
        dev[m.key] = {"label": m.label, "settings": m.settings(), **dev_measure(m, data, bank)}
        d = dev[m.key]
        print(f"    [dev] {m.label:<72} " + "  ".join(f"{c} {d[c]:.1f}" for c in DEV_COLS)
              + f"  score {d['score']:.2f}", flush=True)
    keys = [m.key for m in cands]
    stage1 = choose(dev, keys)
    best_whiten = choose(dev, [k for k in keys if k.startswith("whiten[")])
    best_arcplus = choose(dev, [k for k in keys if k.startswith("arcface+")])
    by_key = {m.key: m for m in cands}
    w = by_key[best_whiten]
    # stage 2: a background for the whitening, cross-fitted on the development people
    stage2 = crossfit_candidates(w)
    for m in stage2:
        dev[m.key] = {"label": m.label, "settings": m.settings(), **crossfit_measure(m, data, bank)}
        d = dev[m.key]
        print(f"    [dev2] {m.label:<72} " + "  ".join(f"{c} {d[c]:.1f}" for c in DEV_COLS)
              + f"  score {d['score']:.2f}", flush=True)
    bw = {m.key: m for m in stage2}[choose(dev, [m.key for m in stage2])]
    winner = bw.key if family(stage1) == WHITEN else stage1
    dev_s = time.perf_counter() - t1
    library = {"method": DEFAULT_METHOD, "layers": ["final", *DEFAULT_LAYERS],
               "lam": BACKGROUND_LAMBDA if USE_BACKGROUND else DEFAULT_LAMBDA, "views": DEFAULT_VIEWS,
               "background": USE_BACKGROUND, "phone_views": DEFAULT_PHONE_VIEWS if USE_BACKGROUND else 0,
               "phone_strength": DEFAULT_PHONE_STRENGTH, "lam_without_background": DEFAULT_LAMBDA}
    chosen_settings = {"method": family(winner) or winner, "layers": ["final", *bw.layers], "lam": bw.lam,
                       "views": bw.n_views, "background": bw.background, "phone_views": bw.n_phone,
                       "phone_strength": bw.strength if bw.n_phone else DEFAULT_PHONE_STRENGTH,
                       "lam_without_background": w.lam}
    print(f"  [accuracy] development winner: {winner} (-> --method {family(winner) or '?'}); best whitening "
          f"{best_whiten}; library default {library}", flush=True)

    tuned = Frozen("tuned", f"stage 1's best whitening, no background ({'+'.join(['final', *w.layers])} + mirror "
                            f"TTA, λ={w.lam:g}, {w.n_views} views)", w.layers, True, True, w.lam, w.n_views)
    previous_default = Frozen("previous", "previous default (before grid taps): final+layer3+layer2 + mirror TTA + whitening "
                                  "with background (λ=0.0001, 8 views, 4 phone views ≤ 2 px / JPEG ≥ 30)",
                      ("layer3", "layer2"), True, True, 0.0001, 8, background=True, n_phone=4, strength=2.0)
    phone = f", {bw.n_phone} phone views ≤ {bw.strength:g} px / JPEG ≥ {90 - 30 * bw.strength:g}" if bw.n_phone else ""
    product = Frozen("product", f"{'+'.join(['final', *bw.layers])} + mirror TTA + whitening with background "
                                f"s1–s10 (dev-chosen: λ={bw.lam:g}, {bw.n_views} views{phone}) = --method {WHITEN}",
                     bw.layers, True, True, bw.lam, bw.n_views, background=bw.background, n_phone=bw.n_phone,
                     strength=bw.strength)
    ap = by_key[best_arcplus]
    arcplus = ArcFace("arcface+", f"ArcFace on multi-layer + views + mirror TTA ({ap.epochs} epochs, dev-chosen)",
                      ap.layers, ap.n_views, True, ap.epochs)
    arcface = ArcFace("arcface", "ArcFace head on frozen features (course default) = --method head", epochs=epochs)
    frozen = Frozen("frozen", "frozen features 1-NN = --method raw")
    table_methods: list[Method] = [RawPixels(), frozen, Probe(), arcface, tuned, previous_default, product, arcplus]
    notes = ["Fine-tuning rows (gradual unfreezing, full fine-tuning) are not in this protocol: on a shared 2-core "
             "CPU they cost minutes per fit, and they are not candidates for the product's default (enrolling a "
             "person would need a training run)."]
    if not smoke and dlib_available():
        table_methods.append(Dlib())
    elif not smoke:
        notes.append("dlib baseline skipped: not installed here (pip install -r requirements-baselines.txt)")
    thresholds = {"frozen": dev["frozen"]["threshold"], "arcface": dev["arcface"]["threshold"],
                  "tuned": dev[best_whiten]["threshold"], "arcface+": dev[best_arcplus]["threshold"],
                  "product": dev[bw.key]["threshold"]}
    for m in table_methods:
        if m.key not in thresholds and not m.classifier:
            measure = crossfit_measure if getattr(m, "background", False) else dev_measure
            thresholds[m.key] = measure(m, data, bank)["threshold"] if m.key != "dlib" else None

    table, timing, measured, commits, kept = {}, {}, {}, {}, []
    for m in table_methods:
        if only and m.key not in only and previous and m.key in previous.get("details", {}).get("table", {}):
            kept.append(m.key)
            pd = previous["details"]
            table[m.key], timing[m.key] = pd["table"][m.key], pd["seconds"].get(m.key)
            measured[m.key] = pd.get("measured", {}).get(m.key, previous.get("started"))
            commits[m.key] = pd.get("commits", {}).get(m.key, previous.get("commit"))
            continue
        measured[m.key] = now()
        t2 = time.perf_counter()
        runs: dict[str, list[float]] = {}
        for s in range(seeds):
            ctx = Ctx(data, bank, s, tuple(int(p) for p in DEV_PEOPLE))  # background: s1-s10, never tested
            for col, v in run_seed(m, ctx, thresholds.get(m.key)).items():
                runs.setdefault(col, []).append(v)
        table[m.key] = {c: summary(v) for c, v in runs.items()}
        timing[m.key] = round(time.perf_counter() - t2, 1)
        shown = "  ".join(f"{lab} {table[m.key][c]['mean']:.1f}±{table[m.key][c]['ci95']:.1f}"
                          for c, lab in COLUMNS if c in table[m.key])
        print(f"  [accuracy] {m.label}: {shown}  ({timing[m.key]:.0f} s)", flush=True)

    sec = Section("Accuracy protocol", config={
        "backbone": bb.describe(), "input_size": size, "seeds": seeds, "dev_seeds": list(DEV_SEEDS),
        "max_views": n_views, "head_epochs": epochs, "dev_people": "ORL s1-s10", "test_people": "ORL s11-s40"})
    sec.details = {
        "seeds": seeds, "columns": [{"key": c, "label": lab} for c, lab in COLUMNS],
        "methods": [{"key": m.key, "label": m.label} for m in table_methods],
        "table": table, "thresholds_from_dev": thresholds,
        "dev": dev, "dev_columns": list(DEV_COLS), "dev_winner": winner, "dev_best_whitening": best_whiten,
        "dev_stage1_winner": stage1, "dev_stage2": [m.key for m in stage2],
        "dev_best_arcface_plus": best_arcplus, "chosen_settings": chosen_settings, "library_default": library,
        "seconds": {"features": round(feat_s, 1), "development": round(dev_s, 1), **timing},
        "measured": measured, "commits": commits,   # commits: of rows kept from an earlier run only
        "protocol": protocol_text(list(DEV_SEEDS), list(GRID_TAPS), list(BACKGROUND_PEOPLE), FAR),
    }
    sec.figures = target_figures(table, "product")
    if "product" in kept:                    # the product's figures are the kept row's: say when they were measured
        for f in sec.figures:
            f.measured, f.commit = measured["product"] or "", commits["product"] or ""
    match = chosen_settings == library
    sec.figures.append(Figure(
        "accuracy.default_is_dev_winner", f"product default (--method {DEFAULT_METHOD}, λ={library['lam']:g}, "
        f"{DEFAULT_VIEWS} views, background={USE_BACKGROUND}, {library['phone_views']} phone views) = development "
        f"winner ({winner})", 1.0 if match else 0.0, "",
        target="the same", met=match))
    if not match:
        notes.append(f"the library's default {library} differs from the development choice {chosen_settings}: "
                     "update helpers/features/representations.py and helpers/recognize/pipeline.py")
    if kept:
        notes.append(f"rows kept from an earlier run of the same protocol (deterministic per seed; see "
                     f"'measured'): {', '.join(kept)}; rerun here: {', '.join(k for k in table if k not in kept)}")
    sec.notes = notes
    return sec


def target_figures(table: dict, key: str) -> list[Figure]:
    """Each target for the product's default (`key`) on test people, beside frozen features."""
    out = []
    for col, label, target, higher in TARGETS:
        if col not in table.get(key, {}):
            continue
        v = table[key][col]
        base = table.get("frozen", {}).get(col, {}).get("mean")
        old = table.get("previous", {}).get(col, {})
        versus = f"; previous default {old['mean']:.1f} ± {old['ci95']:.1f}" if old else ""
        out.append(Figure(f"accuracy.{col}", f"{label}: product default (test people)", v["mean"], "%",
                          "frozen features 1-NN", base, None,
                          "" if base is None else f"{v['mean'] - base:+.1f} points vs frozen{versus}",
                          f"{'≥' if higher else '≤'} {target:g} %",
                          v["mean"] >= target if higher else v["mean"] <= target, spread=v["ci95"]))
    return out
