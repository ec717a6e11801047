"""The features the service decides on: every customer's engagement history as of the data's
last day, computed once at start with the training code (``features.history``), plus the
cold-start row for customers the data does not know. The data directory is read as training
reads it (``features.validate.check``: Parquet or CSV alike, timestamps parsed, consent as
booleans; bad data stops the start with the file, column and rule broken)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from nextbest.features import behaviour
from nextbest.features.eventlog import EventLog
from nextbest.features.history import Population, engagement_history
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
        # the data's sends of the last week: a customer's contact state until the service has one
        recent = events[(events["event"] == "sent") & (events["ts"] >= self.as_of - pd.Timedelta(days=7))
                        & (events["ts"] < self.as_of)]
        self._recent = {str(c): [[t.timestamp(), ch] for t, ch in zip(g["ts"], g["channel"].astype(str))]
                        for c, g in recent.groupby("customer_id", observed=True)}
        self.arrays = CustomerArrays(feats)  # converted to float arrays once; batches take rows of it
        self.index = pd.Index(ids)
        self.channels = config.channel_names
        # what contact_state reads, as plain arrays: a pandas row per event costs ~0.3 ms
        self._position = {c: i for i, c in enumerate(ids)}
        self._unanswered = np.stack([feats[f"{c}_unanswered"].to_numpy()[:len(ids)] for c in self.channels],
                                    axis=1).astype(np.int64) if len(self.channels) else np.zeros((len(ids), 0), int)
        self.default_timezone = config.default_timezone
        log.info("features of %d customers as of %s", len(ids), self.as_of)

    def contact_state(self, customer: str, stored: str | None = None) -> ContactState:
        """The customer's contact state: the ``stored`` one (JSON) if the service has one, else
        what the data shows (sends of the last week before the snapshot, unanswered messages per
        channel); empty for an unknown customer."""
        if stored is not None:
            return ContactState.from_json(stored)
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

    def features(self, customer_ids: list[str], profiles: list,
                 unsubscribed: np.ndarray) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, list[str]]:
        """:meth:`rows` with the unsubscribes feedback reported, (n, K) bool, applied; plus the
        columns that differ from the snapshot's (for ``CustomerArrays.take``)."""
        feats, known, pos = self.rows(customer_ids, profiles)
        edited = [f"consent_{c}" for c in self.channels] if not known.all() else []
        if unsubscribed.any():
            feats = feats.copy()
            for k, c in enumerate(self.channels):
                feats[f"{c}_unsubscribed"] = np.where(unsubscribed[:, k], 1, feats[f"{c}_unsubscribed"].to_numpy())
                edited.append(f"{c}_unsubscribed")
        return feats, known, pos, edited
