"""Who may call what on a replica: the bearer token, the caller's origin and the body's content type.

Every request passes :meth:`Guard.check` before its route runs (:class:`GuardMiddleware`, an ASGI
middleware), which answers at once where the route must not run:

- ``POST /reload`` (it changes what is served) needs ``Authorization: Bearer <token>``: 401 without one,
  403 for another token. A private application (``ServeConfig.private``) asks it for ``/generate``,
  ``/walk`` and ``/model`` too; the page itself (``GET /``, a static document with no model data) asks the user for it.
- A request whose ``Origin`` is not the endpoint's own (its ``Host``) nor an allowed origin
  (``--allow-origin``) is refused with 403, a preflight (``OPTIONS``) of such an origin too; an allowed
  origin gets the CORS headers it needs to read the answer.
- A ``POST`` that carries a body carries ``application/json`` (415 otherwise): no HTML form or no-cors
  fetch of another site gets a route to run.

The replica keeps only the token's sha256 (``token_file``'s content is hashed when it starts) and
compares digests with ``hmac.compare_digest``. No Ray, Serve or FastAPI here.
"""
from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, field
from typing import Mapping

from deploy.serve_config import ServeConfig, normalise_origin, read_token, token_digest

TOKEN_ROUTES = ("/reload",)  # what changes what is served
PRIVATE_ROUTES = ("/generate", "/walk", "/model")  # what is served, for a private application
EXPOSED = "X-Ganray-Model, X-Ganray-Version, X-Ganray-Batch, X-Ganray-Frames, X-Ganray-Walk-Space, Retry-After"


@dataclass(frozen=True)
class Answer:
    """What the replica answers instead of the route: a refusal (``{"error": reason}``), or a preflight's 204."""

    status: int
    reason: str = ""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Guard:
    token_sha256: str
    private: bool = False
    allow_origins: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: ServeConfig) -> "Guard":
        """The config's guard; a token_file is read now (ArgsError naming the file when it cannot be)."""
        digest = config.token_sha256 or token_digest(read_token(config.token_file))
        return cls(digest, config.private, config.allow_origins)

    def authorized(self, headers: Mapping[str, str]) -> bool:
        """Whether headers carry this application's bearer token."""
        scheme, _, token = headers.get("authorization", "").strip().partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token_digest(token.strip()), self.token_sha256)

    def check(self, method: str, route: str, headers: Mapping[str, str]) -> Answer | None:
        """None when the route may run; else the answer to give (headers: lower-case names)."""
        origin = headers.get("origin")
        if origin is not None and not self._same_origin(origin, headers) and normalise_origin(origin) \
                not in self.allow_origins:
            return Answer(403, f"cross-origin request from {origin[:100]!r} refused: this endpoint answers its own "
                               "origin and those its server allows (ganray serve --allow-origin)")
        if method == "OPTIONS" and origin is not None:
            return Answer(204, headers={**self.cors_headers(headers), "Access-Control-Max-Age": "600",
                                        "Access-Control-Allow-Methods": "GET, POST",
                                        "Access-Control-Allow-Headers": "Authorization, Content-Type"})
        if route in TOKEN_ROUTES or (self.private and route in PRIVATE_ROUTES):
            refused = self._token(route, headers)
            if refused is not None:
                return refused
        if method == "POST" and not _json_or_empty(headers):
            return Answer(415, f"POST bodies must be application/json (send Content-Type: application/json), got "
                               f"{headers.get('content-type', 'no Content-Type')[:80]!r}")
        return None

    def cors_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """The CORS headers of an answer to an allowed origin ({} for the endpoint's own, or none)."""
        origin = normalise_origin(headers.get("origin"))
        if origin is None or origin not in self.allow_origins:
            return {}
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin", "Access-Control-Expose-Headers": EXPOSED}

    def _token(self, route: str, headers: Mapping[str, str]) -> Answer | None:
        if not headers.get("authorization", "").strip().lower().startswith("bearer "):
            return Answer(401, f"{route} needs this endpoint's token: send Authorization: Bearer <token> (ganray "
                               "serve printed where the token file is)", {"WWW-Authenticate": 'Bearer realm="ganray"'})
        if not self.authorized(headers):
            return Answer(403, f"{route}: the bearer token is not this endpoint's")
        return None

    @staticmethod
    def _same_origin(origin: str, headers: Mapping[str, str]) -> bool:
        own = normalise_origin(origin)
        host = headers.get("host", "").lower()
        if own is None or not host:
            return False
        netloc = own.split("://", 1)[1]
        default = ":443" if own.startswith("https:") else ":80"
        return netloc == host.removesuffix(default)


def _json_or_empty(headers: Mapping[str, str]) -> bool:
    content_type = headers.get("content-type")
    if content_type is None:
        return headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


class GuardMiddleware:
    """The ASGI middleware that puts :meth:`Guard.check` in front of every route, and the CORS headers of an
    allowed origin on every answer. The guard is the app's ``state.guard`` (the replica sets it when it starts;
    until then every request is a 503)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        guard = getattr(scope["app"].state, "guard", None) if "app" in scope else None
        if guard is None:
            return await _send(send, Answer(503, "the replica is starting"))
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in reversed(scope["headers"])}
        root, path = scope.get("root_path", ""), scope["path"]
        route = path[len(root):] if root and path.startswith(root) else path
        answer = guard.check(scope["method"], route or "/", headers)
        if answer is not None:
            return await _send(send, Answer(answer.status, answer.reason, {**guard.cors_headers(headers),
                                                                           **answer.headers}))
        extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in guard.cors_headers(headers).items()]

        async def send_with_cors(message):
            if extra and message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        await self.app(scope, receive, send_with_cors)


async def _send(send, answer: Answer) -> None:
    body = b"" if answer.status == 204 else json.dumps({"error": answer.reason}).encode()
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers.items()]
    if body:
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
