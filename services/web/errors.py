"""Errors as the gateway answers them: ``{"error": {"status", "code", "message"}}``.

A gRPC status from the search service becomes the HTTP status of :data:`GRPC_TO_HTTP`, with the
service's message (never a traceback); FastAPI's validation errors become 400 with one readable
line per bad parameter.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)

GRPC_TO_HTTP: Mapping[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,  # 416 where a media range was asked for
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNAVAILABLE: 503,
}
# The code names an HTTP status stands for, where the status did not come from gRPC.
HTTP_CODES: Mapping[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    414: "URI_TOO_LONG",
    416: "OUT_OF_RANGE",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    """The JSON body of an error answer."""
    return {"error": {"status": int(status), "code": code or HTTP_CODES.get(int(status), "UNKNOWN"), "message": message}}


def error_response(
    status: int, message: str, code: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status, message, code), status_code=status, headers=dict(headers or {}))


def http_status_of(code: grpc.StatusCode | None, media: bool = False) -> int:
    """The HTTP status for gRPC ``code`` (``media``: OUT_OF_RANGE is 416, a range past the end)."""
    if media and code == grpc.StatusCode.OUT_OF_RANGE:
        return 416
    return GRPC_TO_HTTP.get(code, 500) if code is not None else 500


def rpc_error_response(exc: grpc.RpcError, media: bool = False) -> JSONResponse:
    """The answer for a failed call to the search service: its status code and message."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else ""
    status = http_status_of(code, media)
    if code == grpc.StatusCode.UNAVAILABLE:
        message = f"the search service is unavailable: {details or 'no answer'}"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        message = f"the search service did not answer in time: {details or 'deadline exceeded'}"
    else:
        message = details or (code.name.lower().replace("_", " ") if code is not None else "search service error")
    if status >= 500:
        log.warning("search service call failed: %s %s", code, details)
    return error_response(status, message, code.name if code is not None else "UNKNOWN")


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """One line per FastAPI validation error: ``q: String should have at least 1 character``."""
    lines = []
    for error in errors:
        where = [str(part) for part in error.get("loc", ()) if part not in ("query", "path", "body", "header")]
        lines.append(f"{'.'.join(where) or 'request'}: {error.get('msg', 'invalid')}")
    return "; ".join(lines) or "invalid request"
