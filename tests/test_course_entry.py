"""course.py (and tools/course_launcher.py, its body), the entry point behind `bash course.sh ...`: paths
per OS, the stamps, broken environments, Ctrl-C, old Pythons, the commands it builds and the root note.
Simulated: fake venvs in tmp folders (a shell script as their Python), nothing is installed."""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("course_entry", ROOT / "tools" / "course_launcher.py")
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
        stdout = course.python_version() if "-c" in cmd else "pip 25"    # the health probes' answers
        return SimpleNamespace(returncode=self.returncode, stdout=stdout)


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

def _files(tmp_path, req=b"-e .[course]\n", pyproject=b"[project]\nname = 'x'\n", test_req=b"-e .[course,test]\n"):
    (tmp_path / "requirements.txt").write_bytes(req)
    (tmp_path / "requirements-test.txt").write_bytes(test_req)
    (tmp_path / "pyproject.toml").write_bytes(pyproject)


def test_digest_changes_with_any_requirement_file(tmp_path):
    _files(tmp_path)
    first = course.requirements_digest(tmp_path)
    _files(tmp_path, req=b"-e .\n")
    second = course.requirements_digest(tmp_path)
    _files(tmp_path, req=b"-e .\n", test_req=b"-e .[test]\n")
    third = course.requirements_digest(tmp_path)
    _files(tmp_path, req=b"-e .\n", test_req=b"-e .[test]\n", pyproject=b"[project]\nname = 'y'\n")
    assert len({first, second, third, course.requirements_digest(tmp_path)}) == 4


def test_the_real_requirement_files_exist():
    assert course.REQUIREMENT_FILES == ("requirements.txt", "requirements-test.txt", "pyproject.toml")
    assert len(course.requirements_digest()) == 64


def test_stamp_records_requirements_python_minor_and_torch(tmp_path):
    _files(tmp_path)
    record = course.stamp_record(tmp_path, "cpu", "3.12.1")
    assert record == {"requirements": course.requirements_digest(tmp_path), "python": "3.12", "torch": "cpu"}


def test_an_old_bare_digest_stamp_reads_as_empty(tmp_path):
    (tmp_path / "s").write_text("ab" * 32 + "\n")
    assert course.read_stamp(tmp_path / "s") == {} and course.read_stamp(tmp_path / "missing") == {}


# --- setup ----------------------------------------------------------------------------------------

HERE = course.python_version()


def _fake_python(path: Path, version: str = HERE, starts: bool = True, pip: bool = True, install_sleep: int = 0):
    """A stand-in for a venv's Python (POSIX shell): answers the probe, `pip --version`, and pip install."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n"
                    + ("" if starts else "exit 1\n")
                    + f'if [ "$1" = "-c" ]; then echo {version}; exit 0; fi\n'
                    + ('if [ "$3" = "--version" ]; then ' + ("echo pip 25; exit 0" if pip else
                       "echo 'No module named pip' >&2; exit 1") + "; fi\n")
                    + (f"sleep {install_sleep}\n" if install_sleep else "")
                    + "exit 0\n")
    path.chmod(0o755)
    return path


def _fake_venv(venv: Path, **kwargs):
    venv.mkdir(parents=True, exist_ok=True)
    (venv / "pyvenv.cfg").write_text("home = /nowhere\n")
    return _fake_python(course.venv_python(venv), **kwargs)


def _creates_venv(cmd):
    if cmd[1:3] == ["-m", "venv"]:
        _fake_venv(Path(cmd[3]))


posix_only = pytest.mark.skipif(os.name != "posix", reason="the fake venv Python is a shell script")


@posix_only
def test_setup_creates_installs_once_and_reinstalls_on_change(tmp_path, capsys):
    _files(tmp_path)
    venv = tmp_path / ".venv"
    run = Recorder(effects=_creates_venv)
    python = course.setup(environ={}, run=run, root=tmp_path)
    assert python == course.venv_python(venv)
    assert run.calls[0] == [sys.executable, "-m", "venv", str(venv)]
    assert run.calls[1:] == course.install_commands(python)
    assert course.read_stamp(venv / course.STAMP_NAME) == course.stamp_record(tmp_path, "default", HERE)

    probes = [[str(python), "-c", course.PROBE], [str(python), "-m", "pip", "--version"]]
    run.calls.clear()
    course.setup(environ={}, run=run, root=tmp_path)        # nothing changed: only the health checks run
    assert run.calls == probes

    _files(tmp_path, req=b"-e .[course,x]\n")              # requirements changed: install again, no new venv
    run.calls.clear()
    course.setup(environ={}, run=run, root=tmp_path)
    assert run.calls == probes + course.install_commands(python)
    out = capsys.readouterr().out
    assert "installing the course's packages" in out and "rebuilding" not in out


@posix_only
def test_lab_installs_no_test_tools_and_test_adds_them_once(tmp_path, capsys):
    _files(tmp_path)
    venv = tmp_path / ".venv"
    run = Recorder(effects=_creates_venv)
    python = course.setup(environ={}, run=run, root=tmp_path)            # lab
    assert not any("requirements-test.txt" in c for c in run.calls)
    assert all("[test]" not in " ".join(c) and "playwright" not in c for c in run.calls)
    run.calls.clear()
    course.setup(environ={}, run=run, root=tmp_path, test=True)          # then test: the test extra once
    assert run.calls[2:] == course.test_install_commands(python)
    assert course.test_install_commands(python)[0][-2:] == ["-r", "requirements-test.txt"]
    run.calls.clear()
    course.setup(environ={}, run=run, root=tmp_path, test=True)          # and not again
    assert len(run.calls) == 2


@posix_only
def test_bench_adds_the_baselines_once_and_lab_and_test_never(tmp_path):
    """dlib and OpenVINO are the benchmarks' competitors: `bench` installs them once, nothing else does."""
    _files(tmp_path)
    run = Recorder(effects=_creates_venv)
    python = course.setup(environ={}, run=run, root=tmp_path, test=True)        # lab / test
    assert not any("requirements-baselines.txt" in c for c in run.calls)
    run.calls.clear()
    course.setup(environ={}, run=run, root=tmp_path, baselines=True)          # bench: the baselines once
    assert run.calls[2:] == course.baselines_install_commands(python)
    assert course.baselines_install_commands(python)[0][-2:] == ["-r", "requirements-baselines.txt"]
    run.calls.clear()
    course.setup(environ={}, run=run, root=tmp_path, baselines=True)          # and not again
    assert len(run.calls) == 2
    assert (ROOT / "requirements-baselines.txt").is_file()


def test_requirement_files_split_course_from_test():
    def entries(name):
        return [ln.strip() for ln in (ROOT / name).read_text().splitlines()
                if ln.strip() and not ln.lstrip().startswith("#")]
    assert entries("requirements.txt") == ["-e .[course]"]
    assert entries("requirements-test.txt") == ["-e .[course,test]"]


def test_install_shows_pips_progress_and_cpu_torch_comes_from_pytorchs_index(tmp_path):
    py = tmp_path / "python"
    default, cpu = course.install_commands(py), course.install_commands(py, "cpu")
    assert not any("--quiet" in c or "-q" in c for c in default + cpu + course.test_install_commands(py))
    assert not any("download.pytorch.org" in " ".join(c) for c in default)
    assert cpu[1] == [str(py), "-m", "pip", "install", "--index-url", "https://download.pytorch.org/whl/cpu",
                      "torch", "torchvision"]
    assert cpu[2][-2:] == ["-r", "requirements.txt"]     # after torch, so its CPU build is kept


@pytest.mark.parametrize("value, variant", [(None, "default"), ("", "default"), ("cpu", "cpu"), ("CPU", "cpu")])
def test_torch_variant_from_the_environment(value, variant):
    assert course.torch_variant({} if value is None else {"FACE_COURSE_TORCH": value}) == variant


def test_unknown_torch_variant_is_a_clear_message():
    with pytest.raises(SystemExit, match="FACE_COURSE_TORCH='cuda'.*cpu"):
        course.torch_variant({"FACE_COURSE_TORCH": "cuda"})


@posix_only
def test_setup_stops_with_the_failing_step_and_writes_no_stamp(tmp_path):
    _files(tmp_path)
    venv = tmp_path / ".venv"
    _fake_venv(venv)
    run = Recorder(effects=lambda cmd: None)
    run_fail = lambda cmd, **kw: SimpleNamespace(returncode=1) if "install" in cmd else subprocess.run(cmd, **kw)
    with pytest.raises(SystemExit, match="pip install"):
        course.setup(environ={}, run=run_fail, root=tmp_path)
    assert not (venv / course.STAMP_NAME).exists()


def test_setup_says_how_to_get_venv_when_it_cannot_be_made(tmp_path):
    _files(tmp_path)
    with pytest.raises(SystemExit, match="python3-venv"):
        course.setup(environ={}, run=Recorder(returncode=1), root=tmp_path)


# --- broken environments: each is diagnosed and rebuilt with one line ---------------------------------

def _dangling(venv: Path):
    """A venv whose base Python was removed: bin/python links to a file that is gone."""
    venv.mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /gone\n")
    python = course.venv_python(venv)
    python.parent.mkdir(parents=True)
    python.symlink_to(venv.parent / "removed-python3.11")


@posix_only
@pytest.mark.parametrize("make, note", [
    (_dangling, "its Python is gone"),
    (lambda v: _fake_venv(v, starts=False), "its Python does not start"),
    (lambda v: _fake_venv(v, pip=False), "it has no pip"),
    (lambda v: _fake_venv(v, version="3.12.1"), "it was made with Python 3.12.1"),
])
def test_a_broken_or_foreign_venv_is_rebuilt_with_a_one_line_note(tmp_path, capsys, make, note):
    _files(tmp_path)
    venv = tmp_path / ".venv"
    make(venv)
    (venv / "user-left-this").write_text("")
    created = []
    real = lambda cmd, **kw: (created.append(cmd), _creates_venv(cmd), SimpleNamespace(returncode=0))[2] \
        if cmd[1:3] == ["-m", "venv"] else subprocess.run(cmd, **kw) if "-c" in cmd or "--version" in cmd \
        else SimpleNamespace(returncode=0)
    course.setup(environ={}, run=real, root=tmp_path, version="3.11.7" if "3.12" in note else HERE)
    assert created == [[sys.executable, "-m", "venv", str(venv)]]
    assert not (venv / "user-left-this").exists()                  # the old one was removed first
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "rebuilding" in ln]
    assert len(lines) == 1 and note in lines[0] and lines[0].startswith("[course] rebuilding the environment")
    if "3.12" in note:
        assert "this is Python 3.11.7" in lines[0]


@posix_only
def test_a_healthy_venv_from_a_newer_patch_release_is_kept(tmp_path):
    venv = tmp_path / "v"
    _fake_venv(venv, version="3.11.9")
    assert course.diagnose(venv, subprocess.run, "3.11.7") is None


@posix_only
def test_switching_to_cpu_torch_rebuilds(tmp_path):
    _files(tmp_path)
    venv = tmp_path / "v"
    _fake_venv(venv)
    (venv / course.STAMP_NAME).write_text(json.dumps(course.stamp_record(tmp_path, "default", HERE)))
    assert "FACE_COURSE_TORCH asks for cpu" in course.diagnose(venv, subprocess.run, HERE, "cpu")
    assert course.diagnose(venv, subprocess.run, HERE, "default") is None


def test_a_folder_that_is_not_a_venv_is_never_deleted(tmp_path):
    folder = tmp_path / "my-files"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    with pytest.raises(SystemExit, match="not a virtual environment"):
        course.remove_venv(folder)
    assert (folder / "thesis.tex").read_text() == "precious"


def test_real_venv_without_pip_is_diagnosed(tmp_path):
    """A real `python -m venv --without-pip`, as a Debian Python without python3-venv leaves it."""
    venv = tmp_path / "nopip"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    assert course.diagnose(venv) == "it has no pip"


@pytest.mark.skipif(shutil.which("pyenv") is None, reason="pyenv not installed")
def test_real_venv_from_another_python_is_diagnosed(tmp_path):
    other = "3.12.1" if sys.version_info[:2] != (3, 12) else "3.13.0"
    found = subprocess.run(["pyenv", "which", "python" + other.rsplit(".", 1)[0]], capture_output=True, text=True,
                           env={**os.environ, "PYENV_VERSION": other})
    if found.returncode != 0:
        pytest.skip(f"pyenv has no Python {other}")
    venv = tmp_path / "other"
    subprocess.run([found.stdout.strip(), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    assert course.diagnose(venv) == f"it was made with Python {other}, and this is Python {HERE}"


# --- Ctrl-C ---------------------------------------------------------------------------------------------

def test_ctrl_c_during_setup_is_one_line_and_status_130(monkeypatch, capsys):
    def interrupted(**kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(course, "setup", interrupted)
    assert course.main(["lab"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == course.INTERRUPTED == "[course] interrupted; run again"


@posix_only
def test_ctrl_c_during_pip_in_a_real_process(tmp_path):
    """course.py in its own process group, pip (a fake that sleeps) running: SIGINT to the group."""
    import signal
    import time
    venv = tmp_path / "venv"
    _fake_venv(venv, install_sleep=30)
    env = {**os.environ, "FACE_COURSE_VENV": str(venv), "FACE_COURSE_TORCH": ""}
    # Ctrl-C as in a terminal: SIGINT at its default even when this test runs in a background job,
    # whose processes inherit it ignored (then neither course.py nor pip would ever see it)
    proc = subprocess.Popen([sys.executable, str(ROOT / "course.py"), "lab"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 30
    while time.time() < deadline:        # wait for the install step (the note is printed just before it)
        time.sleep(0.3)
        if proc.poll() is not None:
            break
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        if children and any("sleep" in Path(f"/proc/{c}/cmdline").read_text(errors="ignore")
                            or "install" in Path(f"/proc/{c}/cmdline").read_text(errors="ignore")
                            for c in children if Path(f"/proc/{c}/cmdline").exists()):
            break
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert "interrupted; run again" in err and "Traceback" not in err
    assert not (venv / course.STAMP_NAME).exists()          # the next run installs again


# --- old Pythons get the version message ------------------------------------------------------------------

COURSE_PY = (ROOT / "course.py").read_text(encoding="utf-8")


def test_course_py_parses_as_python_3_6_and_uses_no_newer_syntax():
    tree = ast.parse(COURSE_PY, feature_version=(3, 6))
    kinds = {type(node).__name__ for node in ast.walk(tree)}
    assert not kinds & {"JoinedStr", "AnnAssign", "NamedExpr"}          # f-strings (also 2.7), annotations
    assert not any(isinstance(n, ast.FunctionDef) for n in ast.walk(tree))
    assert not any(isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in ast.walk(tree))
    assert COURSE_PY.isascii()                                           # Python 2.7 needs a coding line otherwise


@pytest.mark.parametrize("old", [(2, 7, 18, "final", 0), (3, 6, 15, "final", 0), (3, 9, 18, "final", 0)])
def test_old_python_gets_the_version_message(monkeypatch, capsys, old):
    import runpy
    monkeypatch.setattr(sys, "version_info", old)
    monkeypatch.setattr(sys, "version", "%d.%d.%d (fake)" % old[:3])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(ROOT / "course.py"), run_name="__main__")
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Python %d.%d.%d is too old: the course needs 3.10 or newer" % old[:3] in err
    assert "PYTHON=python3.12 bash course.sh lab" in err


@pytest.mark.skipif(shutil.which("pyenv") is None, reason="pyenv not installed")
def test_python_3_10_runs_the_launcher():
    found = subprocess.run(["pyenv", "which", "python3.10"], capture_output=True, text=True,
                           env={**os.environ, "PYENV_VERSION": "3.10.13"})
    if found.returncode != 0:
        pytest.skip("pyenv has no Python 3.10")
    proc = subprocess.run([found.stdout.strip(), str(ROOT / "course.py"), "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "python course.py lab" in proc.stdout


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
    ran, browser, extras = [], [], []
    py = tmp_path / "bin" / "python"
    monkeypatch.setattr(course, "setup", lambda test, baselines: extras.append((test, baselines)) or py)
    monkeypatch.setattr(course, "is_root", lambda: True)
    monkeypatch.setattr(course, "browser_ready", lambda: browser.append(1))
    monkeypatch.setattr(course, "run_last", lambda cmd, env: ran.append((cmd, env)) or 0)
    assert course.main(argv) == 0
    (cmd, env), = ran
    assert cmd == [str(py), *tail]
    assert "NUMBA_CACHE_DIR" in env
    assert browser == ([1] if argv == ["test", "-x"] else [])    # only the full run needs Chromium
    assert extras == [(argv[0] in ("test", "quick", "notebooks"), argv[0] == "bench")]   # test tools; bench's baselines


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
    text = (ROOT / "course.py").read_text() + (ROOT / "tools" / "course_launcher.py").read_text()
    for tool in ('"sha256sum"', '"cut"', '"bash"', '"sh"', "shell=True", "os.system"):
        assert tool not in text


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash (Windows without Git Bash)")
def test_course_sh_usage_error_without_setting_anything_up():
    proc = subprocess.run(["bash", str(ROOT / "course.sh"), "nonsense"], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=60)
    assert proc.returncode == 2 and "usage:" in proc.stderr
