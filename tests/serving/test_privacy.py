"""Privacy (issue 15): erasure over HTTP and from the command line, the log's context allow-list,
no request bodies in the service's own log, and the log's retention."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pandas as pd

from nextbest.serving.decision_log import read_records
from nextbest.serving.privacy import RECEIPTS, expire
from nextbest.serving.store import open_store

NOW = (datetime.now(timezone.utc) - timedelta(days=1)).replace(hour=11, minute=0, second=0, microsecond=0)
MARKER = "body-marker-5b8e2c"


def _log_text(log_dir: Path) -> str:
    return "".join(p.read_text() for p in log_dir.glob("*/*.jsonl"))


def test_erasure_over_http_and_cli_with_receipts_and_the_context_allow_list(server_factory, project, customers,
                                                                          tmp_path):
    server = server_factory()
    a, b, c = customers(3, offset=600)
    # a client's own follow_up_of is not the service's link: not logged either
    context = {"trigger": "cart_abandoned", "email": "someone@example.com", "follow_up_of": "someone@example.com"}
    for cid in (a, b, c):
        r = server.post("/v1/decide", {"customer_id": cid, "now": NOW.isoformat(), "request_id": f"req-{cid}",
                                       "context": context, "type": "transactional"})
        assert r.status_code == 200, r.text
        d = r.json()
        fb = {"decision_id": d["decision_id"], "customer_id": cid, "event": "opened", "ts": d["send_at"]}
        assert server.post("/v1/feedback", fb).json()["accepted"]
    ev = {"event_id": f"ev-{a}", "customer_id": a, "event": "sent", "message_id": f"esp-{a}", "channel": "email",
          "ts": NOW.isoformat()}  # another sender's message to the customer
    assert server.post("/v1/events", ev).json()["accepted"]
    store = open_store(server.store_url)
    ids = {r["customer_id"]: r for r in read_records(server.log_dir, "decisions")}
    assert ids[a]["request"]["context"] == {"trigger": "cart_abandoned"}  # only the allow-listed keys
    assert "someone@example.com" not in _log_text(server.log_dir)

    # no request body in the service's own log, not even of a refused request
    r = server.post("/v1/decide", {"customer_id": 12, "context": {"note": MARKER}})
    assert r.status_code == 400
    r = server.post("/v1/feedback", {"decision_id": "x" * 32, "customer_id": MARKER, "event": "opened",
                                     "ts": NOW.isoformat()})
    assert r.status_code == 404
    assert MARKER not in server.log_tail(10**7)

    # over HTTP: the admin scope only
    assert httpx.delete(f"{server.url}/v1/customers/{a}", headers={"Authorization": "Bearer nope"}).status_code == 401
    r = httpx.delete(f"{server.url}/v1/customers/{a}", headers={"Authorization": server.headers["Authorization"]})
    assert r.status_code == 200, r.text
    receipt = r.json()
    assert receipt["customer_hash"] == hashlib.sha256(a.encode()).hexdigest()
    assert receipt["removed"]["decision_records"] == 1 and receipt["removed"]["idempotency_answers"] == 1
    assert receipt["removed"]["contact_states"] == 1 and receipt["removed"]["event_ids"] == 1
    assert receipt["removed"]["log_lines"] + receipt["removed"]["log_lines_pending"] == 3  # decision, feedback, event
    assert store.get("contact", a) is None and store.get("request", f"req-{a}") is None
    assert store.get("event", f"ev-{a}") is None  # an event id may hold the customer's own identifiers
    assert store.get("decision", ids[a]["decision_id"]) is None
    assert store.get("request", f"req-{b}") is not None and store.get("decision", ids[b]["decision_id"]) is not None
    # readers leave the customer out at once, even where its lines wait for their file to rotate
    assert a not in {r["customer_id"] for r in read_records(server.log_dir, "decisions")}
    assert a not in {r["customer_id"] for r in read_records(server.log_dir, "feedback")}
    assert a not in {r["customer_id"] for r in read_records(server.log_dir, "events")}
    receipts = (server.log_dir / RECEIPTS).read_text()
    assert a not in receipts and receipt["customer_hash"] in receipts

    # the command line, with the server stopped: files are closed, so every line goes now
    server.stop()
    out = project.run("erase", b, "--store", server.store_url, "--log-dir", str(server.log_dir))
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["removed"]["log_lines"] == 2 and line["removed"]["log_lines_pending"] == 0
    project.run("erase", "--expired", "--log-dir", str(server.log_dir), "--store", server.store_url)
    text = _log_text(server.log_dir)
    assert a not in text and b not in text and c in text
    assert store.get("decision", ids[b]["decision_id"]) is None and store.get("decision", ids[c]["decision_id"])

    # and future exports: a marketing decision for the export to hold, then export
    again = server_factory(workdir=tmp_path)
    assert again.post("/v1/decide", {"customer_id": c, "now": NOW.isoformat()}).status_code == 200
    project.run("log", "export", str(project.data), "--log-dir", str(again.log_dir), "--out", str(tmp_path / "export"))
    events = pd.read_parquet(tmp_path / "export" / "events.parquet")
    logged = pd.read_parquet(tmp_path / "export" / "logging_decisions.parquet")
    served = set(events["message_id"].dropna()) | set(logged["message_id"])
    assert ids[a]["decision_id"] not in served and ids[b]["decision_id"] not in served


def test_retention_deletes_old_days_only(tmp_path):
    old, recent = tmp_path / "2001-02-03", tmp_path / (datetime.now(timezone.utc) - timedelta(days=3)).strftime("%Y-%m-%d")
    for folder in (old, recent):
        folder.mkdir()
        (folder / "decisions-1-0-0000.jsonl").write_text(json.dumps({"decision_id": "d", "customer_id": "c"}) + "\n")
    out = expire(tmp_path, retention_days=365)
    assert out["days_deleted"] == ["2001-02-03"] and not old.exists() and recent.exists()


def test_erase_from_the_command_line_needs_customers_or_expired(project):
    res = subprocess.run([str(Path(sys.executable).parent / "nextbest"), "erase"], env=project.env,
                         capture_output=True, text=True, cwd=project.home)
    assert res.returncode == 2 and "name the customers" in res.stderr
