"""Peer policies for the closed-loop benchmark: what a team would build without nextbest.

``LightGBMPeer``
    A plain conversion model: LightGBM on (customer attributes, simple recency counts, weekday,
    channel, local hour, offer) -> P(order that day) and P(order after the message), retrained
    every day on everything logged so far (the history's logging decisions, then its own
    decisions with their outcomes). Greedy on predicted profit:
    ``margin x value x P(order | action) - offer cost x P(order after the message) - channel cost``,
    with "suppress" as an action (its profit: ``margin x value x P(order | suppress)``).
``VWPeer``
    Vowpal Wabbit ``--cb_explore_adf`` (epsilon-greedy) over suppress and (channel, offer,
    3-hour block) actions with the same context features, warm-started on a sample of the
    history's logging decisions with their logged propensities, then learning each day from
    the realized profit of its own decisions (cost = -profit) with its own propensities.

Both only choose among the cells the day's rules allow (``DayContext.allowed``). Features come
from the event log only (no truth): per customer and day, sends in the last 7 days, opens and
orders in the last 28 days, days since the last open and the last order.
"""

from __future__ import annotations

import logging

import lightgbm as lgb
import numpy as np
import pandas as pd

from nextbest.decision.objective import channel_costs, offer_costs

log = logging.getLogger(__name__)
BLOCK = 3  # VW's hour blocks


def _daily_matrix(events: pd.DataFrame, kind: str, code: pd.Index, start_s: int, n_days: int,
                  weight=None) -> np.ndarray:
    """(n_days, n) counts of ``kind`` events per UTC day since ``start_s`` (days before start dropped)."""
    ev = events[events["event"] == kind]
    c = code.get_indexer(ev["customer_id"].astype(str))
    d = (ev["ts"].astype("int64").to_numpy() // 10**9 - start_s) // 86400
    ok = (d >= 0) & (d < n_days) & (c >= 0)
    out = np.zeros((n_days, len(code)))
    np.add.at(out, (d[ok], c[ok]), 1.0 if weight is None else weight[ok])
    return out


class _Context:
    """Customer features per (day, customer) from the event log (days since the history's start)."""

    def __init__(self, sim):
        cust = sim.customers
        self.code = pd.Index(cust["customer_id"].astype(str))
        self.start_s = int(sim.start.timestamp())
        static = pd.DataFrame({
            "age": cust["age"].to_numpy(float), "reviews": cust["review_count"].to_numpy(float),
            "tier": pd.Categorical(cust["loyalty_tier"].astype(str)).codes,
            "device": pd.Categorical(cust["device"].astype(str)).codes,
            "region": pd.Categorical(cust["region"].astype(str)).codes,
        })
        for c in [c for c in cust.columns if c.startswith("consent_")]:
            static[c] = cust[c].to_numpy(float)
        self.static = static
        self.mats = None

    def update(self, events: pd.DataFrame, n_days: int) -> None:
        s = self.start_s
        sends = _daily_matrix(events, "sent", self.code, s, n_days)
        opens = _daily_matrix(events, "opened", self.code, s, n_days)
        orders = _daily_matrix(events, "converted", self.code, s, n_days)

        def window(m, w):  # sum over the w days before each day (as of its start)
            cs = np.vstack([np.zeros((1, m.shape[1])), np.cumsum(m, axis=0)])
            t = np.arange(n_days + 1)
            return cs[t] - cs[np.maximum(t - w, 0)]

        def since(m):
            last = np.full(m.shape[1], -999.0)
            out = np.empty((n_days + 1, m.shape[1]))
            for t in range(n_days + 1):
                out[t] = np.minimum(t - last, 60)
                if t < n_days:
                    last = np.where(m[t] > 0, t, last)
            return out

        self.mats = {"sends7": window(sends, 7), "sends28": window(sends, 28), "opens28": window(opens, 28),
                     "orders28": window(orders, 28), "since_open": since(opens), "since_order": since(orders)}

    def frame(self, day: int, rows: np.ndarray, weekday: int) -> pd.DataFrame:
        """Features of customers ``rows`` as of the start of day ``day``."""
        out = self.static.iloc[rows].reset_index(drop=True)
        for k, m in self.mats.items():
            out[k] = m[day, rows]
        out["weekday"] = weekday
        return out


def _history_labels(sim, cfg):
    """Per logging decision (day-major rows): day, customer, action codes, propensity, labels, profit."""
    dec, n = sim.decisions, len(sim.customers)
    days = len(dec) // n
    day = np.repeat(np.arange(days), n)
    cust = np.tile(np.arange(n), days)
    ch = pd.Index(cfg.channel_names).get_indexer(dec["channel"].astype(str).where(dec["channel"].notna(), "?"))
    off = pd.Index(cfg.offer_names).get_indexer(dec["offer"].astype(str).where(dec["offer"].notna(), "?"))
    hour = dec["local_hour"].to_numpy()
    ev = sim.events
    conv = ev[ev["event"] == "converted"]
    code = pd.Index(sim.customers["customer_id"].astype(str))
    start_s = int(sim.start.timestamp())
    msg_row = pd.Series(np.arange(len(dec)), index=dec["message_id"].astype(str).where(dec["message_id"].notna(), None))
    msg_row = msg_row[msg_row.index.notna()]
    order, redeem, value = np.zeros(len(dec), bool), np.zeros(len(dec), bool), np.zeros(len(dec))
    att = conv["message_id"].notna().to_numpy()
    r = msg_row.reindex(conv.loc[att, "message_id"].astype(str)).to_numpy()
    ok = ~np.isnan(r)
    r = r[ok].astype(int)
    order[r], redeem[r] = True, True
    np.add.at(value, r, conv.loc[att, "value"].to_numpy()[ok])
    org = conv[~att]
    c = code.get_indexer(org["customer_id"].astype(str))
    d = (org["ts"].astype("int64").to_numpy() // 10**9 - start_s) // 86400
    keep = (d >= 0) & (d < days)
    rows = d[keep] * n + c[keep]
    order[rows] = True
    np.add.at(value, rows, org["value"].to_numpy()[keep])
    unsub_ev = ev[ev["event"] == "unsubscribed"]
    u = msg_row.reindex(unsub_ev["message_id"].astype(str)).dropna().to_numpy().astype(int)
    unsub = np.zeros(len(dec), bool)
    unsub[u] = True
    obj = cfg.objective
    sent = ch >= 0
    profit = obj.margin * value - np.where(redeem, offer_costs(cfg, np.maximum(off, 0), value), 0.0)
    profit -= np.where(sent, channel_costs(cfg)[np.maximum(ch, 0)] + obj.unsubscribe_cost * unsub, 0.0)
    return pd.DataFrame({"day": day, "cust": cust, "ch": ch, "hour": np.where(sent, hour, -1), "off": np.where(sent, off, -1),
                         "prop": dec["propensity"].to_numpy(), "order": order, "redeem": redeem, "profit": profit})


class LightGBMPeer:
    """Greedy on a plain LightGBM conversion model retrained daily (see module docstring)."""

    def __init__(self, sim, cfg, seed: int = 0, n_estimators: int = 80, max_history_rows: int = 150_000):
        self.cfg, self.seed, self.n_estimators = cfg, seed, n_estimators
        self.ctx = _Context(sim)
        hist = _history_labels(sim, cfg)
        days = int(hist["day"].max()) + 1
        self.ctx.update(sim.events, days)
        hist = hist[hist["day"] >= 7]
        if len(hist) > max_history_rows:
            hist = hist.sample(max_history_rows, random_state=seed)
        wd = [sim.world.weekday_of(int(d)) for d in range(days + 1)]
        self.rows = [self._x(hist["day"].to_numpy(), hist["cust"].to_numpy(), wd, hist)
                     .assign(y_order=hist["order"].to_numpy(), y_redeem=hist["redeem"].to_numpy())]
        value = pd.Series(np.zeros(len(sim.customers)))
        conv = sim.events[sim.events["event"] == "converted"]
        mean_v = conv.groupby(conv["customer_id"].astype(str))["value"].mean()
        self.value = mean_v.reindex(self.ctx.code).fillna(conv["value"].mean()).to_numpy() + 0 * value.to_numpy()

    def _x(self, day, cust, weekdays, act) -> pd.DataFrame:
        parts = []
        for d in np.unique(day):
            sel = day == d
            parts.append(self.ctx.frame(int(d), cust[sel], weekdays[int(d)]).assign(_pos=np.flatnonzero(sel)))
        x = pd.concat(parts).sort_values("_pos").drop(columns="_pos").reset_index(drop=True)
        return x.assign(ch=np.asarray(act["ch"]), hour=np.asarray(act["hour"]), off=np.asarray(act["off"]))

    def _fit(self):
        data = pd.concat(self.rows, ignore_index=True)
        x = data.drop(columns=["y_order", "y_redeem"])
        params = dict(n_estimators=self.n_estimators, learning_rate=0.1, num_leaves=31, min_child_samples=50,
                      subsample=1.0, random_state=self.seed, n_jobs=1, verbose=-1)
        self.m_order = lgb.LGBMClassifier(**params).fit(x, data["y_order"], categorical_feature=["ch", "off"])
        sent = (x["ch"] >= 0).to_numpy()
        self.m_redeem = lgb.LGBMClassifier(**params).fit(x[sent], data["y_redeem"][sent],
                                                         categorical_feature=["ch", "off"])

    def decide(self, ctx):
        cfg = self.cfg
        self.ctx.update(ctx.events, ctx.history_day)
        self._fit()
        n = len(ctx.features)
        base = self.ctx.frame(ctx.history_day, np.arange(n), ctx.weekday)
        cust, k, h, o = np.nonzero(ctx.allowed)
        none = pd.DataFrame({"ch": -1, "hour": -1, "off": -1}, index=range(n))
        x_sup = base.assign(**{c: none[c].to_numpy() for c in none})
        p_sup = self.m_order.predict_proba(x_sup)[:, 1]
        x = base.iloc[cust].reset_index(drop=True).assign(ch=k, hour=h, off=o)
        p_ord = self.m_order.predict_proba(x)[:, 1]
        p_red = self.m_redeem.predict_proba(x)[:, 1]
        v = self.value[cust]
        obj = cfg.objective
        gain = (obj.margin * v * p_ord - offer_costs(cfg, o, v) * p_red - channel_costs(cfg)[k]) - obj.margin * v * p_sup[cust]
        best = pd.DataFrame({"c": cust, "g": gain, "i": np.arange(len(cust))}).sort_values("g").groupby("c").tail(1)
        ch, hour, off = np.full(n, -1), np.zeros(n, int), np.zeros(n, int)
        best = best[best["g"] > 0]
        i, c = best["i"].to_numpy(), best["c"].to_numpy()
        ch[c], hour[c], off[c] = k[i], h[i], o[i]
        return ch, hour, off

    def learn(self, ctx, ch, hour, off, out) -> None:
        n = len(ch)
        sent = ch >= 0
        x = self.ctx.frame(ctx.history_day, np.arange(n), ctx.weekday).assign(
            ch=ch, hour=np.where(sent, hour, -1), off=np.where(sent, off, -1))
        self.rows.append(x.assign(y_order=out["order"], y_redeem=out["message_order"]))


class VWPeer:
    """Vowpal Wabbit ``cb_explore_adf`` over suppress and (channel, offer, hour block) actions."""

    def __init__(self, sim, cfg, seed: int = 0, epsilon: float = 0.05, warm_start: int = 20_000):
        import vowpalwabbit

        self.cfg, self.rng = cfg, np.random.default_rng([seed, 9])
        self.vw = vowpalwabbit.Workspace(f"--cb_explore_adf --epsilon {epsilon} -q sa --quiet --random_seed {seed}"
                                         " --power_t 0.5 -l 0.1")
        self.ctx = _Context(sim)
        hist = _history_labels(sim, cfg)
        days = int(hist["day"].max()) + 1
        self.ctx.update(sim.events, days)
        from nextbest.sim.simulate import LoggingPolicy

        _, slots = LoggingPolicy().action_tables(cfg)
        hist = hist[hist["day"] >= 7]
        hist = hist.sample(min(warm_start, len(hist)), random_state=seed).sort_values("day")
        K, O = len(cfg.channel_names), len(cfg.offer_names)
        n_blocks = 24 // BLOCK
        for d, part in hist.groupby("day"):
            shared = self._shared(self.ctx.frame(int(d), part["cust"].to_numpy(), sim.world.weekday_of(int(d))))
            for s, (_, r) in zip(shared, part.iterrows()):
                acts = [(-1, -1, -1)]
                if r["ch"] >= 0:  # the logged action's block, among the blocks the logging policy could pick
                    acts += [(int(r["ch"]), b, int(r["off"])) for b in range(n_blocks)]
                    chosen = 1 + int(r["hour"]) // BLOCK
                    hs = slots[int(r["ch"]), int(r["off"])]
                    prop = r["prop"] * max(((hs // BLOCK) == chosen - 1).sum(), 1)
                else:
                    acts += [(k, 0, o) for k in range(K) for o in range(O)][:1]
                    chosen, prop = 0, r["prop"]
                self._learn_one(s, acts, chosen, -r["profit"], min(prop, 1.0))

    @staticmethod
    def _shared(x: pd.DataFrame) -> list[str]:
        cols = ["age", "reviews", "sends7", "sends28", "opens28", "orders28", "since_open", "since_order"]
        num = x[cols].to_numpy(float) / np.array([50, 5, 5, 15, 5, 2, 30, 30])
        cat = x[["tier", "device", "region", "weekday"]].to_numpy()
        out = []
        for a, b in zip(num, cat):
            out.append("shared |s " + " ".join(f"{c}:{v:.3f}" for c, v in zip(cols, a))
                       + f" tier{b[0]} dev{b[1]} reg{b[2]} wd{b[3]}")
        return out

    def _line(self, act) -> str:
        k, b, o = act
        if k < 0:
            return "|a suppress"
        c, off = self.cfg.channel_names[k], self.cfg.offer_names[o]
        return f"|a c_{c} o_{off} b{b} co_{c}_{off} cb_{c}_{b} send"

    def _learn_one(self, shared, acts, chosen, cost, prob) -> None:
        lines = [shared] + [(f"0:{cost:.4f}:{prob:.6f} " if i == chosen else "") + self._line(a)
                            for i, a in enumerate(acts)]
        self.vw.learn("\n".join(lines))

    def _actions(self, allowed_c) -> tuple[list, list]:
        """Actions allowed for one customer (suppress first) and the hour played for each."""
        acts, hours = [(-1, -1, -1)], [0]
        k, h, o = np.nonzero(allowed_c)
        seen = {}
        for kk, hh, oo in zip(k, h, o):
            key = (int(kk), int(hh) // BLOCK, int(oo))
            seen.setdefault(key, []).append(int(hh))
        for key, hs in seen.items():
            acts.append(key)
            hours.append(hs[len(hs) // 2])
        return acts, hours

    def decide(self, ctx):
        n = len(ctx.features)
        self.ctx.update(ctx.events, ctx.history_day)
        shared = self._shared(self.ctx.frame(ctx.history_day, np.arange(n), ctx.weekday))
        ch, hour, off = np.full(n, -1), np.zeros(n, int), np.zeros(n, int)
        self._last = []
        for i in range(n):
            acts, hours = self._actions(ctx.allowed[i])
            pmf = np.asarray(self.vw.predict("\n".join([shared[i]] + [self._line(a) for a in acts])), float)
            pmf = pmf / pmf.sum()
            j = int(self.rng.choice(len(acts), p=pmf))
            if acts[j][0] >= 0:
                ch[i], hour[i], off[i] = acts[j][0], hours[j], acts[j][2]
            self._last.append((shared[i], acts, j, float(pmf[j])))
        return ch, hour, off

    def learn(self, ctx, ch, hour, off, out) -> None:
        for i, (shared, acts, j, p) in enumerate(self._last):
            played = ch[i] >= 0
            if played != (acts[j][0] >= 0):  # the closed loop suppressed a send outside the rules
                continue
            self._learn_one(shared, acts, j, -float(out["profit"][i]), p)
