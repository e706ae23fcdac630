"""Pictures of a recogniser's answers for notebook 06: a grid of photos, and which ones to show."""
from __future__ import annotations

from typing import Sequence

from ..recognize.recognizer import Match


def show_answers(images: Sequence, matches: Sequence[Match], truth: Sequence[str | None], title: str = "",
                 cols: int = 6, size: float = 1.6):
    """A grid of photos with the recogniser's answer; green when right, red when wrong.

    `truth` is the person's name, or None for a stranger (then "unknown" is the right answer).
    """
    import matplotlib.pyplot as plt

    n = len(images)
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size * 1.5 + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, m, t in zip(axes.flat, images, matches, truth):
        right = (m.name == t) if t is not None else (not m.known)
        ax.imshow(img)
        answer = m.name if m.known else "unknown"
        ax.set_title(f"{answer} ({m.score:.2f})\ntrue: {t or 'stranger'}", fontsize=7,
                     color="tab:green" if right else "tab:red")
        for side in ax.spines.values():
            side.set_visible(True)
            side.set_color("tab:green" if right else "tab:red")
            side.set_linewidth(3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(h_pad=1.2)
    return fig


def pick_examples(matches: Sequence[Match], truth: Sequence[str | None], n: int = 6) -> tuple[list[int], list[int]]:
    """Up to `n` right answers (known people and strangers alternately, spread over the list) and up
    to `n` mistakes (wrong name, known person called unknown, stranger taken for someone, in turn;
    strangers taken for the same person are shown once)."""
    right = [(m.name == t) if t is not None else not m.known for m, t in zip(matches, truth)]
    wins = {k: [i for i, ok in enumerate(right) if ok and (truth[i] is not None) == k] for k in (True, False)}
    spread = {k: v[::max(1, len(v) // max(1, n // 2))] for k, v in wins.items()}
    picked_wins = [i for pair in zip(spread[True], spread[False]) for i in pair][:n]
    if len(picked_wins) < n:
        rest = [i for v in spread.values() for i in v if i not in picked_wins]
        picked_wins += rest[: n - len(picked_wins)]
    kinds = {"wrong name": [], "called unknown": [], "stranger named": []}
    seen_names = set()
    for i, (m, t, ok) in enumerate(zip(matches, truth, right)):
        if ok:
            continue
        if t is None:
            if m.name not in seen_names:
                seen_names.add(m.name)
                kinds["stranger named"].append(i)
        else:
            kinds["wrong name" if m.known else "called unknown"].append(i)
    mistakes = []
    while len(mistakes) < n and any(kinds.values()):
        for v in kinds.values():
            if v and len(mistakes) < n:
                mistakes.append(v.pop(0))
    return picked_wins, mistakes
