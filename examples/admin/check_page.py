#!/usr/bin/env python3
"""Checks the operator page in a real browser (headless Chromium through Playwright).

Against a worker already running with ADMIN_ADDR and ADMIN_TOKEN, and with a slow LLM
(LLM_MOCK_LATENCY_MS) so that a 52-week job runs for a while:

1. without the token, a job page answers 401;
2. a 52-week job's page, screenshotted twice some seconds apart: the progress bar's filled width,
   measured in the PNG's pixels of the bar's colour, grew;
3. a job cancelled by its user while under way: its page shows the reason (from the DOM) and
   the screenshot is not blank.

Jobs are published and cancelled with the worker's own CLI (`roadmap-worker enqueue` and
`roadmap-worker cancel`), which read AMQP_URL and AMQP_NAMESPACE as the worker does.
Screenshots are saved under --out; their paths and the measured widths are printed.

    ADMIN_TOKEN=... AMQP_NAMESPACE=... python examples/admin/check_page.py --url http://127.0.0.1:9465
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[2]
# The fill colour of the page's progress bar (src/admin/views.rs, BAR_FILL).
BAR_FILL = (0x2F, 0x85, 0x5A)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
USER = "admin-check"


def cli(binary, *args, timeout=60):
    """Runs the worker's CLI and returns its stdout; fails loudly with its stderr."""
    done = subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "RUST_LOG": "warn"},
    )
    if done.returncode != 0:
        sys.exit(f"{binary} {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def publish(binary, weeks, role):
    job_id = str(uuid.uuid4())
    cli(binary, "enqueue", "--weeks", str(weeks), "--role", role, "--user", USER, "--job-id", job_id)
    return job_id


def status_without_token(url):
    """The HTTP status and WWW-Authenticate header of a GET without any credentials."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers.get("WWW-Authenticate")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("WWW-Authenticate")


def wait_listening(base, timeout):
    """Waits for the page's listener (the worker migrates and connects first)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return status_without_token(f"{base}/")
        except OSError as e:
            if time.monotonic() > deadline:
                sys.exit(f"the operator page at {base} did not answer within {timeout} s: {e}")
            time.sleep(0.3)


def fill_width(png, box):
    """The widest run of the bar's fill colour on any row inside `box` (the bar's bounding box
    in CSS pixels, at device scale 1): the filled width in pixels."""
    image = Image.open(png).convert("RGB")
    left, top = int(box["x"]), int(box["y"])
    right, bottom = int(box["x"] + box["width"]) + 1, int(box["y"] + box["height"]) + 1
    pixels = image.load()
    widest = 0
    for y in range(max(top, 0), min(bottom, image.height)):
        run = best = 0
        for x in range(max(left, 0), min(right, image.width)):
            r, g, b = pixels[x, y]
            if abs(r - BAR_FILL[0]) <= 2 and abs(g - BAR_FILL[1]) <= 2 and abs(b - BAR_FILL[2]) <= 2:
                run += 1
                best = max(best, run)
            else:
                run = 0
        widest = max(widest, best)
    return widest


def non_blank(png):
    """Share of pixels that are not the page's white background."""
    image = Image.open(png).convert("L")
    histogram = image.histogram()
    return 1 - sum(histogram[250:]) / (image.width * image.height)


def progress(page):
    """(done, total) from the bar's aria attributes."""
    bar = page.locator("div.bar.big")
    return int(bar.get_attribute("aria-valuenow")), int(bar.get_attribute("aria-valuemax"))


def open_job(page, base, job_id, until, what, timeout):
    """Loads the job's page until `until(page)` holds (the job row may not exist yet: 404)."""
    deadline = time.monotonic() + timeout
    while True:
        response = page.goto(f"{base}/jobs/{job_id}", wait_until="load")
        if response.status == 200 and until(page):
            return
        if time.monotonic() > deadline:
            sys.exit(f"timed out after {timeout} s waiting for {what} (last status {response.status})")
        time.sleep(0.3)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("ADMIN_URL", "http://127.0.0.1:9465"))
    parser.add_argument("--bin", default=str(REPO / "target/debug/roadmap-worker"))
    parser.add_argument("--out", default=str(REPO / "target/admin-check"))
    parser.add_argument("--gap", type=float, default=4.0, help="seconds between the two screenshots")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    token = os.environ.get("ADMIN_TOKEN") or sys.exit("ADMIN_TOKEN must be set")
    base = args.url.rstrip("/")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    wait_listening(base, args.timeout)
    growing = publish(args.bin, 52, "Site Reliability Engineer")
    cancelled = publish(args.bin, 52, "Data Engineer")

    status, challenge = status_without_token(f"{base}/jobs/{growing}")
    assert status == 401, f"without the token: {status}"
    assert challenge and challenge.startswith("Bearer"), challenge
    print(f"without the token: {status}, WWW-Authenticate: {challenge}")

    with sync_playwright() as p, tempfile.TemporaryDirectory(prefix="admin-check-") as profile:
        browser = p.chromium.launch_persistent_context(
            profile,
            executable_path="/usr/bin/chromium",
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
            device_scale_factor=1,
        )
        # The browser without the token is refused as well, and offered the login form.
        anonymous = browser.new_page()
        response = anonymous.goto(f"{base}/jobs/{growing}")
        assert response.status == 401, response.status
        assert anonymous.locator("a[href='/login']").count() == 1
        anonymous.close()

        page = browser.new_page()
        page.set_extra_http_headers({"Authorization": f"Bearer {token}"})

        def under_way(pg):
            done, total = progress(pg)
            return 0 < done < total

        # The second job is cancelled by its user as soon as it is under way (long before its
        # end); the cancel runs while the first job is screenshotted.
        open_job(page, base, cancelled, under_way, "the second job's first batch", args.timeout)
        cancel = subprocess.Popen(
            [args.bin, "cancel", cancelled, "--user", USER, "--timeout-secs", "60"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "RUST_LOG": "warn"},
        )

        # Two screenshots of the first job, the first once it has a batch and more to go.
        open_job(page, base, growing, under_way, "the 52-week job's first batch", args.timeout)
        shots = []
        for n in (1, 2):
            if n == 2:
                # Meanwhile the overview, in a tab of its own, lists the job while it runs.
                started = time.monotonic()
                overview = browser.new_page()
                overview.set_extra_http_headers({"Authorization": f"Bearer {token}"})
                overview.goto(f"{base}/", wait_until="load")
                assert overview.locator(f"a[href='/jobs/{growing}']").count() == 1, "not on the overview"
                png = out / "overview.png"
                overview.screenshot(path=str(png), full_page=True)
                print(f"screenshot {png}: the overview lists the job")
                overview.close()
                time.sleep(max(0.0, args.gap - (time.monotonic() - started)))
                page.reload(wait_until="load")
            png = out / f"job-progress-{n}.png"
            page.screenshot(path=str(png))
            box = page.locator("div.bar.big").bounding_box()
            dom = page.locator("div.bar.big div.fill").bounding_box()["width"]
            done, total = progress(page)
            width = fill_width(png, box)
            shots.append(width)
            print(f"screenshot {png}: {done}/{total} batches, bar fill {width} px of "
                  f"{int(box['width'])} (DOM says {dom:.1f} px)")
            assert abs(width - dom) <= 2, f"pixels ({width}) and DOM ({dom:.1f}) disagree"
        assert shots[1] > shots[0], f"the progress bar did not grow: {shots[0]} px then {shots[1]} px"
        print(f"progress bar grew: {shots[0]} px -> {shots[1]} px")

        # The cancelled job fails with reason `cancelled`, which its page shows.
        answer, _ = cancel.communicate(timeout=90)
        assert cancel.returncode == 0, f"roadmap-worker cancel failed:\n{answer}"
        print(answer.strip())
        open_job(page, base, cancelled, lambda pg: pg.locator(".state-failed").count() == 1,
                 "the cancelled job's page to say failed", args.timeout)
        reason = page.locator("span.reason").first.inner_text()
        message = page.locator("p.msg").first.inner_text()
        assert reason == "cancelled", reason
        assert re.search(r"cancelled", message), message
        png = out / "job-cancelled.png"
        page.screenshot(path=str(png))
        ink = non_blank(png)
        assert ink > 0.02, f"the screenshot looks blank ({ink:.1%} ink)"
        print(f"screenshot {png}: reason {reason!r}, message {message!r}, {ink:.1%} non-white")
        browser.close()
    print("operator page checks passed")


if __name__ == "__main__":
    main()
