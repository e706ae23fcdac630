"""Is a faster engine still the same recogniser? Its accuracy cost on development people, not a cosine.

Protocol (fixed before any run; development people only, `benchmarks.threshold.partition()["dev"]`,
10 people x 10 ORL photos; the test people are never read):
  * calibration photos for static int8: `N_CALIBRATION` = 32 of them, 3 or 4 per person
    (`CALIBRATION_SEED`); the other 68 are the evaluation photos, so no photo calibrates the
    quantiser and also scores it;
  * `DRAWS` = 20 draws (seed d): `KNOWN` = 5 of the 10 people are known, `SHOTS` = 3 of each known
    person's evaluation photos are enrolled, their other evaluation photos are queries, and every
    evaluation photo of the other 5 people is a stranger;
  * identification: a known query is right when its nearest enrolled photo (cosine) is its person's;
  * strangers' EER: known queries' best cosine to the enrolled photos against strangers' best
    cosine (`helpers.evaluate.metrics.eer_from_roc`);
  * features: the engine's backbone output for the photos (the course's frozen features), and the
    same for eager fp32 PyTorch (the reference), both from the same prepared batches;
  * the change: engine minus reference in each draw (paired), mean over draws and a 95 %
    t-interval (the draws share the 68 photos, so the interval understates the uncertainty; it
    says how much the draw moves the change, not how much another set of photos would).
An engine is USABLE when its mean identification change is >= -`TOLERANCE["identification"]`
(1 point) and its mean EER change <= +`TOLERANCE["eer"]` (1 point), and its features are finite.
The lowest cosine to the reference's features is reported as information only.
"""
from __future__ import annotations

import numpy as np

N_CALIBRATION = 32
CALIBRATION_SEED = 5
DRAWS = 20
KNOWN = 5
SHOTS = 3
TOLERANCE = {"identification": 1.0, "eer": 1.0}   # percentage points
RULE = (f"usable: mean change over {DRAWS} draws of development people's identification ≥ "
        f"-{TOLERANCE['identification']:g} point and of strangers' EER ≤ +{TOLERANCE['eer']:g} point "
        "against eager fp32 PyTorch (the cosine is information only)")


def dev_split(labels: np.ndarray, dev_people) -> tuple[np.ndarray, np.ndarray]:
    """(calibration indices, evaluation indices) into the ORL photos: `N_CALIBRATION` photos of the
    development people, spread over them (3 or 4 each), and the rest of their photos."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(CALIBRATION_SEED)
    people = [int(p) for p in dev_people]
    per, extra = divmod(N_CALIBRATION, len(people))
    cal, ev = [], []
    for k, p in enumerate(people):
        idx = rng.permutation(np.flatnonzero(labels == p))
        n = per + (k < extra)
        cal += idx[:n].tolist()
        ev += idx[n:].tolist()
    return np.array(sorted(cal)), np.array(sorted(ev))


def draw(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(enrolled, known queries, strangers): positions into the evaluation photos' `labels`."""
    rng = np.random.default_rng([seed, 41])
    people = np.unique(labels)
    known = rng.choice(people, min(KNOWN, len(people) - 1), replace=False)
    enrol, queries, strangers = [], [], []
    for p in people:
        idx = rng.permutation(np.flatnonzero(labels == p))
        if p in known:
            enrol += idx[:SHOTS].tolist()
            queries += idx[SHOTS:].tolist()
        else:
            strangers += idx.tolist()
    return np.array(enrol), np.array(queries), np.array(strangers)


def measures(feats: np.ndarray, labels: np.ndarray, seed: int) -> tuple[float, float]:
    """(identification %, strangers' EER %) of one draw."""
    from sklearn.metrics import roc_curve

    from helpers.evaluate.metrics import eer_from_roc

    x = np.asarray(feats, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    enrol, queries, strangers = draw(labels, seed)
    sq = x[queries] @ x[enrol].T
    ident = float((labels[enrol][sq.argmax(1)] == labels[queries]).mean())
    genuine, impostor = sq.max(1), (x[strangers] @ x[enrol].T).max(1)
    y = np.r_[np.ones(len(genuine)), np.zeros(len(impostor))]
    fpr, tpr, _ = roc_curve(y, np.r_[genuine, impostor], drop_intermediate=False)
    return 100 * ident, 100 * eer_from_roc(fpr, tpr)


def _mean_ci(x) -> tuple[float, float]:
    from scipy import stats

    x = np.asarray(x, float)
    if len(x) < 2:
        return float(x.mean()), float("nan")
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return float(x.mean()), half


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def gate(reference: np.ndarray, feats: np.ndarray, labels: np.ndarray, draws: int = DRAWS) -> dict:
    """The engine's change against the reference on the evaluation photos (see the module's docstring)."""
    labels = np.asarray(labels)
    if not np.isfinite(feats).all():
        return {"usable": False, "why": "features not finite"}
    ref = np.array([measures(reference, labels, d) for d in range(draws)])
    got = np.array([measures(feats, labels, d) for d in range(draws)])
    d_id, h_id = _mean_ci(got[:, 0] - ref[:, 0])
    d_eer, h_eer = _mean_ci(got[:, 1] - ref[:, 1])
    usable = d_id >= -TOLERANCE["identification"] and d_eer <= TOLERANCE["eer"]
    why = "" if usable else "; ".join(
        ([f"identification {d_id:+.1f} points"] if d_id < -TOLERANCE["identification"] else [])
        + ([f"EER {d_eer:+.1f} points"] if d_eer > TOLERANCE["eer"] else []))
    return {"usable": bool(usable), "why": why, "draws": draws, "photos": int(len(labels)),
            "identification": round(float(got[:, 0].mean()), 2), "identification_fp32": round(float(ref[:, 0].mean()), 2),
            "eer": round(float(got[:, 1].mean()), 2), "eer_fp32": round(float(ref[:, 1].mean()), 2),
            "d_identification": round(d_id, 2), "d_identification_ci95": round(h_id, 2),
            "d_eer": round(d_eer, 2), "d_eer_ci95": round(h_eer, 2),
            "min_cosine": round(min_cosine(feats, reference), 6)}
