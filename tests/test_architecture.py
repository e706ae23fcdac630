"""The package's shape: a library (`helpers`) that the course's presentation code
(`helpers.course`) builds on, never the other way round; no import cycles; small modules.

Imports are read from the source (every `import` statement, also those inside functions), so a
lazy import cannot hide a forbidden dependency or a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "helpers"
PRESENTATION = ("matplotlib", "seaborn", "ipywidgets", "IPython")
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Absolute names of every module `name` imports (relative imports resolved)."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{alias.name}" for alias in node.names)  # `from . import x` names modules too
    return found


MODULES = _modules()
LIBRARY = {n: p for n, p in MODULES.items() if n != "helpers.course" and not n.startswith("helpers.course.")}


def _internal_edges() -> dict[str, set[str]]:
    return {n: {m for m in _imports(n, p) if m in MODULES and m != n} for n, p in MODULES.items()}


def test_the_two_wings_exist():
    assert "helpers.course" in MODULES and len(LIBRARY) >= 15
    assert {"helpers.course.widgets", "helpers.course.exercises", "helpers.course.experiments"} <= set(MODULES)


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_library_module_imports_no_presentation_code(name):
    bad = sorted(m for m in _imports(name, LIBRARY[name])
                 if m.split(".")[0] in PRESENTATION or m == "helpers.course" or m.startswith("helpers.course."))
    assert not bad, f"{name} is library code but imports {bad}: move that part to helpers/course/"


def test_no_import_cycles():
    edges = _internal_edges()
    # a package's __init__ importing its own modules is not a cycle of the code
    for n in edges:
        edges[n] = {m for m in edges[n] if not n.startswith(m + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges[n]):
            if state.get(m) == 1:
                cycle = stack[stack.index(m):] + [m]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_small(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (> {MAX_LINES}): split it by concern"


def test_boundary_checker_catches_a_violation(tmp_path):
    """The checker itself: a library module importing matplotlib lazily and helpers.course is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import matplotlib.pyplot as plt\n    from .course import widgets\n")
    found = _imports("helpers.bad", bad)
    assert "matplotlib.pyplot" in found and "helpers.course" in found


def test_importing_helpers_has_no_side_effects(tmp_path):
    """`import helpers` sets no environment variable and creates no folder."""
    import os
    import subprocess
    import sys

    code = ("import os, json; before = dict(os.environ); import helpers; "
            "print(json.dumps(sorted(set(os.environ) - set(before))))")
    env = {**os.environ, "FACE_COURSE_CACHE": str(tmp_path / "cache")}
    env.pop("NUMBA_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert not (tmp_path / "cache").exists()


def _called(path: Path) -> set[str]:
    """Dotted names of everything called in a module (`torch.onnx.export`, `cache_dir`, ...)."""
    def dotted(node) -> str:
        if isinstance(node, ast.Attribute):
            return f"{dotted(node.value)}.{node.attr}"
        return node.id if isinstance(node, ast.Name) else ""
    return {dotted(n.func) for n in ast.walk(ast.parse(path.read_text(), str(path))) if isinstance(n, ast.Call)}


def test_one_extractor_one_cache_one_onnx_export():
    """Features are computed and cached by helpers.features alone (one key), ONNX files written by
    helpers.onnx_backbone alone (one export helper, one session cache)."""
    exporters = sorted(n for n, p in MODULES.items() if "torch.onnx.export" in _called(p))
    assert exporters == ["helpers.onnx_backbone"], exporters
    cachers = sorted(n for n, p in LIBRARY.items() if 'cache_dir("features"' in p.read_text().replace("'", '"'))
    assert cachers == ["helpers.features"], cachers


def test_stages_are_reached_by_the_stage_api_only():
    """No forward hooks, no FX tracing, no guessing of the architecture: stage outputs and inputs come
    from `Backbone.forward_intermediates` / `forward_until` / `forward_from`."""
    banned = ("register_forward_hook", "register_forward_pre_hook", "torch.fx", "feature_extraction",
              "create_feature_extractor")
    found = {n: [b for b in banned if b in p.read_text()] for n, p in LIBRARY.items()}
    assert not {n: b for n, b in found.items() if b}, found
    guesses = ("isinstance(body", "hasattr(body", "_blocks\")", "nn.Sequential)")
    for name in ("helpers.backbone_tail", "helpers.taps", "helpers.features", "helpers.onnx_backbone"):
        text = MODULES[name].read_text()
        assert not [g for g in guesses if g in text], name
