"""`spr demo`, the README's main command: from nothing to ranked moments on one machine, and
`spr demo --web`: the same corpus on the search page, where a sentence plays its moment."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import _in_ci, run_spr

CHROMIUM = Path(os.environ.get("SPR_CHROMIUM", "/usr/bin/chromium"))


def test_spr_demo_runs_end_to_end_on_the_embedded_defaults_and_can_be_repeated(tmp_path):
    env = {"SPR_DATA_DIR": str(tmp_path / "spr"), "SPR_LOGGING__LEVEL": "ERROR"}
    first = run_spr("demo", env=env, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = first.stdout
    assert "using the built-in spr-tiny model" in out  # no weights configured: said plainly
    assert "RANDOM weights" in out
    assert "planted events found first: 4/4" in out
    # What is said (espeak-ng speech, when installed) and written (subtitle sidecars) is found
    # first with REAL weights: faster-whisper tiny.en and all-MiniLM-L6-v2.
    said = 6 if shutil.which("espeak-ng") else 3
    assert f"spoken and written events found first: {said}/{said} (real weights)" in out
    assert "REAL weights: speech by faster-whisper tiny.en" in out
    assert "left out: the CLIP text encoder has random weights" in out
    assert "published 6" in out and "refined" in out
    for stage in ("ann", "catalog", "proposals", "refine", "total"):
        assert f" {stage} " in out
    # A second run reuses the videos and skips the ingest work: nothing is duplicated. This time
    # with --web: the services stay up behind the search page until Ctrl-C.
    again, url, proc = _start_demo_web(env)
    try:
        assert "published 0, skipped 6" in again
        assert "planted events found first: 4/4" in again
        assert f"spoken and written events found first: {said}/{said}" in again
        _watch_a_said_moment_on_the_page(url)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        rest, errors = proc.communicate(timeout=120)
        assert proc.returncode == 0, errors[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _start_demo_web(env: dict[str, str]) -> tuple[str, str, subprocess.Popen]:
    """`spr demo --web --web-port 0` running: its output up to the "open URL" line, the URL,
    and the process."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "spr.cli", "demo", "--executor", "inline", "--web", "--web-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env},
    )
    watchdog = threading.Timer(600, proc.kill)  # never hang the suite on a stuck demo
    watchdog.start()
    seen: list[str] = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("open http"):
                break
    finally:
        watchdog.cancel()
    out = "".join(seen)
    assert seen and seen[-1].startswith("open http"), out[-3000:] + (proc.stderr.read() if proc.poll() is not None else "")
    url = seen[-1].split()[1]
    assert url.startswith("http://127.0.0.1:") and f"web      {url}" in out
    return out, url, proc


def _watch_a_said_moment_on_the_page(url: str) -> None:
    """What the README promises: open the URL, type a sentence, watch the moment play."""
    if not CHROMIUM.exists():
        if _in_ci():
            pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium (scripts/system-packages does)")
        return  # the demo's own checks above still ran
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--mute-audio"])
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.goto(url)
            page.fill("#query", "asking for the quarterly sales report")
            page.press("#query", "Enter")
            first = page.locator("#results li.result[data-rank='1']")
            first.wait_for()
            assert first.get_attribute("data-video-key") == "office.mp4"
            start, end = float(first.get_attribute("data-start")), float(first.get_attribute("data-end"))
            first.click()
            page.wait_for_function("() => { const v = document.getElementById('player'); "
                                   "return !v.paused && v.currentTime > 0; }")
            assert abs(page.evaluate("() => document.getElementById('player').currentTime") - start) <= 0.5
            page.wait_for_function("() => document.getElementById('player').paused", timeout=(end - start + 15) * 1000)
            assert abs(page.evaluate("() => document.getElementById('player').currentTime") - end) <= 0.5
        finally:
            browser.close()
