"""The gateway's token check: a bearer header for API clients, a session cookie for people.

With ``security.token`` set, a request passes with ``Authorization: Bearer <token>`` (the scheme
in any case) or the cookie :data:`COOKIE` that ``POST /login`` sets. The cookie never holds the
token: it is ``v1.<expiry>.<HMAC-SHA256(token, "v1.<expiry>")>``, so it proves the token was
typed without revealing it, and stops working when the token changes or the expiry passes.
Every comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlsplit

COOKIE = "spr_session"
SESSION_S = 7 * 24 * 3600
_VERSION = "v1"


def bearer_token(authorization: str | None) -> str | None:
    """The credentials of an ``Authorization: Bearer ...`` header (scheme case-insensitive), else None."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def token_matches(given: str | None, token: str) -> bool:
    """Whether ``given`` is the configured ``token`` (constant-time)."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token.encode("utf-8", "surrogatepass"))


def session_cookie(token: str, now: float | None = None, lifetime_s: int = SESSION_S) -> str:
    """A fresh session cookie value for ``token``, valid ``lifetime_s`` seconds."""
    expiry = int((time.time() if now is None else now) + lifetime_s)
    return f"{_VERSION}.{expiry}.{_signature(token, expiry)}"


def session_valid(value: str | None, token: str, now: float | None = None) -> bool:
    """Whether cookie ``value`` was made by :func:`session_cookie` for ``token`` and has not expired."""
    if not value:
        return False
    parts = value.split(".")
    if len(parts) != 3 or parts[0] != _VERSION or not parts[1].isdigit() or len(parts[1]) > 12:
        return False
    expiry = int(parts[1])
    signature_ok = hmac.compare_digest(parts[2].encode("ascii", "replace"), _signature(token, expiry).encode("ascii"))
    return signature_ok and expiry > (time.time() if now is None else now)


def local_path(target: str | None, default: str = "/") -> str:
    """``target`` when it is a path on this site (``/...``, no scheme, no host, no ``//``),
    else ``default``: the login form redirects only there (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in target):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return default
    return target


def _signature(token: str, expiry: int) -> str:
    message = f"{_VERSION}.{expiry}".encode()
    return hmac.new(token.encode("utf-8", "surrogatepass"), message, hashlib.sha256).hexdigest()
