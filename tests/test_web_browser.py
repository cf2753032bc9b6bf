"""The search page in a real browser: Debian's Chromium, headless, driven by Playwright, against a
real ingest of generated videos with a planted event (tests/web_corpus.py) behind a real search
service and gateway.

What a person depends on: typing a sentence lists the planted moment first; clicking it plays
the moment from its start and stops at its end (and "keep playing" goes on); thumbnails load;
the URL carries the search; filters, paging, modality toggles and the keyboard work; empty,
error, loading and degraded states are shown; a token-protected server asks for the token.

Chromium comes from the Debian package (``/usr/bin/chromium``; ``.ci/run`` installs it), not
from Playwright's download. Without it these tests skip, except in CI (``CI=true``), where they
fail. ``SPR_WEB_SCREENSHOT=docs/web-results.png`` also saves the results page there.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import sync_playwright

from web_corpus import WebCorpus, _start_refiner, build_web_corpus

CHROMIUM = Path(os.environ.get("SPR_CHROMIUM", "/usr/bin/chromium"))
TOKEN = "open-sesame-4711"
PLAY_TOLERANCE_S = 0.5


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        message = f"no Chromium at {CHROMIUM}: apt-get install chromium (scripts/system-packages does)"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        # The autoplay policy flag only matters for the keyboard test (Enter is a user gesture
        # for a person; for synthetic key events Chromium is stricter).
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--autoplay-policy=no-user-gesture-required", "--mute-audio"]
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> WebCorpus:
    corpus = build_web_corpus(tmp_path_factory.mktemp("webpage"))
    yield corpus
    corpus.close()


class PageProblems:
    """JavaScript errors, console errors (CSP violations among them) and failed requests."""

    def __init__(self, page) -> None:
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.on("console", lambda msg: msg.type == "error" and self.errors.append(f"console: {msg.text}"))


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.problems = PageProblems(page)
    yield page
    context.close()


def _search(page, base_url: str, query: str) -> None:
    page.goto(base_url)
    page.wait_for_selector("body[data-ready='1']")
    page.fill("#query", query)
    page.press("#query", "Enter")
    page.wait_for_selector("#results li.result")


def _results(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#results li.result",
        "items => items.map(li => ({rank: +li.dataset.rank, key: li.dataset.videoKey, "
        "start: +li.dataset.start, end: +li.dataset.end}))",
    )


def _player(page) -> dict:
    return page.evaluate(
        "() => { const v = document.getElementById('player'); "
        "return {t: v.currentTime, paused: v.paused, src: v.currentSrc, ready: v.readyState}; }"
    )


# --- finding and watching the planted moment -------------------------------------------------------


def test_the_planted_moment_is_first_and_plays_from_its_start_until_its_end(corpus, page):
    planted = corpus.planted
    _search(page, corpus.web_url, planted.query)
    first = _results(page)[0]
    assert first["rank"] == 1 and first["key"] == planted.video_key
    assert first["start"] < planted.end_s and first["end"] > planted.start_s  # it covers the planted span

    page.click("#results li.result[data-rank='1']")
    page.wait_for_function("() => { const v = document.getElementById('player'); return !v.paused && v.currentTime > 0; }")
    started = _player(page)
    assert started["src"].endswith("/media/" + planted.video_key)
    assert abs(started["t"] - first["start"]) <= PLAY_TOLERANCE_S, started

    duration = first["end"] - first["start"]
    page.wait_for_function("() => document.getElementById('player').paused", timeout=(duration + 10) * 1000)
    stopped = _player(page)
    assert abs(stopped["t"] - first["end"]) <= PLAY_TOLERANCE_S, stopped

    page.click("#keep-playing")
    page.wait_for_function(
        f"() => {{ const v = document.getElementById('player'); return !v.paused && v.currentTime > {first['end'] + 1.0}; }}",
        timeout=10_000,
    )
    assert not page.problems.errors, page.problems.errors


def test_a_result_shows_its_thumbnail_name_spans_badge_and_highlighted_snippet(corpus, page):
    planted = corpus.planted
    _search(page, corpus.web_url, planted.query)
    first = page.locator("#results li.result[data-rank='1']")
    assert planted.video_key in first.locator(".video").inner_text()
    assert first.locator(".span").inner_text() == (
        f"{_hms(float(first.get_attribute('data-start')))}–{_hms(float(first.get_attribute('data-end')))}")
    assert first.locator(".duration").inner_text().endswith(" s")
    assert first.locator(".score").inner_text().startswith("score ")
    assert first.locator(".badge.coarse").count() == 1  # no refiner behind this search service
    marked = first.locator(".snippet mark").all_inner_texts()
    assert {w.lower() for w in marked} >= {"lighthouse", "keeper", "sailors", "storm"}
    assert "the" not in {w.lower() for w in marked}  # stop words stay plain
    # Every thumbnail loads, as a real JPEG for ingested videos.
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results img.thumb')].every(i => i.complete && i.naturalWidth > 0)"
    )
    src = first.locator("img.thumb").get_attribute("src")
    thumb = httpx.get(corpus.web_url.rstrip("/") + src, timeout=30)
    assert thumb.headers["content-type"] == "image/jpeg" and thumb.content[:3] == b"\xff\xd8\xff"
    # One timeline strip per video, with one mark per hit of that video.
    keys = [r["key"] for r in _results(page)]
    rows = page.locator("#timelines .timeline-row")
    assert rows.count() == len(set(keys))
    lecture_row = page.locator(f"#timelines .timeline[data-video-key='{planted.video_key}'] .hit")
    assert lecture_row.count() == keys.count(planted.video_key)
    assert page.locator("#banner-random").is_visible()  # spr-tiny CLIP has random weights
    assert "random weights" in page.locator("#banner-random").inner_text()
    if os.environ.get("SPR_WEB_SCREENSHOT"):
        page.click("#results li.result[data-rank='1']")
        page.wait_for_function("() => document.getElementById('player').currentTime > 0")
        page.screenshot(path=os.environ["SPR_WEB_SCREENSHOT"], full_page=False)
    assert not page.problems.errors, page.problems.errors


def _hms(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


# --- the URL, paging, filters, toggles and the keyboard ------------------------------------------------


def test_the_url_carries_the_search_so_it_reloads_and_shares(corpus, page, browser):
    planted = corpus.planted
    _search(page, corpus.web_url, planted.query)
    assert "q=" in page.url
    before = _results(page)
    page.reload()
    page.wait_for_selector("#results li.result")
    assert page.input_value("#query") == planted.query
    assert _results(page) == before
    other = browser.new_context().new_page()  # someone the link was sent to
    try:
        other.goto(page.url)
        other.wait_for_selector("#results li.result")
        assert _results(other)[0]["key"] == planted.video_key
    finally:
        other.context.close()


def test_more_results_appends_the_next_page(corpus, page):
    page.goto(corpus.web_url + "?q=ships+onions+trains+sunrise&k=2")
    page.wait_for_selector("#results li.result")
    assert [r["rank"] for r in _results(page)] == [1, 2]
    assert page.locator("#more").is_visible()
    page.click("#more")
    page.wait_for_function("() => document.querySelectorAll('#results li.result').length > 2")
    assert [r["rank"] for r in _results(page)] == [1, 2, 3, 4]


def test_filters_by_video_and_metadata_go_into_the_search_and_the_url(corpus, page):
    _search(page, corpus.web_url, "fry the onions, then take the train")
    assert {r["key"] for r in _results(page)} >= {"cooking.mp4", "travel.mp4"}
    page.click("#filters summary")
    page.fill("#filter-video", "cooking.mp4")
    page.press("#query", "Enter")
    page.wait_for_url("**video=cooking.mp4**")
    page.wait_for_function("() => [...document.querySelectorAll('#results li.result')].length && [...document.querySelectorAll('#results li.result')].every(li => li.dataset.videoKey === 'cooking.mp4')")
    assert {r["key"] for r in _results(page)} == {"cooking.mp4"}
    page.fill("#filter-video", "")
    page.fill("#filter-meta", "course=geography")
    page.press("#query", "Enter")
    page.wait_for_url("**meta=course%3Dgeography**")
    page.wait_for_function("() => [...document.querySelectorAll('#results li.result')].length && [...document.querySelectorAll('#results li.result')].every(li => li.dataset.videoKey === 'travel.mp4')")
    assert {r["key"] for r in _results(page)} == {"travel.mp4"}


def test_the_modality_toggles_are_the_collections_and_switch_one_off(corpus, page):
    page.goto(corpus.web_url)
    page.wait_for_selector("body[data-ready='1']")
    info = httpx.get(corpus.web_url + "api/info", timeout=30).json()
    toggles = page.eval_on_selector_all("input.modality", "boxes => boxes.map(b => b.value)")
    assert toggles == info["modalities"] and "subtitles" in toggles
    page.fill("#query", corpus.planted.query)
    page.uncheck("input.modality[value='subtitles']")
    with page.expect_request(lambda r: "/api/search" in r.url) as request:
        page.press("#query", "Enter")
    assert "w_subtitles=0" in request.value.url
    page.wait_for_url("**off=subtitles**")
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    assert not page.is_checked("input.modality[value='subtitles']")  # the URL keeps the toggle


def test_the_keyboard_moves_through_results_and_plays_one(corpus, page):
    page.goto(corpus.web_url + "?q=ships+onions+trains+sunrise")
    page.wait_for_selector("#results li.result[data-rank='3']")
    page.keyboard.press("j")
    assert page.get_attribute("#results li.result.selected", "data-rank") == "2"
    page.keyboard.press("j")
    page.keyboard.press("k")
    assert page.get_attribute("#results li.result.selected", "data-rank") == "2"
    page.keyboard.press("Enter")
    second = _results(page)[1]
    page.wait_for_function("() => !document.getElementById('player').paused")
    assert page.get_attribute("#player", "data-video-key") == second["key"]
    assert abs(_player(page)["t"] - second["start"]) <= PLAY_TOLERANCE_S + 0.5
    page.keyboard.press("/")
    assert page.evaluate("() => document.activeElement.id") == "query"


# --- states -------------------------------------------------------------------------------------------


def test_loading_then_empty_and_error_states(corpus, page):
    page.goto(corpus.web_url)
    page.wait_for_selector("body[data-ready='1']")
    page.fill("#query", "anything at all")
    page.click("#filters summary")
    page.fill("#filter-meta", "course=no-such-course")
    # The loading state shows as soon as the search starts (checked in the same task).
    assert page.evaluate(
        "() => { document.getElementById('search-form').requestSubmit(); "
        "return !document.getElementById('state-loading').hidden; }")
    page.wait_for_selector("#state-empty", state="visible")
    assert page.locator("#results li.result").count() == 0
    assert page.locator("#state-loading").is_hidden()

    page.goto(corpus.web_url + "?q=ships&meta=no-equals-sign")
    page.wait_for_selector("#state-error", state="visible")
    assert "key=value" in page.locator("#state-error").inner_text()  # the gateway's 400 message


def test_degraded_results_are_bannered(corpus, page):
    search = corpus.start_search(refiner_target="127.0.0.1:9")  # nothing listens there
    web = corpus.start_web(target=search)
    # Refinement is visual-only, so bring the (random-weights) visual modality in by weight.
    page.goto(web.url + "?q=ships&w_visual=1")
    page.wait_for_selector("#results li.result")
    assert "w_visual=1" in page.url
    banner = page.locator("#banner-degraded")
    assert banner.is_visible() and "Degraded" in banner.inner_text()
    assert page.locator("#results .badge.coarse").count() == len(_results(page))


def test_a_refined_moment_shows_its_coarse_span_beside_it(corpus, page):
    web = corpus.start_web(target=corpus.start_search(refiner_target=_start_refiner(corpus)))
    page.goto(web.url + "?q=ships&w_visual=1")  # refinement is visual-only
    page.wait_for_selector("#results li.result")
    first = page.locator("#results li.result[data-rank='1']")
    assert first.locator(".badge.refined").count() == 1
    assert first.locator(".coarse-span").inner_text().startswith("coarse ")
    first.click()
    spans = page.locator("#now-spans").inner_text()
    assert spans.startswith("refined ") and " coarse " in spans
    assert page.locator("#now-timeline .coarse").count() == 1


# --- the token -------------------------------------------------------------------------------------------


def test_a_token_protected_server_refuses_the_page_without_the_token(corpus, page):
    web = corpus.start_web(token=TOKEN)
    page.goto(web.url + "?q=ships")
    assert "/login" in page.url
    assert page.locator("#results").count() == 0
    api = page.request.get(web.url + "api/search?q=ships")
    assert api.status == 401
    page.fill("#token", "wrong-token")
    page.click("#login-form button[type='submit']")
    page.wait_for_selector("#login-error", state="visible")
    page.fill("#token", TOKEN)
    page.click("#login-form button[type='submit']")
    page.wait_for_selector("#results li.result")  # back on the page, with the search it asked for
    assert page.input_value("#query") == "ships"
    cookies = page.context.cookies()
    assert any(c["httpOnly"] for c in cookies)
    assert page.evaluate("() => document.cookie") == ""  # not readable by scripts
