"""Training settings: parameters tuned on one dataset are not applied silently to another."""

import json
import logging

from nextbest.training.settings import data_fingerprint, load_tuned_params


def _tables(d, rows):
    d.mkdir()
    (d / "customers.csv").write_text("customer_id\n" + "".join(f"c{i}\n" for i in range(rows)))
    return d


def test_tuned_parameters_apply_only_to_the_data_they_were_tuned_on(tmp_path, caplog):
    tuned_on, other = _tables(tmp_path / "big", 500), _tables(tmp_path / "small", 10)
    path = tmp_path / "nextbest_params.json"
    path.write_text(json.dumps({"params": {"num_leaves": 7}, "data_dir": str(tuned_on),
                                "data_fingerprint": data_fingerprint(tuned_on)}))
    assert load_tuned_params(path, tuned_on) == {"num_leaves": 7}
    with caplog.at_level(logging.WARNING):
        assert load_tuned_params(path, other) == {}
    assert "tuned on other data" in caplog.text and str(tuned_on) in caplog.text and "--params" in caplog.text
    # named explicitly (--params): used anyway
    assert load_tuned_params(path, other, explicit=True) == {"num_leaves": 7}
    # a file from before fingerprints were written counts as other data
    path.write_text(json.dumps({"params": {"num_leaves": 7}}))
    assert load_tuned_params(path, tuned_on) == {}
    assert load_tuned_params(tmp_path / "missing.json", tuned_on) == {}
