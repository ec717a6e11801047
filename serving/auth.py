"""API keys with scopes, checked by one ASGI middleware in front of every route (BentoML's own too).

A caller sends ``Authorization: Bearer KEY``. Each key carries scopes:

- ``decide``: ``POST /v1/decide``, ``/v1/decide/batch`` and ``GET /v1/due`` (follow-ups);
- ``feedback``: ``POST /v1/feedback``;
- ``events``: ``POST /v1/events`` and ``/v1/events/batch`` (other senders' message events);
- ``admin``: ``GET /metrics``, ``DELETE /v1/customers/{id}`` and any other route.

``/healthz``, ``/livez``, ``/readyz`` and the API documentation (``/``, ``/docs.json``,
``/schema.json``, static assets) stay open. A missing or unknown key gets 401 with
``WWW-Authenticate: Bearer``; a known key without the route's scope gets 403. Both answers have
the service's error shape ``{"error", "field", "detail"}``.

Keys come from a YAML or JSON file (``serving.auth.keys_file`` or ``NEXTBEST_API_KEYS_FILE``), a
mapping ``KEY: [scopes]`` (a key written as ``sha256:HEX`` is its hash, so the file need not hold
the key itself), and from ``NEXTBEST_API_KEYS`` (``"key1:decide,feedback;key2:admin"``). Only
SHA-256 hashes are kept in memory, and a presented key is compared with every known hash in
constant time (``hmac.compare_digest``). Without keys the service refuses to start unless
``serving.auth.required`` is false, and then logs a warning.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from pathlib import Path

import yaml

from nextbest.features.config import ConfigError

log = logging.getLogger(__name__)

SCOPES = ("decide", "feedback", "events", "admin")
MIN_KEY_LENGTH = 16
OPEN_PATHS = ("/healthz", "/livez", "/readyz", "/docs.json", "/schema.json", "/")
OPEN_PREFIXES = ("/static_content/", "/assets/")
ROUTE_SCOPES = {"/v1/decide": "decide", "/v1/decide/batch": "decide", "/v1/due": "decide", "/v1/render": "decide",
                "/v1/feedback": "feedback",
                "/v1/events": "events", "/v1/events/batch": "events"}


def required_scope(method: str, path: str) -> str | None:
    """The scope a request needs (None: open to everyone)."""
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return None
    return ROUTE_SCOPES.get(path, "admin")


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _scopes(value, where: str) -> frozenset:
    names = [s.strip() for s in value.split(",")] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(s, str) and s for s in names):
        raise ConfigError(f"{where}: expected a list of scopes ({', '.join(SCOPES)})")
    unknown = sorted(set(names) - set(SCOPES))
    if unknown:
        raise ConfigError(f"{where}: unknown scope(s) {unknown}; known: {', '.join(SCOPES)}")
    return frozenset(names)


class Keys:
    """Known keys as SHA-256 hashes, each with its scopes.

    Parameters
    ----------
    entries : dict
        Key (or ``sha256:HEX`` of a key) -> list of scopes, or a comma-separated string.
    where : str
        Where the keys came from, for error messages.
    """

    def __init__(self, entries: dict, where: str = "keys"):
        self._hashes: list[tuple[bytes, frozenset]] = []
        for key, scopes in entries.items():
            key = str(key)
            if key.startswith("sha256:"):
                try:
                    h = bytes.fromhex(key[7:])
                except ValueError:
                    h = b""
                if len(h) != 32:
                    raise ConfigError(f"{where}: {key[:15]}...: a sha256: entry needs 64 hex digits")
            elif len(key) < MIN_KEY_LENGTH:
                raise ConfigError(f"{where}: a key of {len(key)} characters is too short to be secret "
                                  f"(at least {MIN_KEY_LENGTH}; `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
            else:
                h = digest(key)
            self._hashes.append((h, _scopes(scopes, f"{where}: scopes of key {key[:4]}...")))

    def __len__(self) -> int:
        return len(self._hashes)

    def scopes(self, key: str | None) -> frozenset | None:
        """The scopes of ``key`` (None: unknown). Compares with every known hash, in constant time."""
        if not key:
            return None
        h, found = digest(key), None
        for known, scopes in self._hashes:
            if hmac.compare_digest(h, known):
                found = scopes
        return found

    @classmethod
    def from_text(cls, text: str, where: str = "NEXTBEST_API_KEYS") -> "Keys":
        """``"key1:decide,feedback;key2:admin"``."""
        entries = {}
        for part in (p.strip() for p in text.split(";")):
            if part:
                key, sep, scopes = part.rpartition(":")
                if not sep or not key:
                    raise ConfigError(f"{where}: expected KEY:SCOPE[,SCOPE...] entries separated by ';'")
                entries[key] = scopes
        return cls(entries, where)

    @classmethod
    def from_file(cls, path: str | Path) -> "Keys":
        """A YAML or JSON mapping ``KEY: [scopes]``."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: API keys file not found (serving.auth.keys_file / NEXTBEST_API_KEYS_FILE)")
        raw = (json.loads if path.suffix == ".json" else yaml.safe_load)(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping KEY: [scopes]")
        return cls(raw, str(path))

    @classmethod
    def load(cls, keys_file: str | None, env=None) -> "Keys":
        """The keys of ``keys_file`` and of ``NEXTBEST_API_KEYS``."""
        env = os.environ if env is None else env
        out = cls({})
        if keys_file:
            out._hashes += cls.from_file(keys_file)._hashes
        if env.get("NEXTBEST_API_KEYS"):
            out._hashes += cls.from_text(env["NEXTBEST_API_KEYS"])._hashes
        return out


def load_keys(settings, env=None) -> Keys | None:
    """The service's keys (None: authentication is off by config). Raises ``ConfigError`` when
    authentication is required and no key is configured."""
    if not settings.auth_required:
        return None
    keys = Keys.load(settings.keys_file, env)
    if not len(keys):
        raise ConfigError("serving.auth.required is true but no API key is configured: set NEXTBEST_API_KEYS "
                          "(\"KEY:decide,feedback;KEY2:admin\") or serving.auth.keys_file / NEXTBEST_API_KEYS_FILE "
                          "(or, on a closed network only, serving.auth.required: false)")
    return keys


def bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key of an ``Authorization: Bearer KEY`` header."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, key = value.decode("latin-1").strip().partition(" ")
            return key.strip() if scheme.lower() == "bearer" else None
    return None


async def answer(send, status: int, text: str, field: str, headers: list | None = None) -> None:
    """Send a JSON error in the service's shape."""
    body = json.dumps({"error": text, "field": field, "detail": text}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class Auth:
    """ASGI middleware: 401 or 403 unless the request's key has the route's scope."""

    def __init__(self, app, settings=None, env=None):
        from nextbest.serving.settings import ServeSettings

        self.app = app
        settings = settings or ServeSettings.from_env(env)
        self.keys = load_keys(settings, env)
        if self.keys is None:
            log.warning("authentication is OFF (serving.auth.required: false): anyone who reaches this port can "
                        "decide, post feedback, read metrics and erase customers")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.keys is None:
            return await self.app(scope, receive, send)
        need = required_scope(scope["method"], scope["path"])
        if need is None:
            return await self.app(scope, receive, send)
        scopes = self.keys.scopes(bearer(scope["headers"]))
        if scopes is None:
            return await answer(send, 401, "a valid API key is required: send 'Authorization: Bearer KEY'",
                                "Authorization", [(b"www-authenticate", b'Bearer realm="nextbest"')])
        if need not in scopes:
            return await answer(send, 403, f"this API key lacks the scope {need!r} this route needs",
                                "Authorization",
                                [(b"www-authenticate", f'Bearer error="insufficient_scope", scope="{need}"'.encode())])
        return await self.app(scope, receive, send)
