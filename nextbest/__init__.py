"""The ``nextbest`` command line: a thin layer over ``features``, ``training`` and ``serving``."""
