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
PRESENTATION = ("matplotlib", "seaborn", "ipywidgets", "IPython", "anywidget")
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
    assert {"helpers.data", "helpers.models", "helpers.features", "helpers.train", "helpers.evaluate",
            "helpers.recognize"} <= set(MODULES)
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


# The pipeline's stages, in order: a library module imports only from its own stage or earlier ones.
STAGES = ("runtime", "io", "memory", "config", "data", "models", "features", "evaluate", "train", "recognize",
          "cli_args", "cli", "__main__")


def _stage(name: str) -> str:
    """'helpers.models.heads' -> 'models'; 'helpers.runtime' -> 'runtime'."""
    return name.split(".")[1]


def _backward_edges(edges: dict[str, set[str]]) -> list[str]:
    return sorted(f"{n} -> {m}" for n, ms in edges.items() for m in ms
                  if n in LIBRARY and n != "helpers" and m != "helpers"
                  and STAGES.index(_stage(m)) > STAGES.index(_stage(n)))


def test_library_packages_follow_the_pipeline():
    """data -> models -> features -> evaluate -> train -> recognize -> cli: no stage reaches a later one."""
    stages = {_stage(n) for n in LIBRARY if n != "helpers"}
    assert stages == set(STAGES), f"a new package or top module {sorted(stages - set(STAGES))}: place it in STAGES"
    assert _backward_edges(_internal_edges()) == []


def test_pipeline_checker_catches_a_backward_import():
    edges = {"helpers.data.folders": {"helpers.models.backbones"}, "helpers.models.heads": {"helpers.runtime"}}
    assert _backward_edges(edges) == ["helpers.data.folders -> helpers.models.backbones"]


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


# ---------------------------------------------------------------------- one freezing rule

FREEZING = "helpers.models.freezing"


def _calls(node: ast.AST) -> set[str]:
    """Names of the functions and methods called inside `node` (`f(...)` -> f, `x.f(...)` -> f)."""
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Call):
            f = n.func
            out.add(f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else "")
    return out


def _freezing_by_hand(tree: ast.AST) -> list[int]:
    """Lines of loops that switch modules to eval mode or stop gradients one by one: a second
    freezing rule (`for m in ...: m.eval()`, `m.training = False`, `p.requires_grad_(False)`)."""
    found = []
    for loop in ast.walk(tree):
        if not isinstance(loop, (ast.For, ast.comprehension)):
            continue
        body = loop.body if isinstance(loop, ast.For) else []
        for n in (x for stmt in body for x in ast.walk(stmt)):
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and (
                    n.func.attr == "eval" or (n.func.attr == "requires_grad_" and n.args
                                              and isinstance(n.args[0], ast.Constant) and n.args[0].value is False)):
                found.append(n.lineno)
            if isinstance(n, ast.Assign) and any(isinstance(t, ast.Attribute) and t.attr in ("training", "requires_grad")
                                                 for t in n.targets):
                found.append(n.lineno)
    return found


def test_one_freezing_implementation():
    """`helpers.models.freezing` is the only place that freezes: no other library module loops over modules
    to put them in eval mode or stop their gradients, and the old parameter-based rule is gone."""
    assert FREEZING in LIBRARY
    for name, path in LIBRARY.items():
        text = path.read_text()
        assert "keep_frozen_in_eval" not in text, f"{name} still names the old rule keep_frozen_in_eval"
        if name != FREEZING:
            lines = _freezing_by_hand(ast.parse(text))
            assert not lines, f"{name} freezes by hand at lines {lines}: use helpers.models.freezing"


def test_every_train_override_applies_the_freezing_rule():
    """Each `train()` override in the library (and the distributed trainer's `_set_modes`) calls
    `apply_freezing_rule`, so frozen modules are in eval mode however training is started."""
    seen = []
    for name, path in LIBRARY.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and (node.name == "train" and node.args.args
                                                      and node.args.args[0].arg == "self" or node.name == "_set_modes"):
                seen.append(f"{name}.{node.name}")
                assert "apply_freezing_rule" in _calls(node), f"{name}.{node.name} does not apply the freezing rule"
    assert {"helpers.models.backbones.train", "helpers.models.backbone_tail.train", "helpers.train.trainer._set_modes"} <= set(seen)


def test_freezing_checker_catches_a_second_rule():
    bad = ast.parse("def f(model):\n    for m in model.modules():\n        m.eval()\n"
                    "    for p in model.parameters():\n        p.requires_grad_(False)\n")
    assert _freezing_by_hand(bad) == [3, 5]
    assert _freezing_by_hand(ast.parse("model.eval()\nfor x in xs:\n    print(x)\n")) == []


def _called(path: Path) -> set[str]:
    """Dotted names of everything called in a module (`torch.onnx.export`, `cache_dir`, ...)."""
    def dotted(node) -> str:
        if isinstance(node, ast.Attribute):
            return f"{dotted(node.value)}.{node.attr}"
        return node.id if isinstance(node, ast.Name) else ""
    return {dotted(n.func) for n in ast.walk(ast.parse(path.read_text(), str(path))) if isinstance(n, ast.Call)}


def test_one_extractor_one_cache_one_onnx_export():
    """Features are computed and cached by helpers.features.extract alone (one key), ONNX files written by
    helpers.features.onnx_backbone alone (one export helper, one session cache)."""
    exporters = sorted(n for n, p in MODULES.items() if "torch.onnx.export" in _called(p))
    assert exporters == ["helpers.features.onnx_backbone"], exporters
    cachers = sorted(n for n, p in LIBRARY.items() if 'cache_dir("features"' in p.read_text().replace("'", '"'))
    assert cachers == ["helpers.features.extract"], cachers


def test_stages_are_reached_by_the_stage_api_only():
    """No forward hooks, no FX tracing, no guessing of the architecture: stage outputs and inputs come
    from `Backbone.forward_intermediates` / `forward_until` / `forward_from`."""
    banned = ("register_forward_hook", "register_forward_pre_hook", "torch.fx", "feature_extraction",
              "create_feature_extractor")
    found = {n: [b for b in banned if b in p.read_text()] for n, p in MODULES.items()}   # the course's too
    assert not {n: b for n, b in found.items() if b}, found
    guesses = ("isinstance(body", "hasattr(body", "_blocks\")", "nn.Sequential)")
    for name in ("helpers.models.backbone_tail", "helpers.features.taps", "helpers.features.extract", "helpers.features.onnx_backbone"):
        text = MODULES[name].read_text()
        assert not [g for g in guesses if g in text], name


# ---------------------------------------------------------------------- one training step

# modules that call backward() for something other than a training step, and why
NOT_TRAINING = {"helpers.models.partial_fc": "its check against the replicated head's gradients",
                "helpers.course.margins": "the gradient of a margin formula at one point, for a plot"}


def test_one_training_step():
    """`helpers.train.step` is the only module that calls `backward()` to train: `fit`, the trainer,
    the cached unfreezing steps and the course's step timing all call its `train_step`."""
    callers = {n for n, p in MODULES.items() if "backward" in _calls(ast.parse(p.read_text()))}
    assert callers - set(NOT_TRAINING) == {"helpers.train.step"}, sorted(callers)
    users = {n for n, p in MODULES.items() if "train_step" in _calls(ast.parse(p.read_text()))}
    assert {"helpers.train.fit", "helpers.train.trainer", "helpers.train.cached_unfreezing",
            "helpers.course.training_runs"} <= users, sorted(users)


# ---------------------------------------------------------------------- the recogniser as parts (issue 21 item 6)

METHOD_NAMES = {"raw", "head", "multilayer-tta-whiten"}
METHOD_CONSTANTS = {"WHITEN", "DEFAULT_METHOD", "METHODS"}


def _names_a_method(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and node.value in METHOD_NAMES:
        return True
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_names_a_method(e) for e in node.elts)
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return name in METHOD_CONSTANTS or name == "method"


def test_only_the_registry_switches_on_a_method_name():
    """Outside helpers.recognize.embedders (where `EMBEDDERS` maps the command line's names to classes), no library
    module compares with a method name (`method == "head"`, `== WHITEN`, `in ("raw", ...)`) or keys a
    table by one: what differs between methods lives in the embedder classes."""
    found = []
    for name, path in LIBRARY.items():
        if name == "helpers.recognize.embedders":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            sides = [] if not isinstance(node, ast.Compare) else [node.left, *node.comparators]
            if any(_names_a_method(n) for n in sides) and not any(  # `args.method is None` is not a switch
                    isinstance(n, ast.Constant) and n.value is None for n in sides):
                found.append(f"{name}:{node.lineno}")
            if isinstance(node, ast.Dict) and any(k is not None and _names_a_method(k) for k in node.keys):
                found.append(f"{name}:{node.lineno} (a table keyed by method)")
    assert not found, f"method names switched on outside helpers.recognize.embedders: {found}"


def _call_lines(path: Path, attr: str) -> list[int]:
    return [n.lineno for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)
            and (getattr(n.func, "attr", None) == attr or getattr(n.func, "id", None) == attr)]


def test_the_whitening_maths_exists_once():
    """One fit (`fit_whitening`, one decomposition, no alternative route) and one map (`whiten`, used by
    both the NumPy `Whitening.apply` and the exported torch `Representation.forward`)."""
    defs = [(name, n.name) for name, path in LIBRARY.items() for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.FunctionDef) and n.name in ("fit_whitening", "whiten")]
    assert sorted(defs) == [("helpers.features.representations", "fit_whitening"), ("helpers.features.representations", "whiten")]
    other_uses = {"helpers.data.alignment"}     # its SVD solves the similarity transform (Umeyama), not a whitening
    decompositions = {name: _call_lines(path, a) for name, path in LIBRARY.items() for a in ("svd", "eigh", "eig")
                      if _call_lines(path, a) and name not in other_uses}
    assert list(decompositions) == ["helpers.features.representations"] and len(decompositions["helpers.features.representations"]) == 1
    import inspect

    from helpers.features import representations as RP

    assert list(inspect.signature(RP.fit_whitening).parameters) == ["x", "y", "lam", "background"]
    # the map's matrix products are written in `whiten` only
    tree = ast.parse(LIBRARY["helpers.features.representations"].read_text())
    for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name != "whiten"):
        products = [n for n in ast.walk(fn) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.MatMult)
                    and "basis" in ast.unparse(n)]
        assert not products, f"{fn.name} applies a whitening itself: {[ast.unparse(p) for p in products]}"


# ---------------------------------------------------------------------- which notebook introduces what

def _notebook_tags():
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("notebook_tags", PACKAGE.parent / "tools" / "notebook_tags.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["notebook_tags"] = mod        # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_every_library_object_says_which_notebook_introduces_it():
    """Each public function and class of the library ends its docstring with the notebook that first runs
    it, as computed from the notebooks' code (`python tools/notebook_tags.py --write` rewrites them)."""
    tags = _notebook_tags()
    assert tags.mismatches() == []


def test_notebook_tags_follow_the_notebooks():
    """The tags are computed, not copied: objects named in a notebook, run inside one, or only by the CLI."""
    tags = _notebook_tags()
    found = tags.compute_tags()
    assert len(found) >= 200
    assert found["helpers.models.backbones.load_backbone"] == "Notebook 00."            # named in 00's code
    assert found["helpers.train.trainer.TrainConfig"] == "Notebook 07."
    assert found["helpers.models.heads.make_head"].startswith("Notebook 01, inside `")  # run by build_model
    assert found["helpers.cli.cmd_train"] == "Command line: `python -m helpers ...`."
    wrong = ast.parse('def f():\n    """Does f.\n\n    Notebook 03.\n    """\n').body[0]
    assert tags.docstring_tag(wrong) == "Notebook 03." != found["helpers.models.backbones.load_backbone"]
