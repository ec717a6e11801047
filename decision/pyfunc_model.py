"""The policy's MLflow model, logged as code (``log_model(python_model=<this file>)``).

MLflow runs this file when it loads a registered version: it names the model class, which then
reads the policy from the version's open-format artifact (``decision.artifact``). Nothing is
pickled.
"""

import mlflow.models

from nextbest.decision.pyfunc import PolicyModel

mlflow.models.set_model(PolicyModel())
