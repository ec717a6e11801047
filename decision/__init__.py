"""The decision core: candidates, rules, value, exploration, the online learner and the objective.

The one place a decision is made. It imports ``nextbest.features`` and nothing of training or serving;
models are anything with ``predict``/``predict_proba`` (``decision.policy.PolicyModels``).
"""
