"""Drive JupyterLab in headless Chromium the way a learner does, and report what went wrong.

Used by `test_widgets_in_browser.py`. Three parts:

- `LabServer`: a JupyterLab server on a free 127.0.0.1 port, no token, throw-away config /
  runtime / settings / workspace folders, started with this Python (so its kernel is the course
  environment's), stopped by its process id.
- `launch_browser`: Debian's Chromium through Playwright (never `playwright install`).
- `check_notebook`: open a notebook, run all cells, find the widget panels (CSS class
  `course-panel`), move the learning-rate slider (`course-lr`; else the panel's first slider),
  click the run button (`course-run`) and wait for a new figure and a "Result:" line in the
  panel's output (`course-output`). Raises `WidgetCheckFailed` with a precise message on
  "Error displaying widget", "model not found", a traceback in any output or in JupyterLab's log
  console (a callback that raised), a dialog (kernel died, kernel chooser), a browser console
  error, or a click that changes nothing; panels that do not fit at 1280x900 (scroll bar, cut
  labels) fail after every panel was tried.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from urllib.parse import quote
from dataclasses import dataclass, field
from pathlib import Path

VIEWPORT = {"width": 1280, "height": 900}

# Code that builds a panel: a call to a `*_panel(...)` builder, or a widget given the
# contract's class by hand. Notebooks without one are not opened.
PANEL_BUILDER = re.compile(r"\b[A-Za-z_]\w*_panel\s*\(|course-panel")

# Browser console errors that are harmless, as (pattern, reason). Everything else fails the
# check. Empty on purpose: JupyterLab 4.6 + ipywidgets 8.1 + Chromium 156 log no errors here once
# the news fetch and update check are off (see _write_settings). Add an entry only for a message
# seen and understood, with the reason, e.g.
#   (re.compile(r"^Failed to load resource: .* 404 .*/lab/api/news"), "news feed, offline"),
CONSOLE_ALLOW: list[tuple[re.Pattern, str]] = []

# Chromium flags that work on these machines (see shared FIELD_NOTES): no sandbox as root, no GPU,
# no background traffic to Google services that cannot be reached.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]

REPORT_LINES: list[str] = []   # printed by conftest.py at the end of the run

ACTIVE = "#jp-main-dock-panel .jp-NotebookPanel:not(.lm-mod-hidden)"


class WidgetCheckFailed(AssertionError):
    """What a learner would have seen go wrong, with the notebook and cell."""


def find_chromium() -> str | None:
    """Path of a Chromium executable (`FACE_COURSE_CHROMIUM`, else `chromium` on PATH), or None."""
    explicit = os.environ.get("FACE_COURSE_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else None
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def code_cells(path: Path) -> list[str]:
    """Sources of the notebook's code cells."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            src = cell.get("source", "")
            out.append("".join(src) if isinstance(src, list) else src)
    return out


def panel_builders(widgets_py: Path) -> list[str]:
    """Names of the `*_panel` functions defined at the top of helpers/course/widgets.py."""
    import ast

    try:
        tree = ast.parse(widgets_py.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return []
    return sorted(n.name for n in tree.body
                  if isinstance(n, ast.FunctionDef) and n.name.endswith("_panel"))


def panel_pattern(builders: list[str]) -> re.Pattern:
    """Calls of the given builders (any `*_panel(` call when none is known), or the CSS class."""
    if not builders:
        return PANEL_BUILDER
    names = "|".join(map(re.escape, builders))
    return re.compile(rf"\b(?:{names})\s*\(|course-panel")


def notebooks_with_panels(folder: Path, pattern: re.Pattern = PANEL_BUILDER) -> list[Path]:
    """Notebooks in `folder` whose code cells match `pattern` (build a widget panel), sorted."""
    return [p for p in sorted(folder.glob("*.ipynb"))
            if any(pattern.search(src) for src in code_cells(p))]


def file_hashes(paths: list[Path]) -> dict[str, str]:
    """sha256 of each file, keyed by path."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def mirror_repo(repo: Path, dest: Path) -> Path:
    """A throw-away course tree: `notebooks/` copied, every other top-level entry symlinked.

    Notebooks open from the copy, so nothing JupyterLab does can change the committed files,
    while relative paths such as `../data` still lead to the repository's folders.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for entry in repo.iterdir():
        if entry.name in {"notebooks", ".git", "screenshots"}:
            continue
        (dest / entry.name).symlink_to(entry.resolve())
    nbdir = repo / "notebooks"
    if nbdir.is_dir():
        shutil.copytree(nbdir, dest / "notebooks", symlinks=True,
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    else:
        (dest / "notebooks").mkdir()
    return dest


def _write_settings(settings_dir: Path) -> None:
    """User settings of the throw-away lab: no autosave, no news, every cell in the DOM."""
    settings = {
        "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false",
                                                        "checkForUpdates": False},
        # Windowed notebooks drop off-screen cells from the DOM; the check reads every cell.
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    }
    for name, values in settings.items():
        path = settings_dir / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values), encoding="utf-8")


class LabServer:
    """A JupyterLab server for one test module: started here, stopped by its process id."""

    def __init__(self, root_dir: Path, work_dir: Path, env: dict[str, str] | None = None):
        self.root_dir = Path(root_dir)
        self.work_dir = Path(work_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.work_dir / "jupyterlab.log"
        self.extra_env = env or {}
        self.proc: subprocess.Popen | None = None

    def start(self) -> "LabServer":
        """Launch the server process (returns at once; see `wait_ready`)."""
        dirs = {k: self.work_dir / k.lower() for k in (
            "JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR",
            "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR")}
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        _write_settings(dirs["JUPYTERLAB_SETTINGS_DIR"])
        env = dict(os.environ)
        env.update({k: str(v) for k, v in dirs.items()})
        env["JUPYTER_PREFER_ENV_PATH"] = "1"      # this environment's kernel spec first
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        env.pop("JPY_SESSION_NAME", None)
        env.update(self.extra_env)
        cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser",
               "--ip=127.0.0.1", f"--port={self.port}", "--ServerApp.port_retries=0",
               "--ServerApp.token=", "--ServerApp.password=", "--IdentityProvider.token=",
               f"--ServerApp.root_dir={self.root_dir}",
               "--ServerApp.disable_check_xsrf=True"]  # lets the teardown stop kernels by REST
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=env, cwd=self.root_dir, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 90.0) -> "LabServer":
        """Until the server answers /api/status (raises with its log if it exits or hangs)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/api/status", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"JupyterLab did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def _api(self, method: str, path: str):
        req = urllib.request.Request(self.url + path, method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        """Stop every kernel (and its session) this server runs."""
        try:
            for s in self._api("GET", "/api/sessions") or []:
                self._api("DELETE", f"/api/sessions/{s['id']}")
            for k in self._api("GET", "/api/kernels") or []:
                self._api("DELETE", f"/api/kernels/{k['id']}")
        except OSError:
            pass

    def stop(self) -> None:
        """Stop kernels, then the server's process group by its id (SIGTERM, then SIGKILL)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.shutdown_kernels()
            pgid = self.proc.pid  # start_new_session: the server leads its own group
            for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
                try:
                    os.killpg(pgid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self.log.close()
        self.proc = None


def launch_browser(playwright, chromium: str, profile_dir: Path, extra_args: list[str] | None = None):
    """A headless Chromium context at 1280x900 with a throw-away profile (`extra_args`: e.g. a fake camera)."""
    return playwright.chromium.launch_persistent_context(
        str(profile_dir), executable_path=chromium, headless=True, args=CHROMIUM_ARGS + list(extra_args or ()),
        ignore_default_args=["--hide-scrollbars"],   # screenshots show scroll bars, as a learner sees
        viewport=VIEWPORT, device_scale_factor=1)


# ------------------------------------------------------------------------------------------
# In-page probes (JavaScript run in the notebook page).

_SCAN_JS = r"""
([active, expectError]) => {
  const nb = document.querySelector(active);
  const out = {found: !!nb, problems: [], prompts: [], idle: false, busy: false, cells: 0,
               logEntries: 0};
  const dialogs = [...document.querySelectorAll('.jp-Dialog')].map(d => d.innerText.trim());
  for (const d of dialogs) out.problems.push('a dialog opened: ' + d.replace(/\s+/g, ' ').slice(0, 300));
  if (!nb) return out;
  const cells = [...nb.querySelectorAll('.jp-Notebook .jp-Cell')];
  const where = (el) => {
    const c = el.closest('.jp-Cell');
    const i = cells.indexOf(c);
    if (i < 0) return 'outside a cell';
    const ed = c.querySelector('.jp-InputArea-editor .cm-content');
    const first = ed ? ed.innerText.trim().split('\n')[0].slice(0, 70) : '';
    return `cell ${i + 1} (${first})`;
  };
  for (const el of nb.querySelectorAll('.jp-OutputArea-output')) {
    if (el.querySelector('.jp-OutputArea-output')) continue;  // report the innermost output
    const t = el.innerText || '';
    for (const needle of ['Error displaying widget', 'model not found']) {
      if (t.includes(needle))
        out.problems.push(`${where(el)} shows "${t.trim().replace(/\s+/g, ' ').slice(0, 200)}"`);
    }
  }
  const ename = /^[A-Za-z_][\w.]*(Error|Exception|Interrupt)(:.*)?$/m;
  for (const el of nb.querySelectorAll(".jp-RenderedText[data-mime-type='application/vnd.jupyter.stderr']")) {
    if (expectError.includes(cells.indexOf(el.closest('.jp-Cell')))) continue;  // raises-exception tag
    const t = el.innerText || '';
    if (t.includes('Traceback (most recent call last)') || ename.test(t)) {
      const line = (t.match(ename) || [t.trim().split('\n').pop()])[0];
      const inWidget = el.closest('.course-output') ? ' (inside the panel output)' : '';
      // The innermost frames ("File ...:LINE, in fn" and "Cell In[N], line L"), for the report.
      const frames = t.split('\n').filter(s => /^(File |Cell In\[)/.test(s.trim())).slice(-4)
                      .map(s => s.trim().replace(/^File .*\/site-packages\//, 'File ').slice(0, 140));
      const c = el.closest('.jp-Cell');
      if (c) c.dataset.courseFailed = '1';
      out.problems.push(`${where(el)}${inWidget} printed a traceback: ${line.trim().slice(0, 200)}` +
                        (frames.length ? `\n  innermost frames: ${frames.join(' <- ')}` : ''));
    }
  }
  out.cells = cells.length;
  for (const c of nb.querySelectorAll('.jp-Notebook .jp-CodeCell')) {
    const p = c.querySelector('.jp-InputPrompt');
    out.prompts.push(p ? p.innerText.trim() : '');
  }
  // JupyterLab's log console status item: "N new messages, M log entries for NB" when the
  // kernel printed something outside any cell (e.g. a traceback from a widget callback).
  out.logEntries = 0;
  for (const it of document.querySelectorAll('.jp-LogConsoleStatusItem:not(.lm-mod-hidden) [title]')) {
    const m = it.getAttribute('title').match(/(\d+) log entr/);
    if (m) out.logEntries = Math.max(out.logEntries, parseInt(m[1]));
  }
  const ind = nb.querySelector('.jp-Notebook-ExecutionIndicator');
  out.idle = !!ind && ind.getAttribute('data-status') === 'idle';
  out.busy = out.prompts.some(p => p.includes('*'));
  out.running = '';
  for (const c of nb.querySelectorAll('.jp-Notebook .jp-CodeCell')) {
    const p = c.querySelector('.jp-InputPrompt');
    if (p && p.innerText.includes('*')) { out.running = where(c); break; }
  }
  return out;
}
"""

# Controls of panel `i`, its output area, and layout sanity (nothing cut off at 1280x900).
_PANEL_JS = r"""
([active, i]) => {
  const nb = document.querySelector(active);
  const panel = nb.querySelectorAll('.course-panel')[i];
  const cell = panel.closest('.jp-Cell');
  const output = panel.querySelector('.course-output') || (cell && cell.querySelector('.course-output'));
  const count = (sel) => panel.querySelectorAll(sel).length;
  const cut = [];
  for (const el of panel.querySelectorAll('.widget-label, .widget-label-basic, button, .widget-readout')) {
    const txt = (el.innerText || '').trim();
    if (txt && el.offsetParent !== null && el.scrollWidth > el.clientWidth + 1)
      cut.push(`"${txt}" needs ${el.scrollWidth}px, has ${el.clientWidth}px`);
  }
  const r = panel.getBoundingClientRect();
  const nr = nb.querySelector('.jp-Notebook').getBoundingClientRect();
  // Boxes whose content does not fit: with overflow auto/scroll the learner gets a scroll bar
  // (headless Chromium hides it in screenshots unless --hide-scrollbars is dropped), with
  // hidden/clip the content is cut. Reports the children that stick out.
  const describe = (el) => {
    const lab = el.querySelector('.widget-label');
    const txt = ((lab && lab.innerText) || el.innerText || '').trim().split('\n')[0].slice(0, 40);
    const kind = [...el.classList].find(c => /^widget-(?!inline|box|container)|course-/.test(c)) ||
                 [...el.classList].find(c => c.startsWith('widget-')) || el.tagName.toLowerCase();
    return `${kind} "${txt}"`;
  };
  const labels = new Set(panel.querySelectorAll('.widget-label, .widget-label-basic, button, .widget-readout'));
  const clipped = [];
  for (const el of [panel, ...panel.querySelectorAll('*')]) {
    if (labels.has(el) || el.classList.contains('noUi-origin')) continue;
    const inOut = el.closest('.course-output');
    if (inOut && inOut !== el) continue;   // the output's own content (figures) is checked apart
    if (el.clientWidth === 0 || el.scrollWidth <= el.clientWidth + 1) continue;
    const ox = getComputedStyle(el).overflowX;
    if (!['auto', 'scroll', 'hidden', 'clip'].includes(ox)) continue;
    const edge = el.getBoundingClientRect().left + el.clientLeft + el.clientWidth;
    const kids = [...el.querySelectorAll('.jupyter-widgets')].filter(k => !k.closest('.course-output') || k.classList.contains('course-output'))
      .filter(k => k.getBoundingClientRect().right > edge + 1)
      .filter(k => ![...k.querySelectorAll('.jupyter-widgets')].some(c => c.getBoundingClientRect().right > edge + 1 && !c.closest('.course-output')))
      .map(k => `${describe(k)} (${Math.round(k.getBoundingClientRect().right - edge)}px past the edge)`);
    clipped.push(`${describe(el)} needs ${el.scrollWidth}px, has ${el.clientWidth}px ` +
                 `(overflow ${ox}: ${ox === 'auto' || ox === 'scroll' ? 'a scroll bar' : 'cut off'})` +
                 (kids.length ? '; sticking out: ' + [...new Set(kids)].slice(0, 4).join(', ') : ''));
  }
  const limit = Math.min(r.right, nr.right);
  return {
    sliders: count('.widget-slider'), checkboxes: count('.widget-checkbox'),
    dropdowns: count('.widget-dropdown'), buttons: count('button'),
    run: count('.course-run'), lr: count('.course-lr'), hasOutput: !!output,
    runLabel: (panel.querySelector('.course-run') || {innerText: ''}).innerText.trim(),
    cut, width: r.width, height: r.height,
    right: r.right, notebookRight: nr.right, limit, clipped: clipped.slice(0, 4),
    scrollWidth: panel.scrollWidth, clientWidth: panel.clientWidth,
  };
}
"""

# Mark the panel output's current children, so "new" means rendered after the click.
_MARK_JS = r"""
([active, i]) => {
  const nb = document.querySelector(active);
  const panel = nb.querySelectorAll('.course-panel')[i];
  const cell = panel.closest('.jp-Cell');
  const output = panel.querySelector('.course-output') || cell.querySelector('.course-output');
  for (const el of output.querySelectorAll('*')) el.dataset.courseSeen = '1';
  return output.innerText;
}
"""

_RESULT_JS = r"""
([active, i]) => {
  const nb = document.querySelector(active);
  const panel = nb.querySelectorAll('.course-panel')[i];
  const cell = panel.closest('.jp-Cell');
  const output = panel.querySelector('.course-output') || cell.querySelector('.course-output');
  const fresh = [...output.querySelectorAll('img')].filter(
      im => !im.dataset.courseSeen && im.complete && im.naturalWidth > 0);
  const lines = [...output.querySelectorAll('.jp-OutputArea-output')]
      .filter(el => !el.dataset.courseSeen)
      .flatMap(el => (el.innerText || '').split('\n'))
      .map(s => s.trim()).filter(s => s.startsWith('Result:'));
  const img = fresh[0];
  return {img: fresh.length, result: lines, text: output.innerText,
          imgWidth: img ? img.getBoundingClientRect().width : 0,
          outputWidth: output.getBoundingClientRect().width};
}
"""


@dataclass
class PanelReport:
    controls: str
    changed: str
    click_s: float
    result: str
    layout: list[str] = field(default_factory=list)   # what does not look right at 1280x900
    full: str = ""   # the whole last Result line (`result` is cut at 120 characters)


@dataclass
class NotebookReport:
    notebook: str
    open_s: float = 0.0
    ran: str = "run all"
    run_all_s: float = 0.0
    slowest: str = ""
    total_s: float = 0.0
    panels: list[PanelReport] = field(default_factory=list)
    screenshots: list[str] = field(default_factory=list)
    console_allowed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.notebook}: open {self.open_s:.1f} s, {self.ran} {self.run_all_s:.1f} s"
                 + (f" (slowest: {self.slowest})" if self.slowest else "")]
        for k, p in enumerate(self.panels, 1):
            parts.append(f"panel {k} [{p.controls}] {p.changed}; click -> result {p.click_s:.1f} s"
                         f" ({p.result})")
        if self.console_allowed:
            parts.append(f"{len(self.console_allowed)} allowed console error(s)")
        parts.append(f"total {self.total_s:.1f} s")
        return "; ".join(parts)


class _Console:
    """Collects console errors and uncaught page errors, minus the allow-list."""

    def __init__(self, page):
        self.errors: list[str] = []
        self.allowed: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def _on_console(self, msg) -> None:
        if msg.type != "error":
            return
        loc = msg.location or {}
        text = f"{msg.text} [{loc.get('url', '')}:{loc.get('lineNumber', '')}]"
        for pattern, why in CONSOLE_ALLOW:
            if pattern.search(text):
                self.allowed.append(f"{why}: {text[:160]}")
                return
        self.errors.append(text)



def _menu(page, menu: str, commands: tuple[str, ...]) -> None:
    """Click a main-menu entry by its JupyterLab command id (the first of `commands` shown)."""
    page.locator("#jp-MainMenu .lm-MenuBar-item", has_text=re.compile(rf"^{menu}$")).click()
    sel = ", ".join(f".lm-Menu-item[data-command='{c}']" for c in commands)
    page.locator(sel).first.click()


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _kernel_state(base_url: str, rel_path: str) -> str:
    """Server-side state of the kernel of the notebook's session ('none' before it starts)."""
    for s in _get_json(f"{base_url}/api/sessions"):
        if s.get("path") == rel_path and s.get("kernel"):
            return s["kernel"].get("execution_state", "unknown")
    return "none"


_ENAME = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)(:.*)?$", re.M)


def _slowest(finished: dict[int, float], t0: float, code_idx: list[int], cells: list,
             n: int = 3) -> str:
    """The n slowest cells so far (cells run in order: each took from the previous one's end)."""
    spans, last = [], t0
    for j, t in sorted(finished.items(), key=lambda kv: kv[1]):
        src = "".join(cells[code_idx[j]]["source"]).strip().splitlines()
        spans.append((t - last, code_idx[j] + 1, (src[0] if src else "")[:50]))
        last = t
    top = sorted(spans, reverse=True)[:n]
    return ", ".join(f"cell {k} {sec:.0f} s ({first})" for sec, k, first in top if sec >= 1)


class NotebookSession:
    """One notebook open in its own browser tab: run all, exercise panels, screenshot, close.

    Every step scans the page and raises `WidgetCheckFailed` on the first problem.
    """

    def __init__(self, context, base_url: str, rel_path: str):
        self.base_url = base_url
        self.rel_path = rel_path
        self.name = rel_path
        self.report = NotebookReport(notebook=rel_path)
        self.t0 = time.monotonic()
        self.page = context.new_page()
        self.console = _Console(self.page)
        self._log_open = False
        self._log_reported = 0
        self.expect_error: list[int] = []

    # -- checks -------------------------------------------------------------------------
    def fail(self, what: str, where: str | None = None) -> None:
        extra = ""
        if self.console.errors:
            extra = "\nbrowser console errors:\n  " + "\n  ".join(self.console.errors[:10])
        raise WidgetCheckFailed(f"{where or self.name}: {what}{extra}")

    def scan(self, where: str | None = None) -> dict:
        """Page state; fails on error texts, tracebacks, dialogs, logged errors, console errors."""
        st = self.page.evaluate(_SCAN_JS, [ACTIVE, self.expect_error])
        if st["problems"]:
            self.fail("; ".join(st["problems"]), where)
        if st["logEntries"] > self._log_reported:
            # Something the kernel printed outside any cell: a widget callback that raised
            # outside its Output. JupyterLab shows it only in View > Show Log Console.
            if not self._log_open:
                _menu(self.page, "View", ("logconsole:open",))
                self._log_open = True
                self.page.wait_for_timeout(300)
            log = self.page.evaluate(
                "() => [...document.querySelectorAll('.jp-LogConsolePanel')]"
                ".map(e => e.innerText).join('\\n')")
            if "Traceback" in log or _ENAME.search(log):
                m = _ENAME.findall(log)
                last = [ln for ln in log.splitlines() if _ENAME.match(ln.strip())]
                self._log_reported = st["logEntries"]   # report each logged error once
                self.fail("the kernel logged an error outside any cell (a widget callback raised; "
                          "the learner sees nothing, JupyterLab shows it only in View > Show Log "
                          f"Console): {(last or m or ['?'])[-1].strip()[:200]}", where)
        if self.console.errors:
            self.fail("browser console errors:\n  " + "\n  ".join(self.console.errors[:10]), where)
        return st

    def wait_idle(self, timeout: float, where: str | None = None, settle: float = 0.6) -> None:
        """Until the kernel is idle and no cell is queued, for `settle` seconds in a row."""
        deadline = time.monotonic() + timeout
        quiet_since = None
        while time.monotonic() < deadline:
            st = self.scan(where)
            if st["idle"] and not st["busy"]:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= settle:
                    return
            else:
                quiet_since = None
            self.page.wait_for_timeout(200)
        self.fail(f"the kernel was still busy after {timeout:.0f} s", where)

    # -- steps --------------------------------------------------------------------------
    def open_and_run_all(self, run_timeout: float = 420.0, kernel_timeout: float = 90.0,
                         until: re.Pattern | None = None) -> None:
        """Open the notebook (fresh workspace), clear outputs, Run All, wait for the last cell.

        With `until`, run only up to the last code cell matching it (the last panel): the cells
        below are selected away with "Run All Above Selected Cell" plus that cell.
        """
        model = _get_json(f"{self.base_url}/api/contents/{quote(self.rel_path)}?content=1")
        cells = model["content"]["cells"]
        # Cells tagged raises-exception show a traceback on purpose (and Run All goes on).
        self.expect_error = [k for k, c in enumerate(cells)
                             if "raises-exception" in c.get("metadata", {}).get("tags", [])]
        last = len(cells) - 1
        if until is not None:
            hits = [k for k, c in enumerate(cells)
                    if c["cell_type"] == "code" and until.search("".join(c["source"]))]
            last = hits[-1] if hits else last
        has_code = [bool("".join(c["source"]).strip()) and k <= last
                    for k, c in enumerate(cells) if c["cell_type"] == "code"]
        page = self.page
        page.goto(f"{self.base_url}/lab/tree/{self.rel_path}?reset", wait_until="domcontentloaded")
        deadline = time.monotonic() + kernel_timeout
        while True:   # every cell rendered, and the notebook's kernel started and idle
            st = self.scan()   # on open, before running: the saved outputs must be clean too
            kernel = _kernel_state(self.base_url, self.rel_path)
            if st["found"] and st["cells"] == len(cells) and st["idle"] and kernel == "idle":
                break
            if time.monotonic() > deadline:
                self.fail(f"notebook or kernel not ready after {kernel_timeout:.0f} s "
                          f"({st['cells']} of {len(cells)} cells shown, kernel {kernel})")
            page.wait_for_timeout(250)
        self.report.open_s = time.monotonic() - self.t0

        # A learner's first step: run everything. Cleared first, so stale outputs cannot pass.
        _menu(page, "Edit", ("editmenu:clear-all", "notebook:clear-all-cell-outputs"))
        page.wait_for_timeout(300)
        t1 = time.monotonic()
        if last == len(cells) - 1:
            _menu(page, "Run", ("runmenu:run-all", "notebook:run-all-cells"))
            self.report.ran = "run all"
        else:   # select the cell after the last panel, run everything above it
            page.locator(f"{ACTIVE} .jp-Notebook .jp-Cell").nth(last + 1) \
                .locator(".jp-InputPrompt").first.click()
            active = page.evaluate(
                "(a) => [...document.querySelector(a).querySelectorAll('.jp-Notebook .jp-Cell')]"
                ".findIndex(c => c.classList.contains('jp-mod-active'))", ACTIVE)
            if active != last + 1:
                self.fail(f"could not select cell {last + 2} to run the cells above it")
            _menu(page, "Run", ("notebook:run-all-above",))
            self.report.ran = f"ran cells 1-{last + 1} of {len(cells)} (to the last panel)"
        deadline = t1 + run_timeout
        stopped_since = None
        finished: dict[int, float] = {}   # code cell ordinal -> when its count appeared
        code_idx = [k for k, c in enumerate(cells) if c["cell_type"] == "code"]
        while True:
            self.report.run_all_s = time.monotonic() - t1   # kept up to date for failure reports
            st = self.scan()
            for j, (p, code) in enumerate(zip(st["prompts"], has_code)):
                if code and j not in finished and re.fullmatch(r"\[\d+\]:?", p):
                    finished[j] = time.monotonic()
            self.report.slowest = _slowest(finished, t1, code_idx, cells)
            todo = [p for p, code in zip(st["prompts"], has_code) if code]
            done = [p for p in todo if re.fullmatch(r"\[\d+\]:?", p)]
            if not st["busy"] and st["idle"] and len(done) == len(todo):
                break
            if not st["busy"]:
                stopped_since = stopped_since or time.monotonic()
                if time.monotonic() - stopped_since > 8:
                    self.fail(f"Run All stopped after {len(done)} of {len(todo)} code cells")
            else:
                stopped_since = None
            if time.monotonic() > deadline:
                self.fail(f"Run All did not finish in {run_timeout:.0f} s "
                          f"({len(done)} of {len(todo)} code cells done; still running: "
                          f"{st['running'] or '-'})")
            page.wait_for_timeout(300)
        self.report.run_all_s = time.monotonic() - t1

    def panel_count(self) -> int:
        """Number of rendered `course-panel` widgets (waits up to 10 s for the first)."""
        panels = self.page.locator(f"{ACTIVE} .course-panel")
        try:
            panels.first.wait_for(state="visible", timeout=10_000)
        except Exception:
            self.fail("no widget panel (class course-panel) rendered after Run All")
        return panels.count()

    def _nudge_slider(self, slider, where: str, what: str) -> str:
        """Move a slider one keyboard step (left, or right if already at the minimum)."""
        readout = slider.locator(".widget-readout")
        before = readout.inner_text().strip()
        handle = slider.locator(".noUi-handle").first
        for key in ("ArrowLeft", "ArrowRight"):
            handle.focus()
            self.page.keyboard.press(key)
            self.page.wait_for_timeout(150)
            after = readout.inner_text().strip()
            if after != before:
                return f"{what} {before} -> {after}"
        self.fail(f"the {what} slider (at {before}) did not move with the arrow keys", where)
        return ""

    def exercise_panel(self, i: int, click_timeout: float = 90.0) -> PanelReport:
        """Move panel i's slider, click its run button, wait for the new figure and Result line.

        Raises on a functional failure; layout problems go to the returned report's `layout`.
        """
        where = f"{self.name} panel {i + 1}"
        page = self.page
        panel = page.locator(f"{ACTIVE} .course-panel").nth(i)
        panel.scroll_into_view_if_needed()
        info = page.evaluate(_PANEL_JS, [ACTIVE, i])
        controls = (f"{info['sliders']} slider(s), {info['checkboxes']} checkbox(es), "
                    f"{info['dropdowns']} dropdown(s), {info['buttons']} button(s)")
        if info["width"] < 50 or info["height"] < 20:
            self.fail(f"the panel is {info['width']:.0f}x{info['height']:.0f} px: not visible",
                      where)
        # Layout problems are collected, not raised: every panel still gets its functional check.
        layout = []
        if info["cut"]:
            layout.append("text cut off at 1280x900: " + "; ".join(info["cut"])
                          + " (give the widget style={'description_width': 'initial'} or a wider "
                            "layout)")
        if info["clipped"] or info["right"] > info["notebookRight"] + 2:
            layout.append("the panel does not fit at 1280x900 (file browser open): "
                          + ("; ".join(info["clipped"]) or
                             f"it ends at x={info['right']:.0f}, the notebook at "
                             f"x={info['notebookRight']:.0f}"))
        if info["run"] > 1:
            self.fail(f"expected one button with class course-run, found {info['run']}", where)
        if not info["hasOutput"]:
            self.fail("no Output widget with class course-output in the panel's cell", where)
        if not info["run"] and not info["sliders"]:
            self.fail("the panel has neither a course-run button nor a slider to try", where)

        def move_slider() -> str:
            if info["lr"]:
                return self._nudge_slider(panel.locator(".course-lr").first, where,
                                          "learning rate")
            if info["sliders"]:
                slider = panel.locator(".widget-slider").first
                label = slider.locator(".widget-label").first
                what = (label.inner_text().strip() if label.count() else "") or "first"
                return self._nudge_slider(slider, where, what)
            return "no slider to move"

        live = False
        if info["run"]:
            page.evaluate(_MARK_JS, [ACTIVE, i])
            changed = move_slider()
            self.wait_idle(click_timeout, where)   # a slider may redraw on its own: let it finish
            after_slider = page.evaluate(_RESULT_JS, [ACTIVE, i])
            live = bool(after_slider["img"] or after_slider["result"])
            action = f"clicking '{info['runLabel']}'"
        else:   # a live panel (no button): moving the slider itself must redraw
            action = "moving the slider"
        before = page.evaluate(_MARK_JS, [ACTIVE, i])
        t = time.monotonic()
        if info["run"]:
            panel.locator(".course-run").first.click()
        else:
            changed = move_slider()
        deadline = t + click_timeout
        res: dict = {}
        while time.monotonic() < deadline:
            self.scan(where)
            res = page.evaluate(_RESULT_JS, [ACTIVE, i])
            if res["img"] and res["result"]:
                break
            page.wait_for_timeout(250)
        else:
            seen = (res.get("text") or "").strip().replace("\n", " | ")[:300]
            hint = ""
            if live:
                hint = (". Moving the slider had already redrawn the output; the click then sent "
                        "nothing new to the browser: a callback that sets the same outputs again "
                        "(same figure, same text) is dropped by traitlets as unchanged, so the "
                        "button looks dead (clear the output first, add what changed, or drop the "
                        "button)")
            self.fail(f"{action} gave no new figure and 'Result:' line in "
                      f"the output within {click_timeout:.0f} s (new figures: {res.get('img', 0)}, "
                      f"Result lines: {len(res.get('result', []))}; output now: {seen!r}; "
                      f"before: {before.strip()[:120]!r}){hint}", where)
        click_s = time.monotonic() - t
        self.wait_idle(click_timeout, where)
        if res["imgWidth"] > res["outputWidth"] + 2:
            layout.append(f"the figure ({res['imgWidth']:.0f}px) is wider than the output "
                          f"({res['outputWidth']:.0f}px)")
        rep = PanelReport(controls=controls + (f", '{info['runLabel']}'" if info["run"] else
                                               ", no run button (live)"),
                          changed=changed, click_s=click_s, result=res["result"][-1][:120],
                          full=res["result"][-1])
        rep.layout = layout   # check_notebook fails on these after trying every panel
        self.report.panels.append(rep)
        return rep

    def toggle_and_run(self, i: int, checkbox: str, click_timeout: float = 300.0,
                       expect_warning: str | None = None) -> str:
        """Toggle panel i's checkbox labelled `checkbox`, click its run button, return the new Result line.

        With `expect_warning`, that text must appear in the panel (class course-warning) once toggled.
        """
        where = f"{self.name} panel {i + 1}"
        page = self.page
        panel = page.locator(f"{ACTIVE} .course-panel").nth(i)
        box = panel.locator(".widget-checkbox").filter(has_text=checkbox).locator("input").first
        if not box.count():
            self.fail(f"no checkbox labelled {checkbox!r}", where)
        box.click()
        page.wait_for_timeout(300)
        if expect_warning is not None:
            warn = panel.locator(".course-warning").first
            text = warn.inner_text() if warn.count() else ""
            if expect_warning not in text:
                self.fail(f"after toggling {checkbox!r} the panel shows no warning with "
                          f"{expect_warning!r} (warning text: {text!r})", where)
        page.evaluate(_MARK_JS, [ACTIVE, i])
        panel.locator(".course-run").first.click()
        deadline = time.monotonic() + click_timeout
        res: dict = {}
        while time.monotonic() < deadline:
            self.scan(where)
            res = page.evaluate(_RESULT_JS, [ACTIVE, i])
            if res["img"] and res["result"]:
                break
            page.wait_for_timeout(500)
        else:
            self.fail(f"toggling {checkbox!r} and clicking gave no new figure and Result line within "
                      f"{click_timeout:.0f} s (output: {(res.get('text') or '')[:300]!r})", where)
        self.wait_idle(click_timeout, where)
        return res["result"][-1]

    def screenshot(self, i: int, path: Path) -> Path:
        """The viewport (1280x900) with panel i at the top, saved to `path`."""
        self.page.evaluate(
            "([a, i]) => { const p = document.querySelector(a).querySelectorAll('.course-panel')[i];"
            " p.closest('.jp-Cell').scrollIntoView({block: 'start'}); }", [ACTIVE, i])
        self.page.wait_for_timeout(200)
        self.page.screenshot(path=str(path))
        self.report.screenshots.append(str(path))
        return path

    def close(self) -> NotebookReport:
        """Close the tab without saving (autosave is off; the copy is dropped); stop its kernel."""
        self.report.total_s = time.monotonic() - self.t0
        self.report.console_allowed = list(self.console.allowed)
        self.page.close(run_before_unload=False)
        try:   # and shut its kernel down: the next notebook gets the CPU and memory
            for sess in _get_json(f"{self.base_url}/api/sessions"):
                if sess.get("path") == self.rel_path:
                    req = urllib.request.Request(f"{self.base_url}/api/sessions/{sess['id']}",
                                                 method="DELETE")
                    urllib.request.urlopen(req, timeout=30).close()
        except OSError:
            pass
        return self.report


def check_notebook(context, base_url: str, rel_path: str, screenshot_dir: Path | None,
                   run_timeout: float = 420.0, click_timeout: float = 120.0,
                   until: re.Pattern | None = None, then=None) -> NotebookReport:
    """Open, run all (or up to the last cell matching `until`), exercise every `course-panel`,
    screenshot each; then `then(session)` (more clicks and asserts on the open notebook); raise on
    any failure."""
    nb = NotebookSession(context, base_url, rel_path)
    try:
        nb.open_and_run_all(run_timeout=run_timeout, until=until)
        for i in range(nb.panel_count()):
            nb.exercise_panel(i, click_timeout=click_timeout)
            if screenshot_dir is not None:
                stem = Path(rel_path).stem + ("" if i == 0 else f"-panel{i + 1}")
                nb.screenshot(i, screenshot_dir / f"{stem}.png")
        if then is not None:
            then(nb)
        nb.scan()
        layout = [f"panel {k}: {msg}" for k, p in enumerate(nb.report.panels, 1) for msg in p.layout]
        if layout:
            nb.fail("the panels work, but " + "; ".join(layout))
    except WidgetCheckFailed as e:
        if screenshot_dir is not None:   # what the page showed when the check failed
            shot = screenshot_dir / f"{Path(rel_path).stem}-FAILED.png"
            try:
                nb.page.evaluate("() => { const c = document.querySelector('[data-course-failed]');"
                                 " if (c) c.scrollIntoView({block: 'start'}); }")
                nb.page.wait_for_timeout(200)
                nb.page.screenshot(path=str(shot))
                nb.report.screenshots.append(str(shot))
            except Exception:
                pass
        e.report = nb.close()   # timings up to the failure, for the summary
        raise
    return nb.close()


# ------------------------------------------------------------------------------------------
# Self-test notebook: a panel that follows the contract, and two broken ones the check must catch.

SELFTEST_CODE = '''\
import ipywidgets as W
import matplotlib.pyplot as plt


def selftest_panel(kind):
    """A panel following the course contract; `kind` breaks its callback on purpose."""
    lr = W.FloatLogSlider(value=1e-2, base=10, min=-4, max=0, step=0.25,
                          description="learning rate", style={"description_width": "initial"})
    lr.add_class("course-lr")
    unfreeze = W.Checkbox(value=False, description="unfreeze")
    run = W.Button(description="Train")
    run.add_class("course-run")
    out = W.Output()
    out.add_class("course-output")

    def on_click(_):
        if kind == "raises_silently":    # the learner sees nothing happen
            raise ValueError("broken callback")
        with out:
            out.clear_output(wait=True)
            if kind == "raises_in_output":   # the traceback lands in the panel's output
                raise ValueError("broken callback")
            fig, ax = plt.subplots(figsize=(5, 2.5))
            ax.plot([0, 1, 2], [1.0, 1 - lr.value, 1 - 2 * lr.value])
            plt.show()
            print(f"Result: lr={lr.value:.3g}")

    run.on_click(on_click)
    panel = W.VBox([W.HBox([lr, unfreeze, run]), out])
    panel.add_class("course-panel")
    return panel
'''

SELFTEST_PANELS = ("good", "raises_silently", "raises_in_output")


def write_selftest_notebook(folder: Path) -> Path:
    """`selftest.ipynb`: a cell defining `selftest_panel(kind)`, one panel per kind, a last cell."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# Browser self-test of the widget check"),
                nbformat.v4.new_code_cell(SELFTEST_CODE)]
    nb.cells += [nbformat.v4.new_code_cell(f'selftest_panel("{kind}")') for kind in SELFTEST_PANELS]
    nb.cells += [nbformat.v4.new_code_cell('print("below the panels")')]   # skipped by `until`
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "selftest.ipynb"
    nbformat.write(nb, path)
    return path
