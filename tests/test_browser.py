"""The chat page in a real browser: Debian's chromium, headless and offline, driven by playwright.

Type and press Enter, watch the reply arrive piece by piece, Stop it mid-reply, see a too-long
message refused with the server's reason, and a reply containing HTML shown as text. The server
is tests/test_web.py's (a scripted model, so the test knows what it will write and how slowly).
Set NANOCHAT_SCREENSHOT=path to keep a screenshot of the page (the README's is made this way).
"""
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.test_web import make_server  # noqa: F401 (the fixture)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]


def _browser_problem():
    problem = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = "playwright is not installed (pip install playwright)"
    if not os.path.exists(CHROMIUM):
        problem = "no chromium (sudo apt install chromium)"
    if problem and os.environ.get("CI"):
        pytest.fail(f"CI must run the browser tests, but: {problem}")  # .ci/run installs both
    return problem


pytestmark = pytest.mark.skipif(bool(_browser_problem()), reason=str(_browser_problem()))


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 900, "height": 700})
        yield page
        browser.close()


def reply_text(page) -> str:
    replies = page.locator(".turn.assistant")
    return replies.last.inner_text() if replies.count() else ""


def test_type_stream_stop_and_errors_in_the_page(make_server, page):
    server = make_server(reply="<b>Paris</b> is the capital of France. ", endless=True, delay=0.05)
    page.goto(server.url + "/")
    page.fill("#input", "What is the capital of France?")
    page.press("#input", "Enter")
    lengths = []
    deadline = time.time() + 20
    while len(set(lengths)) < 4 or "</b>" not in reply_text(page):  # it grows in steps, as it is written
        assert time.time() < deadline, f"the reply did not stream: {lengths}"
        lengths.append(len(reply_text(page)))
        time.sleep(0.05)
    assert not page.is_disabled("#stop")
    page.click("#stop")
    page.wait_for_selector("#status:has-text('(stopped)')", timeout=10_000)
    stopped = reply_text(page)
    time.sleep(0.5)
    assert reply_text(page) == stopped and page.is_disabled("#stop")  # it stopped growing
    assert stopped.startswith("<b>Paris</b>")  # the tag shows as text...
    assert page.locator(".turn.assistant b").count() == 0  # ...and is no element
    if path := os.environ.get("NANOCHAT_SCREENSHOT"):
        page.screenshot(path=path)

    page.click("#regenerate")  # the stopped reply is replaced by a new one
    page.wait_for_function("document.querySelectorAll('.turn.assistant').length === 1 && "
                           "document.querySelector('.turn.assistant').innerText.length > 20", timeout=20_000)
    page.click("#stop")
    page.wait_for_selector("#status:has-text('(stopped)')", timeout=10_000)
    page.click(".turn.user")  # edit: the message goes back into the box, the conversation from it is dropped
    assert page.input_value("#input") == "What is the capital of France?" and page.locator(".turn").count() == 0

    page.fill("#input", "x" * 9000)  # too long for the server: its reason is shown
    page.press("#input", "Enter")
    page.wait_for_selector(".turn.error", timeout=10_000)
    assert "9,000 characters; at most 8,000 are allowed" in page.inner_text(".turn.error")

    page.click("#new")
    assert page.locator(".turn").count() == 0


# ---- the widget, inside JupyterLab

SLOW_DOWN = '''# (added by tests/test_browser.py to its copy of the notebook: a slow model, so Stop can be clicked mid-reply)
import time
_generate = chat.session.engine.generate
chat.session.engine.generate = lambda *args, **kwargs: (time.sleep(0.05) or step for step in _generate(*args, **kwargs))
chat.session.max_tokens = 10_000
print("READY-FOR-THE-BROWSER")'''


@pytest.fixture
def jupyterlab(base_dir, tmp_path):
    """JupyterLab on a free port, serving a copy of notebook 09 (plus SLOW_DOWN), over a base dir
    holding a tokenizer and a small random base model: what 09 needs to run."""
    import json
    import secrets
    import socket
    import subprocess
    import sys
    from dataclasses import asdict

    from nanochat.checkpoint import checkpoint_dir, save_checkpoint
    from tests.chat_models import tiny_chat_model

    model, tokenizer = tiny_chat_model(sequence_len=512)
    save_checkpoint(checkpoint_dir("base", 1), 1, model.state_dict(), None,
                    {"config": asdict(model.config), "tokenizer": tokenizer.fingerprint()})
    root = tmp_path / "lab"
    root.mkdir()
    notebook = json.loads((Path(__file__).parent.parent / "notebooks" / "09_engine.ipynb").read_text())
    notebook["cells"].append({"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
                              "source": SLOW_DOWN})
    (root / "09_engine.ipynb").write_text(json.dumps(notebook))
    config_dir = tmp_path / "jupyter-config"
    (config_dir / "labconfig").mkdir(parents=True)
    (config_dir / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config_dir), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    lab = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}",
                            "--ip=127.0.0.1", f"--IdentityProvider.token={token}", "--LabApp.news_url=None",
                            "--LabApp.expose_app_in_browser=True",
                            f"--ServerApp.root_dir={root}"], env=env, cwd=root,
                           stdout=subprocess.DEVNULL, stderr=open(tmp_path / "lab.log", "w"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    import httpx
    while True:
        try:
            if httpx.get(f"{url}/api/status?token={token}", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert lab.poll() is None and time.time() < deadline, (tmp_path / "lab.log").read_text()[-2000:]
        time.sleep(0.3)
    yield f"{url}/lab/tree/09_engine.ipynb?reset&token={token}"
    lab.terminate()
    lab.wait(20)


def test_the_widget_in_jupyterlab_streams_and_stops(jupyterlab, page):
    page.goto(jupyterlab)
    page.wait_for_function("window.jupyterapp && window.jupyterapp.shell.currentWidget "
                           "&& window.jupyterapp.shell.currentWidget.sessionContext?.session?.kernel", timeout=60_000)
    page.wait_for_function("window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'",
                           timeout=60_000)
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_selector("text=READY-FOR-THE-BROWSER", timeout=180_000)  # all of notebook 09 ran
    box = page.locator(".nanochat-input input")
    box.scroll_into_view_if_needed()
    box.fill("Tell me about Paris")
    box.press("Enter")
    log = page.locator(".nanochat-log")
    page.wait_for_function("document.querySelector('.nanochat-log').innerText.includes('Tell me about Paris')",
                           timeout=30_000)
    deadline = time.time() + 30
    lengths = []
    while len(set(lengths)) < 3:  # the reply grows while it is being written
        assert time.time() < deadline, f"the reply did not stream into the widget: {lengths}"
        lengths.append(len(log.inner_text()))
        time.sleep(0.2)
    page.locator("button.nanochat-stop").click()  # handled mid-reply (tests/test_chat_widget.py: the reply has its own thread)
    page.wait_for_selector(".nanochat-status:has-text('(stopped)')", timeout=30_000)
    stopped = log.inner_text()
    time.sleep(1.0)
    assert log.inner_text() == stopped  # nothing more arrives after Stop
