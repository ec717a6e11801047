"""The decision service (BentoML) over the policy from ``training`` (builds on ``features`` and ``training``)."""
