"""Business config loading and local time conversion."""

import numpy as np
import pandas as pd
import pytest

from nextbest.features.config import ConfigError, HourWindow, load_config
from nextbest.features.localtime import local_hour_dow


def test_defaults_load_and_document_every_section(config):
    assert config.channel_names == ("email", "sms", "push")
    assert "none" in config.offers and config.offers["pct20"].cost(100.0) == pytest.approx(20.0)
    assert config.offers["free_shipping"].cost(80.0) == pytest.approx(6.0)
    assert config.objective.margin > 0 and config.contact_rules.min_hours_between > 0


def test_override_merges_over_defaults(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("channels:\n  sms:\n    cost: 0.1\nobjective:\n  margin: 0.5\n")
    cfg = load_config(path)
    assert cfg.channels["sms"].cost == 0.1 and cfg.objective.margin == 0.5
    assert cfg.channels["email"].cost == load_config().channels["email"].cost


@pytest.mark.parametrize("text, message", [
    ("offers:\n  pct10:\n    channels: [fax]\n", "offers.pct10.channels: unknown channel"),
    ("channels:\n  sms:\n    cost: -1\n", "channels.sms.cost"),
    ("channels:\n  sms:\n    quiet_hours: {start: 25, end: 3}\n", "channels.sms.quiet_hours.start"),
    ("offers:\n  pct10:\n    value: 2\n", "offers.pct10.value"),
    ("features:\n  windows_days: [30, 7]\n", "features.windows_days"),
])
def test_bad_config_names_the_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_hour_window_wraps_midnight():
    quiet = HourWindow(22, 7)
    assert list(np.flatnonzero(quiet.contains(np.arange(24)))) == [0, 1, 2, 3, 4, 5, 6, 22, 23]
    assert not HourWindow(5, 5).contains(np.arange(24)).any()


def test_local_hours_follow_daylight_saving():
    # 2026-03-08 is the US DST switch; 2026-03-29 the EU one; Adelaide is UTC+10:30 / +9:30
    utc = pd.to_datetime(["2026-03-08 06:30", "2026-03-08 07:30", "2026-03-29 00:30",
                          "2026-03-29 01:30", "2026-04-04 16:29", "2026-04-04 16:31"], utc=True)
    zones = ("America/New_York", "Europe/Berlin", "Australia/Adelaide")
    codes = np.array([0, 0, 1, 1, 2, 2])
    hour, _ = local_hour_dow(utc.as_unit("s").asi8, codes, zones)
    expected = [pd.Timestamp(t).tz_convert(zones[c]).hour for t, c in zip(utc, codes)]
    assert list(hour) == expected == [1, 3, 1, 3, 2, 2]
