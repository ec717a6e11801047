"""Message lifecycle events from any sender: ``POST /v1/events`` and ``/v1/events/batch``.

Other systems send messages too (the ESP's newsletter, a CRM journey, the shop's order mails)
and report what happened to them. Each event is a row of the data contract's ``events`` table
with an ``event_id``; it is checked like the file contract (configured channel and offer, an
order value on conversions only, a message id on every response, not in the future beyond the
allowed clock skew) and then, in this order:

1. **logged** durably (decision log kind ``events``): nothing acknowledged is lost, a store can
   be rebuilt from the log (``serving.rebuild``) and ``nextbest log export`` writes the events
   as ``events`` rows, so the next retraining sees them;
2. **applied to the customer's contact state** in the store, by compare-and-set, all of one
   customer's events of the call in one update: a marketing ``sent`` counts against the
   frequency caps and the collision gap exactly like the service's own sends (keyed by its
   message id, so applying it twice counts once); an open, click or order resets the channel's
   unanswered count; an unsubscribe revokes the channel at once. Transactional sends do not
   count against marketing caps. Marketing messages, the responses to them and orders also
   enter the customer's engagement history (``ContactState.live``), from which the next
   decision computes every engagement feature as of its ``now``. The next decision reads the
   new state: an event is reflected as soon as its call returns;
3. **its id remembered** for :data:`EVENT_ID_TTL_S`: the same id again answers
   ``accepted: false`` and changes nothing.

A crash between 1 and 3 makes a retry log the event again (readers keep the first line of an
id) and apply it again, which changes nothing (step 2 is idempotent).

Decision: responses to a message name its channel (the API cannot look up messages sent by
other systems before the snapshot); an order without a message id is an organic order and
changes no contact state.

**Behavioural events** (``features.behaviour``: visit, cart_abandoned, review, app_open) are
checked, logged and remembered the same way; instead of the contact state they update the
customer's behaviour state (store namespace :data:`BEHAVIOUR_NS`, a
``features.behaviour.BehaviourState`` started from the data's ``behaviour`` table), by the same
compare-and-set, late and out-of-order events landing in place. The next decision reads its
behaviour features as of its ``now`` from that state (``serving.snapshot.Snapshot.with_behaviour``),
equal to a batch snapshot of the same events.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta, timezone

from nextbest.features.behaviour import BEHAVIOUR_EVENTS, value_problem
from nextbest.serving.checks import InvalidInput
from nextbest.serving.contact import TRANSACTIONAL_SENT, ContactState, ms_of
from nextbest.serving.decision_log import DecisionLog
from nextbest.serving.store import Store

BEHAVIOUR_NS = "behaviour"  # each customer's behaviour state (features.behaviour.BehaviourState)
EVENT_ID_TTL_S = 7 * 86400.0  # a retry later than a week is a new event
EVENT_NS = "event"


def check_events(events: list, config, max_order_value: float, max_clock_skew_days: float,
                 prefix: str = "") -> None:
    """What the config does not allow, naming the field (``InvalidInput``); writes nothing."""
    clock = datetime.now(timezone.utc)
    ahead = clock + timedelta(days=max_clock_skew_days)
    seen: dict[str, int] = {}
    for i, e in enumerate(events):
        at = f"{prefix}[{i}]." if prefix else ""
        if e.event_id in seen:
            raise InvalidInput(f"{at}event_id", f"{e.event_id!r} also names event {seen[e.event_id]}")
        seen[e.event_id] = i
        if e.ts > ahead:
            raise InvalidInput(f"{at}ts", f"{e.ts.isoformat()} is more than {max_clock_skew_days:g} days ahead of "
                                          f"the server's clock ({clock:%Y-%m-%dT%H:%M}Z)")
        if e.event in BEHAVIOUR_EVENTS:
            for name in ("message_id", "channel", "offer"):
                if getattr(e, name) is not None:
                    raise InvalidInput(f"{at}{name}", f"a {e.event!r} event (behaviour) has no {name}")
            why = value_problem(e.event, e.value)
            if why is None and e.value is not None and e.value > max_order_value:
                why = f"{e.value:g} is over the largest value {max_order_value:g} (serving.max_order_value)"
            if why is not None:
                raise InvalidInput(f"{at}value", why)
            continue
        if e.channel is None and e.message_id is not None:
            raise InvalidInput(f"{at}channel", f"a {e.event!r} event of a message needs the message's channel")
        for name in ("channel", "offer"):
            if e.message_id is None and getattr(e, name) is not None:
                raise InvalidInput(f"{at}{name}", "an order without a message (no message_id) has no " + name)
        if e.channel is not None and e.channel not in config.channel_names:
            raise InvalidInput(f"{at}channel", f"unknown channel {e.channel!r}; configured: {list(config.channel_names)}")
        if e.offer is not None and e.offer not in config.offer_names:
            raise InvalidInput(f"{at}offer", f"unknown offer {e.offer!r}; configured: {list(config.offer_names)}")
        if e.value is not None and e.value > max_order_value:
            raise InvalidInput(f"{at}value", f"{e.value:g} is over the largest order value {max_order_value:g} "
                                             "(serving.max_order_value)")


def log_row(e) -> dict:
    """The decision log's line of an event (kind ``events``; a contract read by export and rebuild)."""
    return {"event_id": e.event_id, "customer_id": e.customer_id, "event": e.event, "ts": e.ts.isoformat(),
            "message_id": e.message_id, "channel": e.channel,
            "offer": (e.offer or "none") if e.event == "sent" else e.offer, "value": e.value, "type": e.type}


def apply(state: ContactState, row: dict) -> ContactState:
    """One logged event's change of a contact state (the live path and the rebuild share it),
    made **in place**: the caller owns ``state`` (one just read or built) and gets it back. Caps
    and unanswered counts as in the module docstring, and the engagement history
    (``ContactState.live``) for marketing messages, the responses to them and orders. A response
    that names no offer takes its send's from the live history (none there: it counts without an
    offer); a response to a transactional send the history holds stays out, as in the export."""
    if row["event"] in BEHAVIOUR_EVENTS or (row["channel"] is None and row["event"] != "converted"):
        return state
    ts = datetime.fromisoformat(row["ts"])
    t_ms = ms_of(ts)
    key = f"event:{row['event_id']}"
    marketing = row.get("type", "marketing") == "marketing"
    if row["event"] == "sent":
        if not marketing:
            state.add_live(t_ms, TRANSACTIONAL_SENT, row["channel"], row["offer"], None, row["message_id"], key)
            return state
        state.add_send(ts.timestamp(), row["channel"], message_id=f"event:{row['message_id']}")
        state.add_live(t_ms, "sent", row["channel"], row["offer"] or "none", None, row["message_id"], key)
        return state
    if row["channel"] is not None:
        state.add_event(row["channel"], row["event"])
    send = state.live_send(row["message_id"])
    if not marketing or (send is not None and send[1] == TRANSACTIONAL_SENT):
        return state
    offer = row["offer"] or (send[3] if send is not None else None)
    state.add_live(t_ms, row["event"], row["channel"], offer, row["value"], row["message_id"], key)
    return state


def apply_behaviour(state, row: dict, keep_s: float):
    """One logged behavioural event's change of a behaviour state (live path and rebuild)."""
    return state.with_event(row["event"], datetime.fromisoformat(row["ts"]).timestamp(), keep_s)


def record_events(events: list, store: Store, log: DecisionLog, snapshot) -> list[dict]:
    """Log, apply and remember ``events`` (see the module docstring); one answer per event."""
    ids = [e.event_id for e in events]
    known = store.get_many(EVENT_NS, ids)
    fresh = [e for e, k in zip(events, known) if k is None]
    rows = sorted((log_row(e) for e in fresh), key=lambda r: r["ts"])  # the order they apply in, and replay in
    if rows:
        log.append("events", rows)
    by_customer: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["event"] not in BEHAVIOUR_EVENTS:
            by_customer[r["customer_id"]].append(r)

    def change(cid, mine):
        def fn(cur):
            state = snapshot.contact_state(cid, cur)
            for r in mine:
                state = apply(state, r)
            return state.to_json()
        return fn

    # every customer of the call in one read and one compare-and-set per round
    store.update_many("contact", {cid: change(cid, mine) for cid, mine in by_customer.items()})
    doing: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["event"] in BEHAVIOUR_EVENTS:
            doing[r["customer_id"]].append(r)

    def act(cid, mine):
        def fn(cur):
            state = snapshot.behaviour_state(cid, cur)
            for r in mine:
                state = apply_behaviour(state, r, snapshot.behaviour_keep_s)
            return state.to_json()
        return fn

    if doing:
        store.update_many(BEHAVIOUR_NS, {cid: act(cid, mine) for cid, mine in doing.items()})
    store.put_many(EVENT_NS, [(e.event_id, "1", EVENT_ID_TTL_S) for e in fresh])
    fresh_ids = {e.event_id for e in fresh}
    return [{"event_id": e.event_id, "accepted": e.event_id in fresh_ids} for e in events]
