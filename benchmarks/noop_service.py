"""The baseline of benchmarks/serving.py: the same BentoML server settings and the same request
model as ``serving.service``, but the endpoint decides nothing (a fixed answer)."""

from __future__ import annotations

import bentoml

from nextbest.serving.errors import ValidationErrorShape
from nextbest.serving.schemas import DecideRequest, DecideResponse
from nextbest.serving.service import _json

ANSWER = {"decision_id": "noop", "request_id": None, "customer_id": "", "action": "suppress", "channel": None,
          "channels": [], "send_at": None, "local_hour": None, "offer": None, "propensity": 1.0, "expected_value": 0.0,
          "explored": False, "control": False, "known_customer": True, "scores": [], "reasons": [],
          "policy_version": "noop"}


@bentoml.service(name="nextbest", workers=1, threads=4, traffic={"timeout": 120})
class NoopService:
    @bentoml.api(route="/v1/decide")
    async def decide(self, request: DecideRequest, /) -> DecideResponse:
        return _json({**ANSWER, "customer_id": request.customer_id})


NoopService.add_asgi_middleware(ValidationErrorShape)
