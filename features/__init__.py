"""Data layer of nextbest: the data contract, validation, the simulator and engagement histories.

Nothing here knows about models; ``training`` and ``serving`` build on it.
"""
