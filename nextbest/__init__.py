"""nextbest: whether to send, on which channel, when and with which offer.

The ``nextbest`` command line lives here; the packages ``nextbest.features``, ``nextbest.decision``,
``nextbest.sim``, ``nextbest.training`` and ``nextbest.serving`` map to the top-level folders.
"""
