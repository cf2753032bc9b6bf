"""The web page's HTTP/JSON gateway: an ASGI app (FastAPI) in front of the search service.

Every answer comes from gRPC calls to the search service (:class:`spr.search.client.SearchClient`),
so the gateway deploys on its own and holds no model, catalog or file:

- ``GET /`` the page, ``GET /static/<file>`` its assets, ``GET|POST /login``, ``POST /logout``;
- ``GET /api/info``, ``GET /api/search`` (a SearchRequest as query parameters, paged by
  ``offset``), ``GET /api/videos/{key}``;
- ``GET /media/{key}`` a catalog video's bytes with HTTP ``Range`` (or a redirect to a
  presigned object-store URL), ``GET /thumbs/{segment_id}.jpg`` a segment's thumbnail.
- ``GET /healthz`` liveness (the process answers; no call to the search service) and
  ``GET /readyz`` readiness (the search service answers its gRPC health check SERVING), both
  open without a token, for Kubernetes probes and load balancers.

A video is only ever named by its catalog key and only looked up by the search service, so no
request path reaches a file system: ``/media/../catalog.db`` is simply an unknown key (404).
gRPC statuses become HTTP statuses (:mod:`.errors`) with a JSON body, never a traceback.
Every response carries a strict Content-Security-Policy; CORS is off unless configured; query
strings and bodies are capped; with ``security.token`` set, the page, the API, media and
thumbnails need the session cookie or ``Authorization: Bearer`` (:mod:`.auth`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, quote

import grpc
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spr.api.v1 import search_pb2
from spr.config import Config
from spr.limits import MAX_SEGMENTS_K, MAX_TEXT_CHARS, MAX_TOP_K, MAX_VIDEO_KEY_LENGTH
from spr.search.client import SearchClient

from . import auth
from .errors import error_body, error_response, rpc_error_response, validation_message
from .media import MediaResponse, MediaStream, RangeNotSatisfiable, parse_range

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_PAGE_K = 100  # moments per page
MAX_NPROBE = 65536
MAX_WEIGHT = 1000.0
THUMB_CACHE = "public, max-age=86400"
PLACEHOLDER_CACHE = "public, max-age=300"
STATIC_CACHE = "no-cache"  # no build step, no hashed names: revalidate (ETag) every time
_THUMB_NAME = re.compile(r"^([0-9]{1,19})\.jpg$")
_MAX_SEGMENT_ID = (1 << 63) - 1
# Used when the page's placeholder.svg is missing (a broken install still answers an image).
_FALLBACK_PLACEHOLDER = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="160" height="90" viewBox="0 0 160 90">'
    b'<rect width="160" height="90" fill="#ddd"/></svg>'
)


# --- JSON shapes (also the OpenAPI schema) ---------------------------------------------------------


class ModalityOut(BaseModel):
    modality: str
    collection: str
    weight: float
    searched: bool
    hits: int
    note: str
    random_weights: bool


class ContributionOut(BaseModel):
    modality: str
    rank: int = Field(description="0-based rank of the moment's best segment in this modality's list")
    score: float


class MomentOut(BaseModel):
    rank: int = Field(description="1-based rank over all pages")
    video_key: str
    video_id: int
    segment_id: int = Field(description="the segment holding the moment's midpoint (its thumbnail)")
    start_s: float
    end_s: float
    duration_s: float
    score: float
    coarse_rank: int
    coarse_start_s: float
    coarse_end_s: float
    video_duration_s: float
    refined: bool
    snippet: str
    snippet_track: str
    modalities: list[ContributionOut]
    media_url: str
    thumbnail_url: str
    video_url: str


class SearchOut(BaseModel):
    query: str
    collection: str
    refined: bool
    degraded: bool
    degraded_reason: str
    random_weights: bool
    refine_note: str
    fusion: str
    segments_retrieved: int
    proposals: int
    timings_ms: dict[str, float]
    modalities: list[ModalityOut]
    offset: int
    k: int
    has_more: bool = Field(description="more moments follow: ask again with offset + k")
    moments: list[MomentOut]


class InfoOut(BaseModel):
    collection: str = Field(description="the collection a search without one uses")
    collections: list[str]
    modalities: list[str] = Field(description="what the default collection can search")
    auth: bool = Field(description="whether a token is required")
    videos: dict[str, int] = Field(description="videos per catalog status")
    segments: int


class VideoOut(BaseModel):
    key: str
    id: int
    duration_s: float
    metadata: dict[str, str]
    size_bytes: int
    content_type: str
    segments: int
    segment_length_s: float
    thumbnails: bool
    tracks: list[str]
    warnings: list[str]
    media_url: str


class ErrorDetail(BaseModel):
    status: int
    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorDetail


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut} for status in (400, 401, 404, 429, 500, 503, 504)
}


# --- the app -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    token: str
    presign_media: bool
    max_query_bytes: int
    max_body_bytes: int
    csp: str


def create_app(config: Config, client: SearchClient | None = None) -> FastAPI:
    """The gateway for ``config`` calling the search service through ``client`` (None: a
    :class:`SearchClient` to ``config.web.target`` or ``services.host:services.search_port``
    with ``config.security``, every call's deadline ``config.web.timeout_s``; the app owns it
    and ``app.state.close()`` closes it)."""
    owns_client = client is None
    if client is None:
        target = config.web.target or f"{config.services.host}:{config.services.search_port}"
        client = SearchClient(target, config.security, timeout_s=config.web.timeout_s)
    settings = _Settings(
        token=config.security.token,
        presign_media=config.web.presign_media,
        max_query_bytes=int(config.web.max_query_bytes),
        max_body_bytes=int(config.web.max_body_bytes),
        csp=content_security_policy(_origins(config.web.media_origins)),
    )
    app = FastAPI(
        title="SPR video moment search",
        summary="Find moments in videos by what they show, say and write.",
        version="1",
        redoc_url=None,  # ReDoc loads a script from a CDN the CSP does not allow
    )
    app.state.client = client
    app.state.settings = settings
    app.state.close = client.close if owns_client else (lambda: None)
    _add_error_handlers(app)
    _add_page_routes(app, settings)
    _add_api_routes(app, client, settings)
    _add_media_routes(app, client, settings)
    _add_health_routes(app, client)
    app.mount("/static", _CachedStaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    # Middleware, innermost first: the token check, CORS (outside it, so preflights and 401s get
    # their headers), the size caps, and the security headers on every answer.
    if settings.token:
        app.add_middleware(_TokenGate, token=settings.token)
    cors = _origins(config.web.cors_origins)
    if cors:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors,
            allow_methods=["GET", "HEAD", "POST"],
            allow_headers=["Authorization", "Content-Type", "Range"],
            expose_headers=["Content-Range", "Accept-Ranges", "Content-Length", "ETag"],
        )
    app.add_middleware(_SizeCaps, max_query_bytes=settings.max_query_bytes, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(_SecurityHeaders, csp=settings.csp)
    return app


def content_security_policy(media_origins: list[str]) -> str:
    """The page's policy: everything from this origin only, media and images also from
    ``media_origins`` (presigned object-store URLs), no inline code, no framing."""
    extra = "".join(f" {origin}" for origin in media_origins)
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; "
        f"img-src 'self' data:{extra}; media-src 'self'{extra}; connect-src 'self'; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    )


def _origins(value: str) -> list[str]:
    return [origin.strip() for origin in (value or "").split(",") if origin.strip()]


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, validation_message(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404 and message == "Not Found":
            message = f"nothing is served at {request.url.path}"
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(grpc.RpcError)
    async def rpc_error(request: Request, exc: grpc.RpcError) -> JSONResponse:
        return rpc_error_response(exc)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error answering %s %s", request.method, request.url.path)
        return error_response(500, "internal error in the web gateway (logged)")


# --- the page and the login form ------------------------------------------------------------------


def _add_page_routes(app: FastAPI, settings: _Settings) -> None:
    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return _static_file("index.html")

    @app.get("/login", include_in_schema=False)
    def login_form() -> Response:
        if not settings.token:
            return RedirectResponse("/", status_code=303)
        return _static_file("login.html")

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await _form(request)
        target = auth.local_path(form.get("next") or request.query_params.get("next"))
        if not settings.token:
            return RedirectResponse(target, status_code=303)
        if not auth.token_matches(form.get("token", ""), settings.token):
            return RedirectResponse(f"/login?error=1&next={quote(target, safe='')}", status_code=303)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            auth.COOKIE, auth.session_cookie(settings.token), max_age=auth.SESSION_S, path="/",
            httponly=True, samesite="strict", secure=request.url.scheme == "https",
        )
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        response = RedirectResponse("/login" if settings.token else "/", status_code=303)
        response.delete_cookie(auth.COOKIE, path="/", httponly=True, samesite="strict",
                               secure=request.url.scheme == "https")
        return response


async def _form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (size-capped by the middleware) as the
    first value of each field."""
    content_type = request.headers.get("content-type", "application/x-www-form-urlencoded")
    if not content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        raise StarletteHTTPException(400, "send the form as application/x-www-form-urlencoded")
    body = (await request.body()).decode("utf-8", "replace")
    fields = parse_qs(body, keep_blank_values=True, max_num_fields=16)
    return {name: values[0] for name, values in fields.items()}


def _static_file(name: str) -> Response:
    path = STATIC_DIR / name
    if not path.is_file():
        return error_response(404, f"the page's file {name} is not installed (services/web/static/)")
    return FileResponse(path, headers={"Cache-Control": STATIC_CACHE})


class _CachedStaticFiles(StaticFiles):
    """Static files with a Cache-Control header (revalidated: the names carry no hash)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code in (200, 304):
            response.headers["Cache-Control"] = STATIC_CACHE
        return response


# --- the JSON API ---------------------------------------------------------------------------------


def _add_api_routes(app: FastAPI, client: SearchClient, settings: _Settings) -> None:
    @app.get("/api/info", response_model=InfoOut, responses=_ERRORS, summary="What can be searched")
    def info() -> InfoOut:
        stats = client.collection_stats("")
        return InfoOut(
            collection=stats.default_collection,
            collections=sorted(c.name for c in stats.collections),
            modalities=list(stats.modalities),
            auth=bool(settings.token),
            videos=dict(stats.videos),
            segments=stats.segments,
        )

    @app.get("/api/search", response_model=SearchOut, responses=_ERRORS, summary="Search moments by text")
    def search(
        q: Annotated[str, Query(max_length=MAX_TEXT_CHARS, description="what to find (text)")],
        k: Annotated[int, Query(ge=1, le=MAX_PAGE_K, description="moments per page")] = 10,
        offset: Annotated[int, Query(ge=0, lt=MAX_TOP_K, description="moments to skip (paging)")] = 0,
        collection: Annotated[str, Query(max_length=256, description="empty: the default")] = "",
        video: Annotated[list[str], Query(description="only these video keys (repeatable)")] = [],  # noqa: B006
        meta: Annotated[list[str], Query(description="only videos with metadata key=value (repeatable)")] = [],  # noqa: B006
        refine: Annotated[bool | None, Query(description="refine the moments (default: the server's)")] = None,
        w_visual: Annotated[float | None, Query(ge=0, le=MAX_WEIGHT, description="0 = off")] = None,
        w_speech: Annotated[float | None, Query(ge=0, le=MAX_WEIGHT, description="0 = off")] = None,
        w_subtitles: Annotated[float | None, Query(ge=0, le=MAX_WEIGHT, description="0 = off")] = None,
        fusion: Annotated[Literal["rrf", "sum", ""], Query(description="rrf or sum; empty: the server's")] = "",
        segments_k: Annotated[int | None, Query(ge=1, le=MAX_SEGMENTS_K, description="segments to retrieve")] = None,
        nprobe: Annotated[int | None, Query(ge=1, le=MAX_NPROBE, description="IVF lists to probe")] = None,
    ) -> SearchOut | JSONResponse:
        refused = _check_search(q, k, offset, video)
        if refused is not None:
            return refused
        metadata, bad = _metadata_filter(meta)
        if bad is not None:
            return error_response(400, bad)
        weights = {name: w for name, w in (("visual", w_visual), ("speech", w_speech), ("subtitles", w_subtitles))
                   if w is not None}
        response = client.search(
            text=q, top_k=offset + k, segments_k=segments_k or 0, collection=collection, nprobe=nprobe or 0,
            video_keys=video, metadata=metadata, refine=refine, weights=weights, fusion=fusion,
        )
        return _search_out(q, response, offset, k)

    @app.get("/api/videos/{key:path}", response_model=VideoOut, responses=_ERRORS, summary="One video by key")
    def video(key: str) -> VideoOut:
        v = client.get_video(key)
        return VideoOut(
            key=v.key, id=v.id, duration_s=v.duration_s, metadata=dict(v.metadata), size_bytes=v.size_bytes,
            content_type=v.content_type, segments=v.segments, segment_length_s=v.segment_length_s,
            thumbnails=v.thumbnails, tracks=list(v.tracks), warnings=list(v.warnings), media_url=media_url(v.key),
        )


def _check_search(q: str, k: int, offset: int, videos: list[str]) -> JSONResponse | None:
    if not q.strip():
        return error_response(400, "q: give some text to search for")
    if offset + k > MAX_TOP_K:
        return error_response(400, f"offset + k must be at most {MAX_TOP_K}, got {offset + k}")
    for key in videos:
        if not key or len(key.encode("utf-8", "surrogatepass")) > MAX_VIDEO_KEY_LENGTH:
            return error_response(400, f"video: a video key is 1 to {MAX_VIDEO_KEY_LENGTH} bytes")
    return None


def _metadata_filter(pairs: list[str]) -> tuple[dict[str, str], str | None]:
    """``["course=maritime"]`` -> ``{"course": "maritime"}``, or the reason it is not one."""
    metadata: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            return {}, f"meta: expected key=value, got {pair!r}"
        metadata[name.strip()] = value
    return metadata, None


def _search_out(query: str, response: Any, offset: int, k: int) -> SearchOut:
    page = list(response.moments)[offset : offset + k]
    return SearchOut(
        query=query,
        collection=response.collection,
        refined=response.refined,
        degraded=response.degraded,
        degraded_reason=response.degraded_reason,
        random_weights=response.random_weights,
        refine_note=response.refine_note,
        fusion=response.fusion,
        segments_retrieved=response.segments_retrieved,
        proposals=response.proposals,
        timings_ms={name: _finite(ms) for name, ms in response.timings_ms.items()},
        modalities=[
            ModalityOut(modality=m.modality, collection=m.collection, weight=_finite(m.weight), searched=m.searched,
                        hits=m.hits, note=m.note, random_weights=m.random_weights)
            for m in response.modalities
        ],
        offset=offset,
        k=k,
        has_more=len(response.moments) >= offset + k,
        moments=[_moment_out(m, offset + i + 1, response.refined) for i, m in enumerate(page)],
    )


def _moment_out(m: Any, rank: int, refined: bool) -> MomentOut:
    return MomentOut(
        rank=rank, video_key=m.video_key, video_id=m.video_id, segment_id=m.segment_id,
        start_s=m.start_s, end_s=m.end_s, duration_s=max(0.0, m.end_s - m.start_s), score=_finite(m.score),
        coarse_rank=m.coarse_rank, coarse_start_s=m.coarse_start_s, coarse_end_s=m.coarse_end_s,
        video_duration_s=m.video_duration_s, refined=refined, snippet=m.snippet, snippet_track=m.snippet_track,
        modalities=[ContributionOut(modality=c.modality, rank=c.rank, score=_finite(c.score)) for c in m.modalities],
        media_url=media_url(m.video_key),
        thumbnail_url=f"/thumbs/{m.segment_id}.jpg",
        video_url=f"/api/videos/{quote(m.video_key, safe='')}",
    )


def media_url(key: str) -> str:
    """The gateway's URL of video ``key``'s media (the key quoted as one path segment)."""
    return f"/media/{quote(key, safe='')}"


def _finite(x: float) -> float:
    return float(x) if math.isfinite(x) else 0.0  # JSON has no NaN


# --- media and thumbnails ------------------------------------------------------------------------


def _add_media_routes(app: FastAPI, client: SearchClient, settings: _Settings) -> None:
    placeholder = STATIC_DIR / "placeholder.svg"

    @app.get(
        "/media/{key:path}", summary="A video's media (HTTP Range)",
        responses={200: {"content": {"video/*": {}}}, 206: {"description": "the range asked for"},
                   307: {"description": "to a presigned object-store URL"}, 416: {"model": ErrorOut}, **_ERRORS},
    )
    def media(key: str, request: Request) -> Response:
        try:
            return _media_response(client, settings, key, request)
        except grpc.RpcError as exc:
            return rpc_error_response(exc, media=True)

    app.head("/media/{key:path}", include_in_schema=False)(media)  # size and type without the bytes

    @app.get(
        "/thumbs/{name}", summary="A segment's thumbnail (/thumbs/<segment_id>.jpg)",
        responses={200: {"content": {"image/jpeg": {}}}, 304: {"description": "not modified"}, **_ERRORS},
    )
    def thumbnail(name: str, request: Request) -> Response:
        match = _THUMB_NAME.match(name)
        segment_id = int(match.group(1)) if match else 0
        if not 0 < segment_id <= _MAX_SEGMENT_ID:
            return error_response(404, f"no thumbnail is called {name!r}; thumbnails are /thumbs/<segment_id>.jpg")
        thumb = client.get_thumbnail(segment_id)
        if thumb.placeholder or not thumb.jpeg:
            body = placeholder.read_bytes() if placeholder.is_file() else _FALLBACK_PLACEHOLDER
            return Response(body, media_type="image/svg+xml", headers={"Cache-Control": PLACEHOLDER_CACHE})
        etag = f'"{hashlib.sha256(thumb.jpeg).hexdigest()[:32]}"'
        headers = {"Cache-Control": THUMB_CACHE, "ETag": etag}
        if _etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        return Response(thumb.jpeg, media_type="image/jpeg", headers=headers)


def _media_response(client: SearchClient, settings: _Settings, key: str, request: Request) -> Response:
    video = client.get_video(key, presign=settings.presign_media)
    if settings.presign_media and video.media_url:
        return RedirectResponse(video.media_url, status_code=307, headers={"Cache-Control": "no-store"})
    size = int(video.size_bytes)
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "private, max-age=0"}
    content_type = video.content_type or "application/octet-stream"
    try:
        wanted = parse_range(request.headers.get("range"), size)
    except RangeNotSatisfiable as exc:
        return error_response(416, str(exc), headers={**headers, "Content-Range": f"bytes */{size}"})
    start, length, status = (0, size, 200) if wanted is None else (wanted.start, wanted.length, 206)
    headers["Content-Length"] = str(length)
    if wanted is not None:
        headers["Content-Range"] = wanted.content_range
    if request.method == "HEAD" or length == 0:
        return Response(status_code=status, headers=headers, media_type=content_type)
    stream = MediaStream(client, key, start, length)
    stream.prime()  # refusals (a key gone since GetVideo, a range past a shrunk file) before headers
    return MediaResponse(stream, status_code=status, headers=headers, media_type=content_type)


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


# --- probes -------------------------------------------------------------------------------------

READY_TIMEOUT_S = 2.0  # deadline of /readyz's health check (under a probe's timeoutSeconds)


def _add_health_routes(app: FastAPI, client: SearchClient) -> None:
    """Probes, outside the token gate (which guards only the page, /api, /media and /thumbs).

    Liveness must not depend on the search service: a gateway whose backend is down is alive
    and would only be restarted in vain. Readiness does: a gateway that cannot reach the search
    service leaves the Service's endpoints until it can. The health check needs no token (the
    search service exempts it), so a wrong token still shows up as 401s, not as unreadiness."""

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> Response:
        return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> Response:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        service = search_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name
        try:
            answer = health_pb2_grpc.HealthStub(client.channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=min(READY_TIMEOUT_S, client.timeout_s)
            )
        except grpc.RpcError as exc:
            return error_response(503, f"the search service at {client.target} is not reachable: {exc.code().name}",
                                  headers={"Cache-Control": "no-store"})
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
        if answer.status != health_pb2.HealthCheckResponse.SERVING:
            return error_response(503, f"the search service at {client.target} is {status}",
                                  headers={"Cache-Control": "no-store"})
        return JSONResponse({"status": "ready", "search": status}, headers={"Cache-Control": "no-store"})


# --- middleware ----------------------------------------------------------------------------------


class _SecurityHeaders:
    """Adds the CSP and the other security headers to every response."""

    def __init__(self, app: ASGIApp, csp: str) -> None:
        self.app = app
        self.headers = [
            (b"content-security-policy", csp.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in self.headers if h[0] not in present)]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _SizeCaps:
    """Refuses query strings over ``max_query_bytes`` (414) and bodies over ``max_body_bytes``
    (413), counting a body's bytes as they arrive when no Content-Length says it up front."""

    def __init__(self, app: ASGIApp, max_query_bytes: int, max_body_bytes: int) -> None:
        self.app = app
        self.max_query_bytes = max_query_bytes
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if len(scope.get("query_string", b"")) > self.max_query_bytes:
            await _send_error(send, 414, f"the query string is over {self.max_query_bytes} bytes")
            return
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.max_body_bytes:
                await _send_error(send, 413, f"the request body is over {self.max_body_bytes} bytes")
                return
            if int(declared) == 0:
                await self.app(scope, receive, send)
                return
        elif b"transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body
            return
        body, more = await self._read_body(receive)
        if more:
            await _send_error(send, 413, f"the request body is over {self.max_body_bytes} bytes")
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read_body(self, receive: Receive) -> tuple[bytes, bool]:
        """The body, and whether it went past the cap (then the rest is not read)."""
        parts, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(parts), False
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_body_bytes:
                return b"", True
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts), False


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # then the client's disconnect, when it comes

    return replay


class _TokenGate:
    """With a token configured: the page, the API, media and thumbnails need the session cookie
    or ``Authorization: Bearer <token>``. The page redirects to the login form (303); the
    rest answers 401 JSON. Static assets, the login form and the OpenAPI schema stay open."""

    _PROTECTED = ("/api/", "/media/", "/thumbs/")

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._protected(scope["path"]) or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/":
            query = scope.get("query_string", b"").decode("latin-1")
            target = "/" + (f"?{query}" if query else "")
            await send({"type": "http.response.start", "status": 303,
                        "headers": [(b"location", f"/login?next={quote(target, safe='')}".encode()),
                                    (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await _send_error(send, 401, "a token is required: log in, or send Authorization: Bearer <token>",
                          [(b"www-authenticate", b'Bearer realm="spr"')])

    def _protected(self, path: str) -> bool:
        return path == "/" or path == "/api" or path.startswith(self._PROTECTED)

    def _allowed(self, scope: Scope) -> bool:
        headers = dict(scope.get("headers", []))
        given = auth.bearer_token(headers.get(b"authorization", b"").decode("latin-1"))
        if given is not None:
            return auth.token_matches(given, self.token)
        return auth.session_valid(_cookie(headers.get(b"cookie", b"").decode("latin-1"), auth.COOKIE), self.token)


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value.strip().strip('"')
    return None


async def _send_error(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(error_body(status, message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


from .server import WebServer, serve_web  # noqa: E402  (the entry point the CLI calls; it imports create_app)

__all__ = ["create_app", "content_security_policy", "media_url", "serve_web", "WebServer"]
