"""The registered model's code, as MLflow's "models from code" loads it: no pickled object in the model."""

from mlflow.models import set_model

from alexnet.serving.pyfunc import ClassifierModel

set_model(ClassifierModel())
