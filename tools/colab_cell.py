"""The first code cell of every notebook: on Google Colab it fetches and installs the course.

Elsewhere (JupyterLab from `bash course.sh lab`, Binder, VS Code, nbval) it prints one stable line
and does nothing else. `tools/add_colab_cell.py` puts CELL_SOURCE into every notebook (and the
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

CELL_TEMPLATE = '''\
# On Google Colab: fetch the course and install it (about a minute). Anywhere else: nothing to do.
import os, subprocess, sys

COURSE_REPO_URL = "{url}"
if "google.colab" in sys.modules:
    course = "/content/" + COURSE_REPO_URL.rstrip("/").split("/")[-1].removesuffix(".git")
    done = []
    if not os.path.isdir(course):
        subprocess.run(["git", "clone", "--depth", "1", "--branch", "{branch}", COURSE_REPO_URL, course], check=True)
        done.append(f"cloned {{COURSE_REPO_URL}} into {{course}}")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-e", course + "[notebooks]"], check=True)
    done.append("installed it with pip (-e .[notebooks])")
    if course not in sys.path:
        sys.path.insert(0, course)   # this kernel started before the install: let it import helpers now
    os.chdir(course + "/notebooks")
    done.append(f"working in {{os.getcwd()}}")
    print("On Colab: " + "; ".join(done) + ".")
else:
    print("{not_on_colab}")
'''

CELL_SOURCE = CELL_TEMPLATE.format(url=COURSE_REPO_URL, branch=COURSE_BRANCH, not_on_colab=NOT_ON_COLAB)


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
