"""Insert or update the Colab set-up cell as the first code cell of every notebook (idempotent).

    python tools/add_colab_cell.py                   # notebooks/*.ipynb
    python tools/add_colab_cell.py --check           # exit 1 if a notebook lacks the current cell
    python tools/add_colab_cell.py --readme          # also rewrite the README's Colab/Binder links
    python tools/add_colab_cell.py NB.ipynb ...      # only these notebooks

The cell is recognised by its metadata tag (tools/colab_cell.py: CELL_TAG). A notebook that has it
gets its source brought up to date where it stands; one that has not gets it after a leading
markdown title (so the title stays on top), i.e. before every other code cell. Its stored output
is the one line it prints off Colab, so nbval passes before the notebook is re-executed. Nothing
else in the notebook changes, and a second run changes nothing.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import colab_cell as C  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _lines(text: str) -> list[str]:
    """Notebook JSON keeps source and text outputs as lists of lines (each with its newline)."""
    return text.splitlines(keepends=True)


def make_cell() -> dict:
    return {
        "cell_type": "code",
        "execution_count": 1,   # nbval refuses stored outputs of a cell that never ran (count None)
        "id": "colab-setup",
        "metadata": {"tags": [C.CELL_TAG]},
        "outputs": [{"name": "stdout", "output_type": "stream", "text": _lines(C.NOT_ON_COLAB + "\n")}],
        "source": _lines(C.CELL_SOURCE.rstrip("\n")),
    }


def _is_setup_cell(cell: dict) -> bool:
    """Tagged, or an untagged copy of the cell (its first line), e.g. from a branch made before tags."""
    if cell.get("cell_type") != "code":
        return False
    first = C.CELL_SOURCE.splitlines()[0]
    return (C.CELL_TAG in cell.get("metadata", {}).get("tags", [])
            or "".join(cell.get("source", [])).startswith(first))


def apply(nb: dict) -> bool:
    """Put the current cell into the notebook dict; True when something changed."""
    cells = nb.setdefault("cells", [])
    fresh = make_cell()
    found = [i for i, c in enumerate(cells) if _is_setup_cell(c)]
    found.sort(key=lambda i: C.CELL_TAG not in cells[i].get("metadata", {}).get("tags", []))  # tagged first
    if found:
        cell = cells[found[0]]
        changed = False
        if "".join(cell.get("source", [])) != "".join(fresh["source"]):
            cell["source"] = fresh["source"]
            cell["outputs"], cell["execution_count"] = fresh["outputs"], fresh["execution_count"]
            changed = True
        if cell.get("outputs") and cell.get("execution_count") is None:  # nbval: "unrun cell has outputs"
            cell["execution_count"] = fresh["execution_count"]
            changed = True
        if C.CELL_TAG not in cell.get("metadata", {}).get("tags", []):
            cell.setdefault("metadata", {})["tags"] = [*cell.get("metadata", {}).get("tags", []), C.CELL_TAG]
            changed = True
        for extra in sorted(found[1:], reverse=True):   # a duplicate from a copy-paste or an old branch
            del cells[extra]
            changed = True
        return changed
    minor = nb.get("nbformat_minor", 0)
    if nb.get("nbformat", 4) < 4 or (nb.get("nbformat") == 4 and minor < 5):
        del fresh["id"]                     # cell ids exist from nbformat 4.5
    elif any(c.get("id") == fresh["id"] for c in cells):
        fresh["id"] = "colab-setup-cell"
    at = 1 if cells and cells[0].get("cell_type") == "markdown" else 0
    cells.insert(at, fresh)
    return True


def update_file(path: Path, check: bool = False) -> bool:
    """Apply to one .ipynb file (kept in Jupyter's own layout); True when it changed / would change."""
    text = path.read_text(encoding="utf-8")
    nb = json.loads(text)
    changed = apply(nb)
    if changed and not check:
        path.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return changed


COLAB_LINK = re.compile(r"https://colab\.research\.google\.com/github/[^)\s]*/notebooks/([^)\s/]+\.ipynb)")
BINDER_LINK = re.compile(r"https://mybinder\.org/v2/gh/[^)\s]+")


def update_readme_text(text: str) -> str:
    """Point every Colab and Binder link of the README at COURSE_REPO_URL / COURSE_BRANCH."""
    text = COLAB_LINK.sub(lambda m: C.colab_url(m.group(1)), text)
    return BINDER_LINK.sub(C.binder_url(), text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", type=Path)
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if something would change")
    ap.add_argument("--readme", action="store_true", help="also update README.md's Colab and Binder links")
    args = ap.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    stale = []
    for path in paths:
        if update_file(path, check=args.check):
            stale.append(path)
            print(f"{'would update' if args.check else 'updated'}: {path}")
    if args.readme:
        readme = ROOT / "README.md"
        old = readme.read_text(encoding="utf-8")
        new = update_readme_text(old)
        if new != old:
            stale.append(readme)
            if not args.check:
                readme.write_text(new, encoding="utf-8")
            print(f"{'would update' if args.check else 'updated'}: {readme}")
    if not stale:
        print(f"up to date: {len(paths)} notebook(s)")
    if C.is_placeholder():
        print(f"note: COURSE_REPO_URL is still the placeholder {C.COURSE_REPO_URL}: set it in "
              "tools/colab_cell.py before publishing (Colab clones it)", file=sys.stderr)
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
