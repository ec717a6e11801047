"""One error shape for every 4xx: ``{"error": what is wrong, "field": where, "detail": the same in words}``,
and one strict reading of request bodies before BentoML sees them.

Our own errors are built in ``serving.service``. Request-shape errors are found by BentoML's
pydantic validation before our code runs; their body carries pydantic's list of errors, which
does not match the error schema BentoML itself publishes in the OpenAPI document (``detail``: a
string). The ASGI middleware :class:`ValidationErrorShape` rewrites those bodies into the shape
above, so clients get one format and the published schema is true. Before that, for every
``POST`` to a JSON route (:data:`JSON_ROUTES`) it

- answers 415 to a body that is not JSON (BentoML would fail with a 500 reading a form as the model);
- answers 413 to a body over ``serving.max_body_bytes``;
- parses the body strictly (:func:`strict_loads`): duplicate keys, ``NaN``/``Infinity``, numbers
  beyond a double and text that is not valid Unicode are refused with 400;
- refuses a ``context`` with more than ``serving.max_context_keys`` keys or more than
  ``serving.max_context_bytes`` bytes (400, field ``context`` or ``requests[i].context``).

It also publishes the config in the OpenAPI document: ``GET /docs.json`` is passed through
``serving.schemas.publish`` (channels and offers as enums, the bounds the config sets), and
serves nextbest's own documentation page at ``GET /`` (``serving.docs_page``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re

from nextbest.serving.auth import answer
from nextbest.serving.docs_page import PATHS as DOCS_PAGE, serve_index

log = logging.getLogger(__name__)

_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
JSON_ROUTES = ("/v1/decide", "/v1/decide/batch", "/v1/feedback", "/v1/events", "/v1/events/batch", "/v1/render")
MOUNTED_EXACT = ("/v1/due",)  # routes served by an app mounted at that path (serving.service)


class BodyError(ValueError):
    """A body the service refuses before validation; ``field`` names where."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


def describe(errors: list[dict]) -> tuple[str, str]:
    """(field, message) of pydantic's error list: the first error's location, every message."""
    def where(e):
        return ".".join(str(p) for p in e.get("loc", ())) or "body"

    return where(errors[0]) if errors else "body", "; ".join(f"{where(e)}: {e.get('msg', '')}" for e in errors)


def strict_loads(body: bytes):
    """JSON as the contract reads it: no duplicate keys, no NaN or Infinity, no number beyond a
    double, no lone surrogates. Raises :class:`BodyError` naming the field where it can."""
    overflow = []

    def pairs(items):
        out = {}
        for k, v in items:
            if k in out:
                raise BodyError(k, f"duplicate key {k!r} in the JSON body")
            out[k] = v
        return out

    def constant(name):
        raise BodyError("body", f"{name} is not a number JSON allows")

    def number(text):
        v = float(text)
        if not math.isfinite(v):
            overflow.append(text)
        return v

    def integer(text):
        v = int(text)
        if len(text) > 300:
            overflow.append(text)
        return v

    try:
        data = json.loads(body, object_pairs_hook=pairs, parse_constant=constant, parse_float=number,
                          parse_int=integer)
    except BodyError:
        raise
    except (ValueError, RecursionError) as exc:
        raise BodyError("body", f"not valid JSON: {exc}") from None
    if overflow:
        raise BodyError(_find(data, overflow[0]) or "body", f"number {overflow[0][:40]} is out of range")
    if _SURROGATE.search(body):
        try:
            json.dumps(data, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise BodyError("body", "text with a lone UTF-16 surrogate is not valid Unicode") from None
    return data


def _find(node, text: str, at: str = "") -> str | None:
    """Where in ``node`` the number written ``text`` sits (``requests[2].value``)."""
    if isinstance(node, dict):
        for k, v in node.items():
            found = _find(v, text, f"{at}.{k}" if at else str(k))
            if found:
                return found
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found = _find(v, text, f"{at}[{i}]")
            if found:
                return found
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        if (isinstance(node, float) and not math.isfinite(node)) or (isinstance(node, int) and abs(node) > 1e300):
            return at or "body"
    return None


def check_context(path: str, data, max_keys: int, max_bytes: int) -> None:
    """Refuse a decide or render request's ``context`` beyond the configured limits (:class:`BodyError`)."""
    if not isinstance(data, dict):
        return
    if path in ("/v1/decide", "/v1/render"):
        items = [("", data)]
    elif path == "/v1/decide/batch" and isinstance(data.get("requests"), list):
        items = [(f"requests[{i}].", r) for i, r in enumerate(data["requests"])]
    else:
        return
    for at, r in items:
        ctx = r.get("context") if isinstance(r, dict) else None
        if not isinstance(ctx, dict):
            continue
        if len(ctx) > max_keys:
            raise BodyError(f"{at}context", f"{len(ctx)} keys; at most {max_keys} (serving.max_context_keys)")
        size = len(json.dumps(ctx, separators=(",", ":"), ensure_ascii=False).encode())
        if size > max_bytes:
            raise BodyError(f"{at}context", f"{size} bytes as JSON; at most {max_bytes} (serving.max_context_bytes)")


async def _read(receive, limit: int) -> bytes | None:
    """The whole request body, or None once it is over ``limit`` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


class ValidationErrorShape:
    """ASGI middleware: strict bodies in, one error shape out, the config in the OpenAPI document."""

    def __init__(self, app, settings=None, config=None):
        from nextbest.features.config import load_config
        from nextbest.serving.settings import ServeSettings

        self.app = app
        self.settings = settings or ServeSettings.from_env()
        self.config = config or load_config(os.environ.get("NEXTBEST_CONFIG") or None)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["method"] == "GET" and scope["path"] == "/docs.json":
            return await self.app(scope, receive, self._publishing(send))
        if scope["method"] == "GET" and scope["path"] in DOCS_PAGE:
            return await serve_index(send)
        if scope["path"] in MOUNTED_EXACT:  # a mounted app's own root, without Starlette's redirect to ".../"
            scope = {**scope, "path": scope["path"] + "/", "raw_path": scope["path"].encode() + b"/"}
        if scope["method"] == "POST" and scope["path"] in JSON_ROUTES:
            headers = dict(scope["headers"])
            kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if kind not in (b"application/json", b""):
                return await answer(send, 415, f"send JSON (Content-Type: application/json), not "
                                               f"{kind.decode(errors='replace')}", "Content-Type")
            s = self.settings
            too_big = (f"the body is over {s.max_body_bytes} bytes (serving.max_body_bytes); "
                       "split a batch into smaller ones")
            try:
                declared = int(headers.get(b"content-length", b"0"))
            except ValueError:
                declared = 0
            body = None if declared > s.max_body_bytes else await _read(receive, s.max_body_bytes)
            if body is None:
                return await answer(send, 413, too_big, "body")
            try:
                check_context(scope["path"], strict_loads(body), s.max_context_keys, s.max_context_bytes)
            except BodyError as exc:
                return await answer(send, 400, exc.message, exc.field)
            receive = _replay(body, receive)
        return await self.app(scope, receive, self._shaping(send))

    def _shaping(self, send):
        held = {}

        async def wrapped(message):
            if message["type"] == "http.response.start" and message["status"] == 400:
                held["start"], held["body"] = message, b""
                return
            if "start" not in held:
                return await send(message)
            held["body"] += message.get("body", b"")
            if message.get("more_body"):
                return
            body = held["body"]
            try:
                raw = json.loads(body)
                if isinstance(raw, dict) and isinstance(raw.get("detail"), list):
                    field, text = describe(raw["detail"])
                    body = json.dumps({"error": text, "field": field, "detail": text}).encode()
            except ValueError:
                pass
            await _resend(send, held["start"], body)

        return wrapped

    def _publishing(self, send):
        from nextbest.serving.schemas import publish

        held = {}

        async def wrapped(message):
            if message["type"] == "http.response.start":
                held["start"], held["body"] = message, b""
                return
            held["body"] += message.get("body", b"")
            if message.get("more_body"):
                return
            body = held["body"]
            if held["start"]["status"] == 200:
                try:
                    body = json.dumps(publish(json.loads(body), self.config, self.settings)).encode()
                except Exception:  # noqa: BLE001 - BentoML's own document rather than no answer at all
                    log.exception("could not publish the config in the OpenAPI document; serving BentoML's")
            await _resend(send, held["start"], body)

        return wrapped


async def _resend(send, start: dict, body: bytes) -> None:
    headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({**start, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, original):
    """A ``receive`` that hands the app the body already read, then the connection's own messages."""
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await original()

    return receive
