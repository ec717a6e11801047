"""Simulated worlds: a family of customer worlds, the logging simulator, simulation truth and the closed loop.

Used by benchmarks, tests, the demo data generator and training reports; never by the service.
"""
