"""Self-checks for the notebooks' exercises: each says "correct" or explains what is off.

One section per notebook; each check returns True/False and prints its verdict.
"""
from __future__ import annotations


def _verdict(ok: bool, good: str, bad: str) -> bool:
    print(("correct: " + good) if ok else ("not yet: " + bad))
    return ok


def check_close(name: str, answer: float, expected: float, tol: float, hint: str = "") -> bool:
    """Generic numeric check with a tolerance."""
    ok = answer is not None and abs(float(answer) - float(expected)) <= tol
    return _verdict(ok, f"{name} = {answer}", f"{name} = {answer}, expected about {expected:g}. {hint}".strip())
