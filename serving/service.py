"""The BentoML service: thin routes over ``serving.engine.Engine``.

Routes: ``POST /v1/decide``, ``POST /v1/decide/batch``, ``POST /v1/feedback``, ``POST /v1/events`` and
``/v1/events/batch`` (other senders' message events, ``serving.events``), ``POST /v1/render`` (the
offer a message shows when it is opened, ``serving.render``); BentoML's own
``GET /healthz`` (alive), ``GET /readyz`` (the engine process answers a ping and the store is
reachable and matches the decision log: ``__is_ready__``), ``GET /metrics`` (Prometheus, the
metrics below plus BentoML's request metrics) and the OpenAPI schema at ``GET /docs.json``.
Bodies are the pydantic models of ``serving.schemas`` themselves (positional-only parameters).
Start it with ``nextbest serve DATA_DIR``. ``DELETE /v1/customers/{id}`` erases a customer
(``serving.privacy``; admin scope).

Every route but health, readiness and the documentation needs an API key with the route's scope
(``serving.auth``, one ASGI middleware in front of BentoML's routes too: 401 / 403); bodies are
read strictly before BentoML sees them (``serving.errors``: 413 over the size limit, 400 for
duplicate keys, NaN, a context over its limits).

Errors are JSON ``{"error": ..., "field": ...}``: 400 for a request the config rejects
(pydantic's own 400 names the field for shape errors), 404 for feedback on an unknown decision,
409 for a request id still being decided, 503 with Retry-After while the engine restarts or the
store is down or does not match the decision log, 507 when the decision log's disk is full.
"""

from __future__ import annotations

import json
import logging
import time

import bentoml
from prometheus_client import Counter, Gauge, Histogram
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from nextbest.serving.batcher import MicroBatcher
from nextbest.serving.engine import Conflict, InvalidInput, UnknownDecision
from nextbest.serving.engine_process import RETRY_AFTER_S, EngineProcess, EngineUnavailable, unavailable_status
from nextbest.serving.auth import Auth
from nextbest.serving.checks import check_feedback
from nextbest.serving.errors import ValidationErrorShape
from nextbest.serving.followups import MAX_DUE
from nextbest.serving.schemas import (BatchRequest, BatchResponse, DecideRequest, DecideResponse, EventBatch,
                                      EventBatchResponse, EventRequest, EventResponse, FeedbackRequest,
                                      FeedbackResponse, RenderRequest, RenderResponse)
from nextbest.serving.settings import ServeSettings

log = logging.getLogger(__name__)

# Prometheus metrics live at module level: BentoML aggregates them across worker processes.
DECISIONS = Counter("nextbest_decisions", "Decisions by action and channel", ["action", "channel", "policy_version"])
LATENCY = Histogram("nextbest_decide_seconds", "Time to answer, by endpoint", ["endpoint"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
FEEDBACK = Counter("nextbest_feedback", "Feedback events by event and whether they counted", ["event", "accepted"])
EVENTS = Counter("nextbest_events", "Other senders' events by event and whether they were new", ["event", "accepted"])
RENDERS = Counter("nextbest_renders", "Offers rendered at open time, by whether the offer changed", ["changed"])
POLICY = Gauge("nextbest_policy_version", "1 for the policy version a worker serves", ["version"],
               multiprocess_mode="livemax")


def _json(body, status: int = 200) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status_code=status, media_type="application/json")


def _error(exc: Exception) -> Response:
    if unavailable_status(exc):  # engine restarting, store down or not matching the log, log disk full
        return Response(json.dumps({"error": str(exc), "field": None, "detail": str(exc)}), unavailable_status(exc),
                        {"Retry-After": str(RETRY_AFTER_S)}, media_type="application/json")
    if isinstance(exc, InvalidInput):
        return _json({"error": exc.message, "field": exc.field, "detail": str(exc)}, 400)
    if isinstance(exc, UnknownDecision):
        return _json({"error": str(exc), "field": "decision_id", "detail": str(exc)}, 404)
    if isinstance(exc, Conflict):
        return _json({"error": str(exc), "field": "request_id", "detail": str(exc)}, 409)
    raise exc


def _count(decisions: list[dict]) -> None:
    for d in decisions:
        DECISIONS.labels(d["action"], d["channel"] or "none", d["policy_version"]).inc()


@bentoml.service(name="nextbest", workers=1, threads=4, traffic={"timeout": 120})
class DecisionService:
    """Per worker: the HTTP side here, the engine in a process of its own
    (``serving.engine_process``); the store and the decision log are shared by all."""

    def __init__(self):
        settings = ServeSettings.from_env()
        self.engine = EngineProcess(settings)
        _WORKER["engine"] = self.engine  # for the routes mounted beside BentoML's
        self.batcher = MicroBatcher(self.engine.decide_each, settings.micro_batch_ms, settings.micro_batch_max)
        self._version = None
        self._note_version(self.engine.version)
        self.settings = settings

    def _note_version(self, v: str) -> None:
        if v != self._version:
            if self._version is not None:
                POLICY.labels(self._version).set(0)
            POLICY.labels(v).set(1)
            self._version = v

    def __is_ready__(self) -> bool:  # the engine process answers, its store is reachable and matches the log
        return self.engine is not None and self.engine.ready()

    @bentoml.on_shutdown
    def _shutdown(self):
        self.batcher.close()
        self.engine.stop()

    @bentoml.api(route="/v1/decide")
    async def decide(self, request: DecideRequest, /) -> DecideResponse:
        """Whether to send, on which channel, when and with which offer, for one customer."""
        t = time.perf_counter()
        try:
            out = await self.batcher.submit(request)
        except Exception as exc:  # noqa: BLE001 - _error re-raises what it does not map
            return _error(exc)
        self._note_version(out["policy_version"])
        _count([out])
        LATENCY.labels("decide").observe(time.perf_counter() - t)
        return _json(out)

    @bentoml.api(route="/v1/decide/batch")
    def decide_batch(self, request: BatchRequest, /) -> BatchResponse:
        """Up to 10,000 decisions in one call, the same answers as one by one; all or nothing for bad input.

        Decided in chunks of ``serving.batch_chunk`` rows, one engine call each, so that single
        decisions queued meanwhile are answered between chunks instead of after the whole batch.
        The whole batch is checked first: a bad row refuses it before anything is decided. A store
        outage in the middle leaves the chunks before it decided and logged; with request ids, a
        retry answers those the same and decides the rest.
        """
        t = time.perf_counter()
        reqs, chunk = request.requests, self.settings.batch_chunk or len(request.requests)
        try:
            if len(reqs) > chunk:
                self.engine.check(reqs, prefix="requests")
            out = []
            for start in range(0, len(reqs), chunk):
                out += self.engine.decide(reqs[start:start + chunk], prefix="requests")
        except Exception as exc:  # noqa: BLE001 - _error re-raises what it does not map
            return _error(exc)
        self._note_version(out[-1]["policy_version"])
        _count(out)
        LATENCY.labels("decide_batch").observe(time.perf_counter() - t)
        return _json({"decisions": out})

    @bentoml.api(route="/v1/render")
    def render(self, request: RenderRequest, /) -> RenderResponse:
        """The best offer still valid now for a message being opened (``serving.render``)."""
        try:
            out = self.engine.render(request)
        except Exception as exc:  # noqa: BLE001 - _error re-raises what it does not map
            return _error(exc)
        RENDERS.labels(str(out["changed"]).lower()).inc()
        return _json(out)

    @bentoml.api(route="/v1/feedback")
    def feedback(self, request: FeedbackRequest, /) -> FeedbackResponse:
        """What happened to a decision's message; the same event twice counts once."""
        try:
            check_feedback(request, self.settings.max_order_value, self.settings.max_clock_skew_days)
            out = self.engine.feedback(request)
        except Exception as exc:  # noqa: BLE001 - _error re-raises what it does not map
            return _error(exc)
        FEEDBACK.labels(out["event"], str(out["accepted"]).lower()).inc()
        return _json(out)


    @bentoml.api(route="/v1/events")
    def event(self, request: EventRequest, /) -> EventResponse:
        """A message event from another sender (sent, opened, unsubscribed...): caps, consent and
        unanswered counts follow it at once; the same event id counts once."""
        try:
            out = self.engine.events([request])[0]
        except Exception as exc:  # noqa: BLE001 - _error re-raises what it does not map
            return _error(exc)
        EVENTS.labels(request.event, str(out["accepted"]).lower()).inc()
        return _json(out)

    @bentoml.api(route="/v1/events/batch")
    def event_batch(self, request: EventBatch, /) -> EventBatchResponse:
        """Up to 10,000 events in one call; all or nothing (an invalid event names its position)."""
        try:
            out = self.engine.events(request.events, prefix="events")
        except Exception as exc:  # noqa: BLE001 - _error re-raises what it does not map
            return _error(exc)
        for e, o in zip(request.events, out):
            EVENTS.labels(e.event, str(o["accepted"]).lower()).inc()
        return _json({"events": out})


_WORKER: dict = {}  # this worker's engine, for the Starlette routes below


def _bad(field: str, text: str) -> Response:
    return _json({"error": text, "field": field, "detail": text}, 400)


async def _due(request: Request) -> Response:
    """``GET /v1/due?until=T[&limit=N]``: the follow-ups due by ``T`` whose message is still unopened,
    each with its new decision (``serving.followups``); at least once, the same decision each time."""
    import anyio
    from datetime import datetime, timezone

    engine = _WORKER.get("engine")
    if engine is None:
        return _error(EngineUnavailable("the decision engine is starting; retry shortly"))
    unknown = sorted(set(request.query_params) - {"until", "limit"})
    if unknown:
        return _bad(unknown[0], f"unknown query parameter {unknown[0]!r}; known: until, limit")
    raw = request.query_params.get("until")
    try:
        until = datetime.fromisoformat(raw) if raw else None
    except ValueError:
        until = None
    if until is None:
        return _bad("until", "until: an ISO 8601 time (naive = UTC) is required, e.g. 2026-12-01T12:00:00Z")
    until = until.replace(tzinfo=timezone.utc) if until.tzinfo is None else until.astimezone(timezone.utc)
    try:
        limit = int(request.query_params.get("limit", "1000"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_DUE:
        return _bad("limit", f"limit: an integer from 1 to {MAX_DUE}")
    try:
        out = await anyio.to_thread.run_sync(engine.due, until, limit)
    except Exception as exc:  # noqa: BLE001 - _error re-raises what it does not map
        return _error(exc)
    _count([d["decision"] for d in out["due"]])
    return _json(out)


async def _erase(request: Request) -> Response:
    """``DELETE /v1/customers/{customer_id}``: erase one customer, answer the receipt."""
    import anyio

    from nextbest.serving.privacy import erase
    from nextbest.serving.store import open_store

    cid = request.path_params["customer_id"]
    if not cid.strip() or len(cid) > 200:
        return _json({"error": "not a customer id", "field": "customer_id", "detail": "not a customer id"}, 400)
    settings = ServeSettings.from_env()

    def run():
        store = open_store(settings.store_url)
        try:
            return erase([cid], store, settings.log_dir)[0]
        finally:
            store.close()

    return _json(await anyio.to_thread.run_sync(run))


DecisionService.add_asgi_middleware(Auth)  # first: the outermost, before any body is read
DecisionService.add_asgi_middleware(ValidationErrorShape)
DecisionService.mount_asgi_app(Starlette(routes=[Route("/{customer_id:path}", _erase, methods=["DELETE"])]),
                               path="/v1/customers")
DecisionService.mount_asgi_app(Starlette(routes=[Route("/", _due, methods=["GET"])]), path="/v1/due")
