"""One error shape for every 4xx: ``{"error": what is wrong, "field": where, "detail": the same in words}``.

Our own errors are built in ``serving.service``. Request-shape errors are found by BentoML's
pydantic validation before our code runs; their body carries pydantic's list of errors, which
does not match the error schema BentoML itself publishes in the OpenAPI document (``detail``: a
string). This ASGI middleware rewrites those bodies into the shape above, so clients get one
format and the published schema is true. It also answers 415 to a POST that is not JSON
(BentoML would fail with a 500 trying to read a form as the model).
"""

from __future__ import annotations

import json


def describe(errors: list[dict]) -> tuple[str, str]:
    """(field, message) of pydantic's error list: the first error's location, every message."""
    def where(e):
        return ".".join(str(p) for p in e.get("loc", ())) or "body"

    return where(errors[0]) if errors else "body", "; ".join(f"{where(e)}: {e.get('msg', '')}" for e in errors)


class ValidationErrorShape:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["method"] == "POST" and scope["path"].startswith("/v1/"):
            kind = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip().lower()
            if kind not in (b"application/json", b""):
                text = f"send JSON (Content-Type: application/json), not {kind.decode(errors='replace')}"
                body = json.dumps({"error": text, "field": "Content-Type", "detail": text}).encode()
                await send({"type": "http.response.start", "status": 415,
                            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                return await send({"type": "http.response.body", "body": body})
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
            headers = [(k, v) for k, v in held["start"]["headers"] if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**held["start"], "headers": headers})
            await send({"type": "http.response.body", "body": body})

        return await self.app(scope, receive, wrapped)
