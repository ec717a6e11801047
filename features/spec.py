"""The feature list, written once.

Every engagement-history column is named here with its family and meaning; ``history.py``
computes exactly these columns (it checks), LightGBM reads them as its feature names and the
MLflow signature is built from them. Names depend on the configured channels, offers and
windows, so the list is a function of the config.

Scopes: ``all`` (every channel) and one per channel. Counts look back ``windows_days``; rates
are empirical-Bayes smoothed toward the population's rate over the ``prior_days`` before the
snapshot day: ``(k + m p) / (n + m)`` with ``m = prior_strength``.
"""

from __future__ import annotations

from dataclasses import dataclass

from nextbest.features.config import Config

COUNT_EVENTS = ("sent", "delivered", "opened", "clicked", "converted")
# rate name -> (numerator event, denominator event); conversions in rates are attributed orders
RATES = {
    "delivery_rate": ("delivered", "sent"),
    "open_rate": ("opened", "delivered"),
    "click_rate": ("clicked", "delivered"),
    "conversion_rate": ("converted_attributed", "delivered"),
}
RECENCY = {"send": "sent", "open": "opened", "click": "clicked", "conversion": "converted"}
CUSTOMER_BASE = ("timezone", "tenure_days")


@dataclass(frozen=True)
class Feature:
    name: str
    family: str
    description: str
    categorical: bool = False


def scopes(config: Config) -> tuple[str, ...]:
    return ("all",) + config.channel_names


def history_features(config: Config) -> list[Feature]:
    """The engagement-history features for ``config``, in output column order."""
    fs = config.features
    out: list[Feature] = []
    for s in scopes(config):
        where = "on any channel" if s == "all" else f"on {s}"
        for w in fs.windows_days:
            for e in COUNT_EVENTS:
                what = "orders (any, incl. organic)" if (e == "converted" and s == "all") else f"{e} events"
                if e == "converted" and s != "all":
                    what = "orders attributed to messages"
                out.append(Feature(f"{s}_{e}_{w}d", "count", f"{what} {where} in the last {w} days"))
            for r, (num, den) in RATES.items():
                out.append(Feature(f"{s}_{r}_{w}d", "rate",
                                   f"smoothed {num}/{den} {where} in the last {w} days"))
        for h in fs.fatigue_hours:
            out.append(Feature(f"{s}_sent_{h}h", "fatigue", f"messages sent {where} in the last {h} hours"))
        for r, e in RECENCY.items():
            out.append(Feature(f"{s}_days_since_{r}", "recency", f"days since the last {e} event {where} (NaN: never)"))
        out.append(Feature(f"{s}_bounced_{fs.windows_days[-1]}d", "deliverability",
                           f"bounces {where} in the last {fs.windows_days[-1]} days"))
        out.append(Feature(f"{s}_unsubscribed", "deliverability", f"unsubscribes {where}, ever"))
        out.append(Feature(f"{s}_unanswered", "fatigue",
                           f"messages {where} since the last open {where} (all of them if never opened)"))
    long = fs.windows_days[-1]
    out += [
        Feature(f"order_value_{long}d", "monetary", f"total order value in the last {long} days"),
        Feature("avg_order_value", "monetary", "average order value, ever (NaN: no order)"),
        Feature("lifetime_orders", "monetary", "orders, ever"),
    ]
    for o in config.offer_names:
        out += [
            Feature(f"offer_{o}_sent_{long}d", "offer", f"messages with offer {o} in the last {long} days"),
            Feature(f"offer_{o}_converted_{long}d", "offer", f"orders after offer {o} in the last {long} days"),
            Feature(f"offer_{o}_conversion_rate_{long}d", "offer", f"smoothed orders per message with offer {o}"),
        ]
    for h in range(24):
        out.append(Feature(f"open_hour_share_{h:02d}", "timing", f"smoothed share of opens at local hour {h}"))
    for d in range(7):
        out.append(Feature(f"open_dow_share_{d}", "timing", f"smoothed share of opens on local weekday {d} (0 = Monday)"))
    out += [
        Feature("top_open_hour", "timing", "most frequent local open hour (NaN: no open)"),
        Feature("tenure_days", "customer", "days since signup (or the first event)"),
        Feature("timezone", "customer", "IANA time zone", categorical=True),
    ]
    out += [Feature(f"consent_{c}", "customer", f"consent to {c} (before unsubscribes)") for c in config.channel_names]
    return out


def feature_names(config: Config) -> list[str]:
    return [f.name for f in history_features(config)]
