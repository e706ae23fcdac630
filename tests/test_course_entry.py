"""course.py, the entry point behind `bash course.sh ...`: paths per OS, the requirements stamp, the
commands it builds and the root note. All simulated (monkeypatched): nothing is installed or run."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("course_entry", ROOT / "course.py")
course = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(course)

TODAY_FULL = ["tests", "notebooks", "--nbval", "--nbval-current-env", "--nbval-sanitize-with",
              ".ci/nbval_sanitize.cfg", "-p", "no:cacheprovider"]


class Recorder:
    """A stand-in for subprocess.run: records each command; `effects` may create files."""

    def __init__(self, returncode=0, effects=None):
        self.calls, self.returncode, self.effects = [], returncode, effects or (lambda cmd: None)

    def __call__(self, cmd, **kwargs):
        self.calls.append(list(cmd))
        self.effects(cmd)
        return SimpleNamespace(returncode=self.returncode)


# --- paths ----------------------------------------------------------------------------------------

def test_venv_python_per_os(tmp_path):
    assert course.venv_python(tmp_path, os_name="nt") == tmp_path / "Scripts" / "python.exe"
    assert course.venv_python(tmp_path, os_name="posix") == tmp_path / "bin" / "python"


def test_venv_dir_default_relative_and_absolute(tmp_path):
    assert course.venv_dir({}, root=tmp_path) == tmp_path / ".venv"
    assert course.venv_dir({"FACE_COURSE_VENV": "envs/x"}, root=tmp_path) == tmp_path / "envs" / "x"
    elsewhere = tmp_path / "abs"
    assert course.venv_dir({"FACE_COURSE_VENV": str(elsewhere)}, root=tmp_path / "repo") == elsewhere


# --- the requirements stamp -----------------------------------------------------------------------

def _files(tmp_path, req=b"-e .[course,test]\n", pyproject=b"[project]\nname = 'x'\n"):
    (tmp_path / "requirements.txt").write_bytes(req)
    (tmp_path / "pyproject.toml").write_bytes(pyproject)


def test_stamp_is_the_digest_course_sh_stored(tmp_path):
    """`cat requirements.txt pyproject.toml | sha256sum`: environments made by the old script stay valid."""
    _files(tmp_path)
    want = hashlib.sha256(b"-e .[course,test]\n" + b"[project]\nname = 'x'\n").hexdigest()
    assert course.requirements_stamp(tmp_path) == want


def test_stamp_changes_with_either_file(tmp_path):
    _files(tmp_path)
    first = course.requirements_stamp(tmp_path)
    _files(tmp_path, req=b"-e .[course]\n")
    second = course.requirements_stamp(tmp_path)
    _files(tmp_path, req=b"-e .[course]\n", pyproject=b"[project]\nname = 'y'\n")
    assert len({first, second, course.requirements_stamp(tmp_path)}) == 3


def test_the_real_stamp_covers_both_files():
    assert course.REQUIREMENT_FILES == ("requirements.txt", "pyproject.toml")
    assert len(course.requirements_stamp()) == 64


# --- setup ----------------------------------------------------------------------------------------

def _fake_venv(venv: Path):
    def effects(cmd):
        if cmd[1:3] == ["-m", "venv"]:
            py = course.venv_python(Path(cmd[3]))
            py.parent.mkdir(parents=True)
            py.write_text("")
    return effects


def test_setup_creates_installs_once_and_reinstalls_on_change(tmp_path, capsys):
    _files(tmp_path)
    venv = tmp_path / ".venv"
    run = Recorder(effects=_fake_venv(venv))
    python = course.setup(environ={}, run=run, root=tmp_path)
    assert python == course.venv_python(venv)
    assert run.calls[0] == [sys.executable, "-m", "venv", str(venv)]
    assert run.calls[1:] == course.install_commands(python)
    assert any(c[-2:] == ["-r", "requirements.txt"] for c in run.calls)
    assert (venv / course.STAMP_NAME).read_text().strip() == course.requirements_stamp(tmp_path)

    run.calls.clear()
    course.setup(environ={}, run=run, root=tmp_path)        # nothing changed: nothing runs
    assert run.calls == []

    _files(tmp_path, req=b"-e .[course]\n")                  # requirements changed: install again, no new venv
    course.setup(environ={}, run=run, root=tmp_path)
    assert run.calls == course.install_commands(python)
    assert "installing requirements" in capsys.readouterr().out


def test_a_stamp_written_by_course_sh_is_accepted(tmp_path):
    _files(tmp_path)
    venv = tmp_path / ".venv"
    _fake_venv(venv)([sys.executable, "-m", "venv", str(venv)])
    (venv / course.STAMP_NAME).write_text(course.requirements_stamp(tmp_path) + "\n")   # echo "$want" > stamp
    run = Recorder()
    course.setup(environ={}, run=run, root=tmp_path)
    assert run.calls == []


def test_setup_stops_with_the_failing_step_and_writes_no_stamp(tmp_path):
    _files(tmp_path)
    venv = tmp_path / ".venv"
    _fake_venv(venv)([sys.executable, "-m", "venv", str(venv)])
    with pytest.raises(SystemExit, match="pip install"):
        course.setup(environ={}, run=Recorder(returncode=1), root=tmp_path)
    assert not (venv / course.STAMP_NAME).exists()


def test_setup_says_how_to_get_venv_when_it_cannot_be_made(tmp_path):
    _files(tmp_path)
    with pytest.raises(SystemExit, match="python3-venv"):
        course.setup(environ={}, run=Recorder(returncode=1), root=tmp_path)


def test_child_env_points_numba_at_the_repo_cache_unless_set(tmp_path):
    assert course.child_env({}, root=tmp_path)["NUMBA_CACHE_DIR"] == str(tmp_path / ".cache" / "numba")
    assert course.child_env({"NUMBA_CACHE_DIR": "/x"}, root=tmp_path)["NUMBA_CACHE_DIR"] == "/x"


# --- the commands -----------------------------------------------------------------------------------

def test_full_test_run_is_todays_pytest_call():
    assert course.pytest_args() == TODAY_FULL
    assert course.pytest_args(["-k", "margins", "-x"]) == TODAY_FULL + ["-k", "margins", "-x"]


def test_notebooks_run_is_nbval_on_the_notebooks_alone():
    args = course.pytest_args(["-x"], notebooks_only=True)
    assert args[0] == "notebooks" and "tests" not in args and "--nbval" in args and args[-1] == "-x"


def test_quick_run_is_unit_tests_without_slow_browser_or_notebooks():
    args = course.pytest_args(["-x"], quick=True)
    assert args[0] == "tests" and "notebooks" not in args and "--nbval" not in args
    assert "--ignore=tests/browser" in args
    assert args[args.index("-m") + 1] == "not slow"
    assert args[-1] == "-x"


@pytest.mark.parametrize("argv, parsed", [
    (["test"], ("test", False, [])),
    (["test", "-x", "-k", "arc"], ("test", False, ["-x", "-k", "arc"])),
    (["test", "--quick"], ("test", True, [])),
    (["test", "-x", "--quick"], ("test", True, ["-x"])),
    (["quick", "-k", "cli"], ("test", True, ["-k", "cli"])),
    (["lab", "--port=9999"], ("lab", False, ["--port=9999"])),
    (["bench", "--smoke"], ("bench", False, ["--smoke"])),
    (["notebooks", "-x"], ("notebooks", False, ["-x"])),
    ([], None),
    (["nonsense"], None),
])
def test_parse(argv, parsed):
    assert course.parse(argv) == parsed


def test_lab_as_root_starts_with_one_line_note(capsys):
    args = course.lab_args(["--port=9999"], root_user=True)
    assert args == ["lab", "--notebook-dir=notebooks", "--allow-root", "--port=9999"]
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "root" in out and out.startswith("[course] ")


def test_lab_not_root_or_already_allowed_adds_nothing(capsys):
    assert course.lab_args([], root_user=False) == ["lab", "--notebook-dir=notebooks"]
    assert course.lab_args(["--allow-root"], root_user=True).count("--allow-root") == 1
    assert capsys.readouterr().out == ""


def test_is_root():
    assert course.is_root(lambda: 0) is True
    assert course.is_root(lambda: 1000) is False


def test_is_root_false_where_there_is_no_geteuid(monkeypatch):
    monkeypatch.delattr(os, "geteuid", raising=False)   # Windows
    assert course.is_root() is False


@pytest.mark.parametrize("argv, tail", [
    (["test", "-x"], ["-m", "pytest", *TODAY_FULL, "-x"]),
    (["quick"], ["-m", "pytest", *course.pytest_args(quick=True)]),
    (["lab"], ["-m", "jupyter", "lab", "--notebook-dir=notebooks", "--allow-root"]),
    (["bench", "--smoke"], ["-m", "benchmarks", "--smoke"]),
    (["notebooks"], ["-m", "pytest", "notebooks", *course.NBVAL, "-p", "no:cacheprovider"]),
])
def test_main_runs_the_venv_python_with_the_built_arguments(monkeypatch, tmp_path, argv, tail):
    ran, browser = [], []
    py = tmp_path / "bin" / "python"
    monkeypatch.setattr(course, "setup", lambda: py)
    monkeypatch.setattr(course, "is_root", lambda: True)
    monkeypatch.setattr(course, "browser_ready", lambda: browser.append(1))
    monkeypatch.setattr(course, "run_last", lambda cmd, env: ran.append((cmd, env)) or 0)
    assert course.main(argv) == 0
    (cmd, env), = ran
    assert cmd == [str(py), *tail]
    assert "NUMBA_CACHE_DIR" in env
    assert browser == ([1] if argv == ["test", "-x"] else [])    # only the full run needs Chromium


def test_main_usage_errors_exit_2(capsys):
    assert course.main([]) == 2
    assert course.main(["nonsense"]) == 2
    assert "usage:" in capsys.readouterr().err


# --- the browser for the widget test ------------------------------------------------------------------

def test_browser_found_runs_nothing():
    run = Recorder()
    assert course.browser_ready({}, "linux", True, which=lambda n: "/usr/bin/chromium", run=run)
    assert run.calls == []


def test_browser_installed_with_apt_get_as_root_on_linux(capsys):
    installed = []
    run = Recorder(effects=lambda cmd: installed.append(1) if "install" in cmd else None)
    which = lambda n: {"apt-get": "/usr/bin/apt-get", "chromium": "/usr/bin/chromium" if installed else None}.get(n)
    assert course.browser_ready({}, "linux", True, which=which, run=run)
    assert run.calls == [["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]]


@pytest.mark.parametrize("platform, root_user, hint", [
    ("linux", False, "apt-get install chromium"),
    ("darwin", True, "FACE_COURSE_CHROMIUM"),
    ("win32", False, "FACE_COURSE_CHROMIUM"),
])
def test_browser_missing_says_the_test_will_be_skipped(capsys, platform, root_user, hint):
    run = Recorder()
    assert course.browser_ready({}, platform, root_user, which=lambda n: None, run=run) is False
    assert run.calls == []
    out = capsys.readouterr().out
    assert "browser test will be skipped" in out and hint in out


def test_browser_from_face_course_chromium(tmp_path):
    exe = tmp_path / "chrome"
    exe.write_text("")
    assert course.find_chromium({"FACE_COURSE_CHROMIUM": str(exe)}, which=lambda n: None) == str(exe)
    assert course.find_chromium({"FACE_COURSE_CHROMIUM": str(tmp_path / "no")}, which=lambda n: "/x") is None


# --- course.sh stays a thin wrapper ---------------------------------------------------------------------

def test_course_sh_hands_everything_to_course_py():
    text = (ROOT / "course.sh").read_text()
    assert 'exec "${PYTHON:-python3}" course.py "$@"' in text
    assert "sha256sum" not in text and "pip" not in text.split("set -euo pipefail")[1]


def test_course_py_needs_no_shell_tools():
    """Commands are argument lists of Python, pip, jupyter and apt-get: never a shell or GNU tools."""
    text = (ROOT / "course.py").read_text()
    for tool in ('"sha256sum"', '"cut"', '"bash"', '"sh"', "shell=True", "os.system"):
        assert tool not in text


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash (Windows without Git Bash)")
def test_course_sh_usage_error_without_setting_anything_up():
    proc = subprocess.run(["bash", str(ROOT / "course.sh"), "nonsense"], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=60)
    assert proc.returncode == 2 and "usage:" in proc.stderr
