"""The web gateway over HTTP: a real uvicorn server in front of a real search service over a real
ingest (tests/web_corpus.py), spoken to with httpx (and http.client where a path must reach the
server exactly as written).

What a client of ``spr web`` depends on: the JSON of a search, paging, HTTP Range on media, that
no request path reaches a file, thumbnails with cache validation, gRPC errors as HTTP statuses
with a JSON body, the token (bearer header or login cookie), the security headers, CORS only
when configured, and the request size caps.
"""

from __future__ import annotations

import http.client
import socket
from urllib.parse import quote, urlsplit

import grpc
import httpx
import pytest

from spr.limits import MAX_TEXT_CHARS
from spr.search.client import SearchClient
from spr.search.web import PortInUse, serve_web
from spr.search.web.errors import http_status_of
from spr.search.web.media import ByteRange, MediaStream, RangeNotSatisfiable, parse_range

from web_corpus import WebCorpus, build_web_corpus

TOKEN = "correct-horse-battery-staple"
MOMENT_FIELDS = {
    "rank", "video_key", "video_id", "segment_id", "start_s", "end_s", "duration_s", "score", "coarse_rank",
    "coarse_start_s", "coarse_end_s", "video_duration_s", "refined", "snippet", "snippet_track", "modalities",
    "media_url", "thumbnail_url", "video_url",
}
RESPONSE_FIELDS = {
    "query", "collection", "refined", "degraded", "degraded_reason", "random_weights", "refine_note", "fusion",
    "segments_retrieved", "proposals", "timings_ms", "modalities", "offset", "k", "has_more", "moments",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> WebCorpus:
    corpus = build_web_corpus(tmp_path_factory.mktemp("web"))
    yield corpus
    corpus.close()


@pytest.fixture(scope="module")
def web(corpus) -> httpx.Client:
    with httpx.Client(base_url=corpus.web_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def secured(corpus) -> httpx.Client:
    """A gateway and a search service that both want :data:`TOKEN`."""
    server = corpus.start_web(token=TOKEN)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def _raw_get(base_url: str, target: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """GET ``target`` byte for byte (httpx would normalise ``..`` away before sending)."""
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("GET", target, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["status"] == status and error["code"] and error["message"]
    assert "Traceback" not in response.text
    return error


# --- search ---------------------------------------------------------------------------------------


def test_search_finds_the_planted_moment_first_with_the_documented_json(corpus, web):
    planted = corpus.planted
    response = web.get("/api/search", params={"q": planted.query})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == RESPONSE_FIELDS
    assert body["query"] == planted.query and body["collection"] == corpus.collection
    assert (body["offset"], body["k"]) == (0, 10)
    best = body["moments"][0]
    assert set(best) == MOMENT_FIELDS
    assert best["rank"] == 1 and best["video_key"] == planted.video_key
    assert best["start_s"] < planted.end_s and best["end_s"] > planted.start_s, best
    assert best["duration_s"] == pytest.approx(best["end_s"] - best["start_s"])
    assert best["snippet"] == planted.sentence and best["snippet_track"] == "subtitles"
    assert best["refined"] is body["refined"]
    assert best["video_id"] > 0 and best["segment_id"] >> 20 == best["video_id"]
    assert best["media_url"] == f"/media/{quote(planted.video_key, safe='')}"
    assert best["thumbnail_url"] == f"/thumbs/{best['segment_id']}.jpg"
    assert best["video_url"] == f"/api/videos/{quote(planted.video_key, safe='')}"
    modalities = {m["modality"]: m for m in body["modalities"]}
    assert modalities["subtitles"]["searched"] and not modalities["visual"]["searched"]  # random CLIP left out
    assert body["timings_ms"]["total"] > 0


def test_pages_follow_each_other_by_offset_and_say_when_more_follow(web):
    query = {"q": "ships, onions and trains", "w_visual": 1}
    both = web.get("/api/search", params={**query, "k": 2}).json()
    first = web.get("/api/search", params={**query, "k": 1}).json()
    second = web.get("/api/search", params={**query, "k": 1, "offset": 1}).json()
    assert len(both["moments"]) == 2
    assert first["moments"] == both["moments"][:1] and second["moments"] == both["moments"][1:]
    assert [m["rank"] for m in first["moments"] + second["moments"]] == [1, 2]
    assert first["has_more"] and second["offset"] == 1
    everything = web.get("/api/search", params={**query, "k": 100}).json()
    assert not everything["has_more"]
    past_the_end = web.get("/api/search", params={**query, "k": 10, "offset": len(everything["moments"])}).json()
    assert past_the_end["moments"] == [] and not past_the_end["has_more"]


def test_filters_by_video_and_by_metadata_reach_the_search(web):
    query = {"q": "a journey", "w_visual": 1, "k": 50}
    only = web.get("/api/search", params={**query, "video": ["cooking.mp4", "travel.mp4"]}).json()
    assert only["moments"] and {m["video_key"] for m in only["moments"]} <= {"cooking.mp4", "travel.mp4"}
    maritime = web.get("/api/search", params={**query, "meta": "course=maritime"}).json()
    assert maritime["moments"] and {m["video_key"] for m in maritime["moments"]} == {"lecture.mp4"}


def test_info_names_the_default_collection_and_what_it_can_search(corpus, web):
    info = web.get("/api/info").json()
    assert info["collection"] == corpus.collection
    assert {corpus.collection, corpus.archive_collection} <= set(info["collections"])
    assert "subtitles" in info["modalities"] and info["auth"] is False
    assert info["videos"]["ready"] == len(corpus.videos) and info["segments"] > 0


def test_a_video_is_described_by_key(corpus, web):
    key = corpus.planted.video_key
    video = web.get(f"/api/videos/{quote(key, safe='')}").json()
    assert video["key"] == key and video["id"] > 0
    assert video["duration_s"] == pytest.approx(32.0, abs=0.2)
    assert video["metadata"] == {"course": "maritime", "year": "2024"}
    assert video["size_bytes"] == corpus.videos[key].stat().st_size
    assert video["content_type"] == "video/mp4" and video["media_url"] == f"/media/{key}"
    assert "subtitles" in video["tracks"] and video["segments"] == 8
    _error(web.get("/api/videos/no-such-video.mp4"), 404)


def test_openapi_documents_the_search_parameters(web):
    spec = web.get("/openapi.json").json()
    parameters = {p["name"] for p in spec["paths"]["/api/search"]["get"]["parameters"]}
    assert {"q", "k", "offset", "collection", "video", "meta", "refine", "w_visual", "w_speech", "w_subtitles",
            "fusion", "segments_k", "nprobe"} <= parameters
    assert "/api/videos/{key}" in spec["paths"] and "/media/{key}" in spec["paths"]


# --- media ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lecture(corpus) -> tuple[str, bytes]:
    key = corpus.planted.video_key
    return f"/media/{quote(key, safe='')}", corpus.videos[key].read_bytes()


def test_a_range_gets_206_with_exactly_those_bytes(web, lecture):
    url, data = lecture
    size = len(data)
    for header, (start, end) in {
        "bytes=0-99": (0, 99),
        "bytes=100-": (100, size - 1),
        "bytes=-50": (size - 50, size - 1),
        f"bytes=1000-{size + 5000}": (1000, size - 1),  # clipped to the end
    }.items():
        response = web.get(url, headers={"Range": header})
        assert response.status_code == 206, (header, response.text)
        assert response.headers["content-range"] == f"bytes {start}-{end}/{size}"
        assert response.headers["accept-ranges"] == "bytes"
        assert response.headers["content-type"] == "video/mp4"
        assert int(response.headers["content-length"]) == end - start + 1
        assert response.content == data[start : end + 1], header


def test_without_a_range_the_whole_file_comes_with_200(web, lecture):
    url, data = lecture
    response = web.get(url)
    assert response.status_code == 200 and response.content == data
    assert response.headers["accept-ranges"] == "bytes" and int(response.headers["content-length"]) == len(data)
    head = web.head(url)
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(data) and head.content == b""


def test_a_range_past_the_end_is_416_and_a_malformed_one_is_ignored(web, lecture):
    url, data = lecture
    for header in (f"bytes={len(data)}-", f"bytes={len(data) + 10}-{len(data) + 20}", "bytes=-0"):
        response = web.get(url, headers={"Range": header})
        _error(response, 416)
        assert response.headers["content-range"] == f"bytes */{len(data)}"
    for header in ("bytes=abc", "items=0-5", "bytes=10-5", "bytes=0-1,5-6"):
        response = web.get(url, headers={"Range": header})
        assert response.status_code == 200 and response.content == data, header


@pytest.mark.parametrize("target", [
    "/media/..%2F..%2F..%2Fetc%2Fpasswd",
    "/media/../catalog.db",
    "/media/../../data/catalog.db",
    "/media/%2Fetc%2Fpasswd",
    "/media//etc/passwd",
    "/media/..",
])
def test_traversal_strings_are_unknown_keys(corpus, target):
    status, body = _raw_get(corpus.web_url, target)
    assert status == 404, (target, body)
    assert b"root:" not in body


def test_paths_of_real_files_are_not_keys(corpus):
    real = corpus.videos[corpus.planted.video_key].resolve()
    catalog = next(corpus.root.joinpath("data").rglob("*.db"))
    for target in (f"/media/{real}", f"/media/{quote(str(real), safe='')}", f"/media/{quote(real.as_uri(), safe='')}",
                   f"/media/{catalog}", f"/media/{quote(str(catalog), safe='')}"):
        status, body = _raw_get(corpus.web_url, target)
        assert status == 404, (target, body[:200])


def test_a_media_stream_stops_its_grpc_call_when_cancelled(corpus, lecture):
    """What the gateway does when the player goes away mid-file: the call in flight is cancelled
    and no further window is asked for."""
    _, data = lecture
    with SearchClient(corpus.search_target) as client:
        stream = MediaStream(client, corpus.planted.video_key, 0, len(data), window=1000)
        stream.prime()
        chunks = stream.chunks()
        assert next(chunks) == data[:1000]
        call = stream._call
        stream.cancel()
        # The call in flight is over (cancelled, or it had just sent its last byte) and no
        # further window is asked for.
        assert call.done() and call.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.OK)
        assert list(chunks) == [] and stream._call is None
        whole = MediaStream(client, corpus.planted.video_key, 10, len(data) - 10, window=4096)
        whole.prime()
        assert b"".join(whole.chunks()) == data[10:]  # many windows, stitched in order


# --- thumbnails -----------------------------------------------------------------------------------


def test_a_thumbnail_is_a_cacheable_jpeg_revalidated_by_etag(corpus, web):
    moment = web.get("/api/search", params={"q": corpus.planted.query}).json()["moments"][0]
    response = web.get(moment["thumbnail_url"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg" and response.content[:3] == b"\xff\xd8\xff"
    assert response.headers["cache-control"] == "public, max-age=86400"
    etag = response.headers["etag"]
    again = web.get(moment["thumbnail_url"], headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    changed = web.get(moment["thumbnail_url"], headers={"If-None-Match": '"something-else"'})
    assert changed.status_code == 200 and changed.content == response.content


def test_a_video_without_thumbnails_gets_the_placeholder(corpus, web):
    video = web.get(f"/api/videos/{corpus.imported_key}").json()
    assert video["thumbnails"] is False
    response = web.get(f"/thumbs/{video['id'] << 20}.jpg")
    assert response.status_code == 200 and response.headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in response.content
    assert response.headers["cache-control"] == "public, max-age=300"


def test_unknown_thumbnails_are_404(web):
    for name in (f"{999 << 20}.jpg", "0.jpg", "abc.jpg", "12.png", "..%2F..%2Fetc%2Fpasswd"):
        _error(web.get(f"/thumbs/{name}"), 404)


# --- errors ---------------------------------------------------------------------------------------


def test_bad_parameters_are_400_with_a_message(web):
    for params in ({"q": ""}, {"q": "   "}, {}, {"q": "x" * (MAX_TEXT_CHARS + 1)}, {"q": "x", "k": 0},
                   {"q": "x", "k": 101}, {"q": "x", "offset": -1}, {"q": "x", "offset": 995, "k": 10},
                   {"q": "x", "fusion": "max"}, {"q": "x", "meta": "no-equals-sign"}, {"q": "x", "refine": "perhaps"},
                   {"q": "x", "w_speech": -1}, {"q": "x", "w_speech": "nan"}, {"q": "x", "segments_k": 0}):
        error = _error(web.get("/api/search", params=params), 400)
        assert error["code"] == "INVALID_ARGUMENT", params
    assert "q" in _error(web.get("/api/search", params={"q": "x" * (MAX_TEXT_CHARS + 1)}), 400)["message"]


def test_an_unknown_collection_is_404(web):
    error = _error(web.get("/api/search", params={"q": "storm", "collection": "no_such_collection"}), 404)
    assert error["code"] == "NOT_FOUND" and "no_such_collection" in error["message"]


def test_a_search_service_that_is_down_is_503(corpus):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = corpus.start_web(target=f"127.0.0.1:{port}")
    error = _error(httpx.get(server.url + "api/search", params={"q": "storm"}, timeout=30), 503)
    assert error["code"] == "UNAVAILABLE" and "unavailable" in error["message"]


def test_a_search_past_the_gateways_deadline_is_504(corpus):
    server = corpus.start_web(timeout_s=0.0001)  # no search answers in 100 microseconds
    error = _error(httpx.get(server.url + "api/search", params={"q": "storm"}, timeout=30), 504)
    assert error["code"] == "DEADLINE_EXCEEDED"


def test_a_search_service_that_wants_a_token_the_gateway_lacks_is_401(corpus):
    server = corpus.start_web(target=corpus.start_search(TOKEN))
    error = _error(httpx.get(server.url + "api/search", params={"q": "storm"}, timeout=30), 401)
    assert error["code"] == "UNAUTHENTICATED"


def test_grpc_codes_map_to_the_documented_http_statuses():
    codes = grpc.StatusCode
    assert {code: http_status_of(code) for code in (
        codes.INVALID_ARGUMENT, codes.OUT_OF_RANGE, codes.NOT_FOUND, codes.UNAUTHENTICATED, codes.PERMISSION_DENIED,
        codes.DEADLINE_EXCEEDED, codes.UNAVAILABLE, codes.FAILED_PRECONDITION, codes.RESOURCE_EXHAUSTED,
        codes.INTERNAL, codes.UNKNOWN, codes.UNIMPLEMENTED, codes.DATA_LOSS,
    )} == {
        codes.INVALID_ARGUMENT: 400, codes.OUT_OF_RANGE: 400, codes.NOT_FOUND: 404, codes.UNAUTHENTICATED: 401,
        codes.PERMISSION_DENIED: 403, codes.DEADLINE_EXCEEDED: 504, codes.UNAVAILABLE: 503,
        codes.FAILED_PRECONDITION: 400, codes.RESOURCE_EXHAUSTED: 429, codes.INTERNAL: 500, codes.UNKNOWN: 500,
        codes.UNIMPLEMENTED: 500, codes.DATA_LOSS: 500,
    }
    assert http_status_of(codes.OUT_OF_RANGE, media=True) == 416


def test_unknown_routes_are_404_json(web):
    _error(web.get("/no/such/page"), 404)
    _error(web.get("/static/no-such-file.js"), 404)


# --- the token ------------------------------------------------------------------------------------


def test_without_the_token_the_api_is_401_and_the_page_redirects_to_the_login_form(corpus, secured):
    for path in ("/api/info", "/api/search?q=storm", f"/media/{corpus.planted.video_key}", "/thumbs/1048576.jpg",
                 f"/api/videos/{corpus.planted.video_key}"):
        error = _error(secured.get(path), 401)
        assert error["code"] == "UNAUTHENTICATED"
    page = secured.get("/?q=storm")
    assert page.status_code == 303 and page.headers["location"] == f"/login?next={quote('/?q=storm', safe='')}"
    login = secured.get("/login")
    assert login.status_code == 200 and b'name="token"' in login.content
    assert secured.get("/static/placeholder.svg").status_code == 200  # assets stay open


def test_a_bearer_token_opens_the_api_whatever_the_schemes_case(corpus, secured):
    for scheme in ("Bearer", "bearer", "BEARER"):
        response = secured.get("/api/search", params={"q": corpus.planted.query},
                               headers={"Authorization": f"{scheme} {TOKEN}"})
        assert response.status_code == 200, (scheme, response.text)
        assert response.json()["moments"][0]["video_key"] == corpus.planted.video_key
    for wrong in (f"Bearer {TOKEN}x", "Bearer", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN[:-1]}"):
        _error(secured.get("/api/info", headers={"Authorization": wrong}), 401)


def test_the_login_form_sets_an_httponly_session_cookie_that_opens_everything(corpus, secured):
    with httpx.Client(base_url=str(secured.base_url), timeout=30) as browser:
        response = browser.post("/login", data={"token": TOKEN, "next": "/?q=storm"})
        assert response.status_code == 303 and response.headers["location"] == "/?q=storm"
        cookie = response.headers["set-cookie"]
        assert cookie.startswith("spr_session=") and TOKEN not in cookie
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower() and "path=/" in cookie.lower()
        assert browser.get("/api/info").status_code == 200
        assert browser.get(f"/media/{corpus.planted.video_key}", headers={"Range": "bytes=0-9"}).status_code == 206
        assert browser.get("/?q=storm").status_code != 303
        logout = browser.post("/logout")
        assert logout.status_code == 303 and "spr_session" in logout.headers["set-cookie"]
        assert browser.get("/api/info").status_code == 401


def test_a_wrong_token_or_a_forged_cookie_is_refused(secured):
    with httpx.Client(base_url=str(secured.base_url), timeout=30) as browser:
        response = browser.post("/login", data={"token": "guess"})
        assert response.status_code == 303 and response.headers["location"].startswith("/login?error=1")
        assert "set-cookie" not in response.headers
        assert browser.get("/api/info").status_code == 401
    for forged in (TOKEN, "v1.99999999999.0000", "v1.1.abc", "garbage"):
        _error(secured.get("/api/info", headers={"Cookie": f"spr_session={forged}"}), 401)


def test_the_login_form_only_redirects_to_local_paths(secured):
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:alert(1)"):
        response = secured.post("/login", data={"token": TOKEN, "next": target})
        assert response.status_code == 303 and response.headers["location"] == "/", target


# --- headers and caps -----------------------------------------------------------------------------


def test_every_answer_carries_the_strict_content_security_policy(corpus, web, secured):
    for response in (web.get("/"), web.get("/api/info"), web.get("/api/search", params={"q": ""}),
                     web.get(f"/media/{corpus.planted.video_key}", headers={"Range": "bytes=0-1"}),
                     secured.get("/api/info"), secured.get("/login"), secured.get("/")):
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "object-src 'none'" in csp
        assert "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer" and response.headers["x-frame-options"] == "DENY"


def test_media_origins_join_the_media_and_image_sources(corpus):
    server = corpus.start_web(media_origins="https://bucket.example.com")
    csp = httpx.get(server.url + "api/info", timeout=30).headers["content-security-policy"]
    assert "media-src 'self' https://bucket.example.com" in csp and "https://bucket.example.com" in csp.split("img-src")[1]


def test_no_cors_unless_configured(corpus, web):
    origin = "https://elsewhere.example"
    response = web.get("/api/info", headers={"Origin": origin})
    assert "access-control-allow-origin" not in response.headers
    server = corpus.start_web(cors_origins=f"{origin}, https://other.example")
    allowed = httpx.get(server.url + "api/info", headers={"Origin": origin}, timeout=30)
    assert allowed.headers["access-control-allow-origin"] == origin
    stranger = httpx.get(server.url + "api/info", headers={"Origin": "https://evil.example"}, timeout=30)
    assert "access-control-allow-origin" not in stranger.headers
    preflight = httpx.options(server.url + "api/search", timeout=30, headers={
        "Origin": origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == origin


def test_a_query_string_over_the_cap_is_414(corpus, web):
    cap = corpus.config.web.max_query_bytes
    error = _error(web.get("/api/search", params={"q": "x", "pad": "y" * cap}), 414)
    assert str(cap) in error["message"]


def test_a_body_over_the_cap_is_413_declared_or_streamed(corpus, secured):
    cap = corpus.config.web.max_body_bytes
    _error(secured.post("/login", data={"token": "x" * (cap + 1)}), 413)

    def chunks():
        for _ in range(cap // 1000 + 2):
            yield b"token=" + b"x" * 1000

    _error(secured.post("/login", content=chunks(), headers={"Content-Type": "application/x-www-form-urlencoded"}), 413)


# --- units: Range parsing and the listening socket -------------------------------------------------


def test_range_headers_parse_as_rfc_9110_says():
    assert parse_range(None, 1000) is None
    assert parse_range("bytes=0-99", 1000) == ByteRange(0, 99, 1000)
    assert parse_range("bytes=100-", 1000) == ByteRange(100, 999, 1000)
    assert parse_range("bytes=-50", 1000) == ByteRange(950, 999, 1000)
    assert parse_range("bytes=-5000", 1000) == ByteRange(0, 999, 1000)
    assert parse_range("bytes=990-5000", 1000) == ByteRange(990, 999, 1000)
    assert parse_range("Bytes = 1 - 2", 1000) == ByteRange(1, 2, 1000)
    for ignored in ("bytes=", "bytes=-", "bytes=5-1", "bytes=0-1,4-5", "pages=1-2", "bytes=a-b", "bytes=" + "9" * 30 + "-"):
        assert parse_range(ignored, 1000) is None, ignored
    for unsatisfiable in ("bytes=1000-", "bytes=2000-3000", "bytes=-0"):
        with pytest.raises(RangeNotSatisfiable):
            parse_range(unsatisfiable, 1000)
    assert ByteRange(0, 99, 1000).content_range == "bytes 0-99/1000"


def test_a_port_in_use_is_a_clear_error(corpus):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(PortInUse, match=f"port {port} on 127.0.0.1 is in use"):
            serve_web(corpus.config, port=port, target=corpus.search_target)


def test_the_gateway_imports_no_model_and_no_engine():
    """It deploys on its own: a small image without torch, the catalog or the vector stores."""
    import subprocess
    import sys

    code = ("import sys, spr.search.web.app; heavy = [m for m in ('torch', 'open_clip', 'faiss', 'sqlalchemy', "
            "'spr.engine', 'spr.catalog', 'spr.media', 'sentence_transformers') if m in sys.modules]; print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
