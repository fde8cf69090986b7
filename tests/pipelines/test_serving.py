"""Issue 14, serving: the champion behind a real ``mlflow models serve`` answers HTTP with label content.

Requests carry image content (base64 of a zip of one DICOM series, or of a NIfTI file); the reply is
a NIfTI label volume or a DICOM SEG. A request naming a path is refused.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from .pacs_helpers import PROJECT, dciodvfy_errors


def zipped(folder: Path) -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for path in sorted(folder.glob("*.dcm")):
            z.write(path, arcname=path.name)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.fixture(scope="module")
def served(pipeline_run, tmp_path_factory):
    from pipelines.orthanc import free_port

    reg = pipeline_run["result"]
    port = free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    # both URIs: mlflow.set_registry_uri in an earlier test of this process also set $MLFLOW_REGISTRY_URI,
    # and a served process inheriting it would resolve @champion in another test's registry
    env = {**os.environ, "MLFLOW_TRACKING_URI": reg.tracking_uri, "MLFLOW_REGISTRY_URI": reg.tracking_uri,
           "PYTHONPATH": str(PROJECT),
           "PATH": f"{mlflow_bin.parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # it runs the venv's uvicorn
    with open(log, "wb") as out:
        process = subprocess.Popen([str(mlflow_bin), "models", "serve", "-m", f"models:/{reg.model_name}@champion",
                                    "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                                   env=env, stdout=out, stderr=subprocess.STDOUT, cwd=pipeline_run["root"],
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, "mlflow models serve did not answer /ping in 180 s"
            time.sleep(0.5)
        yield url, reg
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_served_model_answers_with_the_label_volume(served, pipeline_run, tmp_path):
    from medcore.cli import main as medcore_main
    from pipelines.inference import registered_model_dir

    url, reg = served
    series = next(s for s in pipeline_run["manifest"].series if s.kind == "axial")
    folder = Path(pipeline_run["root"]) / "inbox" / series.folder
    status, reply = post(f"{url}/invocations", {"dataframe_split": {"columns": ["image"], "data": [[zipped(folder)]]}})
    assert status == 200, reply
    (row,) = reply["predictions"]
    assert row["format"] == "nifti"
    (tmp_path / "served.nii.gz").write_bytes(base64.b64decode(row["labels"]))
    served_labels = nib.load(tmp_path / "served.nii.gz")
    assert served_labels.shape[:3] == (series.columns, series.rows, series.n_slices)
    assert np.allclose(served_labels.affine, np.asarray(series.affine_ras), atol=1e-3)
    # the same labels as `medcore predict` with the registered model directory
    import mlflow

    mlflow.set_tracking_uri(reg.tracking_uri)
    mlflow.set_registry_uri(reg.tracking_uri)
    local = mlflow.artifacts.download_artifacts(f"models:/{reg.model_name}@champion",
                                               dst_path=str(tmp_path / "model"))
    assert medcore_main(["predict", str(registered_model_dir(Path(local))), str(folder), str(tmp_path / "p"),
                         "--quiet", "--device", "cpu"]) == 0
    expected = np.asarray(nib.load(next((tmp_path / "p").glob("*.nii.gz"))).dataobj)
    np.testing.assert_array_equal(np.asarray(served_labels.dataobj), expected)
    assert sum(json.loads(row["voxels"]).values()) == expected.size

    # a NIfTI file in, a NIfTI out; a SEG out for a DICOM series
    nifti = base64.b64encode((tmp_path / "served.nii.gz").read_bytes()).decode("ascii")
    status, reply = post(f"{url}/invocations", {"dataframe_split": {"columns": ["image"], "data": [[nifti]]}})
    assert status == 200 and reply["predictions"][0]["format"] == "nifti"
    status, reply = post(f"{url}/invocations", {"dataframe_split": {"columns": ["image"], "data": [[zipped(folder)]]},
                                                "params": {"output_format": "seg"}})
    assert status == 200, reply
    (tmp_path / "served.dcm").write_bytes(base64.b64decode(reply["predictions"][0]["labels"]))
    seg = pydicom.dcmread(tmp_path / "served.dcm")
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_instance_uid
    assert dciodvfy_errors(tmp_path / "served.dcm") == []


def test_served_model_refuses_paths(served, pipeline_run):
    url, _ = served
    folder = Path(pipeline_run["root"]) / "inbox"
    for path in (str(folder / "x.nii.gz"), "/etc/passwd", str(folder)):
        status, reply = post(f"{url}/invocations", {"dataframe_split": {"columns": ["image"], "data": [[path]]}})
        assert status == 400, reply
        assert "never reads server paths" in reply["message"] and "looks like a file path" in reply["message"]


def test_other_columns_are_refused_before_any_work():
    """MLflow drops columns outside the signature; called directly, the model refuses them by name."""
    import pandas as pd

    from pipelines.serving import RequestError, decode_request

    with pytest.raises(RequestError, match="never server paths or output locations"):
        decode_request(pd.DataFrame({"source": ["/data/ct"], "output": ["/tmp/x.nii.gz"]}))
    with pytest.raises(RequestError, match="not base64"):
        decode_request(pd.DataFrame({"image": ["not base64!"]}))


def test_signature_and_input_example_are_logged(pipeline_run):
    import mlflow

    reg = pipeline_run["result"]
    mlflow.set_tracking_uri(reg.tracking_uri)
    mlflow.set_registry_uri(reg.tracking_uri)
    info = mlflow.models.get_model_info(f"models:/{reg.model_name}@champion")
    assert info.signature is not None
    assert info.signature.inputs.input_names() == ["image"]
    assert {p.name for p in info.signature.params} == {"output_format", "model_name", "model_version"}
    assert info.saved_input_example_info is not None
