"""The decision service (BentoML) over the decision core (builds on ``features`` and ``decision``; never ``training``)."""
