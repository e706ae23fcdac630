"""What `python course.py ...` does, once course.py has checked the Python version (3.10+).

Split from course.py so that course.py stays readable by Python 2.7 and 3.6, which then get the
version message instead of a SyntaxError. The commands are documented in course.py.

The environment (.venv, or $FACE_COURSE_VENV) is checked on every call: its Python must start
(`python -c ...`), be the same minor version as the Python running course.py, and have pip
(`pip --version`). Otherwise it is rebuilt with a one-line note. Two stamps in it record what was
installed (the requirement files' digest, the Python version, the PyTorch variant): the `course`
extra (every command) and the `test` extra (test, quick, notebooks), so a learner who only opens
JupyterLab never downloads the test tools, and `lab` then `test` installs them once.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
# What the environment is built from: a change to any of these files reinstalls on the next call.
REQUIREMENT_FILES = ("requirements.txt", "requirements-test.txt", "pyproject.toml")
STAMP_NAME = ".course-stamp.json"             # the `course` extra: what `lab` needs
TEST_STAMP_NAME = ".course-test-stamp.json"   # the `test` extra on top: what `test` needs
BASELINES_STAMP_NAME = ".course-baselines-stamp.json"   # dlib and OpenVINO: what `bench` adds
USAGE = "usage: python course.py lab | test [--quick] | quick | notebooks | bench   (or: bash course.sh ...)"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_VARIANTS = ("default", "cpu")
INTERRUPTED = "[course] interrupted; run again"


def say(message: str) -> None:
    print(f"[course] {message}", flush=True)


def usage_doc(root: Path = ROOT) -> str:
    """course.py's docstring: the help text."""
    return ast.get_docstring(ast.parse((root / "course.py").read_text(encoding="utf-8"))) or USAGE


# --- where things are -------------------------------------------------------------------------

def venv_dir(environ: dict | None = None, root: Path = ROOT) -> Path:
    """The environment's folder: $FACE_COURSE_VENV (relative to the repository) or .venv."""
    environ = os.environ if environ is None else environ
    return root / environ.get("FACE_COURSE_VENV", ".venv")


def venv_python(venv: Path, os_name: str = os.name) -> Path:
    """The environment's Python: Scripts\\python.exe on Windows, bin/python elsewhere."""
    return venv / "Scripts" / "python.exe" if os_name == "nt" else venv / "bin" / "python"


def requirements_digest(root: Path = ROOT, files: Sequence[str] = REQUIREMENT_FILES) -> str:
    """SHA-256 of the requirement files, concatenated in order."""
    digest = hashlib.sha256()
    for name in files:
        digest.update((root / name).read_bytes())
    return digest.hexdigest()


def is_root(geteuid: Callable[[], int] | None = None) -> bool:
    """True when running as root (containers, cloud notebooks); always False on Windows."""
    geteuid = geteuid or getattr(os, "geteuid", None)
    return geteuid is not None and geteuid() == 0


def python_version(info: Sequence[int] = sys.version_info) -> str:
    return "%d.%d.%d" % tuple(info[:3])


def torch_variant(environ: dict | None = None) -> str:
    """'cpu' when FACE_COURSE_TORCH=cpu (PyTorch's CPU-only wheels), else 'default' (PyPI's)."""
    environ = os.environ if environ is None else environ
    value = environ.get("FACE_COURSE_TORCH", "").strip().lower() or "default"
    if value not in TORCH_VARIANTS:
        raise SystemExit(f"[course] FACE_COURSE_TORCH={value!r} is not known: use FACE_COURSE_TORCH=cpu "
                         "(PyTorch's CPU-only wheels) or leave it unset (PyPI's wheels)")
    return value


# --- the environment's health ---------------------------------------------------------------------

def read_stamp(path: Path) -> dict:
    """A stamp's record, or {} when it is missing or from an older launcher (a bare digest)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def stamp_record(root: Path, torch: str, version: str) -> dict:
    """What an install is valid for: the requirement files, the Python's minor version, the PyTorch variant."""
    minor = ".".join(version.split(".")[:2])
    return {"requirements": requirements_digest(root), "python": minor, "torch": torch}


PROBE = "import sys; print('%d.%d.%d' % sys.version_info[:3])"   # `python -c pass` that also says which


def diagnose(venv: Path, run: Callable = subprocess.run, want_version: str | None = None,
             torch: str = "default") -> str | None:
    """Why the environment in `venv` cannot be used as it is (None: it can).

    Checks, in order: it is a virtual environment at all (else it is not ours to delete), its Python
    exists and starts, it is the minor version of `want_version` (the Python running course.py),
    pip answers, and it was installed with the same PyTorch variant.
    """
    want_version = want_version or python_version()
    python = venv_python(venv)
    if not python.exists():     # a dangling link: the Python it was made with was removed or moved
        return "its Python is gone (was the Python it was made with removed or upgraded?)"
    try:
        probe = run([str(python), "-c", PROBE], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        probe = None
    if probe is None or probe.returncode != 0:
        return "its Python does not start (was the Python it was made with removed or upgraded?)"
    have = (probe.stdout or "").strip()
    if have.split(".")[:2] != want_version.split(".")[:2]:
        return f"it was made with Python {have or '?'}, and this is Python {want_version}"
    try:
        pip = run([str(python), "-m", "pip", "--version"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        pip = None
    if pip is None or pip.returncode != 0:
        return "it has no pip"
    stamped = read_stamp(venv / STAMP_NAME).get("torch")
    if stamped and stamped != torch:
        return f"it has PyTorch's {stamped} wheels and FACE_COURSE_TORCH asks for {torch}"
    return None


def remove_venv(venv: Path) -> None:
    """Delete a broken environment; refuse a folder that is not a virtual environment."""
    if any(venv.iterdir()) and not (venv / "pyvenv.cfg").exists():
        raise SystemExit(f"[course] {venv} is not a virtual environment (no pyvenv.cfg), so it is left "
                         "alone: set FACE_COURSE_VENV to a new folder, or remove it yourself")
    shutil.rmtree(venv)


# --- setting up ---------------------------------------------------------------------------------

def install_commands(python: Path, torch: str = "default") -> list[list[str]]:
    """The pip calls that (re)install the course (the `course` extra) into the environment of `python`.

    No --quiet: a first install downloads about 1 GB (3 GB with PyPI's CUDA PyTorch on Linux) and pip's
    progress bars show it is moving. FACE_COURSE_TORCH=cpu first installs torch and torchvision from
    PyTorch's CPU-only index; requirements.txt then keeps them (they satisfy its floors).
    """
    py = str(python)
    commands = [[py, "-m", "pip", "install", "--upgrade", "pip"]]
    if torch == "cpu":
        commands.append([py, "-m", "pip", "install", "--index-url", TORCH_CPU_INDEX, "torch", "torchvision"])
    commands.append([py, "-m", "pip", "install", "-r", "requirements.txt"])
    return commands


def test_install_commands(python: Path) -> list[list[str]]:
    """The pip call that adds the `test` extra (pytest, nbval, hypothesis, playwright, ...)."""
    return [[str(python), "-m", "pip", "install", "-r", "requirements-test.txt"]]


def baselines_install_commands(python: Path) -> list[list[str]]:
    """The pip call that adds the benchmarks' competitors (dlib's face embedder, OpenVINO): `bench` only."""
    return [[str(python), "-m", "pip", "install", "-r", "requirements-baselines.txt"]]


def _run_steps(commands: list[list[str]], run: Callable, root: Path) -> None:
    for cmd in commands:
        if run(cmd, cwd=root).returncode != 0:
            raise SystemExit(f"[course] this step failed: {' '.join(cmd)}\n"
                             "[course] its messages are above; fix the cause and run the same command again")


def setup(environ: dict | None = None, run: Callable = subprocess.run, root: Path = ROOT,
          test: bool = False, version: str | None = None, baselines: bool = False) -> Path:
    """Make the environment usable and up to date; its Python.

    Rebuilds a broken or foreign one (diagnose), creates a missing one, installs the `course` extra
    when its stamp differs, with `test` the `test` extra when that stamp differs, and with `baselines`
    the benchmarks' competitors (requirements-baselines.txt) likewise.
    """
    environ = os.environ if environ is None else environ
    version = version or python_version()
    torch = torch_variant(environ)
    venv = venv_dir(environ, root)
    python = venv_python(venv)
    if venv.exists():
        problem = diagnose(venv, run, version, torch)
        if problem:
            say(f"rebuilding the environment {venv}: {problem}")
            remove_venv(venv)
    if not venv.exists():
        say(f"creating the environment in {venv} with Python {version}")
        result = run([sys.executable, "-m", "venv", str(venv)], cwd=root)
        if result.returncode != 0 or not python.exists():
            raise SystemExit("[course] could not create the environment. On Debian/Ubuntu: "
                             "apt-get install python3-venv; elsewhere install Python 3.10+ from python.org")
    want = stamp_record(root, torch, version)
    if read_stamp(venv / STAMP_NAME) != want:
        say("installing the course's packages (first time: about 1 GB to download, see README)")
        _run_steps(install_commands(python, torch), run, root)
        (venv / TEST_STAMP_NAME).unlink(missing_ok=True)
        (venv / BASELINES_STAMP_NAME).unlink(missing_ok=True)
        (venv / STAMP_NAME).write_text(json.dumps(want) + "\n", encoding="utf-8")
    if test and read_stamp(venv / TEST_STAMP_NAME) != want:
        say("installing the test tools (pytest, nbval, playwright, ...): once")
        _run_steps(test_install_commands(python), run, root)
        (venv / TEST_STAMP_NAME).write_text(json.dumps(want) + "\n", encoding="utf-8")
    if baselines and read_stamp(venv / BASELINES_STAMP_NAME) != want:
        say("installing the benchmarks' baselines (dlib's face embedder, OpenVINO): once")
        _run_steps(baselines_install_commands(python), run, root)
        (venv / BASELINES_STAMP_NAME).write_text(json.dumps(want) + "\n", encoding="utf-8")
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
    """Run one command; Ctrl-C (also during pip) ends with a one-line note and status 130."""
    try:
        return _main(sys.argv[1:] if argv is None else list(argv))
    except KeyboardInterrupt:
        print("\n" + INTERRUPTED, file=sys.stderr, flush=True)
        return 130


def _main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(usage_doc())
        return 0
    parsed = parse(argv)
    if parsed is None:
        print(USAGE if not argv else f"{USAGE}\nunknown command: {argv[0]}", file=sys.stderr)
        return 2
    command, quick, extra = parsed
    python = setup(test=command in ("test", "notebooks"), baselines=command == "bench")
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
