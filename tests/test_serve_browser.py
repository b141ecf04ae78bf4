"""The web page in a real browser: Debian's headless chromium driven by Playwright, against the
server running in a thread on a free loopback port.

Every test counts the page's JavaScript errors (uncaught exceptions and console errors) and requires
none. The one exception is the browser's own network line for a 4xx answer the test provokes
("Failed to load resource: ... status of 400"), which is not a JavaScript error; the bad-input test
expects exactly those.

UNDIFFUSE_SCREENSHOTS=DIR saves screenshots of the tiny runs' pages in DIR (serve_*.png); the ones
in docs/ are of real runs (bench/serve_screenshots.py).
"""
from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers_serve import LiveServer, runs_root  # noqa: F401  (fixture)
from undiffuse import SampleSpec
from undiffuse.serve.app import create_app
from undiffuse.serve.limits import Limits, default_precision
from undiffuse.viz import grid_pixels

playwright_sync = pytest.importorskip("playwright.sync_api", reason="the test extra: pip install -e '.[test]'")
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
NETWORK_4XX = "Failed to load resource: the server responded with a status of 4"
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no {CHROMIUM} (apt-get install chromium)")


@pytest.fixture(scope="module")
def server(runs_root):
    # max_steps 1000: the cancel test asks for a draw long enough to be cancelled half way.
    with LiveServer(create_app(runs_root, Limits(max_steps=1000))) as live:
        yield live


@pytest.fixture(scope="module")
def browser():
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


class Page:
    """A fresh page that records its JavaScript errors."""

    def __init__(self, browser, url: str):
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.errors, self.network_4xx = [], []
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("console", self._console)
        self.url = url

    def _console(self, message) -> None:
        if message.type == "error":
            (self.network_4xx if message.text.startswith(NETWORK_4XX) else self.errors).append(message.text)

    def open(self, hash_: str = "") -> None:
        self.page.goto(self.url + "/" + hash_)
        self.page.wait_for_selector("body[data-ready='1']")

    def message(self) -> str:
        self.page.wait_for_selector("#message:not([hidden])")
        return self.page.inner_text("#message")


@pytest.fixture
def page(browser, server):
    p = Page(browser, server.url)
    yield p
    p.context.close()
    assert p.errors == [], p.errors


def screenshot(page, name: str) -> None:
    folder = os.environ.get("UNDIFFUSE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name), full_page=True)


def decode(data_url: str) -> np.ndarray:
    raw = base64.b64decode(data_url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)))


def test_the_page_lists_the_runs_and_shows_one(page):
    page.open()
    names = page.page.eval_on_selector_all("#runs li", "items => items.map(i => i.dataset.name)")
    assert names == ["cold", "gaussian", "text", "tiny"]
    page.page.click("#runs li[data-name='tiny']")
    page.page.wait_for_selector("#loss-note:has-text('6 points')")
    assert '"max_train_steps": 6' in page.page.inner_text("#config")
    assert page.page.locator("#pictures img").count() == 1
    assert page.page.is_hidden("#restore-form") and page.page.is_hidden(".prompts")
    screenshot(page.page, "serve_runs.png")
    assert page.network_4xx == []


# Every picture an <img> showed: each mutation record's old src, then the src it ends with (one
# observer call may carry several records when events arrive together, so the records, not the
# element's src at call time, are the history).
RECORD = """() => { window.frames_ = {xt: [], x0: []};
  const watch = (sel, key) => new MutationObserver(records => records.forEach(r => window.frames_[key].push(r.oldValue)))
    .observe(document.querySelector(sel), {attributes: true, attributeFilter: ['src'], attributeOldValue: true});
  watch('#panel-0 .xt', 'xt'); watch('#panel-0 .x0', 'x0'); }"""
SHOWN = """key => window.frames_[key].concat([document.querySelector(key == 'xt' ? '#panel-0 .xt' : '#panel-0 .x0').src])
  .filter(src => src && src.startsWith('data:'))"""


def fill(page, **fields) -> None:
    for name, value in fields.items():
        selector = f"#sample-form [name='{name}']"
        if page.page.eval_on_selector(selector, "e => e.tagName") == "SELECT":
            page.page.select_option(selector, value)
        else:
            page.page.fill(selector, value)


def test_a_five_step_draw_updates_every_step_and_ends_with_the_pipeline_samples(page, runs_root):
    import undiffuse

    page.open("#run=tiny")
    page.page.wait_for_selector("body[data-run='tiny'] #sample-form:not([hidden])")
    # The page preselects the CLI's precision for the run on this machine; the draw below asks float32.
    want = default_precision(json.loads((runs_root / "tiny" / "config.json").read_text()))
    assert page.page.eval_on_selector("#sample-form [name='precision']", "e => e.value") == want
    fill(page, sampler="ddim", steps="5", seed="3", batch="4", precision="float32")
    page.page.evaluate(RECORD)
    page.page.click("#go")
    page.page.wait_for_selector("#status:has-text('done')")
    xt, x0 = (page.page.evaluate(SHOWN, key) for key in ("xt", "x0"))
    assert len(xt) == 5 and len(set(xt)) == 5  # a new x_t at every step
    assert len(x0) == 5 and len(set(x0)) == 5
    final = decode(page.page.get_attribute("#panel-0 .final", "src"))
    x = undiffuse.load(runs_root / "tiny").sample(4, SampleSpec(sampler="ddim", num_inference_steps=5, seed=3))
    np.testing.assert_array_equal(final, grid_pixels(x)[:, :, 0])
    grid = page.page.get_attribute("#panel-0 .downloads a:has-text('grid PNG')", "href")
    downloaded = page.page.request.get(page.url + grid).body()
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(downloaded))), final)
    assert page.page.evaluate("document.querySelector('#progress').value") == 1
    screenshot(page.page, "serve_sampling.png")


def test_compare_draws_two_settings_on_the_same_seed(page):
    page.open("#run=gaussian")
    page.page.wait_for_selector("body[data-run='gaussian'] #sample-form:not([hidden])")
    fill(page, steps="4", batch="2", class_label="7", guidance="2")
    page.page.check("#sample-form [name='compare']")
    fill(page, sampler_b="euler", steps_b="2", guidance_b="1")
    page.page.click("#go")
    page.page.wait_for_selector("#status:has-text('done')")
    a, b = (page.page.get_attribute(f"#panel-{i} .final", "src") for i in (0, 1))
    assert a and b and a != b
    assert "euler, 2 steps" in page.page.inner_text("#panel-1 .spec")
    screenshot(page.page, "serve_compare.png")


def test_cancel_stops_the_job(page):
    page.open("#run=tiny")
    page.page.wait_for_selector("body[data-run='tiny'] #sample-form:not([hidden])")
    fill(page, sampler="heun", steps="1000", batch="16")
    page.page.click("#go")
    page.page.wait_for_selector("#status:has-text('step ')")
    # A reloaded page has lost its job: Go is refused (one job per visitor) and follows that job again.
    page.page.reload()
    page.page.wait_for_selector("body[data-run='tiny'] #sample-form:not([hidden])")
    page.page.click("#go")
    assert "one job per visitor" in page.message()
    page.page.wait_for_selector("#status:has-text('step ')")
    page.page.click("#cancel")
    page.page.wait_for_selector("#status:has-text('cancelled')")
    assert page.page.evaluate("document.querySelector('#progress').value") < 1
    assert page.page.is_enabled("#go") and len(page.network_4xx) == 1


def test_bad_inputs_show_their_message(page):
    page.open("#run=tiny")
    page.page.wait_for_selector("body[data-run='tiny'] #sample-form:not([hidden])")
    fill(page, steps="0")
    page.page.click("#go")
    assert "num_inference_steps must be >= 1, got 0" in page.message()
    # A prompt on an unconditional run (a stale form, or a hand-made request): the server says why.
    page.page.evaluate("document.querySelectorAll('.prompts').forEach(n => n.hidden = false)")
    fill(page, steps="5", prompt="a cat")
    page.page.click("#go")
    page.page.wait_for_selector("#message:has-text('takes no prompt')")
    page.open("#run=..%2F..%2Fetc")
    assert "invalid run name '../../etc'" in page.message()
    assert len(page.network_4xx) == 3


def test_a_cold_run_shows_its_ladder_and_restorations(page):
    page.open("#run=cold")
    page.page.wait_for_selector("body[data-run='cold'] #restore-form:not([hidden])")
    page.page.fill("#restore-t", "3")
    page.page.click("#restore-go")
    page.page.wait_for_selector("#restore-status:has-text('done')")
    ladder, strip = (decode(page.page.get_attribute(sel, "src")) for sel in ("#ladder", "#restoration"))
    assert ladder.shape[1] > ladder.shape[0] and strip.shape[1] > strip.shape[0]  # a row each
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buf, format="PNG")
    page.page.set_input_files("#restore-file", files=[{"name": "red.png", "mimeType": "image/png",
                                                       "buffer": buf.getvalue()}])
    page.page.click("#restore-go")
    page.page.wait_for_selector("#restore-status:has-text('done')")
    assert decode(page.page.get_attribute("#ladder", "src")).tolist() != ladder.tolist()  # the upload's
    screenshot(page.page, "serve_cold.png")
