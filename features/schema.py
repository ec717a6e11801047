"""The data contract: one table of columns and rules for ``customers`` and ``events``.

``features.validate`` enforces this table; the README and DESIGN.md describe it in words.

Decision: a ``converted`` event without a ``message_id`` is an *organic* order (not attributed to
any message). Shops receive such orders all the time, and uplift models need them to learn what
customers buy without a message. Every other response needs the ``message_id`` of a ``sent``.
"""

from __future__ import annotations

from dataclasses import dataclass

EVENT_TYPES = ("sent", "delivered", "bounced", "opened", "clicked", "converted", "unsubscribed")
RESPONSE_EVENTS = tuple(e for e in EVENT_TYPES if e != "sent")
TABLES = ("customers", "events")
CONSENT_PREFIX = "consent_"


@dataclass(frozen=True)
class Column:
    table: str
    name: str
    kind: str        # string | timestamp | boolean | number
    required: bool   # the column must exist
    applies_to: str  # which rows must (or may) hold a value
    description: str


CONTRACT: tuple[Column, ...] = (
    Column("customers", "customer_id", "string", True, "every row, unique, non-empty", "the customer's id"),
    Column("customers", "timezone", "string", False, "optional; missing means the config's default",
           "IANA time zone name, e.g. Europe/Paris"),
    Column("customers", "signup_at", "timestamp", False, "optional", "when the customer signed up (UTC)"),
    Column("customers", "consent_<channel>", "boolean", False, "one per configured channel; missing means no consent",
           "marketing consent for that channel"),
    Column("customers", "<attribute>", "number|string", False, "any other column",
           "customer attribute, numeric or categorical"),
    Column("events", "customer_id", "string", True, "every row; must exist in customers", "whose event it is"),
    Column("events", "ts", "timestamp", True, "every row; not in the future", "when it happened (UTC; naive = UTC)"),
    Column("events", "event", "string", True, "every row", "one of " + ", ".join(EVENT_TYPES)),
    Column("events", "message_id", "string", True,
           "sent (unique) and every response; optional on converted (missing = organic order)",
           "links the events of one message"),
    Column("events", "channel", "string", False, "required on sent; optional on responses (must match the send)",
           "a configured channel"),
    Column("events", "offer", "string", False, "required on sent; optional on responses (must match the send)",
           "a configured offer, `none` for no offer"),
    Column("events", "value", "number", False, "required (>= 0) on converted; empty elsewhere",
           "order value before any discount"),
    Column("events", "propensity", "number", False, "optional on sent, in (0, 1]; empty elsewhere",
           "probability with which the logging policy chose this action"),
)

EVENT_COLUMNS = tuple(c.name for c in CONTRACT if c.table == "events")
REQUIRED_EVENT_COLUMNS = tuple(c.name for c in CONTRACT if c.table == "events" and c.required)
STRING_EVENT_COLUMNS = tuple(c.name for c in CONTRACT if c.table == "events" and c.kind == "string")
NUMBER_EVENT_COLUMNS = tuple(c.name for c in CONTRACT if c.table == "events" and c.kind == "number")
