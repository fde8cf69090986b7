"""The registered MLflow model (logged as "model from code": no pickle anywhere).

``load_context`` rebuilds the network from the MODEL_DIR's ``model.json`` and loads its safetensors
weights; ``predict`` takes a DataFrame with a ``source`` column (a NIfTI file or a DICOM series
folder) and an optional ``output`` column (NIfTI path; default: a temporary folder) and returns the
written label volumes with their voxel counts per label.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd


class MedcoreSegmenter(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from medcore.inferers.model_dir import load_model_dir

        self.model, self.spec = load_model_dir(context.artifacts["model_dir"])

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        from medcore.data import load_volume
        from medcore.inferers.predict import predict_volume
        from medcore.io import save_image

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "source" not in frame:
            raise ValueError("model input needs a 'source' column: a NIfTI file or a DICOM series folder per row")
        rows = []
        for i, row in enumerate(frame.itertuples(index=False)):
            output = getattr(row, "output", None)
            if not isinstance(output, str) or not output:
                output = str(Path(tempfile.mkdtemp(prefix="medcore-pred-")) / f"prediction-{i:04d}.nii.gz")
            image = load_volume(row.source)
            labels = predict_volume(self.model, self.spec, image, device="cpu")
            save_image(labels, output)
            values, counts = np.unique(labels.data.numpy(), return_counts=True)
            rows.append({"output": output, "shape": list(labels.spatial_shape),
                         "voxels": {int(v): int(c) for v, c in zip(values, counts)}})
        return pd.DataFrame(rows)


mlflow.models.set_model(MedcoreSegmenter())
