"""What the config allows of a decide request, checked before anything is written: a bad
request (unknown channel or offer, time zone, a clock far off, a request id twice) changes nothing."""

from __future__ import annotations

import zoneinfo
from datetime import datetime, timedelta, timezone


class InvalidInput(ValueError):
    """A request the config rejects; ``field`` names where (e.g. ``requests[3].channels``)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message

    def __reduce__(self):  # crosses from the engine's process to the HTTP worker
        return InvalidInput, (self.field, self.message)


def check_requests(requests: list, config, max_clock_skew_days: float, prefix: str = "") -> None:
    """Reject what the config does not allow, naming the field (``InvalidInput``); writes nothing.

    Parameters
    ----------
    requests : list of DecideRequest
    config : Config
    max_clock_skew_days : float
        How far a request's ``now`` may be from the server's clock.
    prefix : str
        Name of the request list in field names (``requests`` for a batch).
    """
    clock = datetime.now(timezone.utc)
    skew = timedelta(days=max_clock_skew_days)
    seen: dict[str, int] = {}
    for i, r in enumerate(requests):
        at = f"{prefix}[{i}]." if prefix else ""
        if r.now is not None and not clock - skew <= r.now <= clock + skew:
            raise InvalidInput(f"{at}now", f"{r.now.isoformat()} is more than {max_clock_skew_days:g} "
                                           f"days from the server's clock ({clock:%Y-%m-%dT%H:%M}Z)")
        if r.request_id is not None:
            if r.request_id in seen:
                raise InvalidInput(f"{at}request_id", f"{r.request_id!r} also names request {seen[r.request_id]}")
            seen[r.request_id] = i
        for name, given, known in (("channels", r.channels, config.channel_names),
                                   ("offers", r.offers, config.offer_names)):
            unknown = sorted(set(given or ()) - set(known))
            if unknown:
                raise InvalidInput(f"{at}{name}", f"unknown {name[:-1]}(s) {unknown}; configured: {list(known)}")
            if given is not None and not given:
                raise InvalidInput(f"{at}{name}", "must not be empty (leave it out for all)")
        if r.profile is not None:
            unknown = sorted(set(r.profile.consent) - set(config.channel_names))
            if unknown:
                raise InvalidInput(f"{at}profile.consent", f"unknown channel(s) {unknown}")
            if r.profile.timezone is not None:
                try:
                    zoneinfo.ZoneInfo(r.profile.timezone)
                except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                    raise InvalidInput(f"{at}profile.timezone", f"unknown time zone {r.profile.timezone!r}") from None


def check_feedback(fb, max_order_value: float, max_clock_skew_days: float) -> None:
    """Reject feedback beyond the deployment's bounds before it is looked up (``InvalidInput``):
    an order value over ``serving.max_order_value``, a time further ahead of the server's clock
    than ``serving.max_clock_skew_days`` (a decision's ``now`` may be that far ahead, its events
    not further)."""
    if fb.value is not None and fb.value > max_order_value:
        raise InvalidInput("value", f"{fb.value:g} is over the largest order value {max_order_value:g} "
                                    "(serving.max_order_value)")
    clock = datetime.now(timezone.utc)
    if fb.ts > clock + timedelta(days=max_clock_skew_days):
        raise InvalidInput("ts", f"{fb.ts.isoformat()} is more than {max_clock_skew_days:g} days ahead of the "
                                 f"server's clock ({clock:%Y-%m-%dT%H:%M}Z)")
