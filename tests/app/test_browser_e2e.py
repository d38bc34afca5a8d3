"""End to end in a real browser: `rcdm-viz app` serves the runs root on 127.0.0.1, headless Debian chromium
opens the grid view, and the test waits (over the DevTools protocol) until the grid image has loaded, then
saves a screenshot. Skipped when chromium is not installed (`.ci/run` installs it)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from rcdm_viz import browse
from tests.app.test_streamlit_app import GRID_TEXT, build_runs_root

pytest.importorskip("streamlit")
connect = pytest.importorskip("websockets.sync.client").connect

CHROMIUM = shutil.which("chromium")
DEADLINE = 90  # seconds for each wait (server up, browser up, grid rendered); the machine is shared
# Grid rendered: its caption is on the page, every st.image has loaded, and no script run is in progress.
RENDERED_JS = """(() => {
  const text = document.body ? document.body.innerText : "";
  const imgs = [...document.querySelectorAll('[data-testid="stImage"] img')];
  return JSON.stringify({
    grid: text.includes(GRID_TEXT),
    loaded: imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0),
    running: !!document.querySelector('[data-testid="stStatusWidget"]'),
    exception: !!document.querySelector('[data-testid="stException"]'),
  });
})()""".replace("GRID_TEXT", json.dumps(GRID_TEXT))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, deadline: float) -> bytes:
    """GET ``url``, retrying until it answers or ``deadline`` (time.monotonic) passes."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


class DevTools:
    """A minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, ws_url: str) -> None:
        self.ws = connect(ws_url, max_size=None, open_timeout=30)
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def close(self) -> None:
        self.ws.close()


def _start(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    # Own process group, so that the test ends exactly what it started (chromium forks helpers).
    out = log.open("w")
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(15)


def _devtools_page(profile: Path, deadline: float) -> str:
    """The websocket URL of chromium's first page (its port is written to DevToolsActivePort)."""
    port_file = profile / "DevToolsActivePort"
    while not (port_file.is_file() and port_file.read_text().strip()):
        if time.monotonic() > deadline:
            raise TimeoutError("chromium did not open its DevTools port")
        time.sleep(0.2)
    port = int(port_file.read_text().split()[0])
    pages = json.loads(_get(f"http://127.0.0.1:{port}/json/list", deadline))
    return next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")


def _wait_rendered(tools: DevTools, deadline: float) -> dict:
    while True:
        result = tools.call("Runtime.evaluate", expression=RENDERED_JS, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        state = json.loads(result["result"]["value"])
        assert not state["exception"], "the app shows an exception"
        if state["grid"] and state["loaded"] and not state["running"]:
            return state
        if time.monotonic() > deadline:
            raise TimeoutError(f"the grid did not render: {state}")
        time.sleep(0.5)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_grid_renders_in_chromium(tmp_path, tiny_run):
    root = build_runs_root(tmp_path, tiny_run)
    port = _free_port()
    env = {**os.environ, browse.RUNS_ENV: "unused"}  # --runs must win over the environment
    app_cmd = [sys.executable, "-m", "rcdm_viz.cli", "app", "--runs", str(root), "--headless"]
    app = _start([*app_cmd, "--port", str(port), "--address", "127.0.0.1"], tmp_path / "app.log", env)
    profile = tmp_path / "chromium-profile"
    chromium = None
    try:
        _get(f"http://127.0.0.1:{port}/_stcore/health", time.monotonic() + DEADLINE)
        chromium = _start(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                "--window-size=1400,1000",
                "about:blank",
            ],
            tmp_path / "chromium.log",
        )
        tools = DevTools(_devtools_page(profile, time.monotonic() + DEADLINE))
        try:
            tools.call("Page.enable")
            tools.call("Page.navigate", url=f"http://127.0.0.1:{port}/?run=tiny-a&view=Grids&image=val-00000")
            _wait_rendered(tools, time.monotonic() + DEADLINE)
            time.sleep(1.0)  # let the layout settle after the last image loads
            shot = base64.b64decode(tools.call("Page.captureScreenshot", format="png")["data"])
        finally:
            tools.close()
    finally:
        for proc in (chromium, app):
            if proc is not None:
                _stop(proc)
    path = tmp_path / "app-screenshot.png"
    path.write_bytes(shot)
    from PIL import Image

    with Image.open(path) as img:
        assert img.width >= 800, img.size
        assert len(img.convert("RGB").getcolors(1 << 20) or []) > 50  # a rendered page, not a blank one
