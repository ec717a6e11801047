"""Shared fixtures: the default config and a small simulated dataset (built once per session)."""

import pytest

from nextbest.features.config import load_config


@pytest.fixture(scope="session")
def config():
    return load_config()


@pytest.fixture(scope="session")
def small_world(config):
    """2,000 simulated customers over 45 days (seed 11)."""
    from nextbest.sim.simulate import generate

    return generate(2000, 45, seed=11, config=config, progress=False)


@pytest.fixture(scope="session")
def small_log(small_world, config):
    from nextbest.features.eventlog import EventLog

    return EventLog.build(small_world.customers, small_world.events, config)

@pytest.fixture(scope="session")
def small_data_dir(small_world, tmp_path_factory):
    from nextbest.sim.simulate import write

    return write(small_world, tmp_path_factory.mktemp("data") / "sim", seed=11)


@pytest.fixture(scope="session")
def trained(small_data_dir, config):
    """``TrainResult`` of the default training on 2,000 customers x 45 days."""
    from nextbest.training.train import train

    return train(small_data_dir, config, seed=0)
