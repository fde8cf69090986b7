"""The registered MLflow model (logged as "model from code": no pickle anywhere).

``load_context`` rebuilds the network from the MODEL_DIR's ``model.json`` and loads its safetensors
weights, on the GPU when one is present. ``predict`` takes image content, never a path: see
``pipelines/serving.py`` for the request and reply columns and the ``output_format`` parameter.
"""

from __future__ import annotations

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import set_model
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from pipelines.serving import DEFAULT_PARAMS, RequestError, decode_request, predict_content


class MedcoreSegmenter(PythonModel):
    def load_context(self, context) -> None:
        import torch

        from medcore.inferers.model_dir import load_model_dir

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.spec = load_model_dir(context.artifacts["model_dir"], device=self.device)

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        settings = {**DEFAULT_PARAMS, **{k: v for k, v in (params or {}).items() if v is not None}}
        try:
            rows = [predict_content(self.model, self.spec, content, settings, self.device)
                    for content in decode_request(frame)]
        except RequestError as error:  # the client's fault: say so in the reply's message
            raise MlflowException(str(error), error_code=INVALID_PARAMETER_VALUE) from None
        return pd.DataFrame(rows, columns=["labels", "format", "shape", "voxels"])


set_model(MedcoreSegmenter())
