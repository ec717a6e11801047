"""Business rules, pure and vectorized: which (channel, local hour, offer) each customer may get now.

``eligible(...)`` returns a boolean grid ``(n, K, 24, O)`` over channels x local send hours x
offers and, for explanations, which rule removed what. Nothing here learns or scores: the
policy ranks what the rules leave. Rules, in the order they are applied and reported:

==================  ==================================================================
request             the request's candidate channels / offers (all when not given)
consent             consent to the channel (an unsubscribe on it revokes consent)
channel_cap         the channel's ``caps.per_day`` / ``caps.per_week`` (rolling 24 h / 7 days)
contact_cap         ``contact_rules.max_per_day`` / ``max_per_week`` over all channels
collision           no send earlier than ``min_hours_between`` after the last message
quiet_hours         the channel's local quiet hours
horizon             the send must fall within ``horizon_hours`` from now
offer_channel       the offer is not available on the channel
offer_hours         the offer's local ``valid_hours``
offer_rule          the offer's eligibility rule (``when``) over context and customer features
fallback            after ``fallback_after_unanswered`` unanswered messages on a channel, another
                    consented channel that is still allowed is preferred
==================  ==================================================================

Transactional requests skip the marketing rules (caps, collision, quiet hours, offers: the
message goes out now, without an offer) but keep consent and the request's candidates.

Caps count messages in rolling windows before the decision (24 hours and 7 days), not calendar
days: a calendar day differs per time zone and the rolling window is the stricter reading.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from nextbest.features.config import Condition, Config
from nextbest.features.localtime import DAY_HOURS, WEEK_HOURS

RULES = ("request", "consent", "channel_cap", "contact_cap", "collision", "quiet_hours", "horizon",
         "offer_channel", "offer_hours", "offer_rule", "fallback")
HOURS = np.arange(24)


@dataclass
class ContactHistory:
    """Recent marketing messages per customer (from the features, or the serving store).

    Attributes
    ----------
    sent_day : int array (n, K)    messages per channel in the last 24 hours
    sent_week : int array (n, K)   messages per channel in the last 7 days
    hours_since_last : float array (n,)   hours since the last message (inf: none)
    unanswered : int array (n, K)  messages on the channel since its last open
    """

    sent_day: np.ndarray
    sent_week: np.ndarray
    hours_since_last: np.ndarray
    unanswered: np.ndarray

    @classmethod
    def from_features(cls, features: pd.DataFrame, config: Config) -> "ContactHistory":
        """Read the history the engagement features already hold (``{channel}_sent_24h`` ...)."""
        ch = config.channel_names
        fh = config.features.fatigue_hours

        def window(hours):
            if hours not in fh:
                raise ValueError(f"features.fatigue_hours must include {hours} for the caps; got {list(fh)}")
            return np.stack([features[f"{c}_sent_{hours}h"].to_numpy(np.int64) for c in ch], axis=1)

        days = features["all_days_since_send"].to_numpy(dtype=float)
        return cls(window(DAY_HOURS), window(WEEK_HOURS), np.where(np.isnan(days), np.inf, days * 24.0),
                   np.stack([features[f"{c}_unanswered"].to_numpy(np.int64) for c in ch], axis=1))

    @classmethod
    def empty(cls, n: int, k: int) -> "ContactHistory":
        z = np.zeros((n, k), dtype=np.int64)
        return cls(z, z.copy(), np.full(n, np.inf), z.copy())


@dataclass
class Eligibility:
    """The rules' verdict: ``allowed`` (n, K, 24, O) and each rule's removals for explanations."""

    allowed: np.ndarray
    removed: dict          # rule -> bool array broadcastable to (n, K, 24, O): what the rule forbids
    delay_hours: np.ndarray  # (n, 24) hours from now until each local hour's next start (0: now)
    config: Config

    def reasons(self, i: int) -> list[str]:
        """What removed which options for customer ``i``, in marketers' words."""
        cfg = self.config
        out = []
        for rule, (anything, chans, offers) in self._summary().items():
            row = lambda a: a[i] if a.shape[0] > 1 else a[0]  # noqa: E731 - rules shared by all rows have n = 1
            if not row(anything):
                continue
            ch = [c for c, hit in zip(cfg.channel_names, row(chans)) if hit]
            off = [o for o, hit in zip(cfg.offer_names, row(offers)) if hit and o != "none"]
            if ch:
                out.append(f"{_RULE_WORDS[rule]}: no {', '.join(ch)}")
            elif off:
                out.append(f"{_RULE_WORDS[rule]}: no offer {', '.join(off)}")
            else:
                out.append(f"{_RULE_WORDS[rule]}: some send hours or offers removed")
        return out

    def _summary(self) -> dict:
        """Per rule, computed once for all rows: removed anything (m,), every option of a channel
        (m, K), every option of an offer (m, O); m is n, or 1 for a rule that is the same for all."""
        cached = getattr(self, "_cache", None)
        if cached is None:
            shape = self.allowed.shape[1:]
            cached = {}
            for rule in RULES:
                if rule in self.removed:
                    r = self.removed[rule]
                    r = np.broadcast_to(r, (r.shape[0],) + shape)
                    cached[rule] = (r.any(axis=(1, 2, 3)), r.all(axis=(2, 3)), r.all(axis=(1, 2)))
            self._cache = cached
        return cached


_RULE_WORDS = {
    "request": "not requested", "consent": "no consent", "channel_cap": "channel frequency cap reached",
    "contact_cap": "contact limit across channels reached", "collision": "too soon after the last message",
    "quiet_hours": "quiet hours", "horizon": "outside the decision window", "offer_channel": "offer not available on channel",
    "offer_hours": "offer not valid at that hour", "offer_rule": "offer rules not met",
    "fallback": "too many unanswered messages, another channel preferred",
}


def delay_to_hours(local_hour_now: np.ndarray, local_minute_now: np.ndarray) -> np.ndarray:
    """Hours from now until each local hour starts, (n, 24); the current hour counts as now (0)."""
    d = (HOURS[None, :] - np.asarray(local_hour_now)[:, None]) % 24
    return np.where(d == 0, 0.0, d - np.asarray(local_minute_now)[:, None] / 60.0)


def condition_holds(cond: Condition, features: pd.DataFrame, contexts: list[dict]) -> np.ndarray:
    """Whether ``cond`` holds per customer, bool (n,)."""
    n = len(features)
    ok = np.ones(n, dtype=bool)
    for key, allowed in cond.context.items():
        ok &= np.array([str(c.get(key)) in allowed if c and key in c else False for c in contexts], dtype=bool)
    for key, bounds in cond.customer.items():
        if key not in features:
            ok &= False
            continue
        col = features[key]
        if "in" in bounds:
            ok &= col.astype(object).isin(bounds["in"]).to_numpy()
        values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float) if ("min" in bounds or "max" in bounds) else None
        if "min" in bounds:
            ok &= values >= bounds["min"]
        if "max" in bounds:
            ok &= values <= bounds["max"]
    return ok


def eligible(features: pd.DataFrame, contact: ContactHistory, config: Config, delay_hours: np.ndarray,
             contexts: list[dict] | None = None, horizon_hours: float | np.ndarray | None = None, transactional: bool = False,
             channels: list[str] | None = None, offers: list[str] | None = None) -> Eligibility:
    """Apply every rule; see the module docstring for the list and order.

    Parameters
    ----------
    features : DataFrame (n, ...)   customer features (consent, unsubscribes, attributes)
    contact : ContactHistory
    delay_hours : float array (n, 24)   from :func:`delay_to_hours`
    contexts : list of n dicts, optional   request context per customer
    channels, offers : names, optional   the request's candidates
    """
    cfg = config
    n, K, O = len(features), len(cfg.channel_names), len(cfg.offer_names)
    contexts = contexts if contexts is not None else [{}] * n
    for name, given, known in (("channel", channels, cfg.channel_names), ("offer", offers, cfg.offer_names)):
        unknown = sorted(set(given or ()) - set(known))
        if unknown:
            raise ValueError(f"unknown {name}(s) {unknown}; configured: {list(known)}")
    removed: dict[str, np.ndarray] = {}
    req_ch = np.array([channels is None or c in channels for c in cfg.channel_names])
    req_off = np.array([offers is None or o in offers for o in cfg.offer_names])
    if transactional:
        req_off &= np.array([o == "none" for o in cfg.offer_names])
    removed["request"] = (~req_ch[:, None, None] | ~req_off[None, None, :])[None]
    consent = np.stack([features[f"consent_{c}"].to_numpy(dtype=bool) & (features[f"{c}_unsubscribed"].to_numpy() == 0)
                        for c in cfg.channel_names], axis=1)
    removed["consent"] = ~consent[:, :, None, None]
    if not transactional:
        day_cap = np.array([cfg.channels[c].cap_per_day for c in cfg.channel_names])
        week_cap = np.array([cfg.channels[c].cap_per_week for c in cfg.channel_names])
        removed["channel_cap"] = ((contact.sent_day >= day_cap) | (contact.sent_week >= week_cap))[:, :, None, None]
        cr = cfg.contact_rules
        total = (contact.sent_day.sum(axis=1) >= cr.max_per_day) | (contact.sent_week.sum(axis=1) >= cr.max_per_week)
        removed["contact_cap"] = total[:, None, None, None]
        wait = np.maximum(cr.min_hours_between - contact.hours_since_last, 0.0)  # (n,)
        removed["collision"] = (delay_hours < wait[:, None])[:, None, :, None]
        quiet = np.stack([cfg.channels[c].quiet_hours.contains(HOURS) for c in cfg.channel_names])  # (K, 24)
        removed["quiet_hours"] = quiet[None, :, :, None]
    horizon = np.asarray(cfg.decision.horizon_hours if horizon_hours is None else horizon_hours,
                         dtype=float).reshape(-1, 1)  # one for all, or one per customer
    # a transactional message goes out now: only the current local hour (delay 0) is allowed
    removed["horizon"] = ((delay_hours > 0) if transactional else (delay_hours >= horizon))[:, None, :, None]
    if not transactional:
        on_channel = np.array([[c in cfg.offers[o].channels for o in cfg.offer_names] for c in cfg.channel_names])
        removed["offer_channel"] = ~on_channel[None, :, None, :]
        valid = np.stack([cfg.offers[o].valid_hours.contains(HOURS) for o in cfg.offer_names], axis=1)  # (24, O)
        removed["offer_hours"] = ~valid[None, None, :, :]
        rule_ok = np.stack([condition_holds(cfg.offers[o].when, features, contexts) if not cfg.offers[o].when.always
                            else np.ones(n, dtype=bool) for o in cfg.offer_names], axis=1)  # (n, O)
        removed["offer_rule"] = ~rule_ok[:, None, None, :]
    allowed = np.ones((n, K, 24, O), dtype=bool)
    for r in removed.values():
        allowed &= ~r
    limit = cfg.contact_rules.fallback_after_unanswered
    if limit > 0 and not transactional:
        tired = contact.unanswered >= limit  # (n, K)
        open_channel = allowed.any(axis=(2, 3))  # (n, K)
        fresh = open_channel & ~tired
        drop = tired & open_channel & fresh.any(axis=1, keepdims=True)
        removed["fallback"] = drop[:, :, None, None]
        allowed &= ~removed["fallback"]
    return Eligibility(allowed, removed, delay_hours, cfg)


def render_allowed(features: pd.DataFrame, config: Config, channel: np.ndarray, local_hour: np.ndarray,
                   contexts: list[dict] | None = None) -> np.ndarray:
    """Which offers a message already sent on ``channel`` (codes, (n,)) may show when it is opened
    at ``local_hour`` (n,): the offer rules only (``offer_channel``, ``offer_hours``,
    ``offer_rule``), since consent, caps, collision and quiet hours were applied when it was sent.
    Returns (n, O) bool."""
    cfg = config
    n = len(features)
    contexts = contexts if contexts is not None else [{}] * n
    names = cfg.channel_names
    on_channel = np.array([[names[k] in cfg.offers[o].channels for o in cfg.offer_names] for k in channel],
                          dtype=bool).reshape(n, len(cfg.offer_names))
    valid = np.stack([cfg.offers[o].valid_hours.contains(np.asarray(local_hour)) for o in cfg.offer_names], axis=1)
    rule_ok = np.stack([condition_holds(cfg.offers[o].when, features, contexts) if not cfg.offers[o].when.always
                        else np.ones(n, dtype=bool) for o in cfg.offer_names], axis=1)
    return on_channel & valid & rule_ok
