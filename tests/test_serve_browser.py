"""End to end: the web page in headless Chromium (Debian's `chromium`, driven by Playwright).

Type a query, see result images, open an explanation (attention heat map), save a screenshot.
`make install` installs chromium (apt-get) and Playwright; without them this test FAILS, naming the fix.

The docs screenshot comes from the same test on real runs (several run folders joined by ':'):
    MMSOCIAL_SERVE_RUN=/work/runs/s4-serve/oc-dman:/work/runs/s4-serve/oc-du2mce MMSOCIAL_SERVE_QUERY=dog \\
    MMSOCIAL_SCREENSHOT=docs/img/serve.png python -m pytest tests/test_serve_browser.py
"""

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from serve_helpers import tiny_run

CHROMIUM = os.environ.get("MMSOCIAL_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-dev-shm-usage", "--disable-extensions", "--no-first-run", "--mute-audio"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    from mmsocial.serve import create_app

    given = os.environ.get("MMSOCIAL_SERVE_RUN")  # one run folder, or several joined by os.pathsep
    runs = [Path(r) for r in given.split(os.pathsep) if r] if given else [tiny_run(tmp_path_factory)]
    app = create_app(runs)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", app
    srv.should_exit = True
    thread.join(10)


def test_search_then_explain_in_headless_chromium(server, tmp_path):
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.fail(f"{CHROMIUM} not found: the browser test needs Debian's chromium; install it with "
                    f"`make install` (runs apt-get install -y chromium) or `apt-get install -y chromium`")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Python package playwright is missing: pip install -e '.[dev]' (or make install)")
    url, app = server
    query = os.environ.get("MMSOCIAL_SERVE_QUERY") or app.state.runs[0].served.info["vocabulary"][0]
    shot = Path(os.environ.get("MMSOCIAL_SCREENSHOT") or tmp_path / "serve.png")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 820})
            page.goto(url + "/", wait_until="domcontentloaded")
            page.fill("#q", query)
            page.press("#q", "Enter")
            page.wait_for_selector("#grid .card img", timeout=30_000)
            cards = page.locator("#grid .card")
            assert cards.count() >= 1
            page.wait_for_function("() => [...document.querySelectorAll('#grid .card img')].every(i => i.complete)",
                                   timeout=30_000)
            widths = page.eval_on_selector_all("#grid .card img", "els => els.map(e => e.naturalWidth)")
            assert all(w > 0 for w in widths), "a result image did not load"
            assert page.inner_text("#status").startswith("DMAN:")
            cards.first.click()
            page.wait_for_selector("#heat-word:has-text('attention of')", timeout=30_000)
            if any("users" in r.capabilities for r in app.state.runs):  # e.g. a DU2MCE run served beside
                page.wait_for_selector("#detail-users div", timeout=30_000)
            else:  # no user-embedding run: the 404 note naming the command that trains one
                page.wait_for_selector("#detail-users .note", timeout=30_000)
                assert "mmsocial train du2mce" in page.inner_text("#detail-users")
            heat = page.evaluate("() => { const c = document.getElementById('heat-canvas');"
                                 " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                                 " let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }")
            assert heat > 0, "the heat map was not drawn"
            page.wait_for_selector("#detail-similar .card img", timeout=30_000)
            page.wait_for_timeout(300)
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
