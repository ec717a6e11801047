"""The store interface on both real backends: compare-and-set, atomic adds and claims under concurrency."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from nextbest.serving.contact import TRANSACTIONAL_SENT, ContactState, history
from nextbest.serving.store import open_store


def run_concurrently(work, n: int) -> None:
    """``work`` in ``n`` threads at once; returns when all are done."""
    threads = [threading.Thread(target=work) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return request.getfixturevalue("redis_db")


def test_compare_and_set_put_new_and_delete(store_url):
    s = open_store(store_url)
    assert s.get("contact", "a") is None
    assert s.cas_many("contact", [("a", None, '{"v":1}'), ("b", '"x"', '{"v":1}')]) == [True, False]
    assert s.get_many("contact", ["a", "b"]) == ['{"v":1}', None]
    assert s.cas_many("contact", [("a", '{"v":0}', '{"v":2}')]) == [False]
    assert s.cas_many("contact", [("a", '{"v":1}', '{"v":2}')]) == [True]
    assert s.put_new("request", "r", "pending") and not s.put_new("request", "r", "other")
    s.delete("request", ["r", "missing"])
    assert s.get("request", "r") is None


def test_concurrent_increments_by_compare_and_set_lose_nothing(store_url):
    """8 threads x 50 read-modify-write increments of one key: exactly 400 (what keeps caps exact)."""
    s = open_store(store_url)

    def work():
        st = open_store(store_url)
        for _ in range(50):
            while True:
                cur = st.get("contact", "k")
                new = str(int(cur or 0) + 1)
                if st.cas_many("contact", [("k", cur, new)])[0]:
                    break

    run_concurrently(work, 8)
    assert s.get("contact", "k") == "400"


def test_statistics_add_atomically_and_the_queue_hands_each_id_to_one_claimer(store_url):
    s = open_store(store_url)
    v0 = s.stats_version()
    threads = [threading.Thread(target=lambda: [open_store(store_url).add_stats({"email/none": np.arange(44.0),
                                                                                 "suppress": np.ones(44)})
                                                for _ in range(20)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    version, stats = s.stats()
    assert version == v0 + 80
    np.testing.assert_allclose(stats["email/none"], 80 * np.arange(44.0))
    np.testing.assert_allclose(stats["suppress"], np.full(44, 80.0))

    s.enqueue([(f"d{i}", float(i)) for i in range(100)])
    assert s.due(49.5, limit=1000) == [f"d{i}" for i in range(50)]
    got: list[list[str]] = []
    claimers = [threading.Thread(target=lambda: got.append(open_store(store_url).claim([f"d{i}" for i in range(100)])))
                for _ in range(4)]
    for t in claimers:
        t.start()
    for t in claimers:
        t.join()
    flat = [i for g in got for i in g]
    assert sorted(flat) == sorted(f"d{i}" for i in range(100))  # each id exactly once


def test_expiring_keys(store_url):
    import time

    s = open_store(store_url)
    assert s.put_new("feedback", "k", "1", ttl_s=0.3)
    time.sleep(0.5)
    assert s.get("feedback", "k") is None and s.put_new("feedback", "k", "1")


def test_contact_history_counts_planned_sends_and_feedback():
    now = 1_000_000.0
    st = ContactState().with_send(now - 30 * 3600, "email").with_send(now - 2 * 3600, "sms").with_send(now + 5 * 3600, "email")
    st = st.with_event("sms", "unsubscribed").with_event("email", "opened")
    h, unsub = history([st, ContactState()], np.array([now, now]), ["email", "sms", "push"])
    assert h.sent_day[0].tolist() == [1, 1, 0]      # the planned email counts; the 30 h old one does not
    assert h.sent_week[0].tolist() == [2, 1, 0]
    assert h.hours_since_last[0] == pytest.approx(-5.0)  # the planned send is the last message
    assert h.unanswered[0].tolist() == [0, 1, 0] and unsub[0].tolist() == [False, True, False]
    assert h.sent_week[1].sum() == 0 and np.isinf(h.hours_since_last[1])
    assert ContactState.from_json(st.to_json()) == st


def test_live_entries_sorted_deduplicated_by_identity_whatever_the_order_of_arrival():
    """The live history is one order whatever order events arrive in (a rebuilt state equals the
    live one); the same key twice counts once, two events with equal contents and distinct keys
    both count; a send keeps its message id (its responses look it up), a response keeps none."""
    events = [(3_000, "opened", "email", "none", None, "m1", "feedback:d1|opened|t3"),
              (1_000, "sent", "email", "pct10", None, "m1", "send:d1"),
              (3_000, "opened", "email", "none", None, "m1", "feedback:d1|opened|t3b"),  # equal contents, another key
              (2_000, TRANSACTIONAL_SENT, "sms", None, None, "m2", "event:e2"),
              (5_000, "converted", None, None, 80.0, None, "event:e5")]
    rng = np.random.default_rng(0)
    states = []
    for _ in range(6):
        st = ContactState()
        for i in rng.permutation(len(events)):
            st = st.with_live(*events[i])
            st = st.with_live(*events[i])  # a retry changes nothing
        states.append(ContactState.from_json(st.to_json()))
    assert all(s == states[0] for s in states[1:])
    live = states[0].live
    assert [e[0] for e in live] == [1_000, 2_000, 3_000, 3_000, 5_000] and len({e[6] for e in live}) == 5
    assert states[0].live_send("m1")[1] == "sent" and states[0].live_send("m2")[1] == TRANSACTIONAL_SENT
    assert [e[5] for e in live if e[1] == "opened"] == [None, None] and states[0].live_send("m3") is None
    assert all(len(e[6]) == 12 for e in live)  # identities are short digests of the keys
    assert live[-1][4] == 80.0
    st = states[0]  # dated strictly between: what makes a decision recompute the customer's history
    assert st.has_live_between(1_000, 2_001) and not st.has_live_between(1_000, 2_000)
    assert st.has_live_between(0, 1_001) and not st.has_live_between(5_000, 10**9)
    assert not ContactState().has_live_between(0, 10**9)


def test_a_document_from_before_identity_digests_reads_in_the_current_form():
    """Contact states written before identities were digests (full keys, responses with their
    message id) are read in the current form: an event retried after the upgrade counts once."""
    import json

    old = {"sends": [], "unanswered": {}, "unsubscribed": [],
           "live": [[2_000, "opened", "email", "none", None, "m1", "feedback:d1|opened|t2"],
                    [1_000, "sent", "email", "none", None, "m1", "send:d1"]]}
    st = ContactState.from_json(json.dumps(old))
    fresh = (ContactState().with_live(1_000, "sent", "email", "none", None, "m1", "send:d1")
             .with_live(2_000, "opened", "email", "none", None, "m1", "feedback:d1|opened|t2"))
    assert st == fresh
    assert st.with_live(2_000, "opened", "email", "none", None, "m1", "feedback:d1|opened|t2") == st
    assert ContactState.from_json(fresh.to_json()) == fresh  # a current document reads as it is


def test_update_reads_changes_and_retries_until_its_write_counts(store_url):
    """``Store.update``, the one read-modify-write of the service: 8 threads x 50 increments lose
    nothing; None or the same value writes nothing; in Redis a value that always changes ends in
    Conflict, in SQLite no other writer can change it between the read and the write."""
    from nextbest.serving.store import MAX_ATTEMPTS, Conflict

    s = open_store(store_url)

    def work():
        st = open_store(store_url)
        for _ in range(50):
            st.update("contact", "u", lambda cur: str(int(cur or 0) + 1))

    run_concurrently(work, 8)
    assert s.get("contact", "u") == "400"
    assert s.update("contact", "u", lambda cur: None) is None and s.get("contact", "u") == "400"
    assert s.update("contact", "u", lambda cur: cur) == "400"
    rounds = []
    other = open_store(store_url)
    if store_url.startswith("sqlite"):
        # SQLite: read, fn and write are one write transaction, so another writer cannot come in
        # between; it waits for the commit, and its value lands after this update's
        meddler = threading.Thread(target=lambda: other.put("contact", "u", "theirs"))

        def meddle(cur):
            rounds.append(cur)
            meddler.start()
            meddler.join(timeout=1.0)  # a bound, not a wait: the writer must still be blocked
            rounds.append(meddler.is_alive())
            return "mine"

        assert s.update("contact", "u", meddle) == "mine"
        meddler.join()
        assert rounds == ["400", True] and s.get("contact", "u") == "theirs"
        return

    def meddle(cur):  # Redis: another writer changes the value between every read and its write
        rounds.append(cur)
        other.put("contact", "u", str(len(rounds)))
        return "mine"

    with pytest.raises(Conflict, match="kept changing"):
        s.update("contact", "u", meddle)
    assert len(rounds) == MAX_ATTEMPTS and s.get("contact", "u") == str(MAX_ATTEMPTS)


def test_statistics_decay_once_per_period_whoever_asks(store_url):
    s = open_store(store_url)
    s.add_stats({"email/none": np.arange(1.0, 5.0)})
    assert s.decay_stats(7 * 86400.0, 1000.0, 3600.0) == 1.0          # the first call starts the clock
    v0 = s.stats_version()
    assert s.decay_stats(7 * 86400.0, 1000.0 + 1800.0, 3600.0) == 1.0  # within the period: nothing
    assert s.stats_version() == v0
    got = []
    threads = [threading.Thread(target=lambda: got.append(open_store(store_url).decay_stats(
        7 * 86400.0, 1000.0 + 7 * 86400.0, 3600.0))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [0.5, 1.0, 1.0, 1.0]                            # one worker decayed, once
    version, stats = s.stats()
    assert version == v0 + 1
    np.testing.assert_allclose(stats["email/none"], 0.5 * np.arange(1.0, 5.0), rtol=1e-12)
    s.add_stats({"email/none": np.ones(4)})                               # adds still add after a decay
    np.testing.assert_allclose(s.stats()[1]["email/none"], 0.5 * np.arange(1.0, 5.0) + 1, rtol=1e-12)


def test_a_store_made_without_rowid_is_moved_with_its_values(tmp_path):
    """Stores made before 2026-12-03 hold ``kv`` WITHOUT ROWID (slow for documents of a few KB):
    opening one moves the table once, every value and expiry kept, and it works as before."""
    import sqlite3

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE kv (ns TEXT, key TEXT, value TEXT, expires REAL, PRIMARY KEY (ns, key)) WITHOUT ROWID")
    db.executemany("INSERT INTO kv VALUES (?, ?, ?, ?)", [("contact", "u", '{"a":1}', None),
                                                         ("event", "e1", "1", 4e9), ("event", "gone", "1", 1.0)])
    db.commit()
    db.close()
    s = open_store(f"sqlite:///{path}")
    schema = sqlite3.connect(path).execute("SELECT sql FROM sqlite_master WHERE name = 'kv'").fetchone()[0]
    assert "WITHOUT ROWID" not in schema.upper()
    assert s.get_many("contact", ["u"]) == ['{"a":1}'] and s.get_many("event", ["e1", "gone"]) == ["1", None]
    assert s.update("contact", "u", lambda cur: cur + " ") == '{"a":1} ' and s.get("contact", "u") == '{"a":1} '
    open_store(f"sqlite:///{path}")  # a second open finds nothing to move
    assert s.get("contact", "u") == '{"a":1} '
