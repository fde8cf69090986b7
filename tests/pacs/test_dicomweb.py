"""The DICOMweb client against a real Orthanc: store, find, retrieve, auth header, refusals, retries."""

from __future__ import annotations

import base64
import os
import time

import pydicom
import pytest

from medcore.data.synthetic import write_synthetic_studies
from medcore.dicom.web import Pacs, PacsError, PacsSettings, PacsUnavailable
from pipelines.orthanc import Orthanc, free_port, orthanc_available


@pytest.fixture(scope="module")
def orthanc():
    if not orthanc_available():
        if os.environ.get("CI") == "true":
            pytest.fail("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
        pytest.skip("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
    with Orthanc(users={"medcore": "s3cret"}) as server:
        yield server


def test_store_find_retrieve_with_the_auth_header(orthanc, tmp_path):
    m = write_synthetic_studies(tmp_path / "in", n_patients=1, seed=1, shape=(16, 16, 4), localizer=False)
    series = m.series[0]
    files = sorted((m.root / series.folder).glob("*.dcm"))
    header = "Basic " + base64.b64encode(b"medcore:s3cret").decode()
    pacs = Pacs(PacsSettings(orthanc.dicomweb_url, auth_header=header))
    pacs.store([pydicom.dcmread(p) for p in files])
    assert pacs.study_uids() == [series.study_instance_uid]
    (info,) = pacs.series(series.study_instance_uid)
    assert (info.series_uid, info.modality, info.instances) == (series.series_instance_uid, "CT", len(files))
    got = pacs.retrieve_series(info, tmp_path / "out")
    assert sorted(pydicom.dcmread(p).SOPInstanceUID for p in got) == \
        sorted(pydicom.dcmread(p).SOPInstanceUID for p in files)
    sop = pydicom.dcmread(files[0]).SOPInstanceUID
    assert pacs.has_instance(series.study_instance_uid, sop)
    assert not pacs.has_instance(series.study_instance_uid, "1.2.3.4")
    # no credentials: refused at once (401 is not transient), and the message names no UID
    started = time.monotonic()
    with pytest.raises(PacsError, match="HTTP 401") as refused:
        Pacs(PacsSettings(orthanc.dicomweb_url, backoff=1.0)).series(series.study_instance_uid)
    assert time.monotonic() - started < 1.0 and series.study_instance_uid not in str(refused.value)


def test_unreachable_pacs_is_retried_then_reported():
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    started = time.monotonic()
    with pytest.raises(PacsUnavailable, match=r"failed 4 times \(ConnectionError\)"):
        Pacs(PacsSettings(url, retries=3, backoff=0.05)).study_uids()
    assert time.monotonic() - started >= 0.05 + 0.1 + 0.2  # backoff doubled between attempts
    with pytest.raises(ValueError, match="must start with http"):
        Pacs(PacsSettings("/srv/pacs"))
