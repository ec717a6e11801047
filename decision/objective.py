"""The objective: the expected profit of a decision, written once for the simulator and the policy.

profit = margin x order value x P(order)
         - offer cost (discount or fixed cost) x P(order that redeems the offer)
         - channel cost (per message sent)
         - unsubscribe_cost x P(unsubscribe)

"Don't send" is an action too: its profit is ``margin x order value x P(order without a message)``.

:func:`realized_profit` is the same sum over what did happen (orders, redemptions, unsubscribes):
the reward of the off-policy evaluation, the measured incrementality, the closed loop's feedback
and, event by event (``decision.online.event_reward``), the service's running reward of a decision.
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


def realized_profit(config: Config, channel_code, offer_code, order_value, redeemed, unsubscribed,
                    redeemed_value=None) -> np.ndarray:
    """Realized profit of decisions from what followed them; arrays broadcast to (n,).

    profit = margin x order value
             - offer cost of the orders that redeem the message's offer
             - channel cost (if a message was sent)
             - unsubscribe_cost x unsubscribed (an unsubscribe from the message)

    An offer's cost is a fixed part per redeeming order (``fixed`` offers) plus a share of the
    redeeming orders' value (``percent`` offers), so several orders per decision add up exactly.
    A decision that sent nothing has no channel, offer or unsubscribe cost.

    Parameters
    ----------
    config : Config
    channel_code : int array (n,)
        The message's channel (codes into ``config.channel_names``); -1 where nothing was sent.
    offer_code : int array (n,)
        The message's offer (codes into ``config.offer_names``); ignored where nothing was sent.
    order_value : float array (n,)
        Value of all the decision's orders (with or without the offer) in its window.
    redeemed : int or bool array (n,)
        How many of those orders redeem the message's offer.
    unsubscribed : bool array (n,)
        Whether the message caused an unsubscribe.
    redeemed_value : float array (n,), optional
        Value of the redeeming orders; by default ``order_value`` where ``redeemed`` (every order
        of the decision redeems).

    Returns
    -------
    float array (n,)
    """
    obj = config.objective
    channel_code = np.asarray(channel_code)
    sent = channel_code >= 0
    order_value = np.asarray(order_value, dtype=float)
    redeemed = np.where(sent, np.asarray(redeemed, dtype=float), 0.0)
    if redeemed_value is None:
        redeemed_value = np.where(redeemed > 0, order_value, 0.0)
    redeemed_value = np.where(sent, np.asarray(redeemed_value, dtype=float), 0.0)
    offer_code = np.where(sent, offer_code, -1)
    per_order = offer_costs(config, offer_code, 0.0)                    # the fixed part of each redeeming order
    share = offer_costs(config, offer_code, redeemed_value) - per_order  # the part proportional to its value
    channel = np.where(sent, channel_costs(config)[np.maximum(channel_code, 0)], 0.0)
    unsub = np.where(sent, np.asarray(unsubscribed, dtype=float), 0.0)
    return obj.margin * order_value - (per_order * redeemed + share) - channel - obj.unsubscribe_cost * unsub
