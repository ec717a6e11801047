"""The typed business config: unknown keys, replaced collections, merged sections, round trips."""

import pytest
import yaml

from nextbest.features.config import ConfigError, default_config_dict, load_config, merge_config, parse_config


def write(tmp_path, override: dict):
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump(override))
    return path


def with_key(collection: str, name: str, **changes) -> dict:
    """The default ``collection`` (channels or offers) whole, with ``changes`` in entry ``name``."""
    items = default_config_dict()[collection]
    return {collection: {**items, name: {**items[name], **changes}}}


@pytest.mark.parametrize("override, message", [
    ({"chanels": {"email": {"cost": 0.01}}}, "chanels: unknown key; did you mean 'channels'?"),
    (with_key("channels", "email", cots=0.01), "channels.email.cots: unknown key; did you mean 'cost'?"),
    (with_key("channels", "sms", caps={"per_day": 1, "per_wek": 2}),
     "channels.sms.caps.per_wek: unknown key; did you mean 'per_week'?"),
    (with_key("offers", "pct10", valu=0.1), "offers.pct10.valu: unknown key; did you mean 'value'?"),
    (with_key("offers", "pct10", when={"custmer": {"x": {"min": 1}}}),
     "offers.pct10.when.custmer: unknown key; did you mean 'customer'?"),
    (with_key("offers", "pct10", when={"customer": {"x": {"mni": 1}}}),
     "offers.pct10.when.customer.x.mni: unknown key; did you mean 'min'?"),
    ({"exploraton": {"budget": 0.2}}, "exploraton: unknown key; did you mean 'exploration'?"),
    ({"exploration": {"budjet": 0.2}}, "exploration.budjet: unknown key; did you mean 'budget'?"),
    ({"training": {"lightgbm": {"num_leafs": 15}}},
     "training.lightgbm.num_leafs: unknown key; did you mean 'num_leaves'?"),
    ({"serving": {"worker": 2}}, "serving.worker: unknown key; did you mean 'workers'?"),
])
def test_unknown_key_fails_with_its_path_and_a_suggestion(tmp_path, override, message):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, override))
    assert message in str(err.value)


@pytest.mark.parametrize("override, message", [
    ({"offers": {"none": {"kind": "none", "value": 0.0, "channels": ["email"]}}}, "offers.none.valid_hours: missing"),
    ({"contact_rules": {"max_per_day": "two"}}, "contact_rules.max_per_day: input should be a valid integer"),
    ({"objective": {"margin": True}}, "objective.margin: input should be a valid number"),
    ({"online": {"noise_sd": 0}}, "online.noise_sd: input should be greater than 0"),
    ({"training": {"validation_days": 0}}, "training.validation_days"),
    (with_key("offers", "pct10", kind="coupon"), "offers.pct10.kind"),
    (with_key("offers", "pct10", when={"customer": {"x": {}}}), "offers.pct10.when.customer.x: expected {min: x}"),
    ({"offers": {"pct10": default_config_dict()["offers"]["pct10"]}}, "the offer `none`"),
])
def test_missing_key_or_bad_value_names_its_path(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("{", r"\{")):
        load_config(write(tmp_path, override))


def test_a_deployment_can_remove_default_offers_and_channels(tmp_path):
    offers = {k: v for k, v in default_config_dict()["offers"].items() if k in ("none", "pct10")}
    assert load_config(write(tmp_path, {"offers": offers})).offer_names == ("none", "pct10")
    channels = {"email": default_config_dict()["channels"]["email"]}
    offers = {k: {**v, "channels": ["email"]} for k, v in offers.items()}
    cfg = load_config(write(tmp_path, {"channels": channels, "offers": offers}))
    assert cfg.channel_names == ("email",) and cfg.offers["pct10"].channels == ("email",)
    with pytest.raises(ConfigError, match=r"offers.none.channels: unknown channel\(s\) \['push', 'sms'\]"):
        load_config(write(tmp_path, {"channels": channels}))  # the default offers still name sms


def test_a_changed_scalar_keeps_the_other_defaults(tmp_path):
    default = load_config()
    cfg = load_config(write(tmp_path, {"contact_rules": {"max_per_day": 3},
                                       "training": {"lightgbm": {"num_leaves": 15}}}))
    assert cfg.contact_rules.max_per_day == 3 != default.contact_rules.max_per_day
    assert cfg.contact_rules.model_copy(update={"max_per_day": default.contact_rules.max_per_day}) == default.contact_rules
    assert cfg.training.lightgbm.num_leaves == 15
    assert cfg.training.lightgbm.params() == {**default.training.lightgbm.params(), "num_leaves": 15}
    assert (cfg.channels, cfg.offers, cfg.exploration, cfg.online, cfg.serving) == \
        (default.channels, default.offers, default.exploration, default.online, default.serving)


def test_merge_replaces_collections_and_merges_sections():
    base = {"channels": {"email": {"cost": 1}, "sms": {"cost": 2}}, "training": {"lightgbm": {"a": 1, "b": 2}, "x": 1}}
    out = merge_config(base, {"channels": {"sms": {"cost": 3}}, "training": {"lightgbm": {"b": 5}}})
    assert out == {"channels": {"sms": {"cost": 3}}, "training": {"lightgbm": {"a": 1, "b": 5}, "x": 1}}
    assert base["channels"]["sms"]["cost"] == 2  # inputs untouched


def test_typed_sections_and_yaml_round_trip(tmp_path):
    cfg = load_config(write(tmp_path, {"exploration": {"method": "softmax"}}))
    assert cfg.exploration.method == "softmax" and cfg.training.uplift_mode == "mediated"
    assert cfg.decision.horizon_hours == 24 and cfg.default_timezone == "UTC"
    again = parse_config(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg and parse_config(cfg.raw) == cfg
    with pytest.raises(Exception):
        cfg.training.early_stopping_rounds = 5  # frozen


def test_every_default_section_is_typed():
    raw = default_config_dict()
    cfg = parse_config(raw)
    for name in raw:
        assert getattr(cfg, name) is not None, name


def test_malformed_yaml_is_one_line_naming_the_file_and_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("channels:\n  email: {cost: 0.01\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: line \d+, column \d+ not valid YAML") as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_the_cli_answers_malformed_yaml_with_a_message_not_a_traceback(tmp_path):
    import subprocess
    import sys
    path = tmp_path / "bad.yaml"
    path.write_text("channels: [\n")
    from pathlib import Path
    cli = Path(sys.executable).parent / "nextbest"
    proc = subprocess.run([str(cli), "--config", str(path), "train", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"nextbest: {path}: line 2")
