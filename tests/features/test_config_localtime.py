"""Business config loading and local time conversion."""

import numpy as np
import pandas as pd
import pytest
import yaml

from nextbest.features.config import COLLECTIONS, ConfigError, HourWindow, default_config_dict, load_config
from nextbest.features.localtime import local_hour_dow


def test_defaults_load_and_document_every_section(config):
    assert config.channel_names == ("email", "sms", "push")
    assert "none" in config.offers and config.offers["pct20"].cost(100.0) == pytest.approx(20.0)
    assert config.offers["free_shipping"].cost(80.0) == pytest.approx(6.0)
    assert config.objective.margin > 0 and config.contact_rules.min_hours_between > 0


def override(key: str, value) -> str:
    """A deployment YAML setting the dotted ``key`` to ``value``; a collection (channels, offers) is
    written whole, since a deployment's collection replaces the default one."""
    top, *rest = key.split(".")
    out = {top: default_config_dict()[top] if top in COLLECTIONS else {}}
    node = out[top]
    for part in rest[:-1]:
        node = node.setdefault(part, {})
    node[rest[-1]] = value
    return yaml.safe_dump(out)


def test_override_merges_over_defaults(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text(override("channels.sms.cost", 0.1) + override("objective.margin", 0.5))
    cfg = load_config(path)
    assert cfg.channels["sms"].cost == 0.1 and cfg.objective.margin == 0.5
    assert cfg.channels["email"].cost == load_config().channels["email"].cost


@pytest.mark.parametrize("key, value, message", [
    ("offers.pct10.channels", ["fax"], "offers.pct10.channels: unknown channel"),
    ("channels.sms.cost", -1, "channels.sms.cost"),
    ("channels.sms.quiet_hours", {"start": 25, "end": 3}, "channels.sms.quiet_hours.start"),
    ("offers.pct10.value", 2, "offers.pct10.value"),
    ("features.windows_days", [30, 7], "features.windows_days"),
])
def test_bad_config_names_the_key(tmp_path, key, value, message):
    path = tmp_path / "bad.yaml"
    path.write_text(override(key, value))
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
