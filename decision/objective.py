"""The objective: the expected profit of a decision, written once for the simulator and the policy.

profit = margin x order value x P(order)
         - offer cost (discount or fixed cost) x P(order that redeems the offer)
         - channel cost (per message sent)
         - unsubscribe_cost x P(unsubscribe)

"Don't send" is an action too: its profit is ``margin x order value x P(order without a message)``.
"""

from __future__ import annotations

import numpy as np

from nextbest.features.config import Config


def channel_costs(config: Config) -> np.ndarray:
    """Cost per message of each channel, in ``config.channel_names`` order, shape (K,)."""
    return np.array([config.channels[c].cost for c in config.channel_names], dtype=float)


def offer_costs(config: Config, offer_code, order_value) -> np.ndarray:
    """Cost of the offer (codes into ``config.offer_names``) on orders of ``order_value``; arrays (n,)."""
    offer_code = np.asarray(offer_code)
    order_value = np.asarray(order_value, dtype=float)
    out = np.zeros(np.broadcast_shapes(offer_code.shape, order_value.shape))
    value = np.broadcast_to(order_value, out.shape)
    code = np.broadcast_to(offer_code, out.shape)
    for j, name in enumerate(config.offer_names):
        sel = code == j
        if sel.any():
            out[sel] = config.offers[name].cost(value[sel])
    return out


def expected_profit(config: Config, channel: str | None, offer: str, p_order, order_value,
                    p_unsubscribe=0.0, p_redeem=None):
    """Expected profit of one action; arrays broadcast.

    Parameters
    ----------
    channel : str or None
        ``None`` means suppress (no message, no channel cost, no offer).
    offer : str
        Offer name from the config (``"none"`` for no offer).
    p_order : array (n,)
        Probability of an order in the decision's period.
    order_value : array (n,)
        Expected order value before any discount.
    p_unsubscribe : array (n,)
    p_redeem : array (n,), optional
        Probability of an order that redeems the offer; defaults to ``p_order``.

    Returns
    -------
    array (n,)
    """
    obj = config.objective
    p_order = np.asarray(p_order, dtype=float)
    order_value = np.asarray(order_value, dtype=float)
    profit = obj.margin * order_value * p_order
    if channel is None:
        return profit
    redeem = p_order if p_redeem is None else np.asarray(p_redeem, dtype=float)
    profit = profit - config.offers[offer].cost(order_value) * redeem
    return profit - config.channels[channel].cost - obj.unsubscribe_cost * np.asarray(p_unsubscribe, dtype=float)
