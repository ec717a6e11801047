"""Models, uplift, off-policy evaluation, training, tuning and reports (builds on ``features``, ``decision`` and ``sim``)."""
