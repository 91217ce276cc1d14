"""End to end in a real browser: 04_explore.ipynb in JupyterLab, driven in Debian's Chromium.

A tiny InterCLR run is trained first; the notebook is copied into a temp folder with its
`run_dir` pointing at that run, JupyterLab serves the folder on localhost with a token, and
Playwright (Python, with the system Chromium: no browser download) opens the notebook, runs
every cell, checks that the three explorers' widgets are live and that moving the margin
slider redraws MarginExplorer on the kernel side. A second test opens lesson 06 as a student
would (exercises unsolved) and moves its temperature slider. Screenshots of each stage are saved.

Run it with `make test-browser`. It needs `/usr/bin/chromium` (or `$INTERLAB_CHROMIUM`) and is
skipped without it, unless `INTERLAB_BROWSER_REQUIRED=1` (set by `.ci/run`) makes that a
failure. Every wait is bounded, and the server, its kernels and the browser are stopped in
`finally` blocks.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import nbformat
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]

REPO = Path(__file__).parents[1]
NOTEBOOK = REPO / "notebooks" / "04_explore.ipynb"
CHROMIUM = Path(os.environ.get("INTERLAB_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("INTERLAB_ARTIFACTS", REPO / "tests" / "artifacts")) / "browser"
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SERVER_START_S = 60
KERNEL_IDLE_MS = 120_000
RUN_ALL_MS = 300_000  # training is done beforehand; this is UMAP (numba compiles) and figures
REDRAW_MS = 60_000

# Each explorer, told apart by the description labels of its controls.
EXPLORERS = {
    "clusters": ["epoch", "colour", "cluster"],
    "negatives": ["query"],
    "margin": ["margin m", "temperature t", "margin kind"],
}


def browser_missing() -> str | None:
    """Why the test cannot run here (no Chromium, no Playwright), or None."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        return f"{CHROMIUM} not found: apt-get install chromium (or set INTERLAB_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (pip install -e .[dev])"
    return None


@pytest.fixture(scope="module")
def browser_ready() -> None:
    """Skip without Chromium or Playwright, or fail where INTERLAB_BROWSER_REQUIRED=1 (CI).

    Module-scoped and requested first, so it decides before the run is trained.
    """
    reason = browser_missing()
    if reason and os.environ.get("INTERLAB_BROWSER_REQUIRED") == "1":
        pytest.fail(f"INTERLAB_BROWSER_REQUIRED=1 but {reason}")
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def explore_run_dir(tmp_path_factory, mixed_npz) -> Path:
    """A 2-epoch InterCLR run on 512 images of all ten classes, a bank snapshot per epoch.

    All ten classes, so the screenshots show mixed clusters and both true and false negatives.
    """
    from interlab.train import train
    from tests.conftest import cpu_config

    out = tmp_path_factory.mktemp("browser-run") / "run"
    config = cpu_config(
        out,
        f"npz:{mixed_npz}",
        method="interclr",
        epochs=2,
        kmeans_backend="torch",
        snapshot_every=1,
    )
    train(config, progress=False)
    return out


def with_parameters(source: str, **values: object) -> str:
    """The parameters cell with each named assignment's value replaced (a missing name fails)."""
    for name, value in values.items():
        pattern = re.compile(rf"^({name}\s*(?::[^=]+)?=\s*)[^#\n]*?(\s*(?:#.*)?)$", re.MULTILINE)
        source, count = pattern.subn(lambda m, v=value: f"{m[1]}{v!r}{m[2]}", source)
        assert count == 1, f"parameters cell of {NOTEBOOK.name} has no `{name} = ...` line"
    return source


def write_notebook(folder: Path, run_dir: Path) -> Path:
    """A copy of 04_explore.ipynb reading `run_dir`: nothing is trained or written in the repo."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = with_parameters(
        cell.source, run_dir=str(run_dir.resolve()), device="cpu", probe_queries=32
    )
    path = folder / NOTEBOOK.name
    nbformat.write(notebook, path)
    return path


def lab_settings(folder: Path) -> None:
    """User settings: no news/update toasts over the widgets, every cell attached to the DOM."""
    settings = {
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
            "fetchNews": "false",
            "checkForUpdates": False,
            "doNotDisturbMode": True,
        },
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    }
    for name, values in settings.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


def free_port() -> int:
    """A port nobody listens on now (the server gets port_retries=0: it fails, not drifts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(url: str, server: subprocess.Popen, log: Path) -> None:
    """Poll the REST API until it answers; fail (with the log's tail) if it exits or is slow."""
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"JupyterLab exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer within {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


def stop_server(server: subprocess.Popen, base: str, token: str) -> None:
    """Ask the server to shut down (it stops its kernels), then kill its group and leftovers.

    Kernels run in sessions of their own, so killing the server's group alone could leave them.
    """
    import psutil

    try:
        children = psutil.Process(server.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    try:
        request = urllib.request.Request(
            f"{base}/api/shutdown", method="POST", headers={"Authorization": f"token {token}"}
        )
        urllib.request.urlopen(request, timeout=10).close()
        server.wait(timeout=20)
    except (urllib.error.URLError, OSError, subprocess.TimeoutExpired):
        pass
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if server.poll() is not None:
            break
        try:
            os.killpg(server.pid, sig)
            server.wait(timeout=wait)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    for child in children:
        with suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(children, timeout=10)


@contextmanager
def jupyterlab(root: Path, state: Path) -> Iterator[tuple[str, str]]:
    """JupyterLab on 127.0.0.1 (free port, random token) serving `root`; yields (base url, token).

    Its config, settings, workspaces and runtime files live under `state`, so the user's own
    JupyterLab setup neither changes the test nor is changed by it.
    """
    token, port = secrets.token_hex(16), free_port()
    base = f"http://127.0.0.1:{port}"
    lab_settings(state / "settings")
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(state / "config"),
        "JUPYTERLAB_SETTINGS_DIR": str(state / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(state / "workspaces"),
        "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
        "IPYTHONDIR": str(state / "ipython"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--allow-root",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root}",
        f"--IdentityProvider.token={token}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.expose_app_in_browser=True",
    ]
    log = state / "jupyterlab.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        wait_for_server(f"{base}/api/status?token={token}", server, log)
        yield base, token
    finally:
        stop_server(server, base, token)


class Stages:
    """Numbered screenshots of the page or of one element, in ARTIFACTS (or a subfolder)."""

    def __init__(self, page, folder: str = "") -> None:
        self.page, self.count = page, 0
        self.folder = ARTIFACTS / folder
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob("*.png"):
            old.unlink()

    def shoot(self, name: str, element=None) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name}.png"
        (element or self.page).screenshot(path=str(path), timeout=30_000)
        return path


# JavaScript run in the page, through the app object JupyterLab exposes (expose_app_in_browser).
FIND_PANEL = """(path) => Array.from(window.jupyterapp?.shell.widgets('main') ?? [])
    .find((w) => w.context?.path === path)"""
KERNEL_IDLE = f"""(path) => {{
    const panel = ({FIND_PANEL})(path);
    return panel?.sessionContext?.session?.kernel?.status === 'idle';
}}"""
START_RUN_ALL = f"""(path) => {{
    const panel = ({FIND_PANEL})(path);
    window.jupyterapp.shell.activateById(panel.id);
    window.__runAll = undefined;
    window.jupyterapp.commands.execute('notebook:run-all-cells').then(
        (ok) => {{ window.__runAll = {{ ok }}; }},
        (error) => {{ window.__runAll = {{ ok: false, error: String(error) }}; }},
    );
}}"""


def wait_for_idle_kernel(page, path: str) -> list[str]:
    """Wait until the notebook's kernel is idle, accepting any dialog on the way.

    A dialog (e.g. 'Select Kernel', whose default is the notebook's python3) would block
    every cell from running; returns the texts of those accepted, for failure messages.
    """
    dialogs = []
    deadline = time.monotonic() + KERNEL_IDLE_MS / 1000
    while not page.evaluate(KERNEL_IDLE, path):
        if time.monotonic() > deadline:
            pytest.fail(f"no idle kernel after {KERNEL_IDLE_MS / 1000:.0f} s; dialogs: {dialogs}")
        dialog = page.locator(".jp-Dialog")
        if dialog.count():
            dialogs.append(dialog.first.inner_text(timeout=5_000))
            dialog.first.locator(".jp-Dialog-button.jp-mod-accept").click(timeout=10_000)
        page.wait_for_timeout(500)
    return dialogs


def error_outputs(page) -> str:
    """The stderr / traceback outputs on the page (their end), to explain a failed run."""
    texts = page.locator('[data-mime-type="application/vnd.jupyter.stderr"]').all_inner_texts()
    return "\n".join(texts)[-3000:]


def explorer_output(page, labels: list[str]):
    """The output area holding the widget box whose controls carry all of `labels`."""
    area = page.locator(".jp-OutputArea-output")
    for label in labels:
        exact = re.compile(rf"^\s*{re.escape(label)}\s*$")
        area = area.filter(has=page.locator(".widget-label", has_text=exact))
    return area


def labelled(box, kind: str, label: str):
    """The ipywidgets control of CSS class `kind` (e.g. widget-hslider) described as `label`."""
    exact = re.compile(rf"^\s*{re.escape(label)}\s*$")
    return box.locator(f".{kind}").filter(has=box.page.locator(".widget-label", has_text=exact))


def check_explorers(page, stages: Stages) -> dict[str, object]:
    """Each explorer's widget box is in the DOM once, with its controls and a drawn figure."""
    boxes = {}
    for name, labels in EXPLORERS.items():
        box = explorer_output(page, labels)
        assert box.count() == 1, f"{name}: {box.count()} widget boxes with labels {labels}"
        box.locator(".widget-output img").first.wait_for(state="visible", timeout=REDRAW_MS)
        box.scroll_into_view_if_needed(timeout=10_000)
        stages.shoot(f"explorer-{name}", box)
        boxes[name] = box
    clusters, negatives, margin = boxes["clusters"], boxes["negatives"], boxes["margin"]
    assert labelled(clusters, "widget-hslider", "epoch").count() == 1  # SelectionSlider
    assert clusters.locator(".widget-toggle-buttons button").count() == 2  # colour
    assert labelled(clusters, "widget-dropdown", "cluster").locator("option").count() >= 1
    assert "NMI" in clusters.locator(".widget-html").first.inner_text()
    assert negatives.locator("button", has_text="random query").count() == 1
    assert "red frame" in negatives.locator(".widget-html").first.inner_text()
    assert labelled(margin, "widget-hslider", "margin m").count() == 1
    assert labelled(margin, "widget-hslider", "temperature t").count() == 1
    assert labelled(margin, "widget-dropdown", "margin kind").count() == 1
    assert "mean p(positive)" in margin.locator(".widget-html").first.inner_text()
    return boxes


def readout_value(text: str) -> float:
    """A slider readout as a number (ipywidgets writes negatives with a Unicode minus)."""
    return float(text.replace("\u2212", "-"))


def slider_state(box, label: str = "margin m") -> dict[str, str]:
    """What the kernel last drew for an explorer: the slider's readout, summary and figure."""
    return {
        "readout": labelled(box, "widget-hslider", label)
        .locator(".widget-readout")
        .inner_text()
        .strip(),
        "summary": box.locator(".widget-html").first.inner_text(),
        "figure": box.locator(".widget-output img").first.get_attribute("src") or "",
    }


def move_slider(page, box, label: str = "margin m") -> tuple[dict[str, str], dict[str, str]]:
    """Focus the slider's handle, press ArrowRight like a user; wait for the kernel's redraw."""
    before = slider_state(box, label)
    handle = labelled(box, "widget-hslider", label).locator(".noUi-handle")
    handle.scroll_into_view_if_needed(timeout=10_000)
    handle.focus(timeout=10_000)
    page.keyboard.press("ArrowRight")
    deadline = time.monotonic() + REDRAW_MS / 1000
    while time.monotonic() < deadline:
        after = slider_state(box, label)
        if after["summary"] != before["summary"] and after["figure"] not in ("", before["figure"]):
            return before, after
        page.wait_for_timeout(250)
    return before, slider_state(box, label)


def open_and_run_all(page, base: str, token: str, name: str, stages: Stages) -> None:
    """Open a notebook of the served folder, wait for its kernel, run every cell."""
    page.goto(f"{base}/lab/tree/{name}?token={token}", timeout=60_000)
    page.wait_for_function("() => window.jupyterapp", timeout=60_000)
    dialogs = wait_for_idle_kernel(page, name)
    stages.shoot("opened")
    page.evaluate(START_RUN_ALL, name)
    page.wait_for_function("() => window.__runAll", timeout=RUN_ALL_MS)
    run_all = page.evaluate("() => window.__runAll")
    stages.shoot("ran-all-cells")
    assert run_all["ok"], f"{run_all}; dialogs {dialogs}:\n{error_outputs(page)}"


def test_explore_notebook_widgets_live_in_chromium(
    browser_ready, explore_run_dir, tmp_path, capsys
):
    """Open, run all cells, find the three explorers live, move the margin slider: it redraws."""
    from playwright.sync_api import sync_playwright

    print(f"screenshots in {ARTIFACTS}")  # shown with the captured output if the test fails

    root, state = tmp_path / "root", tmp_path / "state"
    root.mkdir()
    notebook = write_notebook(root, explore_run_dir)
    started = time.monotonic()
    with jupyterlab(root, state) as (base, token), sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, timeout=60_000
        )
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.set_default_timeout(60_000)
            stages = Stages(page)
            try:
                open_and_run_all(page, base, token, notebook.name, stages)
                boxes = check_explorers(page, stages)
                before, after = move_slider(page, boxes["margin"])
                stages.shoot("margin-moved", boxes["margin"])
                assert readout_value(after["readout"]) > readout_value(before["readout"]), after
                assert after["summary"] != before["summary"], "the kernel did not redraw"
                assert after["figure"] not in ("", before["figure"]), "the figure is unchanged"
            except Exception:
                with suppress(Exception):  # the page may be gone; keep the original error
                    stages.shoot("failure")
                raise
        finally:
            browser.close()
    with capsys.disabled():
        print(
            f"\nbrowser test: {time.monotonic() - started:.0f} s in JupyterLab + Chromium; "
            f"margin {before['readout']} -> {after['readout']}; screenshots in {ARTIFACTS}"
        )


LESSON = REPO / "notebooks" / "lessons" / "06_margins.ipynb"


def test_lesson_temperature_slider_redraws_in_chromium(browser_ready, tmp_path, capsys):
    """A lesson as a student opens it (exercises unsolved): run all, move the margin
    explorer's temperature slider, the kernel redraws the figure and the summary."""
    from playwright.sync_api import sync_playwright

    root, state = tmp_path / "root", tmp_path / "state"
    root.mkdir()
    (root / LESSON.name).write_bytes(LESSON.read_bytes())
    started = time.monotonic()
    with jupyterlab(root, state) as (base, token), sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, timeout=60_000
        )
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.set_default_timeout(60_000)
            stages = Stages(page, "lesson")
            try:
                open_and_run_all(page, base, token, LESSON.name, stages)
                box = explorer_output(page, EXPLORERS["margin"])
                assert box.count() == 1, f"{box.count()} margin explorers in the lesson"
                box.locator(".widget-output img").first.wait_for(state="visible")
                label = labelled(box, "widget-hslider", "temperature t").locator(".widget-label")
                assert label.evaluate("(e) => e.scrollWidth <= e.clientWidth"), "label is cut"
                before, after = move_slider(page, box, "temperature t")
                stages.shoot("temperature-moved", box)
                assert readout_value(after["readout"]) > readout_value(before["readout"]), after
                assert after["summary"] != before["summary"], "the kernel did not redraw"
                assert after["figure"] not in ("", before["figure"]), "the figure is unchanged"
            except Exception:
                with suppress(Exception):
                    stages.shoot("failure")
                raise
        finally:
            browser.close()
    with capsys.disabled():
        print(
            f"\nlesson browser test: {time.monotonic() - started:.0f} s; temperature "
            f"{before['readout']} -> {after['readout']}; screenshots in {stages.folder}"
        )
