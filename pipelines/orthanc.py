"""A private Orthanc PACS (Debian's ``orthanc`` + ``orthanc-dicomweb``) for development and tests.

:class:`Orthanc` writes its own configuration and storage into a temporary folder, listens on free
ports (HTTP with DICOMweb under ``/dicom-web``, and DICOM), accepts requests from this machine only
(``RemoteAccessAllowed: false``), and removes everything when stopped. ``python -m pipelines pacs``
runs one in the foreground beside ``dagster dev`` until Ctrl-C.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ORTHANC = os.environ.get("MEDCORE_ORTHANC", "Orthanc")
DICOMWEB_PLUGIN = os.environ.get("MEDCORE_ORTHANC_DICOMWEB", "/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def orthanc_available() -> bool:
    """True when the Orthanc binary and its DICOMweb plugin are installed."""
    return shutil.which(ORTHANC) is not None and Path(DICOMWEB_PLUGIN).is_file()


@dataclass
class Orthanc:
    """``with Orthanc() as pacs: pacs.dicomweb_url`` (``http://127.0.0.1:PORT/dicom-web``)."""

    aet: str = "MEDCORE_PACS"
    start_timeout: float = 30.0
    users: dict[str, str] = field(default_factory=dict)  # HTTP basic users; empty: no authentication
    http_port: int = field(default=0, init=False)
    dicom_port: int = field(default=0, init=False)
    root: Path | None = field(default=None, init=False)
    process: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def log_file(self) -> Path:
        assert self.root is not None, "Orthanc is not started"
        return self.root / "orthanc.log"

    def config(self) -> dict:
        assert self.root is not None
        return {
            "Name": "medcore-dev-pacs", "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "storage"), "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "DicomAet": self.aet, "RemoteAccessAllowed": False, "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": dict(self.users),
            "Plugins": [DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": "127.0.0.1"},
            "OverwriteInstances": False, "SaveJobs": False, "ConcurrentJobs": 1, "HttpThreadsCount": 8,
            "StorageCompression": False, "UnknownSopClassAccepted": False, "ExecuteLuaEnabled": False,
        }

    def start(self) -> Orthanc:
        if not orthanc_available():
            raise RuntimeError(f"Orthanc not installed ({ORTHANC}, {DICOMWEB_PLUGIN}); on Debian: "
                               "apt-get install orthanc orthanc-dicomweb")
        self.root = Path(tempfile.mkdtemp(prefix="medcore-orthanc-"))
        self.http_port, self.dicom_port = free_port(), free_port()
        (self.root / "orthanc.json").write_text(json.dumps(self.config(), indent=1))
        with open(self.log_file, "wb") as log:
            self.process = subprocess.Popen([ORTHANC, str(self.root / "orthanc.json")], cwd=self.root,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_file.read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"Orthanc exited at start (status {self.process.returncode}):\n{tail}")
            try:
                with urllib.request.urlopen(f"{self.url}/system", timeout=1) as r:
                    if r.status == 200:
                        return self
            except urllib.error.HTTPError as exc:
                if exc.code == 401:  # up, and asking for the credentials it was given
                    return self
                time.sleep(0.1)
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer on {self.url} within {self.start_timeout} s")

    def stop(self) -> None:
        """Stop the server and remove its configuration and storage."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_forever() -> int:
    """``python -m pipelines pacs``: run a private Orthanc until Ctrl-C (or SIGTERM); print where it listens."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # a plain `kill` stops Orthanc too and removes its storage
    with Orthanc() as pacs:
        print(f"Orthanc (PACS) at {pacs.url}, DICOMweb {pacs.dicomweb_url}, DICOM {pacs.aet}@127.0.0.1:"
              f"{pacs.dicom_port}; storage in {pacs.root} (removed on exit). Ctrl-C stops it.", flush=True)
        print(f"  infer:  python -m pipelines infer --pacs {pacs.dicomweb_url}", flush=True)
        print(f"  Dagster: MEDCORE_PACS_URL={pacs.dicomweb_url} dagster dev -m pipelines.definitions", flush=True)
        try:
            while pacs.process is not None and pacs.process.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0
