"""The first code cell of every notebook: on Google Colab it fetches and installs the course.

Elsewhere (JupyterLab from `bash course.sh lab`, Binder, VS Code, nbval) it prints one stable line
and does nothing else. On Colab it stops with what to do while COURSE_REPO_URL is the placeholder,
shows git's or pip's own error when one fails, installs `.[notebooks]` (whose floors Colab's own
torch and ipywidgets 7.7 meet, so pip leaves them), and says when pip replaced a package the
session had already imported, so that the runtime must be restarted. `tools/add_colab_cell.py` puts CELL_SOURCE into every notebook (and the
README's badges use the same address); tests/test_colab_cell.py runs it against a simulated Colab,
since Colab itself cannot be reached from the machines that test the course.

MAINTAINERS: set COURSE_REPO_URL (and COURSE_BRANCH) to where the course is published, then run
`python tools/add_colab_cell.py --readme` to rewrite the notebooks' first cell and the badges.
"""
from __future__ import annotations

# Where the course lives on GitHub. A placeholder until the maintainers publish it: Colab clones
# this address, and the Colab and Binder badges point at it.
COURSE_REPO_URL = "https://github.com/YOUR-GITHUB-ACCOUNT/face-recognition-course"
COURSE_BRANCH = "main"
PLACEHOLDER_MARK = "YOUR-GITHUB-ACCOUNT"

CELL_TAG = "colab-setup"               # metadata tag that identifies the cell in each notebook
NOT_ON_COLAB = "Not on Colab: using this environment."

PLACEHOLDER_MESSAGE = (
    "This notebook does not know where the course is published: COURSE_REPO_URL in this cell is "
    "still the placeholder. Set it to the GitHub address of the course (or of your own copy: "
    "https://github.com/YOU/REPO), then run this cell again.")
RESTART_NOTE = "Restart needed"

CELL_TEMPLATE = '''\
# On Google Colab: fetch the course and install it (about a minute). Anywhere else: nothing to do.
import os, subprocess, sys

COURSE_REPO_URL = "{url}"
if "google.colab" in sys.modules:
    from importlib import metadata

    def step(what, cmd):   # run a command; on failure show its own error, not a bare exit status
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            said = (proc.stderr or "").strip() or (proc.stdout or "").strip()
            raise SystemExit(f"{{what}} failed (exit {{proc.returncode}}):\\n" + "\\n".join(said.splitlines()[-20:]))

    def installed():       # {{distribution: version}}
        return {{d.metadata["Name"].lower(): d.version for d in metadata.distributions() if d.metadata["Name"]}}

    if "{mark}" in COURSE_REPO_URL:
        raise SystemExit("{placeholder}")
    course = "/content/" + COURSE_REPO_URL.rstrip("/").split("/")[-1].removesuffix(".git")
    done = []
    if not os.path.isdir(course):
        step("git clone " + COURSE_REPO_URL, ["git", "clone", "--depth", "1", "--branch", "{branch}", COURSE_REPO_URL, course])
        done.append(f"cloned {{COURSE_REPO_URL}} into {{course}}")
    before = installed()   # Colab's own torch and ipywidgets stay where they satisfy the course
    step("pip install", [sys.executable, "-m", "pip", "install", "-e", course + "[notebooks]"])
    after = installed()
    changed = sorted(n for n in before if after.get(n, before[n]) != before[n])
    done.append("installed it with pip (-e .[notebooks])" + (f", which changed {{len(changed)}} of Colab's packages" if changed else ""))
    if course not in sys.path:
        sys.path.insert(0, course)   # this kernel started before the install: let it import helpers now
    os.chdir(course + "/notebooks")
    done.append(f"working in {{os.getcwd()}}")
    print("On Colab: " + "; ".join(done) + ".")
    modules = metadata.packages_distributions()   # {{import name: [distributions]}}
    stale = sorted({{n for m, ds in modules.items() if m in sys.modules for n in changed if n in {{d.lower() for d in ds}}}})
    if stale:
        print("{restart}: pip replaced " + ", ".join(f"{{n}} {{before[n]}} -> {{after[n]}}" for n in stale)
              + ", already imported by this session. Runtime > Restart session, then run this notebook again"
              " from the top (this cell then finds everything installed).")
else:
    print("{not_on_colab}")
'''

CELL_SOURCE = CELL_TEMPLATE.format(url=COURSE_REPO_URL, branch=COURSE_BRANCH, not_on_colab=NOT_ON_COLAB,
                                   mark=PLACEHOLDER_MARK, placeholder=PLACEHOLDER_MESSAGE, restart=RESTART_NOTE)


def _owner_repo(url: str = COURSE_REPO_URL) -> str:
    """'OWNER/REPO' of a https://github.com/OWNER/REPO address."""
    parts = url.rstrip("/").removesuffix(".git").split("/")
    if len(parts) < 5 or parts[2] != "github.com":
        raise ValueError(f"COURSE_REPO_URL must look like https://github.com/OWNER/REPO, not {url!r}")
    return "/".join(parts[3:5])


def colab_url(notebook: str, url: str = COURSE_REPO_URL, branch: str = COURSE_BRANCH) -> str:
    """'Open in Colab' address of notebooks/<notebook>."""
    return f"https://colab.research.google.com/github/{_owner_repo(url)}/blob/{branch}/notebooks/{notebook}"


def binder_url(url: str = COURSE_REPO_URL, branch: str = COURSE_BRANCH) -> str:
    """mybinder.org address that builds binder/ and opens JupyterLab on notebooks/."""
    return f"https://mybinder.org/v2/gh/{_owner_repo(url)}/{branch}?urlpath=lab/tree/notebooks"


COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
BINDER_BADGE = "https://mybinder.org/badge_logo.svg"


def colab_badge(notebook: str) -> str:
    return f"[![Open in Colab]({COLAB_BADGE})]({colab_url(notebook)})"


def binder_badge() -> str:
    return f"[![Binder]({BINDER_BADGE})]({binder_url()})"


def is_placeholder(url: str = COURSE_REPO_URL) -> bool:
    return PLACEHOLDER_MARK in url
