"""Shared fixtures: the default config and a small simulated dataset (built once per session)."""

import pytest

from features.config import load_config


@pytest.fixture(scope="session")
def config():
    return load_config()


@pytest.fixture(scope="session")
def small_world(config):
    """2,000 simulated customers over 45 days (seed 11)."""
    from features.simulate import generate

    return generate(2000, 45, seed=11, config=config, progress=False)


@pytest.fixture(scope="session")
def small_log(small_world, config):
    from features.eventlog import EventLog

    return EventLog.build(small_world.customers, small_world.events, config)
