"""Screenshots of `undiffuse serve` for docs/serve.md, taken with Debian's headless chromium through
Playwright against a server on 127.0.0.1 over a folder of real runs (the server writes nothing).

    python bench/serve_screenshots.py --runs runs/cold-long --live ddpm-7k --gaussian ddpm --cold blur

Writes docs/serve_runs.png (a run still training: its live loss curve), docs/serve_live.png (a
draw at step 40 of 250, then cancelled), docs/serve_sampling.png
(two settings side by side, same seed) and docs/serve_cold.png (ladder and restorations). The test
suite takes the same pictures of its tiny runs with UNDIFFUSE_SCREENSHOTS=DIR (tests/test_serve_browser.py).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import ROOT, free_port  # noqa: E402

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


def shoot(url: str, args, docs: Path) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{url}/#run={args.live}")
        page.wait_for_selector("#loss-note:has-text('points')")
        page.screenshot(path=str(docs / "serve_runs.png"))
        page.goto(f"{url}/#run={args.gaussian}")
        page.wait_for_selector(f"body[data-run='{args.gaussian}']")
        page.select_option("[name='sampler']", "ddpm")  # mid-draw: x_t still noisy, x0 predicted
        page.fill("[name='steps']", "250")
        page.fill("[name='batch']", "16")
        page.click("#go")
        page.wait_for_selector("#status:has-text('step 40 ')", timeout=300_000)
        page.locator("#sample-form").screenshot(path=str(docs / "serve_live.png"))
        page.click("#cancel")
        page.wait_for_selector("#status:has-text('cancelled')")
        page.select_option("[name='sampler']", "ddim")
        page.fill("[name='steps']", "50")
        page.fill("[name='batch']", "16")
        page.check("[name='compare']")
        page.select_option("[name='sampler_b']", "dpmpp_2m")
        page.fill("[name='steps_b']", "10")
        page.click("#go")
        page.wait_for_selector("#status:has-text('done')", timeout=300_000)
        page.locator("#sample-form").screenshot(path=str(docs / "serve_sampling.png"))
        page.goto(f"{url}/#run={args.cold}")
        page.wait_for_selector(f"body[data-run='{args.cold}']")
        page.click("#restore-go")
        page.wait_for_selector("#restore-status:has-text('done')", timeout=300_000)
        page.locator("#restore-form").screenshot(path=str(docs / "serve_cold.png"))
        browser.close()
        if errors:
            raise SystemExit(f"JavaScript errors: {errors}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True)
    p.add_argument("--live", required=True, help="a run to show with its loss curve (one still training)")
    p.add_argument("--gaussian", required=True, help="a Gaussian run to sample from")
    p.add_argument("--cold", required=True, help="a cold run to restore with")
    args = p.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "undiffuse", "serve", "--runs", args.runs, "--port", str(port)],
                              cwd=ROOT)
    try:
        for _ in range(300):
            try:
                httpx.get(url + "/api/runs", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        shoot(url, args, ROOT / "docs")
    finally:
        server.terminate()
        server.wait(10)
    print("wrote docs/serve_runs.png, docs/serve_live.png, docs/serve_sampling.png, docs/serve_cold.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
