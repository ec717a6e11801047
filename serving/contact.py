"""A customer's contact state in the serving store, and the contact history the rules read from it.

One JSON document per customer::

    {"sends": [[send time (epoch s), channel(, message id)], ...],   marketing sends of the last 7 days and
                                                                     planned ones (other senders' with their id)
     "unanswered": {channel: messages since the last open},
     "unsubscribed": [channel, ...]}

A decision to send at ``send_at`` is recorded as a send at ``send_at`` when it is taken, so a
planned message already counts against caps and collision for every later decision. Counting
planned messages in the rolling windows (``sent_day``: send times after ``now - 24 h``, future
ones included) errs on the safe side. Transactional messages are never recorded: they do not
count against marketing caps. Only ``serving.engine`` changes states, always by compare-and-set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from nextbest.decision.rules import ContactHistory
from nextbest.features.localtime import WEEK_S

DAY_S = 86400
RESET_UNANSWERED = ("opened", "clicked", "converted")


@dataclass
class ContactState:
    sends: list = field(default_factory=list)
    unanswered: dict = field(default_factory=dict)
    unsubscribed: list = field(default_factory=list)

    @classmethod
    def from_json(cls, text: str | None) -> "ContactState":
        if text is None:
            return cls()
        raw = json.loads(text)
        return cls(raw["sends"], raw["unanswered"], raw["unsubscribed"])

    def to_json(self) -> str:
        return json.dumps({"sends": self.sends, "unanswered": self.unanswered, "unsubscribed": self.unsubscribed},
                          separators=(",", ":"))

    def with_send(self, t: float, channel: str, message_id: str | None = None) -> "ContactState":
        """The state after a marketing send at ``t``; sends older than a week before it are dropped.
        A send named by ``message_id`` (another sender's message, ``serving.events``) is kept with
        its id and counts once however often it is applied."""
        if message_id is not None and any(len(s) > 2 and s[2] == message_id for s in self.sends):
            return ContactState(list(self.sends), dict(self.unanswered), list(self.unsubscribed))
        keep = [s for s in self.sends if s[0] > t - WEEK_S]
        entry = [float(t), channel] if message_id is None else [float(t), channel, message_id]
        return ContactState(keep + [entry], {**self.unanswered, channel: self.unanswered.get(channel, 0) + 1},
                            list(self.unsubscribed))

    def with_event(self, channel: str | None, event: str) -> "ContactState":
        """The state after feedback: an open (or click, order) resets the channel's unanswered
        count; an unsubscribe revokes the channel's consent."""
        out = ContactState(list(self.sends), dict(self.unanswered), list(self.unsubscribed))
        if channel is None:
            return out
        if event in RESET_UNANSWERED:
            out.unanswered[channel] = 0
        if event == "unsubscribed" and channel not in out.unsubscribed:
            out.unsubscribed.append(channel)
        return out


def history(states: list[ContactState], now_s: np.ndarray, channels: list[str]) -> tuple[ContactHistory, np.ndarray]:
    """The rules' contact history at each customer's ``now`` and who unsubscribed where, (n, K) bool."""
    n, K = len(states), len(channels)
    code = {c: k for k, c in enumerate(channels)}
    day, week = np.zeros((n, K), np.int64), np.zeros((n, K), np.int64)
    since = np.full(n, np.inf)
    unanswered, unsub = np.zeros((n, K), np.int64), np.zeros((n, K), bool)
    for i, st in enumerate(states):
        now = float(now_s[i])
        for t, c, *_ in st.sends:
            k = code.get(c)
            if k is None:
                continue  # a channel no longer configured
            day[i, k] += t > now - DAY_S
            week[i, k] += t > now - WEEK_S
            since[i] = min(since[i], (now - t) / 3600.0)
        for c, v in st.unanswered.items():
            if c in code:
                unanswered[i, code[c]] = v
        for c in st.unsubscribed:
            if c in code:
                unsub[i, code[c]] = True
    return ContactHistory(day, week, since, unanswered), unsub
