"""Data layer of nextbest: the data contract, validation, the event log and engagement histories.

Nothing here knows about models or decisions; every other package builds on it.
"""
