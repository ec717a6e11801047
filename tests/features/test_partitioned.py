"""Features on Dask (``features.partitioned``) on a real LocalCluster: the engagement histories and
training examples equal the pandas path's, feature by feature; the priors merge exactly; a
message id sent twice across partitions is refused as the pandas path refuses it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nextbest.features import partitioned
from nextbest.features.eventlog import EventLog
from nextbest.features.examples import decision_examples
from nextbest.features.history import Population, engagement_history
from nextbest.features.io import load_dataset, read_table, write_table
from nextbest.features.validate import ValidationError, check


@pytest.fixture(scope="module")
def client():
    with partitioned.dask_client(workers=2, memory_limit="2GiB") as c:
        yield c


@pytest.fixture(scope="module")
def data(small_data_dir, config, tmp_path_factory):
    """The small simulated data plus 25 customers without any event (cold start) whose text
    attribute takes a value no other customer has."""
    customers, events = load_dataset(small_data_dir)
    extra = customers.head(25).copy()
    extra["customer_id"] = [f"new-{i}" for i in range(25)]
    text = [c for c in customers.columns if customers[c].dtype == object or str(customers[c].dtype) in ("str", "string")]
    text = [c for c in text if c not in ("customer_id", "timezone", "signup_at")]
    for c in text:
        extra[c] = "only-here"
    out = tmp_path_factory.mktemp("partitioned") / "data"
    write_table(pd.concat([customers, extra], ignore_index=True), out, "customers")
    write_table(events, out, "events")
    write_table(read_table(small_data_dir, "logging_decisions"), out, "logging_decisions")
    return out


@pytest.fixture(scope="module")
def pandas_path(data, config):
    customers, events = check(*load_dataset(data), config)
    log_ = EventLog.build(customers, events, config)
    return customers, events, log_, Population.from_log(log_)


@pytest.fixture(scope="module")
def parts(data, client, tmp_path_factory):
    return partitioned.partition(data, client, n_parts=5, scratch=tmp_path_factory.mktemp("scratch"))


def test_every_customer_is_in_exactly_one_partition_with_all_its_events(parts, pandas_path):
    customers, events, _, _ = pandas_path
    seen_c, seen_e = [], 0
    for i in range(parts.n):
        c, e = parts.read(i)
        assert set(e["customer_id"].astype(str)) <= set(c["customer_id"].astype(str))
        assert (partitioned.part_of(c["customer_id"], parts.n) == i).all()
        seen_c += c["customer_id"].astype(str).tolist()
        seen_e += len(e)
    assert sorted(seen_c) == sorted(customers["customer_id"].astype(str)) and seen_e == len(events)


def test_the_priors_of_the_partitions_merge_into_the_whole_logs(parts, client, config, pandas_path):
    _, _, _, pop = pandas_path
    merged = partitioned.summarize(parts, client, config).population
    assert merged.day0 == pop.day0 and merged.counts.keys() == pop.counts.keys()
    for name, cum in pop.counts.items():
        np.testing.assert_array_equal(merged.counts[name], cum, err_msg=str(name))


def test_the_snapshot_equals_the_pandas_snapshot_feature_by_feature(parts, client, config, pandas_path):
    customers, events, log_, pop = pandas_path
    want = engagement_history(log_, customers["customer_id"], events["ts"].max().ceil("D"), pop)
    got = partitioned.snapshot(parts, client, config)
    assert len(got) == len(want) and got.index.is_unique
    pd.testing.assert_frame_equal(got.loc[want.index], want, check_exact=True)
    assert got.index.str.startswith("new-").sum() == 25


def test_training_examples_equal_the_pandas_examples(parts, client, config, pandas_path, data):
    _, events, log_, pop = pandas_path
    decisions = read_table(data, "logging_decisions").sample(3000, random_state=0).reset_index(drop=True)
    decisions["ts"] = pd.to_datetime(decisions["ts"], utc=True)
    window = config.objective.attribution_window_hours
    end = pd.Timestamp(int(log_.t.max()) + 1, unit="ms", tz="UTC")
    want = decision_examples(log_, decisions, window, end, pop)
    summary = partitioned.summarize(parts, client, config)
    assert summary.data_end == end
    got = partitioned.examples(parts, client, config, decisions, window, end, summary)
    pd.testing.assert_frame_equal(got, want, check_exact=True)


def _one_id_in_two_partitions(customers, events, parts) -> pd.Series:
    """``events``' message ids with the first message of a customer of partition ``parts[1]`` (of 3)
    (its send and its responses) carrying the id of a first message in partition ``parts[0]``."""
    ids = customers["customer_id"].astype(str)
    where = partitioned.part_of(ids, 3)
    a, b = ids[where == parts[0]].iloc[0], ids[where == parts[1]].iloc[0]
    sent = events["event"].astype(str) == "sent"
    first_a = events.index[sent & (events["customer_id"].astype(str) == a)][0]
    first_b = events.index[sent & (events["customer_id"].astype(str) == b)][0]
    msg = events["message_id"].astype(object)
    msg.loc[msg == msg[first_b]] = msg[first_a]
    return msg


def test_a_message_id_sent_by_two_customers_of_different_partitions_is_refused(data, client, config, tmp_path):
    customers, events = load_dataset(data)
    events = events.copy()
    events["message_id"] = _one_id_in_two_partitions(customers, events, (0, 1))
    bad = tmp_path / "bad"
    write_table(customers, bad, "customers")
    write_table(events, bad, "events")
    with pytest.raises(ValidationError) as pandas_error:
        check(*load_dataset(bad), config)
    assert "duplicate_send" in str(pandas_error.value)
    with pytest.raises(ValidationError, match="duplicate_send"):
        partitioned.summarize(partitioned.partition(bad, client, n_parts=3, scratch=tmp_path / "scratch"), client, config)


def test_a_problem_inside_a_partition_names_the_partition(data, client, config, tmp_path):
    customers, events = load_dataset(data)
    events = events.copy()
    events["event"] = events["event"].astype(object)
    events.loc[events.index[5], "event"] = "teleported"
    bad = tmp_path / "bad"
    write_table(customers, bad, "customers")
    write_table(events, bad, "events")
    with pytest.raises(ValidationError, match=r"events \(partition \d of 3\)"):
        partitioned.summarize(partitioned.partition(bad, client, n_parts=3, scratch=tmp_path / "scratch"), client, config)


def test_data_validate_on_dask_finds_what_the_pandas_rules_find(data, client, config, tmp_path):
    """Problems in several partitions and a message id sent by customers of two partitions: the
    same rules fire as many times as on the whole table; ``data validate --dask`` exits 1 and
    writes them to its report, and says valid for valid data."""
    import subprocess
    import sys

    from nextbest.features.validate import validate

    customers, events = load_dataset(data)
    events = events.copy()
    events["event"] = events["event"].astype(object)
    events["channel"] = events["channel"].astype(object)
    events.loc[events.index[[5, 900, 4000]], "event"] = "teleported"
    events.loc[events.index[[77, 3001]], "channel"] = "fax"

    def both(events, name):
        d = tmp_path / name
        write_table(customers, d, "customers")
        write_table(events, d, "events")
        want = pd.Series([p.rule for p in validate(*load_dataset(d), config)]).value_counts()
        found = partitioned.validate(partitioned.partition(d, client, n_parts=3, scratch=tmp_path / f"s-{name}"),
                                     client, config)
        return d, want, found, pd.Series([p.rule for p in found]).value_counts()

    _, want, found, got = both(events, "bad")
    assert want["unknown_event"] == 3 and want["unknown_channel"] == 2
    assert got.to_dict() == want.to_dict()
    assert {p.file for p in found if p.rule == "unknown_event"} <= {f"events (partition {i} of 3)" for i in range(3)}
    # a message id sent by customers of two partitions: once, over all partitions
    events["message_id"] = _one_id_in_two_partitions(customers, events, (0, 2))
    bad, want, found, got = both(events, "twice")
    assert "duplicate_send" in want and got["duplicate_send"] == 1

    cli = [str(Path(sys.executable).with_name("nextbest")), "-q", "data", "validate"]
    dask = ["--dask", "--workers", "1", "--partitions", "3"]
    res = subprocess.run(cli + [str(bad), "--report", str(tmp_path / "report.csv"), *dask, "--scratch",
                                str(tmp_path / "s2")], capture_output=True, text=True)
    assert res.returncode == 1 and "unknown_event" in res.stderr and "duplicate_send" in res.stderr
    assert len(pd.read_csv(tmp_path / "report.csv")) == len(found)
    ok = subprocess.run(cli + [str(data), *dask], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "valid:" in ok.stdout and "3 partitions" in ok.stdout


def test_prepare_on_dask_gives_the_training_and_validation_examples_of_the_pandas_path(small_data_dir, config):
    """``nextbest train --dask`` (``training.train.prepare(dask=...)``): the same examples, so the
    same models."""
    from nextbest.training.settings import TrainingSettings
    from nextbest.training.train import Stopwatch, prepare

    settings = TrainingSettings.from_config(config)
    want = prepare(small_data_dir, config, settings, Stopwatch(), seed=0)
    got = prepare(small_data_dir, config, settings, Stopwatch(), seed=0,
                  dask=partitioned.DaskOptions(workers=2, partitions=4))
    for a, b in ((got.train, want.train), (got.valid, want.valid)):
        pd.testing.assert_frame_equal(a.examples, b.examples, check_exact=True)
        pd.testing.assert_frame_equal(a.X, b.X, check_exact=True)


def _pandas_snapshot_as_written(pandas_path) -> pd.DataFrame:
    """What ``nextbest features build`` (no --dask) writes, read back: the pandas snapshot through Parquet."""
    import io

    customers, events, log_, pop = pandas_path
    buf = io.BytesIO()
    engagement_history(log_, customers["customer_id"], events["ts"].max().ceil("D"), pop).reset_index().to_parquet(buf)
    return pd.read_parquet(buf).set_index("customer_id")


def test_features_build_with_dask_writes_the_same_snapshot(data, pandas_path, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from nextbest.features.examples import write_training_examples

    cli = [str(Path(sys.executable).with_name("nextbest")), "-q", "features", "build", str(data)]
    out = subprocess.run(cli + ["--out", str(tmp_path / "dask.parquet"), "--dask", "--workers", "2", "--partitions", "3",
                                "--scratch", str(tmp_path / "scratch"), "--examples", str(tmp_path / "examples")],
                         check=True, capture_output=True, text=True)
    assert "3 partitions" in out.stdout
    want = _pandas_snapshot_as_written(pandas_path)
    got = pd.read_parquet(tmp_path / "dask.parquet").set_index("customer_id")
    pd.testing.assert_frame_equal(got.loc[want.index], want, check_exact=True)
    # every send's training example, one file per partition, equal to the pandas path's file row by row
    _, _, log_, pop = pandas_path
    rows = write_training_examples(log_, tmp_path / "pandas_examples.parquet", population=pop)
    assert f"training examples: {rows:,} sends" in out.stdout
    assert len(list((tmp_path / "examples").glob("part-*.parquet"))) == 3
    want = pd.read_parquet(tmp_path / "pandas_examples.parquet").sort_values("message_id", ignore_index=True)
    got = pd.read_parquet(tmp_path / "examples").sort_values("message_id", ignore_index=True)
    pd.testing.assert_frame_equal(got[want.columns], want, check_exact=True)
    bad = subprocess.run(cli + ["--out", str(tmp_path / "x.parquet"), "--scheduler", "tcp://127.0.0.1:1"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "--scheduler needs --dask" in bad.stderr


def test_features_build_runs_on_a_separate_dask_scheduler_and_workers(data, pandas_path, tmp_path):
    """``--scheduler ADDRESS``: a `dask scheduler` and `dask worker` processes of their own, as on a
    real cluster (here on this machine; the scratch directory stands for the shared file system)."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    from pathlib import Path

    from distributed import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    dask_cli = str(Path(sys.executable).with_name("dask"))
    procs = [subprocess.Popen([dask_cli, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", ":0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)]
    try:
        procs.append(subprocess.Popen([dask_cli, "worker", address, "--nthreads", "1", "--nworkers", "2",
                                       "--memory-limit", "2GiB"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True))
        with Client(address, timeout=60) as c:  # connects once the scheduler listens
            c.wait_for_workers(2, timeout=60)
        cli = [str(Path(sys.executable).with_name("nextbest")), "-q", "features", "build", str(data)]
        out = subprocess.run(cli + ["--out", str(tmp_path / "dask.parquet"), "--dask", "--scheduler", address,
                                    "--scratch", str(tmp_path / "shared")], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-3000:]
        want = _pandas_snapshot_as_written(pandas_path)
        got = pd.read_parquet(tmp_path / "dask.parquet").set_index("customer_id")
        pd.testing.assert_frame_equal(got.loc[want.index], want, check_exact=True)
    finally:
        for p in reversed(procs):
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=30)
