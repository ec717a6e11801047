"""The features the service decides on: every customer's engagement history as of the data's
last day, computed once at start with the training code (``features.history``), plus the
cold-start row for customers the data does not know. A customer with engagement events since the
export (the service's own sends and their feedback, other senders' messages, orders: the
contact state's ``live`` list) is described as of the decision's ``now`` from the export's events
plus those, exactly as a batch snapshot of the same events (:meth:`Snapshot.live_history`). The data directory is read as training
reads it (``features.validate.check``: Parquet or CSV alike, timestamps parsed, consent as
booleans; bad data stops the start with the file, column and rule broken)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from nextbest.features import behaviour
from nextbest.features.eventlog import EV, EventLog
from nextbest.features.history import Population, engagement_history
from nextbest.features.live_log import LiveLog, delta_log
from nextbest.features.spec import feature_names
from nextbest.features.io import find_table, load_dataset, read_behaviour
from nextbest.features.validate import check
from nextbest.decision.candidates import CustomerArrays
from nextbest.serving.contact import ContactState

log = logging.getLogger(__name__)

COLD = "\x00cold-start"
TABLES = ("customers", "events", "behaviour")  # behaviour is optional (features.behaviour)


def source_fingerprint(data_dir: str) -> tuple:
    """What identifies the data directory's current export: each table's files with their size and
    modification time (a folder of Parquet parts counts every part). A changed export changes it."""
    out = []
    for name in TABLES:
        try:
            path = find_table(data_dir, name)
        except FileNotFoundError:
            out.append((name, None))
            continue
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        out.append((name, tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file())))
    return tuple(out)


class Snapshot:
    """Engagement histories of every customer of a data directory as of its last day, plus the
    cold-start row; built once at start with the training code (``features.history``).

    Parameters
    ----------
    data_dir : str
    config : Config
    """

    def __init__(self, data_dir: str, config):
        self.source = source_fingerprint(data_dir)  # before reading: a later change is seen as new
        files = {name: str(find_table(data_dir, name)) for name in TABLES[:2]}
        customers, events = check(*load_dataset(data_dir), config, files=files)
        table = read_behaviour(data_dir)
        if table is not None:
            from nextbest.features.validate import Problem, ValidationError, parse_timestamps

            problems = behaviour.validate_behaviour(table, customers["customer_id"], str(find_table(data_dir, "behaviour")),
                                                    pd.Timestamp.now(tz="UTC"))
            if problems:
                raise ValidationError(problems)
            table = table.assign(ts=parse_timestamps(table["ts"]))
        self.behaviour_keep_s = behaviour.keep_seconds(config)
        self._behaviour = behaviour.states_of(table, self.behaviour_keep_s)  # the data's, until an event arrives
        # the behaviour features the config's rules read: only those are computed per decision
        names = set(behaviour.feature_names(config))
        self.behaviour_keys = sorted({k for o in config.offers.values() for k in o.when.customer} & names)
        self.config = config
        self.as_of = events["ts"].max().ceil("D") if len(events) else pd.Timestamp.now(tz="UTC").ceil("D")
        log_ = EventLog.build(customers, events[events["ts"] < self.as_of], config)
        ids = customers["customer_id"].astype(str).to_numpy()
        pop = Population.from_log(log_)
        feats = engagement_history(log_, np.append(ids, COLD), self.as_of, pop)
        self.frame = feats
        # what live histories need: the data's events, its priors, and the time after which an
        # event is live (the export's last event; a later-dated one is not in the export)
        self.log, self.population = log_, pop
        self.live_after_ms = float(log_.t.max()) if len(log_.keys) else -np.inf
        self.live_columns = [c for c in feature_names(config) if c != "timezone" and not c.startswith("consent_")]
        # the data's sends of the last week: a customer's contact state until the service has one
        recent = events[(events["event"] == "sent") & (events["ts"] >= self.as_of - pd.Timedelta(days=7))
                        & (events["ts"] < self.as_of)]
        self._recent = {str(c): [[t.timestamp(), ch] for t, ch in zip(g["ts"], g["channel"].astype(str))]
                        for c, g in recent.groupby("customer_id", observed=True)}
        self.arrays = CustomerArrays(feats, compact=True)  # converted once (float32 where exact); batches take rows
        self.index = pd.Index(ids)
        self.channels = config.channel_names
        # what contact_state reads, as plain arrays: a pandas row per event costs ~0.3 ms
        self._position = {c: i for i, c in enumerate(ids)}
        self._unanswered = np.stack([feats[f"{c}_unanswered"].to_numpy()[:len(ids)] for c in self.channels],
                                    axis=1).astype(np.int64) if len(self.channels) else np.zeros((len(ids), 0), int)
        self.default_timezone = config.default_timezone
        log.info("features of %d customers as of %s", len(ids), self.as_of)

    def contact_state(self, customer: str, stored: str | None = None) -> ContactState:
        """The customer's contact state: the ``stored`` one (JSON) if the service has one (without
        the live events dated up to the export's last event), else what the data shows (sends of the last week before the snapshot, unanswered messages per
        channel); empty for an unknown customer."""
        if stored is not None:  # live entries the export now holds go (a newer export was loaded)
            return ContactState.from_json(stored).without_live_before(self.live_after_ms)
        i = self._position.get(customer)
        if i is None:
            return ContactState()
        row = self._unanswered[i]
        unanswered = {c: int(row[k]) for k, c in enumerate(self.channels) if row[k] > 0}
        return ContactState(list(self._recent.get(customer, [])), unanswered, [])

    def behaviour_state(self, customer: str, stored: str | None = None) -> behaviour.BehaviourState:
        """The customer's behaviour state: the ``stored`` one (JSON) if the service has one, else
        the data's (empty for a customer without behaviour)."""
        if stored is not None:
            return behaviour.BehaviourState.from_json(stored)
        return self._behaviour.get(customer) or behaviour.BehaviourState()

    def with_behaviour(self, feats: pd.DataFrame, stored: list, now_s) -> pd.DataFrame:
        """``feats`` with the behaviour features the rules read (:attr:`behaviour_keys`) as of each
        row's ``now_s``, from the stored states (JSON or None per row, :meth:`behaviour_state`)."""
        if not self.behaviour_keys:
            return feats
        rows = [self.behaviour_state(c, raw).features(float(t), self.config)
                for c, raw, t in zip(feats.index.astype(str), stored, np.broadcast_to(now_s, len(feats)))]
        return feats.assign(**{k: np.array([r[k] for r in rows], dtype=float) for k in self.behaviour_keys})

    def rows(self, customer_ids: list[str], profiles: list) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        """Feature rows (index = customer ids), which customers are known, and each row's
        position in the snapshot (the cold-start row for unknown customers); shapes (n, ...), (n,), (n,)."""
        codes = self.index.get_indexer(customer_ids)
        known = codes >= 0
        pos = np.where(known, codes, len(self.index))
        out = self.frame.iloc[pos]
        out.index = pd.Index(customer_ids, name="customer_id")
        cold = np.flatnonzero(~known)
        if len(cold):
            out = out.copy()
            for i in cold:
                p = profiles[i]
                tz = (p.timezone if p and p.timezone else None) or self.default_timezone
                if tz not in out["timezone"].cat.categories:
                    out["timezone"] = out["timezone"].cat.add_categories([tz])
                out.iloc[i, out.columns.get_loc("timezone")] = tz
                for c in self.channels:
                    out.iloc[i, out.columns.get_loc(f"consent_{c}")] = bool(p and p.consent.get(c, False))
        return out, known, pos

    def live_history(self, customer_ids: list[str], lives: list[list], times: pd.DatetimeIndex) -> pd.DataFrame:
        """Engagement histories of known customers as of ``times`` (one per customer) from the
        data's events plus each customer's live events (``ContactState.live``; entries dated up to
        the export's last event are the export's and left out): exactly a batch snapshot of the
        same events (``features.live_log``), with the export's priors. Entries of a channel or
        offer the config no longer has, and entries that are no engagement event (another sender's
        transactional send, ``contact.TRANSACTIONAL_SENT``), are left out."""
        cfg = self.config
        ch_code = {c: k for k, c in enumerate(cfg.channel_names)}
        off_code = {o: j for j, o in enumerate(cfg.offer_names)}
        codes = self.log.customer_ids.get_indexer(pd.Index(customer_ids))
        cols: list[list] = [[], [], [], [], [], []]
        for code, live in zip(codes, lives):
            for t, event, channel, offer, value, *_ in live:
                if t <= self.live_after_ms or event not in EV or (channel is not None and channel not in ch_code) \
                        or (offer is not None and offer not in off_code):
                    continue
                for col, v in zip(cols, (code, t, EV[event], ch_code.get(channel, -1), off_code.get(offer, -1),
                                         np.nan if value is None else value)):
                    col.append(v)
        delta = delta_log(self.log, *cols)
        return engagement_history(LiveLog(self.log, delta), customer_ids, times, self.population)

    def features(self, customer_ids: list[str], profiles: list, unsubscribed: np.ndarray,
                 states: list | None = None, times: pd.DatetimeIndex | None = None):
        """:meth:`rows` with each known customer's live events (``states``, their contact states)
        counted as of its ``times`` (:meth:`live_history`; unless ``serving.live_history`` is off) and the unsubscribes feedback reported,
        (n, K) bool, applied. Returns the features, which customers are known, each row's position
        in the snapshot, the columns that differ from the snapshot's and the rows that differ from
        it, (n,) bool: recomputed from live events, or a newcomer's profile on the cold-start row
        (both for ``CustomerArrays.take``)."""
        feats, known, pos = self.rows(customer_ids, profiles)
        fresh = np.zeros(len(customer_ids), bool)
        if states is not None and self.config.serving.live_history:
            # a customer is described live once an event after the export is due before its now
            # (a planned send alone changes nothing yet): the export's row otherwise
            now_ms = times.asi8 // 10**6 if times.unit == "ns" else times.as_unit("ns").asi8 // 10**6
            fresh = known & np.array([st.has_live_between(self.live_after_ms, t) for st, t in zip(states, now_ms)], bool)
        if fresh.any():
            at = np.flatnonzero(fresh)
            live = self.live_history([customer_ids[i] for i in at], [states[i].live for i in at], times[at])
            # the same dtypes as the rows': an unknown customer's profile may have added a time zone
            theirs = live.dtypes
            widen = {c: d for c, d in feats.dtypes.items() if isinstance(d, pd.CategoricalDtype) and d != theirs[c]}
            if widen:  # DataFrame.astype rebuilds every column, even with nothing to change
                live = live.astype(widen)
            if fresh.all():
                feats = live
            else:
                rest = np.flatnonzero(~fresh)
                order = np.argsort(np.concatenate([at, rest]), kind="stable")
                feats = pd.concat([live, feats.iloc[rest]]).iloc[order]
            feats.index = pd.Index(customer_ids, name="customer_id")
        edited = [f"consent_{c}" for c in self.channels] if not known.all() else []
        if unsubscribed.any():
            feats = feats.copy()
            for k, c in enumerate(self.channels):
                feats[f"{c}_unsubscribed"] = np.where(unsubscribed[:, k], 1, feats[f"{c}_unsubscribed"].to_numpy())
                edited.append(f"{c}_unsubscribed")
        return feats, known, pos, edited, fresh | ~known
