"""The API's request and response models: the one definition of the decision contract's wire format.

BentoML generates the OpenAPI schema from these. Shape checks (types, ranges, unknown fields,
batch size) happen here and give a 4xx naming the field; checks that need the business config
(unknown channel or offer, time zone names) happen in ``serving.engine`` before anything is
written.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nextbest.decision.online import FEEDBACK_EVENTS
from nextbest.features.localtime import WEEK_HOURS

MAX_BATCH = 10_000
MAX_ORDER_VALUE = 1e7  # one order; anything larger is a unit mistake and would swamp the learner
MAX_HORIZON_HOURS = float(WEEK_HOURS)  # a week: decisions further out would be planned on stale state
MIN_HORIZON_HOURS = 1 / 60  # a minute. (``ge``, not ``gt=0``: BentoML publishes OpenAPI 3.0, where a
                            # numeric exclusiveMinimum is invalid and schema checkers reject it)
FeedbackEvent = Literal[FEEDBACK_EVENTS]


NULLABLE = {"nullable": True}  # BentoML's OpenAPI 3.0 document drops the null of ``X | None`` otherwise


def iso_text(value):
    """Times come as ISO 8601 text: a bare number is rejected, not read as seconds since 1970."""
    if value is not None and not isinstance(value, (str, datetime)):
        raise ValueError("must be an ISO 8601 date-time string, e.g. 2026-11-23T09:30:00Z")
    return value


def as_utc(value: datetime | None) -> datetime | None:
    """Naive times are read as UTC; aware ones converted to UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Profile(Strict):
    """What the caller knows of a customer nextbest has never seen (used only for unknown customers)."""

    timezone: str | None = Field(None, description="IANA time zone, e.g. Europe/Berlin (default: the config's)",
                                 json_schema_extra=NULLABLE)
    consent: dict[str, bool] = Field(default_factory=dict, description="consent per channel; missing means no")


class DecideRequest(Strict):
    customer_id: str = Field(..., min_length=1, max_length=200)
    now: datetime | None = Field(None, description="decision time (ISO 8601; naive = UTC; default: the server's clock)",
                                 json_schema_extra=NULLABLE)
    context: dict[str, Any] = Field(default_factory=dict, description="real-time features, e.g. {'trigger': 'cart_abandoned'}")
    channels: list[str] | None = Field(None, min_length=1, json_schema_extra=NULLABLE,
                                      description="candidate channels (default: every configured channel)")
    offers: list[str] | None = Field(None, min_length=1, json_schema_extra=NULLABLE,
                                     description="candidate offers (default: every configured offer)")
    horizon_hours: float | None = Field(None, ge=MIN_HORIZON_HOURS, le=MAX_HORIZON_HOURS, json_schema_extra=NULLABLE,
                                        description="the send must fall within this window (default: the config's "
                                                    "decision.horizon_hours)")
    type: Literal["marketing", "transactional"] = "marketing"
    request_id: str | None = Field(None, min_length=1, max_length=200, json_schema_extra=NULLABLE,
                                   description="idempotency key: the same id gets the same decision, recorded once")
    profile: Profile | None = Field(None, json_schema_extra=NULLABLE)

    _text = field_validator("now", mode="before")(lambda cls, v: iso_text(v))
    _utc = field_validator("now")(lambda cls, v: as_utc(v))


class OptionScore(BaseModel):
    channel: str
    offer: str
    local_hour: int
    expected_value: float = Field(description="expected extra profit over sending nothing")
    probability: float = Field(description="probability this option was drawn with")


class DecideResponse(BaseModel):
    decision_id: str
    request_id: str | None = Field(None, json_schema_extra=NULLABLE)
    customer_id: str
    action: Literal["send", "suppress"]
    channel: str | None = Field(json_schema_extra=NULLABLE)
    channels: list[str] = Field(description="every channel to send on (transactional: all consented ones)")
    send_at: datetime | None = Field(description="UTC; outside the customer's local quiet hours",
                                     json_schema_extra=NULLABLE)
    local_hour: int | None = Field(json_schema_extra=NULLABLE)
    offer: str | None = Field(json_schema_extra=NULLABLE)
    propensity: float = Field(description="probability of exactly this action under the policy")
    expected_value: float
    explored: bool
    control: bool
    known_customer: bool
    scores: list[OptionScore]
    reasons: list[str]
    policy_version: str


class BatchRequest(Strict):
    requests: list[DecideRequest] = Field(..., min_length=1, max_length=MAX_BATCH)


class BatchResponse(BaseModel):
    decisions: list[DecideResponse]


class FeedbackRequest(Strict):
    decision_id: str = Field(..., min_length=1, max_length=200)
    event: FeedbackEvent
    ts: datetime = Field(..., description="when it happened (ISO 8601; naive = UTC); with decision_id and "
                                         "event it identifies the event, so a retry counts once")
    value: float | None = Field(None, ge=0, le=MAX_ORDER_VALUE, allow_inf_nan=False, json_schema_extra=NULLABLE,
                                description="order value (required for converted)")

    _text = field_validator("ts", mode="before")(lambda cls, v: iso_text(v))
    _utc = field_validator("ts")(lambda cls, v: as_utc(v))


class FeedbackResponse(BaseModel):
    decision_id: str
    event: str
    accepted: bool = Field(description="false when the same event was already recorded (it counts once)")
    reward: float = Field(description="profit this event adds to the decision's reward")
