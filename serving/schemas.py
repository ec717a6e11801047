"""The API's request and response models: the one definition of the decision contract's wire format.

BentoML generates the OpenAPI schema from these. Shape checks (types, ranges, unknown fields,
batch size) happen here and give a 4xx naming the field; checks that need the business config
(unknown channel or offer, time zone names) happen in ``serving.engine`` before anything is
written; bounds the deployment's config sets (order value, how far ahead a time may be, context
size) in ``serving.checks`` and ``serving.errors``. :func:`publish` writes the config into the
OpenAPI document BentoML builds from these models (channels and offers as enums, the bounds).

Identifiers must hold a non-blank character; numbers are numbers (``true`` is not 1); times are
ISO 8601 text within the years a UTC time can express.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from nextbest.decision.online import FEEDBACK_EVENTS
from nextbest.features.behaviour import BEHAVIOUR_EVENTS, VALUE_RANGE, value_problem
from nextbest.features.schema import EVENT_TYPES
from nextbest.features.localtime import WEEK_HOURS
from nextbest.serving.followups import MAX_DUE, MAX_FOLLOW_UP_HOURS

MAX_BATCH = 10_000
# an identifier holds at least one non-blank character, "blank" as Python's str.strip() and the
# data contract's validation (features.validate) mean it: whitespace and the information
# separators \x1c-\x1f, which the regex engine's \s leaves out (schemathesis found "\x1f"), and
# NEL \x85, which the server's \s (Unicode White_Space) holds but ECMAScript's \s, the schema's
# reading of the pattern, does not (schemathesis found "\x85": generated as valid, refused)
ID = r"[^\s\x1c-\x1f\x85]"
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
    """Naive times are read as UTC; aware ones converted to UTC (a time whose UTC falls outside
    years 1-9999, e.g. ``0001-01-01T00:00:00+01:00``, is refused)."""
    if value is None:
        return None
    try:
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("out of the range of UTC times (years 1 to 9999)") from None


def number(value):
    """A number, not a boolean (JSON ``true`` is not 1)."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Profile(Strict):
    """What the caller knows of a customer nextbest has never seen (used only for unknown customers)."""

    timezone: str | None = Field(None, description="IANA time zone, e.g. Europe/Berlin (default: the config's)",
                                 json_schema_extra=NULLABLE)
    consent: dict[str, bool] = Field(default_factory=dict, description="consent per channel; missing means no")


class DecideRequest(Strict):
    customer_id: str = Field(..., min_length=1, max_length=200, pattern=ID)
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
    request_id: str | None = Field(None, min_length=1, max_length=200, pattern=ID, json_schema_extra=NULLABLE,
                                   description="idempotency key: the same id gets the same decision, recorded once")
    profile: Profile | None = Field(None, json_schema_extra=NULLABLE)
    explain: bool = Field(True, description="false leaves out the reasons and the per-option scores (both answer "
                                            "[]): cheaper, for batch callers that need only the decision")
    follow_up_hours: float | None = Field(
        None, ge=1.0, le=MAX_FOLLOW_UP_HOURS, json_schema_extra=NULLABLE,
        description="if a marketing message sent by this decision has not been opened this many hours after "
                    "send_at, GET /v1/due lists it with a new decision (serving/followups.py); a transactional "
                    "message (sent on every consented channel at once) or a suppression has no follow-up")

    _text = field_validator("now", mode="before")(lambda cls, v: iso_text(v))
    _utc = field_validator("now")(lambda cls, v: as_utc(v))
    _number = field_validator("horizon_hours", "follow_up_hours", mode="before")(lambda cls, v: number(v))


class RenderRequest(Strict):
    """A message being opened: which offer it shows now (``POST /v1/render``)."""

    message_id: str = Field(..., min_length=1, max_length=200, pattern=ID,
                            description="the decision_id of the marketing send being opened")
    customer_id: str = Field(..., min_length=1, max_length=200, pattern=ID,
                             description="the message's customer (another one is refused)")
    now: datetime | None = Field(None, description="open time (ISO 8601; naive = UTC; default: the server's clock)",
                                 json_schema_extra=NULLABLE)
    context: dict[str, Any] = Field(default_factory=dict, description="real-time features the offers' when: rules read")

    _text = field_validator("now", mode="before")(lambda cls, v: iso_text(v))
    _utc = field_validator("now")(lambda cls, v: as_utc(v))


class RenderResponse(BaseModel):
    message_id: str
    customer_id: str
    channel: str
    local_hour: int = Field(description="the customer's local hour at open time")
    offer: str | None = Field(json_schema_extra=NULLABLE,
                              description="the best offer valid now for this message; null if none is")
    offer_expires_at: datetime | None = Field(None, json_schema_extra=NULLABLE,
                                              description="UTC; the decided offer keeps its expiry, another offer "
                                                          "holds valid_for_hours from now; null without an end")
    changed: bool = Field(description="whether the offer differs from the one decided at send time")
    expected_value: float | None = Field(json_schema_extra=NULLABLE,
                                         description="the offer's expected extra profit at this hour")
    reasons: list[str]
    policy_version: str


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
    offer_expires_at: datetime | None = Field(None, json_schema_extra=NULLABLE,
                                              description="UTC; when the offer stops holding (send_at + the offer's "
                                                          "valid_for_hours); null without an offer or an end")
    follow_up_at: datetime | None = Field(None, json_schema_extra=NULLABLE,
                                          description="UTC; when GET /v1/due lists this message for a new decision "
                                                      "if it is still unopened (send_at + follow_up_hours)")
    follow_up_if: Literal["not_opened"] | None = Field(None, json_schema_extra=NULLABLE)
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


class _TimedEvent(Strict):
    """What an event body shares: ``ts`` as ISO 8601 text read as UTC, ``value`` a number."""

    _text = field_validator("ts", mode="before", check_fields=False)(lambda cls, v: iso_text(v))
    _utc = field_validator("ts", check_fields=False)(lambda cls, v: as_utc(v))
    _number = field_validator("value", mode="before", check_fields=False)(lambda cls, v: number(v))


class FeedbackRequest(_TimedEvent):
    decision_id: str = Field(..., min_length=1, max_length=200, pattern=ID)
    customer_id: str = Field(..., min_length=1, max_length=200, pattern=ID,
                             description="the decision's customer (feedback naming another is refused)")
    event: FeedbackEvent
    ts: datetime = Field(..., description="when it happened (ISO 8601; naive = UTC); with decision_id and "
                                         "event it identifies the event, so a retry counts once")
    value: float | None = Field(None, ge=0, allow_inf_nan=False, json_schema_extra=NULLABLE,
                                description="order value (required for converted, refused on other events; at "
                                            "most serving.max_order_value)")


    @field_validator("value")
    @classmethod
    def _value_on_conversions(cls, v, info: ValidationInfo):
        event = info.data.get("event")
        if v is not None and event is not None and event != "converted":
            raise ValueError(f"only a conversion carries an order value, not {event!r}")
        return v


class FeedbackResponse(BaseModel):
    decision_id: str
    event: str
    accepted: bool = Field(description="false when the event does not count: the same event again, a second "
                                        "conversion or unsubscribe of a decision, or an event after its "
                                        "attribution window")
    reward: float = Field(description="profit this event adds to the decision's reward")


class EventRequest(_TimedEvent):
    """One event from any sender: a message lifecycle event (the data contract's ``events`` row,
    with an id) or a behavioural one (``features.behaviour``: visit, cart_abandoned, review,
    app_open; no message, a value only where the vocabulary has one)."""

    event_id: str = Field(..., min_length=1, max_length=200, pattern=ID,
                          description="idempotency key: the same id is recorded once")
    customer_id: str = Field(..., min_length=1, max_length=200, pattern=ID)
    event: Literal[EVENT_TYPES + BEHAVIOUR_EVENTS]
    ts: datetime = Field(..., description="when it happened (ISO 8601; naive = UTC)")
    message_id: str | None = Field(None, min_length=1, max_length=200, pattern=ID, json_schema_extra=NULLABLE,
                                   validate_default=True, description="links the events of one message: required on every event but an "
                                               "organic order (converted without a message) and a behavioural event")
    channel: str | None = Field(None, json_schema_extra=NULLABLE,
                                description="required on sent and on every response to a message")
    offer: str | None = Field(None, json_schema_extra=NULLABLE, description="the sent message's offer (default none)")
    value: float | None = Field(None, ge=0, allow_inf_nan=False, json_schema_extra=NULLABLE, validate_default=True,
                                description="order value: required on converted; a cart's value on cart_abandoned and "
                                            "a rating (1-5) on review, optional; refused elsewhere")
    type: Literal["marketing", "transactional"] = Field(
        "marketing", description="a transactional send does not count against marketing caps")


    @field_validator("value")
    @classmethod
    def _value_on_conversions(cls, v, info: ValidationInfo):
        event = info.data.get("event")
        if event == "converted" and v is None:
            raise ValueError("a conversion needs the order value")
        if event in BEHAVIOUR_EVENTS:
            why = value_problem(event, v)
            if why is not None:
                raise ValueError(why)
            return v
        if v is not None and event is not None and event != "converted":
            raise ValueError(f"only a conversion carries an order value, not {event!r}")
        return v

    @field_validator("message_id")
    @classmethod
    def _message_on_messages(cls, v, info: ValidationInfo):
        event = info.data.get("event")
        if v is None and event is not None and event != "converted" and event not in BEHAVIOUR_EVENTS:
            raise ValueError(f"a {event!r} event needs the message_id of its message")
        return v


class EventBatch(Strict):
    events: list[EventRequest] = Field(..., min_length=1, max_length=MAX_BATCH)


class EventResponse(BaseModel):
    event_id: str
    accepted: bool = Field(description="false when an event with this id was recorded before")


class EventBatchResponse(BaseModel):
    events: list[EventResponse]


# ---------------------------------------------------------------------------- the published document
API_DESCRIPTION = (
    "Next-best-action decisions: whether to send anything to a customer, on which channel, when and with "
    "which offer (`/v1/decide`, `/v1/decide/batch`); what happened to a decision's message (`/v1/feedback`); "
    "other senders' message events (`/v1/events`); the offer a message shows when it is opened (`/v1/render`). Every route needs an API key with its scope "
    "(`Authorization: Bearer KEY`). Channels and offers are this deployment's configured ones. Errors are JSON "
    "`{\"error\", \"field\", \"detail\"}`. README: \"Serving\".")
_ERROR = {"$ref": "#/components/schemas/InvalidArgument"}
_STATUSES = {"401": "no valid API key (Authorization: Bearer KEY)", "403": "the API key lacks this route's scope",
             "413": "the body is over serving.max_body_bytes", "415": "the body is not JSON"}


def _by_event(schema: dict) -> dict:
    """A feedback body as two shapes: a conversion with its order value, any other event without
    one; another sender's event as three (:func:`_event_shapes`); a batch of events item by item."""
    props = schema.get("properties", {})
    items = props.get("events", {}).get("items") if isinstance(props.get("events"), dict) else None
    if isinstance(items, dict) and "properties" in items:
        props["events"]["items"] = _by_event(items)
        return schema
    if not ("event" in props and "value" in props):
        return schema
    if "event_id" in props:
        return _event_shapes(schema)
    others = [e for e in props["event"].get("enum", []) if e != "converted"]
    src = props["value"]
    number_ = next((a for a in src.get("anyOf", []) if a.get("type") == "number"), {})
    value = {**{k: v for k, v in src.items() if k not in ("nullable", "default", "anyOf")}, **number_}
    value.update(type="number", minimum=value.get("minimum", 0))
    converted = {**schema, "properties": {**props, "event": {**props["event"], "enum": ["converted"]}, "value": value},
                 "required": [*schema.get("required", []), "value"]}
    other = {**schema, "properties": {**{k: v for k, v in props.items() if k != "value"},
                                      "event": {**props["event"], "enum": others}}}
    return {"oneOf": [converted, other], **({"title": schema["title"]} if "title" in schema else {})}


def _event_shapes(schema: dict) -> dict:
    """Another sender's event (``EventRequest``) as the shapes the service takes: an event of a
    message (its id and channel, no value), an order after a message (id, channel, value), an
    organic order (a value, no message), and the behavioural events (no message; a value only on
    those of ``VALUE_RANGE``, within it)."""
    props, required = schema["properties"], list(schema.get("required", []))

    def plain(name: str) -> dict:  # the non-null alternative of an optional field
        src = props[name]
        alt = next((a for a in src.get("anyOf", []) if a.get("type") != "null"), {})
        out = {**{k: v for k, v in src.items() if k not in ("nullable", "default", "anyOf")}, **alt}
        if "enum" in out:
            out["enum"] = [v for v in out["enum"] if v is not None]
        return out

    value = {**plain("value"), "type": "number"}
    value["minimum"] = value.get("minimum", 0)
    message = {k: props[k] for k in props if k != "value"}
    message.update(message_id=plain("message_id"), channel=plain("channel"))
    others = [e for e in props["event"].get("enum", []) if e != "converted" and e not in BEHAVIOUR_EVENTS]
    behaviour = {k: v for k, v in props.items() if k not in ("message_id", "channel", "offer", "value")}

    def valued(event: str) -> dict:  # a behavioural event that may carry a value (VALUE_RANGE)
        lo, hi = VALUE_RANGE[event]
        v = {**value, "minimum": lo, "nullable": True, **({"maximum": hi} if hi is not None else {})}
        return {**schema, "properties": {**behaviour, "value": v, "event": {**props["event"], "enum": [event]}},
                "required": list(required)}

    shapes = [
        {**schema, "properties": {**message, "event": {**props["event"], "enum": others}},
         "required": [*required, "message_id", "channel"]},
        {**schema, "properties": {**message, "value": value, "event": {**props["event"], "enum": ["converted"]}},
         "required": [*required, "message_id", "channel", "value"]},
        {**schema, "properties": {**{k: v for k, v in props.items() if k not in ("message_id", "channel", "offer")},
                                  "value": value, "event": {**props["event"], "enum": ["converted"]}},
         "required": [*required, "value"]},
        {**schema, "properties": {**behaviour, "event": {**props["event"],
                                                         "enum": [e for e in BEHAVIOUR_EVENTS if e not in VALUE_RANGE]}},
         "required": list(required)},
        *[valued(e) for e in BEHAVIOUR_EVENTS if e in VALUE_RANGE],
    ]
    return {"oneOf": shapes, **({"title": schema["title"]} if "title" in schema else {})}


API_TITLE = "nextbest decision API"


def release() -> str:
    """The installed nextbest's version ("dev" when it runs from a source tree without metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nextbest")
    except PackageNotFoundError:
        return "dev"




def _due_path(spec: dict) -> dict:
    """``GET /v1/due`` (served beside BentoML's routes, ``serving.service``), its decisions in the
    shape of ``POST /v1/decide``'s answer."""
    import copy

    try:
        decision = copy.deepcopy(spec["paths"]["/v1/decide"]["post"]["responses"]["200"]["content"]
                                 ["application/json"]["schema"])
    except KeyError:
        decision = {"type": "object"}
    text = {"type": "string"}
    body = {"type": "object", "required": ["due", "skipped"], "properties": {
        "due": {"type": "array", "items": {"type": "object", "required": ["follow_up_of", "follow_up_at", "decision"],
                                           "properties": {"follow_up_of": text, "follow_up_at": text,
                                                          "decision": decision}}},
        "skipped": {"type": "array", "items": {"type": "object", "required": ["follow_up_of", "customer_id", "reason"],
                                               "properties": {"follow_up_of": text, "customer_id": text,
                                                              "reason": text}}}}}
    return {"get": {
        "summary": "Follow-ups due",
        "description": "The follow-ups (decisions made with follow_up_hours) due by `until` whose message is still "
                       "unopened, each decided again as of its follow_up_at; those left out, with why. At least "
                       "once: every call lists a due follow-up for a day, with the same decision (decide scope).",
        "operationId": "nextbest__due", "tags": ["Service APIs"], "security": [{"apiKey": []}],
        "parameters": [{"name": "until", "in": "query", "required": True,
                        "description": "ISO 8601 time (naive = UTC): list what is due by then",
                        "schema": {"type": "string", "format": "date-time"}},
                       {"name": "limit", "in": "query", "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_DUE, "default": 1000}}],
        "responses": {"200": {"description": "due follow-ups with their decisions, and those left out",
                              "content": {"application/json": {"schema": body}}},
                      **{code: {"description": text_, "content": {"application/json": {"schema": _ERROR}}}
                         for code, text_ in (("400", "a query parameter is missing or wrong"),
                                             *list(_STATUSES.items())[:2],
                                             ("503", "the engine or the store is unavailable; retry"))}}}}


def publish(spec: dict, config, settings) -> dict:
    """The OpenAPI document BentoML builds from the models above, with what the deployment's config
    allows: channel and offer names as enums, consent per configured channel, IANA time zones, the
    order value bound and the context size; the bearer key scheme, the errors every route may
    answer (401, 403, 413, 415, 409 for a request id in flight) and ``DELETE /v1/customers/{id}``.

    Parameters
    ----------
    spec : dict
        BentoML's document (``GET /docs.json``), changed in place.
    config : Config
        The deployment's business config.
    settings : ServeSettings

    Returns
    -------
    dict
        ``spec``.
    """
    import zoneinfo

    channels, offers = list(config.channel_names), list(config.offer_names)
    zones = sorted(zoneinfo.available_timezones())

    def strings(prop: dict, names: list[str]) -> None:
        for alt in [prop, *prop.get("anyOf", [])]:
            if alt.get("type") == "array" and alt.get("items", {}).get("type") == "string":
                alt["items"]["enum"] = names
                alt["uniqueItems"] = True

    def visit(node) -> None:
        if isinstance(node, list):
            for x in node:
                visit(x)
            return
        if not isinstance(node, dict):
            return
        props = node.get("properties")
        if isinstance(props, dict):
            if "channels" in props:
                strings(props["channels"], channels)
            if "offers" in props:
                strings(props["offers"], offers)
            if isinstance(props.get("consent"), dict) and "additionalProperties" in props["consent"]:
                props["consent"].update(properties={c: {"type": "boolean"} for c in channels},
                                        additionalProperties=False)
            if isinstance(props.get("timezone"), dict) and "anyOf" in props["timezone"]:
                props["timezone"] = {**{k: v for k, v in props["timezone"].items() if k != "anyOf"},
                                     "type": "string", "enum": zones}
            if isinstance(props.get("context"), dict) and props["context"].get("type") == "object":
                props["context"]["maxProperties"] = settings.max_context_keys
            if "event_id" in props and "channel" in props:  # another sender's event: configured channel and offer
                for name, names in (("channel", channels), ("offer", offers)):
                    # OpenAPI 3.0: a nullable enum lists null among its values
                    props[name] = {**{k: v for k, v in props[name].items() if k not in ("anyOf", "default")},
                                   "type": "string", "enum": [*names, None], "nullable": True}
            if "value" in props and "event" in props:
                for alt in [props["value"], *props["value"].get("anyOf", [])]:
                    if alt.get("type") == "number":
                        alt["maximum"] = settings.max_order_value
        for v in node.values():
            visit(v)

    visit(spec.get("components", {}))
    visit(spec.get("paths", {}))
    spec["info"] = {"title": API_TITLE, "version": release(), "description": API_DESCRIPTION}
    schemas = spec.get("components", {}).get("schemas", {})
    error = schemas.get("InvalidArgument")
    if isinstance(error, dict):  # the error shape the service answers (serving.errors): the field too
        error.setdefault("properties", {})["field"] = {
            "type": "string", "nullable": True, "description": "the request field at fault, e.g. requests[3].channels"}
    for name, schema in list(schemas.items()):  # a batch's items refer to these
        if "event_id" in schema.get("properties", {}) and "value" in schema.get("properties", {}):
            schemas[name] = _event_shapes(schema)
    for ops in spec.get("paths", {}).values():
        for op in ops.values():
            body = op.get("requestBody", {})
            if body:
                body["required"] = True
                for media in body.get("content", {}).values():
                    media["schema"] = _by_event(media.get("schema", {}))
    spec.setdefault("components", {}).setdefault("securitySchemes", {})["apiKey"] = {
        "type": "http", "scheme": "bearer", "description": "an API key with the route's scope"}
    for path, ops in spec.get("paths", {}).items():
        if path.startswith("/v1/") or path == "/metrics":
            for op in ops.values():
                op["security"] = [{"apiKey": []}]
                responses = op.setdefault("responses", {})
                for code, text in _STATUSES.items():
                    if path.startswith("/v1/") or code in ("401", "403"):
                        responses.setdefault(code, {"description": text,
                                                    "content": {"application/json": {"schema": _ERROR}}})
                if path.startswith("/v1/decide"):
                    responses.setdefault("409", {"description": "the request id is being decided by another call",
                                                 "content": {"application/json": {"schema": _ERROR}}})
    spec["paths"]["/v1/due"] = _due_path(spec)
    spec["paths"]["/v1/customers/{customer_id}"] = {"delete": {
        "summary": "Erase a customer",
        "description": "Remove a customer from the store, the decision log and future exports; answers the "
                       "receipt (admin scope).",
        "operationId": "nextbest__erase_customer", "tags": ["Service APIs"], "security": [{"apiKey": []}],
        "parameters": [{"name": "customer_id", "in": "path", "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": ID}}],
        "responses": {"200": {"description": "the receipt", "content": {"application/json": {"schema": {
            "type": "object", "required": ["customer_hash", "at", "removed"],
            "properties": {"customer_hash": {"type": "string"}, "at": {"type": "string"},
                           "removed": {"type": "object", "additionalProperties": {"type": "integer"}}}}}}},
            **{code: {"description": text, "content": {"application/json": {"schema": _ERROR}}}
               for code, text in (("400", "not a customer id"), *list(_STATUSES.items())[:2])}}}}
    return spec
