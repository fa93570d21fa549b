"""Who may use the form: a bearer token (API clients) or a login cookie derived from it (browsers), and a
CSRF token bound to that cookie on every form post. Comparisons are constant-time."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fastapi import Request

COOKIE = "kiln_session"


def _sign(token: str, value: str) -> str:
    return hmac.new(token.encode(), value.encode(), hashlib.sha256).hexdigest()


def new_session(token: str) -> str:
    sid = secrets.token_urlsafe(24)
    return f"{sid}.{_sign(token, 'session:' + sid)}"


def session_id(request: Request, token: str) -> str | None:
    """The session id of a valid login cookie, else None."""
    raw = request.cookies.get(COOKIE, "")
    sid, _, sig = raw.partition(".")
    if sid and sig and hmac.compare_digest(sig, _sign(token, "session:" + sid)):
        return sid
    return None


def bearer_ok(request: Request, token: str) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and bool(value) and hmac.compare_digest(value.strip(), token)


def csrf_token(token: str, sid: str) -> str:
    return _sign(token, "csrf:" + sid)


def csrf_ok(token: str, sid: str | None, given: str | None) -> bool:
    return bool(sid and given) and hmac.compare_digest(given, csrf_token(token, sid))
