#!/usr/bin/env python3
"""The course's one entry point, on Linux, macOS and Windows.

    python course.py lab            set up (first time only) and open JupyterLab on notebooks/
    python course.py test           set up (first time only) and run every test: unit tests, the
                                    notebooks under nbval, and the widgets in a real browser
    python course.py test --quick   unit tests only, without the slow and the browser ones (~2 min)
    python course.py quick          the same as 'test --quick'
    python course.py notebooks      only the notebooks under nbval (CI runs it a second time as on
                                    another CPU: ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=4)
    python course.py bench          run the benchmarks and refresh the README's performance table

Anything after the command goes to JupyterLab, pytest or the benchmarks unchanged. `bash course.sh
...` runs this file with the same arguments. Needs Python 3.10+ with pip and nothing else: no
shell, no GNU tools. The environment lives in .venv (FACE_COURSE_VENV to change it); it is made
with the Python that runs this file ($PYTHON in course.sh).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parent
# What the environment is built from: a change to either file reinstalls on the next call.
REQUIREMENT_FILES = ("requirements.txt", "pyproject.toml")
STAMP_NAME = ".course-requirements.sha256"
USAGE = "usage: python course.py lab | test [--quick] | quick | notebooks | bench   (or: bash course.sh ...)"
MIN_PYTHON = (3, 10)


def say(message: str) -> None:
    print(f"[course] {message}", flush=True)


# --- where things are -------------------------------------------------------------------------

def venv_dir(environ: dict | None = None, root: Path = ROOT) -> Path:
    """The environment's folder: $FACE_COURSE_VENV (relative to the repository) or .venv."""
    environ = os.environ if environ is None else environ
    return root / environ.get("FACE_COURSE_VENV", ".venv")


def venv_python(venv: Path, os_name: str = os.name) -> Path:
    """The environment's Python: Scripts\\python.exe on Windows, bin/python elsewhere."""
    return venv / "Scripts" / "python.exe" if os_name == "nt" else venv / "bin" / "python"


def requirements_stamp(root: Path = ROOT, files: Sequence[str] = REQUIREMENT_FILES) -> str:
    """SHA-256 of the requirement files, concatenated in order.

    The same digest as `cat requirements.txt pyproject.toml | sha256sum`, which course.sh used to
    store: an environment made by the old script is not reinstalled for nothing.
    """
    digest = hashlib.sha256()
    for name in files:
        digest.update((root / name).read_bytes())
    return digest.hexdigest()


def is_root(geteuid: Callable[[], int] | None = None) -> bool:
    """True when running as root (containers, cloud notebooks); always False on Windows."""
    geteuid = geteuid or getattr(os, "geteuid", None)
    return geteuid is not None and geteuid() == 0


# --- setting up ---------------------------------------------------------------------------------

def install_commands(python: Path) -> list[list[str]]:
    """The pip calls that (re)install the course into the environment of `python`."""
    py = str(python)
    return [
        [py, "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
        [py, "-m", "pip", "install", "--quiet", "-r", "requirements.txt"],
        [py, "-m", "pip", "install", "--quiet", "--no-deps", "-e", "."],
    ]


def setup(environ: dict | None = None, run: Callable = subprocess.run, root: Path = ROOT) -> Path:
    """Create the environment if needed, (re)install when the requirements changed; its Python."""
    environ = os.environ if environ is None else environ
    venv = venv_dir(environ, root)
    python = venv_python(venv)
    if not python.exists():
        say(f"creating the environment in {venv}")
        result = run([sys.executable, "-m", "venv", str(venv)], cwd=root)
        if result.returncode != 0 or not python.exists():
            raise SystemExit("[course] could not create the environment. On Debian/Ubuntu: "
                             "apt-get install python3-venv; elsewhere install Python 3.10+ from python.org")
    stamp = venv / STAMP_NAME
    want = requirements_stamp(root)
    have = stamp.read_text(encoding="utf-8").strip() if stamp.exists() else ""
    if have != want:
        say("installing requirements (first time: a few minutes)")
        for cmd in install_commands(python):
            if run(cmd, cwd=root).returncode != 0:
                raise SystemExit(f"[course] this step failed: {' '.join(cmd)}")
        stamp.write_text(want + "\n", encoding="utf-8")
    return python


def child_env(environ: dict | None = None, root: Path = ROOT) -> dict:
    """The environment of JupyterLab, pytest and the benchmarks: numba gets a writable cache."""
    env = dict(os.environ if environ is None else environ)
    env.setdefault("NUMBA_CACHE_DIR", str(root / ".cache" / "numba"))
    return env


CHROMIUM_NAMES = ("chromium", "chromium-browser")


def find_chromium(environ: dict | None = None, which: Callable = shutil.which) -> str | None:
    """Chromium as the browser test finds it: $FACE_COURSE_CHROMIUM, else chromium on PATH."""
    environ = os.environ if environ is None else environ
    explicit = environ.get("FACE_COURSE_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else None
    return next((p for p in map(which, CHROMIUM_NAMES) if p), None)


def browser_ready(environ: dict | None = None, platform: str = sys.platform, root_user: bool | None = None,
                  which: Callable = shutil.which, run: Callable = subprocess.run) -> bool:
    """Make Chromium available for the widget test if this script can (root on Debian-like Linux).

    The test drives the system's Chromium through Playwright, never `playwright install` (that
    downloads a browser). Elsewhere it says the browser test will be skipped.
    """
    if find_chromium(environ, which):
        return True
    root_user = is_root() if root_user is None else root_user
    linux = platform.startswith("linux")
    if linux and root_user and which("apt-get"):
        say("installing chromium for the browser test")
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        apt_env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if run(["apt-get", "update", "-qq"], env=apt_env, **quiet).returncode == 0:
            run(["apt-get", "install", "-y", "-qq", "chromium"], env=apt_env, **quiet)
        if find_chromium(environ, which):
            return True
    if linux:
        say("chromium not found: the browser test will be skipped (apt-get install chromium)")
    else:
        say("no chromium found: the browser test will be skipped (it runs on Linux; elsewhere "
            "set FACE_COURSE_CHROMIUM to a Chromium or Chrome executable to try it)")
    return False


# --- the commands -------------------------------------------------------------------------------

NBVAL = ["--nbval", "--nbval-current-env", "--nbval-sanitize-with", ".ci/nbval_sanitize.cfg"]


def pytest_args(extra: Sequence[str] = (), quick: bool = False, notebooks_only: bool = False) -> list[str]:
    """Everything after `python -m pytest`, for the full run, the quick one or the notebooks alone.

    Full: the unit tests, every notebook under nbval (outputs compared by meaning, see
    notebooks/conftest.py) and the browser test. Quick: the unit tests without the browser and
    the `@pytest.mark.slow` ones. Notebooks: only the notebooks under nbval.
    """
    if quick:
        args = ["tests", "--ignore=tests/browser", "-m", "not slow", "-p", "no:cacheprovider"]
    elif notebooks_only:
        args = ["notebooks", *NBVAL, "-p", "no:cacheprovider"]
    else:
        args = ["tests", "notebooks", *NBVAL, "-p", "no:cacheprovider"]
    return args + list(extra)


def lab_args(extra: Sequence[str] = (), root_user: bool = False) -> list[str]:
    """Everything after `python -m jupyter`: JupyterLab on notebooks/, allowed to run as root."""
    args = ["lab", "--notebook-dir=notebooks"]
    if root_user and "--allow-root" not in extra:
        say("running as root (a container or a cloud notebook?): starting JupyterLab with --allow-root")
        args.append("--allow-root")
    return args + list(extra)


def run_last(cmd: list[str], env: dict, cwd: Path = ROOT) -> int:
    """Run the final command: in place of this process where the OS can (POSIX), else as a child."""
    os.chdir(cwd)
    sys.stdout.flush()
    if os.name == "posix":
        os.execve(cmd[0], cmd, env)   # Ctrl-C and the exit status go straight to the program
    return subprocess.call(cmd, env=env)


def parse(argv: Sequence[str]) -> tuple[str, bool, list[str]] | None:
    """(command, quick, extra arguments), or None for a command line that is not one;
    'quick' and 'test --quick' both give ('test', True, ...)."""
    if not argv or argv[0] not in ("lab", "test", "quick", "notebooks", "bench"):
        return None
    command, rest = argv[0], list(argv[1:])
    quick = command == "quick"
    if command == "test" and "--quick" in rest:
        rest.remove("--quick")
        quick = True
    return ("test" if quick else command), quick, rest


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return 0
    parsed = parse(argv)
    if parsed is None:
        print(USAGE if not argv else f"{USAGE}\nunknown command: {argv[0]}", file=sys.stderr)
        return 2
    command, quick, extra = parsed
    if sys.version_info < MIN_PYTHON:
        print(f"[course] Python {sys.version.split()[0]} is too old: the course needs 3.10 or newer "
              "(set PYTHON to another interpreter)", file=sys.stderr)
        return 2
    python = setup()
    env = child_env()
    if command == "lab":
        return run_last([str(python), "-m", "jupyter", *lab_args(extra, is_root())], env)
    if command == "test":
        if not quick:
            browser_ready()
        return run_last([str(python), "-m", "pytest", *pytest_args(extra, quick)], env)
    if command == "notebooks":
        return run_last([str(python), "-m", "pytest", *pytest_args(extra, notebooks_only=True)], env)
    return run_last([str(python), "-m", "benchmarks", *extra], env)


if __name__ == "__main__":
    sys.exit(main())
