"""The console's session cookie and CSRF tokens.

The cookie ``vp_session`` holds the API session secret that ``POST /api/v1/login`` returned (``vps_...``),
HttpOnly (no script can read it), SameSite=Strict (no other site's page sends it), Secure over HTTPS, path
``/ui``. A logout revokes the session in etcd, so a copied cookie dies with it on every replica.

CSRF: every form that writes carries ``csrf`` = HMAC-SHA256(session secret, "virtplane-console-csrf"),
checked in constant time. A page of another site can neither read the cookie nor compute the token;
nothing is kept per session, so any replica checks it.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request
from starlette.responses import Response

COOKIE = "vp_session"
_CSRF_CONTEXT = b"virtplane-console-csrf"


def session_secret(request: Request) -> str | None:
    value = request.cookies.get(COOKIE)
    return value if value else None


def csrf_token(secret: str) -> str:
    return hmac.new(secret.encode(), _CSRF_CONTEXT, hashlib.sha256).hexdigest()


def csrf_ok(secret: str | None, token: object) -> bool:
    if not secret or not isinstance(token, str) or not token:
        return False
    return hmac.compare_digest(csrf_token(secret).encode(), token.encode())


def set_session_cookie(response: Response, request: Request, secret: str, max_age: int) -> None:
    response.set_cookie(COOKIE, secret, max_age=max_age, path="/ui", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
