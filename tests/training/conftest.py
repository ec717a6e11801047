"""A policy trained once per session on the shared small simulated dataset."""

import pytest


@pytest.fixture(scope="session")
def small_data_dir(small_world, tmp_path_factory):
    from features.simulate import write

    return write(small_world, tmp_path_factory.mktemp("data") / "sim", seed=11)


@pytest.fixture(scope="session")
def trained(small_data_dir, config):
    """``TrainResult`` of the default training on 2,000 customers x 45 days."""
    from training.train import train

    return train(small_data_dir, config, seed=0)
