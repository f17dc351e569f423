"""The script MLflow runs to build the registered model when it loads it (`pyfunc.MODEL_CODE`,
"models from code"): the bundle model of `rakuten_classifier.pyfunc`."""

import mlflow.models

from rakuten_classifier.pyfunc import BundleModel

mlflow.models.set_model(BundleModel())
