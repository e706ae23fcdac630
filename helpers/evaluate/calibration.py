"""Choosing the recogniser's threshold on all the evidence there is, and saying what it will do.

Evidence (`Calibration`): *genuine* scores, each enrolment photo against its own person's gallery
entry built without it, and *impostor* scores, the best score of a photo of someone who is not in
the gallery. Genuine scores come from cross-fitting: the photos are cut into `folds` (photo j of each
person in fold j mod K); for each fold the whole recogniser (whitening, head) is fitted again on the
other folds and the held-out photos are scored against that gallery, so no photo is scored by a
model that saw it. Impostor scores under the same fold models:
  * the learner's own other people: a held-out photo of A against the gallery without A;
  * the packaged background people (ORL s1-s10) the whitening uses: each is left out of the
    whitening of one fold and scored there (never by a whitening that learnt from them);
  * stand-in strangers (the packaged ORL people not in the folder) or a given strangers folder:
    each photo scored in one fold.

The operating point is a rule on these scores (`RULES`, `threshold_for`); `RULE` is the one chosen on
development people (benchmarks/protocols/threshold.md). `rates_at` gives the expected false-accept and
false-reject rates that the recogniser file records.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .metrics import eer_threshold

RULES = ("eer", "far:0.005", "far:0.01", "far:0.02", "ratio:0.05/0.02")
RULE = "eer"  # chosen on development people (benchmarks/protocols/threshold.md: the largest worst slack)
FOLDS = 3


def rates_at(genuine, impostor, threshold: float) -> tuple[float, float]:
    """(false-accept rate, false-reject rate) at `threshold`: impostors >= t, genuine < t.

    Command line: `python -m helpers ...`.
    """
    g, i = np.asarray(genuine, float), np.asarray(impostor, float)
    far = float((i >= threshold).mean()) if len(i) else float("nan")
    frr = float((g < threshold).mean()) if len(g) else float("nan")
    return far, frr


def _cuts(genuine: np.ndarray, impostor: np.ndarray) -> np.ndarray:
    """Candidate thresholds: halfway between neighbouring observed scores, and just above the top."""
    s = np.unique(np.r_[genuine, impostor])
    return np.r_[s[0] - 1e-3, (s[:-1] + s[1:]) / 2, s[-1] + 1e-3]


def threshold_for(rule: str, genuine, impostor) -> float:
    """The threshold that `rule` picks from genuine and impostor scores.

    'eer': equal error (`helpers.evaluate.metrics.eer_threshold`); 'far:X': the lowest threshold whose
    false-accept rate on the impostor scores is at most X; 'ratio:A/B': where FRR / A = FAR / B (the
    two error budgets used in the same proportion; ties: the smallest total error, then the lowest).

    Command line: `python -m helpers ...`.
    """
    g, i = np.sort(np.asarray(genuine, float)), np.sort(np.asarray(impostor, float))
    if len(g) == 0 or len(i) == 0:
        raise ValueError("choosing a threshold needs genuine and impostor scores")
    if rule == "eer":
        return eer_threshold(g, i)
    cuts = _cuts(g, i)
    far = (len(i) - np.searchsorted(i, cuts, side="left")) / len(i)   # counts first: 10/2000 is exactly 0.005
    frr = np.searchsorted(g, cuts, side="left") / len(g)
    kind, _, arg = rule.partition(":")
    if kind == "far":
        return float(cuts[np.flatnonzero(far <= float(arg))[0]])
    if kind == "ratio":
        a, b = (float(v) for v in arg.split("/"))
        diff = np.abs(frr / a - far / b)
        best = np.flatnonzero(diff == diff.min())
        total = (frr + far)[best]
        return float(cuts[best[total == total.min()][0]])
    raise ValueError(f"unknown threshold rule {rule!r}; choose one of {RULES}")


@dataclass
class Calibration:
    """Genuine and impostor scores (with where the impostors came from) and the chosen operating point.

    Command line: `python -m helpers ...`.
    """

    genuine: np.ndarray
    impostor: np.ndarray
    sources: dict[str, int] = field(default_factory=dict)   # impostor scores per source
    rule: str = RULE
    folds: int = FOLDS

    @property
    def threshold(self) -> float:
        return threshold_for(self.rule, self.genuine, self.impostor)

    def rates(self, threshold: float | None = None) -> tuple[float, float]:
        return rates_at(self.genuine, self.impostor, self.threshold if threshold is None else threshold)

    def record(self, threshold: float | None = None) -> dict:
        """What the recogniser file stores (plain types: weights_only-safe)."""
        t = self.threshold if threshold is None else float(threshold)
        far, frr = self.rates(t)
        return {"rule": self.rule, "threshold": t, "far": far, "frr": frr, "genuine": len(self.genuine),
                "impostor": len(self.impostor), "sources": dict(self.sources), "folds": self.folds,
                "genuine_scores": [round(float(v), 5) for v in self.genuine],
                "impostor_scores": [round(float(v), 5) for v in self.impostor]}

    def __str__(self) -> str:
        far, frr = self.rates()
        src = ", ".join(f"{n} {k}" for k, n in self.sources.items())
        return (f"rule {self.rule}: expected false accepts {100 * far:.1f} % of {len(self.impostor)} impostor "
                f"scores ({src}), false rejects {100 * frr:.1f} % of {len(self.genuine)} genuine scores "
                f"(each photo against a gallery and model fitted without it, {self.folds} folds)")


def describe_record(rec: dict | None) -> str:
    """One line for a stored calibration record (`Calibration.record`); '' for files without one.

    Notebook 06, inside `fit_recognizer`.
    """
    if not rec:
        return ""
    return (f"expected false accepts {100 * rec['far']:.1f} % (of {rec['impostor']} impostor scores), "
            f"false rejects {100 * rec['frr']:.1f} % (of {rec['genuine']} genuine), rule {rec['rule']}")


def fold_of(labels) -> np.ndarray:
    """Photo j of each person (in the given order) goes to fold j mod K.

    Command line: `python -m helpers ...`.
    """
    labels = np.asarray(labels)
    rank = np.zeros(len(labels), int)
    for p in np.unique(labels):
        idx = np.flatnonzero(labels == p)
        rank[idx] = np.arange(len(idx))
    return rank


def fold_scores(gallery: np.ndarray, gallery_people: np.ndarray, held_emb: np.ndarray, held_labels: np.ndarray,
                ) -> tuple[np.ndarray, np.ndarray]:
    """(genuine, other-people impostor) scores of held-out photos: each against its own person's entry
    and the best of the others. `gallery` rows are people `gallery_people` (L2-normalised);
    photos of a person missing from the gallery give no genuine score, only an impostor one.

    Command line: `python -m helpers ...`.
    """
    sims = np.asarray(held_emb, float) @ np.asarray(gallery, float).T
    own = np.asarray(held_labels)[:, None] == np.asarray(gallery_people)[None, :]
    has = own.any(1)
    genuine = sims[has][own[has]]
    others = np.where(own, -np.inf, sims).max(1)
    return genuine, others[np.isfinite(others)]


def mean_gallery(emb: np.ndarray, labels: np.ndarray, people: np.ndarray) -> np.ndarray:
    """(P, D): the L2-normalised mean embedding of each of `people`, from embeddings (N, D) with `labels` (N,).

    Command line: `python -m helpers ...`.
    """
    means = np.stack([np.asarray(emb, float)[np.asarray(labels) == p].mean(0) for p in people])
    return means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)


def calibrate_fixed(emb: np.ndarray, labels, stranger_emb: np.ndarray | None = None, folds: int = FOLDS,
                    rule: str = RULE) -> Calibration:
    """The same folds for an embedder that is not fitted on these photos (a fine-tuned model:
    `Recognizer.from_checkpoint`): each fold's photos (N, D) against the mean embeddings of the other
    folds' photos; strangers' embeddings (M, D), each in one fold. No refitting is needed.

    Command line: `python -m helpers ...`.
    """
    emb, labels = np.asarray(emb, float), np.asarray(labels)
    rank = fold_of(labels)
    k = max(2, min(folds, int(rank.max()) + 1))
    fold = rank % k
    genuine: list[float] = []
    imp: dict[str, list[float]] = {"own other people": [], "strangers": []}
    for f in range(k):
        tr, held = fold != f, fold == f
        people = np.unique(labels[tr])
        gallery = mean_gallery(emb[tr], labels[tr], people)
        g, o = fold_scores(gallery, people, emb[held], labels[held])
        genuine += list(g)
        imp["own other people"] += list(o)
        if stranger_emb is not None and len(stranger_emb):
            mine = np.arange(len(stranger_emb)) % k == f
            if mine.any():
                imp["strangers"] += list((np.asarray(stranger_emb, float)[mine] @ gallery.T).max(1))
    sources = {name: len(v) for name, v in imp.items() if v}
    return Calibration(np.array(genuine), np.array([v for vs in imp.values() for v in vs], float), sources, rule, k)
