"""Render time: which offer a message already sent shows when it is opened (``POST /v1/render``).

A lunch offer decided at 11:00 may be opened at 15:00, when the config no longer allows it. The
email's content is fetched at open time, so the service answers then with the best offer still
valid now for that message:

- the offers the config allows in the message now (``decision.rules.render_allowed``: the
  offer's channels, its local ``valid_hours`` at the customer's hour now, its ``when`` rule over
  the request's context and the customer's features); the decided offer also only until its
  ``offer_expires_at``;
- ranked by the champion's expected extra profit of (the message's channel, offer) at the local
  hour now (``DecisionPolicy.render``, valued as a send is valued; the calibration from feedback
  applies). Consent, caps and quiet hours are not applied again: the message is already out.

Why a route of its own and not ``POST /v1/decide`` with ``type: "render"``: a render is not a new
decision. It has no propensity, makes no send, and none of decide's fields (channels, horizon,
follow-up, profile) apply; its answer names the message, not a new decision id.

What is kept: the decision's record gets ``rendered``, the offer shown, so the order's offer cost
that feedback adds to the reward is the cost of the offer the customer saw. The decision log
keeps the decided offer (the policy's action and its propensity, what off-policy evaluation and
training read) and a ``renders`` line per render (``nextbest log export`` does not read it).
Rendering again later (the email opened a second time) answers again for that time.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd

from nextbest.serving.checks import InvalidInput
from nextbest.serving.contact import history
from nextbest.serving.events import BEHAVIOUR_NS
from nextbest.serving.feedback import UnknownDecision, before_send, record_of
from nextbest.serving.records import MONEY_DIGITS, DecisionRecord, iso_z, keep_seconds, offer_expiry, ttl


def render(req, store, log, snapshot, policy, learner, max_clock_skew_days: float) -> dict:
    """Answer one ``RenderRequest`` (see the module docstring); raises ``UnknownDecision`` (404)
    or ``InvalidInput`` (400) naming the field."""
    clock = datetime.now(timezone.utc)
    now = req.now or clock
    if abs(now - clock) > timedelta(days=max_clock_skew_days):
        raise InvalidInput("now", f"{now.isoformat()} is more than {max_clock_skew_days:g} days from the "
                                  f"server's clock ({clock:%Y-%m-%dT%H:%M}Z)")
    rec = record_of(store, req.message_id, req.customer_id)
    if rec.channel is None or rec.type != "marketing":
        raise InvalidInput("message_id", f"decision {req.message_id} sent no marketing message; only a marketing "
                                         "message's offer is rendered")
    if before_send(now, rec.sent_at):
        raise InvalidInput("now", f"{now.isoformat()} is before the message went out ({iso_z(rec.sent_at)})")
    cfg = policy.config
    k = cfg.channel_names.index(rec.channel)
    now_s = np.array([int(now.timestamp())])
    state = snapshot.contact_state(rec.customer_id, store.get("contact", rec.customer_id))
    contact, unsub = history([state], now_s, list(cfg.channel_names))
    feats, _, pos, edited, differs = snapshot.features([rec.customer_id], [None], unsub, [state],
                                                     pd.DatetimeIndex([pd.Timestamp(now)]))
    if snapshot.behaviour_keys:
        feats = snapshot.with_behaviour(feats, [store.get(BEHAVIOUR_NS, rec.customer_id)], now_s)
    allowed, value, hour = policy.render(feats, contact, pd.Timestamp(now), np.array([k]), [req.context],
                                         snapshot.arrays.take(pos, feats, edited, differs),
                                         learner.calibration if learner is not None else None)
    decided = rec.offer or "none"
    expires = offer_expiry(rec.sent_at, decided, cfg)
    if expires is not None and now.timestamp() >= rec.sent_at + cfg.offers[decided].valid_for_hours * 3600.0:
        allowed[0, cfg.offer_names.index(decided)] = False  # the decided offer has run out
    reasons = []
    if not allowed[0].any():
        offer, ev = None, None
        reasons.append(f"no offer is valid on {rec.channel} at local hour {int(hour[0])}")
    else:
        j = int(np.where(allowed[0], value[0], -np.inf).argmax())
        offer, ev = cfg.offer_names[j], round(float(value[0, j]), MONEY_DIGITS)
        if offer == decided:
            reasons.append(f"the decided offer {decided} is still valid and the best at local hour {int(hour[0])}")
        else:
            expires = offer_expiry(now.timestamp(), offer, cfg)
            why = ("has run out or is not valid now" if not allowed[0, cfg.offer_names.index(decided)]
                   else "is worth less now")
            reasons.append(f"the decided offer {decided} {why}; {offer} is the best valid at local hour "
                           f"{int(hour[0])}")
    changed = offer != decided
    shown = offer if offer is not None else "none"
    keep_s = keep_seconds(cfg, policy.online)

    def show(cur: str | None) -> str | None:
        if cur is None:
            raise UnknownDecision(f"message {req.message_id!r} expired while it was rendered")
        r = DecisionRecord.from_json(cur)
        return None if r.rendered == shown else replace(r, rendered=shown).to_json()

    log.append("renders", [{"decision_id": req.message_id, "customer_id": rec.customer_id, "ts": now.isoformat(),
                            "local_hour": int(hour[0]), "offer": offer, "decided_offer": decided,
                            "changed": changed, "expected_value": ev, "policy_version": policy.version}])
    store.update("decision", req.message_id, show, ttl(rec, keep_s, time.time()))
    return {"message_id": req.message_id, "customer_id": rec.customer_id, "channel": rec.channel,
            "local_hour": int(hour[0]), "offer": offer, "offer_expires_at": expires if offer is not None else None,
            "changed": changed, "expected_value": ev, "reasons": reasons, "policy_version": policy.version}
