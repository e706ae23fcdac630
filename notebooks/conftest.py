"""nbval compares what the notebooks print by meaning, not by last digits.

Another CPU (other SIMD kernels), another thread count or another PyTorch build changes the
last digits of a trained model's numbers; a learner's machine must still pass. So, in every
compared output (after `.ci/nbval_sanitize.cfg` masked timings):

- text between numbers must match exactly (runs of spaces count as one space, so a table
  whose column widths move by a digit still matches);
- integers with no unit are exact: counts, sizes, shapes, epochs, parameter counts;
- a percentage (`38 %`, `38.5%`) may move by PERCENT points;
- an angle (`48°`) may move by DEGREES degrees;
- any other decimal number may move by RELATIVE of its size, or by 3 units of its last printed
  digit, whichever is larger (`5.226` accepts 5.223 to 5.229).

Claims that must hold exactly ("which method wins", "the backbone is unchanged") are asserted
in the notebooks' check cells, which fail whatever the digits. A cell whose numbers are noisier
can widen its own tolerances in its metadata, with a reason:
`{"nbval_tolerance": {"percent": 8, "why": "one photo of 12 is 8 points"}}`.
"""
from __future__ import annotations

import re

PERCENT = 4.5     # points: about one test photo out of 25
DEGREES = 3.0
RELATIVE = 0.05
LAST_DIGITS = 3

_NUMBER = re.compile(r"(?<![\w.])[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?:\s?(%|°))?")


def _tokens(text: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(the text between numbers, the numbers with their unit) of one output string."""
    text = re.sub(r"[ \t]+", " ", text)
    parts, numbers, last = [], [], 0
    for m in _NUMBER.finditer(text):
        parts.append(text[last:m.start()])
        numbers.append((m.group(0), m.group(1) or ""))
        last = m.end()
    parts.append(text[last:])
    return parts, numbers


def _value(token: str) -> float:
    token = token.replace("−", "-").replace(",", "").rstrip("%°").strip()
    return float(token)


def _decimals(token: str) -> int:
    digits = token.replace(",", "").rstrip("%°").strip()
    mant = re.split(r"[eE]", digits)[0]
    return len(mant.split(".")[1]) if "." in mant else 0


def numbers_agree(ref: str, new: str, unit: str, tol: dict) -> bool:
    """Whether two printed numbers mean the same within the stated tolerances."""
    a, b = _value(ref), _value(new)
    if unit == "%":
        return abs(a - b) <= tol.get("percent", PERCENT) + 1e-9
    if unit == "°":
        return abs(a - b) <= tol.get("degrees", DEGREES) + 1e-9
    if "." not in ref and "e" not in ref.lower() and "." not in new:
        return a == b  # counts are exact
    last = LAST_DIGITS * 10.0 ** -max(_decimals(ref), _decimals(new))
    return abs(a - b) <= max(tol.get("relative", RELATIVE) * abs(a), tol.get("absolute", last)) + 1e-12


def outputs_agree(ref: str, new: str, tol: dict | None = None) -> bool:
    """Whether two sanitised output strings agree: same words, numbers within tolerance."""
    if ref == new:
        return True
    tol = tol or {}
    ref_parts, ref_nums = _tokens(ref)
    new_parts, new_nums = _tokens(new)
    if [p.strip() for p in ref_parts] != [p.strip() for p in new_parts] or len(ref_nums) != len(new_nums):
        return False
    return all(ru == nu and numbers_agree(r, n, ru, tol) for (r, ru), (n, nu) in zip(ref_nums, new_nums))


def _install() -> None:
    try:
        from nbval import plugin
    except ImportError:  # nbval not installed: nothing to patch
        return
    if getattr(plugin.IPyNbCell, "_tolerant", False):
        return
    original = plugin.IPyNbCell.compare_outputs

    def compare_outputs(self, test, ref, skip_compare=None):
        """nbval's comparison, with `outputs_agree` instead of string equality for each output."""
        tol = dict(getattr(self, "cell", {}).get("metadata", {}).get("nbval_tolerance", {}))

        class Meaning(str):
            def __ne__(self, other):
                return not outputs_agree(str(self), str(other), tol)

            def __eq__(self, other):
                return outputs_agree(str(self), str(other), tol)

            __hash__ = str.__hash__

        sanitize = self.sanitize

        def tolerant(s):
            out = sanitize(s)
            return Meaning(out) if isinstance(out, str) else out

        self.sanitize = tolerant
        try:
            return original(self, test, ref, skip_compare)
        finally:
            del self.sanitize

    plugin.IPyNbCell.compare_outputs = compare_outputs
    plugin.IPyNbCell._tolerant = True


_install()
