"""Which notebook introduces each library object: computed from the notebooks' code, written into docstrings.

    python tools/notebook_tags.py            # list the tags and the docstrings that disagree
    python tools/notebook_tags.py --write    # rewrite the tag line of every library docstring

A library object (a public function or class of `helpers`, outside `helpers.course`) is introduced by
the first notebook (00-07, in order) whose code either names it (`from helpers.x import f`, `P.f`,
`helpers.f`) or runs it through something it names: a call chain of helpers functions and classes,
course ones included, found by reading the source (names resolved through each module's imports, so
`model.train()` is not `helpers.train.trainer.train`). The tag is the docstring's last line:

    Notebook 02.                                   named in notebook 02's code
    Notebook 04, inside `compare_heads_over_seeds`.  run by an object notebook 04 names
    Command line: `python -m helpers ...`.         run only by the command line or the trainer's main
    Not run by a notebook or the command line.     benchmarks, tests and learners' own code

`tests/test_architecture.py` checks that every docstring carries the tag this computes.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "helpers"
NOTEBOOKS = REPO / "notebooks"
TAG_RE = re.compile(r"^(Notebook \d\d(, inside `[\w.]+`)?\.|Command line: `python -m helpers \.\.\.`\."
                    r"|Not run by a notebook or the command line\.)$")
ENTRY_POINTS = ("helpers.cli.main", "helpers.train.trainer.main")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    defs: dict[str, ast.AST] = field(default_factory=dict)          # top-level defs and assignments
    names: dict[str, tuple[str, str]] = field(default_factory=dict)  # local name -> (module, attr)
    modules: dict[str, str] = field(default_factory=dict)           # local name -> module


def _absolute(mod: str, level: int, base: str, is_pkg: bool) -> str:
    if not level:
        return mod
    pkg = base.split(".") if is_pkg else base.split(".")[:-1]
    pkg = pkg[:len(pkg) - (level - 1)]
    return ".".join(pkg + ([mod] if mod else []))


def bind_imports(tree: ast.AST, base: str, is_pkg: bool, known: set[str],
                 names: dict, modules: dict) -> None:
    """Fill `names` (local -> (module, attr)) and `modules` (local -> module) from every import in `tree`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            mod = _absolute(node.module or "", node.level, base, is_pkg)
            for a in node.names:
                local = a.asname or a.name
                if f"{mod}.{a.name}" in known:
                    modules[local] = f"{mod}.{a.name}"
                elif mod in known or mod == "helpers":
                    names[local] = (mod, a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "helpers":
                    if a.asname:
                        modules[a.asname] = a.name
                    else:
                        modules["helpers"] = "helpers"


def load_modules() -> dict[str, Module]:
    mods = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        tree = ast.parse(path.read_text(), str(path))
        m = Module(name, path, tree)
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                m.defs[node.name] = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    if isinstance(t, ast.Name):   # a registry or constant: what it refers to runs with it
                        m.defs[t.id] = node.value
        mods[name] = m
    known = set(mods)
    for m in mods.values():
        bind_imports(m.tree, m.name, m.path.name == "__init__.py", known, m.names, m.modules)
    return mods


def lazy_exports() -> dict[str, str]:
    """`helpers.X` names from helpers/__init__.py's _EXPORTS: name -> module."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_EXPORTS":
            return {k: f"helpers.{v}" for k, v in ast.literal_eval(node.value).items()}
    return {}


class Resolver:
    def __init__(self, mods: dict[str, Module]):
        self.mods = mods
        self.exports = lazy_exports()

    def target(self, mod: str, attr: str, depth: int = 0) -> str | None:
        """The defining 'module.name' of `attr` looked up in module `mod` (follows re-exports)."""
        if mod == "helpers":
            if attr in self.exports:
                return self.target(self.exports[attr], attr, depth + 1)
            return None
        m = self.mods.get(mod)
        if m is None or depth > 5:
            return None
        if attr in m.defs:
            return f"{mod}.{attr}"
        if attr in m.names:
            return self.target(*m.names[attr], depth=depth + 1)
        return None

    def refs(self, node: ast.AST, names: dict, modules: dict, own: str | None) -> set[str]:
        """Objects referenced in `node`: bare names (own module's defs, imported names) and `alias.attr`."""
        out = set()
        for n in _walk_code(node):
            if isinstance(n, ast.Name):
                if own and n.id in self.mods[own].defs:
                    out.add(f"{own}.{n.id}")
                elif n.id in names:
                    t = self.target(*names[n.id])
                    if t:
                        out.add(t)
            elif isinstance(n, ast.Attribute):
                dotted = _dotted(n.value)
                if dotted is None:
                    continue
                head, _, rest = dotted.partition(".")
                mod = modules.get(head)
                if mod is None:
                    continue
                mod = f"{mod}.{rest}" if rest else mod
                t = self.target(mod, n.attr)
                if t:
                    out.add(t)
        return out


def _walk_code(node: ast.AST):
    """ast.walk without type annotations: a name in an annotation is not run."""
    todo = [node]
    while todo:
        n = todo.pop()
        yield n
        for name, value in ast.iter_fields(n):
            if name in ("annotation", "returns"):
                continue
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, ast.AST):
                    todo.append(child)


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def call_graph(mods: dict[str, Module], r: Resolver) -> dict[str, set[str]]:
    """'module.def' -> the objects its body references (decorators and bases included)."""
    graph = {}
    for m in mods.values():
        for name, node in m.defs.items():
            graph[f"{m.name}.{name}"] = r.refs(node, m.names, m.modules, m.name) - {f"{m.name}.{name}"}
    return graph


def notebook_names(r: Resolver) -> list[tuple[str, set[str]]]:
    """(notebook stem, objects its code names), in course order."""
    out = []
    for nb in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        code = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
        tree = ast.parse(code)
        names, modules = {}, {}
        bind_imports(tree, "notebook", False, set(r.mods), names, modules)
        out.append((nb.stem[:2], r.refs(tree, names, modules, None)))
    return out


def compute_tags() -> dict[str, str]:
    """'module.name' -> its tag line, for every public function and class of the library."""
    mods = load_modules()
    r = Resolver(mods)
    graph = call_graph(mods, r)
    tags: dict[str, str] = {}
    for number, named in notebook_names(r):
        for obj in sorted(named):
            tags.setdefault(obj, f"Notebook {number}.")
        frontier = [(obj, obj) for obj in sorted(named)]
        seen = set(named)
        while frontier:                       # breadth first: the nearest named object is the one said
            nxt = []
            for obj, via in frontier:
                for callee in sorted(graph.get(obj, ())):
                    if callee not in seen:
                        seen.add(callee)
                        tags.setdefault(callee, f"Notebook {number}, inside `{via.rsplit('.', 1)[1]}`.")
                        nxt.append((callee, via))
            frontier = nxt
    reach, stack = set(), list(ENTRY_POINTS)
    while stack:
        obj = stack.pop()
        if obj not in reach:
            reach.add(obj)
            stack.extend(graph.get(obj, ()))
    out = {}
    for m in mods.values():
        if m.name == "helpers.course" or m.name.startswith("helpers.course."):
            continue
        for name, node in m.defs.items():
            if name.startswith("_") or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            obj = f"{m.name}.{name}"
            out[obj] = tags.get(obj) or ("Command line: `python -m helpers ...`." if obj in reach
                                          else "Not run by a notebook or the command line.")
    return out


def docstring_tag(node: ast.AST) -> str | None:
    doc = ast.get_docstring(node)
    if not doc:
        return None
    last = doc.strip().splitlines()[-1].strip()
    return last if TAG_RE.match(last) else None


def mismatches() -> list[str]:
    mods = load_modules()
    bad = []
    for obj, tag in compute_tags().items():
        mod, name = obj.rsplit(".", 1)
        have = docstring_tag(mods[mod].defs[name])
        if have != tag:
            bad.append(f"{obj}: docstring says {have!r}, the notebooks say {tag!r}")
    return bad


def write() -> int:
    """Rewrite each library docstring's tag line (added as its last paragraph). Returns files changed."""
    tags = compute_tags()
    by_file: dict[Path, list[tuple[ast.AST, str]]] = {}
    mods = load_modules()
    for obj, tag in tags.items():
        mod, name = obj.rsplit(".", 1)
        by_file.setdefault(mods[mod].path, []).append((mods[mod].defs[name], tag))
    changed = 0
    for path, items in by_file.items():
        lines = path.read_text().splitlines(keepends=True)
        for node, tag in sorted(items, key=lambda t: -t[0].lineno):
            _set_tag(lines, node, tag)
        text = "".join(lines)
        if text != path.read_text():
            path.write_text(text)
            changed += 1
    return changed


def _set_tag(lines: list[str], node: ast.AST, tag: str) -> None:
    body0 = node.body[0] if node.body else None
    indent = " " * (node.col_offset + 4)
    has_doc = (isinstance(body0, ast.Expr) and isinstance(body0.value, ast.Constant)
               and isinstance(body0.value.value, str))
    if not has_doc:
        first = body0.lineno - 1
        lines.insert(first, f'{indent}"""{tag}"""\n')
        return
    start, end = body0.lineno - 1, body0.end_lineno - 1
    text = "".join(lines[start:end + 1])
    q = '"""' if '"""' in text else "'''"
    close = text.rindex(q)
    inner = text[text.index(q) + 3:close]
    stripped = inner.rstrip()
    last = stripped.splitlines()[-1].strip() if stripped else ""
    if TAG_RE.match(last):               # replace the old tag (and the blank line before it)
        stripped = stripped[:stripped.rstrip().rfind(last)].rstrip()
    prefix = text[:text.index(q) + 3]
    new = f"{prefix}{stripped}\n\n{indent}{tag}\n{indent}{q}{text[close + 3:]}"
    lines[start:end + 1] = [new]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--write", action="store_true", help="rewrite the tag line of every library docstring")
    args = p.parse_args(argv)
    if args.write:
        print(f"tags written in {write()} files")
    counts: dict[str, int] = {}
    for tag in compute_tags().values():
        key = tag.split(",")[0].rstrip(".")
        counts[key] = counts.get(key, 0) + 1
    for key in sorted(counts):
        print(f"{counts[key]:4d}  {key}")
    bad = mismatches()
    for line in bad:
        print(line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
