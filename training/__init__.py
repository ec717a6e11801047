"""Models, uplift, the decision policy, off-policy evaluation and the MLflow registry (builds on ``features``)."""
