"""Helpers shared by the browser tests: start/stop a live studio app, screenshots, DOM waits."""
from __future__ import annotations

import os
import re
import socket
import tempfile
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
# the browser tests' screenshots (tiny model): a temporary folder, or $NEAT_TEST_SHOTS; the README's come from
# scripts/screenshots.py on the default model
SHOTS = Path(os.environ.get("NEAT_TEST_SHOTS") or Path(tempfile.gettempdir()) / "neat_studio_test_shots")


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def skip_reason() -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing (install Debian's chromium to run browser tests)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed"
    return None


class LiveApp:
    def __init__(self, studio, demo, url):
        self.studio, self.demo, self.url = studio, demo, url


def start_app(tmp_path: Path, auth=None, seed: bool = True, **launch_kwargs) -> LiveApp:
    from neat_studio.config import Workspace
    from neat_studio.studio import Studio
    from neat_studio.ui.app import build_app

    ws = Workspace(tmp_path / "ws").ensure()
    st = Studio(ws, model_spec="tiny")
    if seed:
        st.init(actor="test")
    if callable(auth) and not hasattr(auth, "check"):  # a factory: accounts kept in this studio's store
        auth = auth(st)
    demo = build_app(st, auth=auth)
    demo.queue()
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_port=port, server_name="127.0.0.1", quiet=True, **launch_kwargs)
    return LiveApp(st, demo, f"http://127.0.0.1:{port}/")


def stop_app(app: LiveApp) -> None:
    app.demo.close()
    app.studio.close()


def shot(page, name: str) -> None:
    """Save a screenshot of the page as SHOTS/<name>.png (for looking at what a test saw)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def field(page, elem_id: str):
    """The input/textarea of a gradio component by elem_id."""
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def open_tab(page, name: str):
    page.get_by_role("tab", name=name).click()


def wait_text(locator, pattern: str, timeout: float = 60):
    """Wait until the locator's text matches `pattern` (regex); returns the text."""
    deadline = time.time() + timeout
    text = ""
    while time.time() < deadline:
        try:
            text = locator.inner_text(timeout=1000)
        except Exception:  # noqa: BLE001 - not rendered yet
            text = ""
        if re.search(pattern, text):
            return text
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for /{pattern}/; last text: {text[:500]!r}")


def ranker_state(page) -> list[dict]:
    return page.evaluate("""() => Array.from(document.querySelectorAll('#ann-ranker .neat-card')).map(
        c => ({rid: c.dataset.rid, rank: c.dataset.rank, i: c.dataset.i, text: c.querySelector('.neat-card-text').textContent}))""")
