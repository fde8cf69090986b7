"""A PACS over DICOMweb (``dicomweb-client``): find (QIDO-RS), retrieve (WADO-RS), store (STOW-RS).

:class:`Pacs` retries transient failures (no connection, timeouts, HTTP 408/429/5xx) with
exponential backoff and then raises :class:`PacsUnavailable`; any other HTTP error raises
:class:`PacsError`. Messages name the PACS's base URL, the operation and the HTTP status only:
request URLs hold Study/Series UIDs, which identify patients, so they never reach a message.
Retrieved instances are written one file each into a caller's folder; nothing is cached.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

__all__ = ["Pacs", "PacsError", "PacsSettings", "PacsUnavailable", "SeriesInfo"]

T = TypeVar("T")
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class PacsError(RuntimeError):
    """The PACS answered but refused the request (not worth retrying)."""


class PacsUnavailable(PacsError):
    """The PACS did not answer (or kept failing) after every retry; nothing was changed by the caller."""


@dataclass(frozen=True)
class PacsSettings:
    """Where the PACS is: DICOMweb base URL, an optional Authorization header value, timeout and retries."""

    url: str
    auth_header: str = ""
    timeout: float = 30.0
    retries: int = 4
    backoff: float = 0.5  # seconds before the first retry; doubles each time


@dataclass(frozen=True)
class SeriesInfo:
    """One series as QIDO-RS lists it."""

    study_uid: str
    series_uid: str
    modality: str
    instances: int


def _first(item: dict, tag: str, default=None):
    values = item.get(tag, {}).get("Value") or []
    return values[0] if values else default


class Pacs:
    """A DICOMweb PACS; see the module docstring."""

    def __init__(self, settings: PacsSettings):
        if not settings.url.startswith(("http://", "https://")):
            raise ValueError(f"PACS url must start with http:// or https://, got {settings.url!r}")
        self.settings = settings
        session = requests.Session()
        if settings.auth_header:
            session.headers["Authorization"] = settings.auth_header
        self.client = DICOMwebClient(settings.url.rstrip("/"), session=session, timeout=settings.timeout)
        self.client.set_http_retry_params(retry=False)  # retried here, with one policy for every error kind

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        s = self.settings
        last = ""
        for attempt in range(s.retries + 1):
            try:
                return fn()
            except requests.HTTPError as exc:
                status = exc.response.status_code if exc.response is not None else 0
                if status not in TRANSIENT_STATUS:
                    raise PacsError(f"PACS {s.url} refused {what}: HTTP {status}") from None
                last = f"HTTP {status}"
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = type(exc).__name__
            if attempt < s.retries:
                time.sleep(s.backoff * 2**attempt)
        raise PacsUnavailable(f"PACS {s.url} unavailable: {what} failed {s.retries + 1} times ({last}); "
                              "nothing was stored - run again once the PACS is back") from None

    def study_uids(self) -> list[str]:
        """Every StudyInstanceUID the PACS holds (QIDO-RS, all pages)."""
        found = self._call("the study search", lambda: self.client.search_for_studies(get_remaining=True))
        return [uid for uid in (_first(item, "0020000D") for item in found) if uid]

    def series(self, study_uid: str) -> list[SeriesInfo]:
        """The series of one study with their modality and instance count."""
        found = self._call("the series search", lambda: self.client.search_for_series(
            study_uid, fields=["Modality", "NumberOfSeriesRelatedInstances"], get_remaining=True))
        return [SeriesInfo(study_uid, str(_first(item, "0020000E")), str(_first(item, "00080060", "")),
                           int(_first(item, "00201209", 0) or 0)) for item in found if _first(item, "0020000E")]

    def has_instance(self, study_uid: str, sop_instance_uid: str) -> bool:
        """Whether the PACS holds the instance (QIDO-RS on SOPInstanceUID)."""
        found = self._call("the instance search", lambda: self.client.search_for_instances(
            study_uid, search_filters={"SOPInstanceUID": sop_instance_uid}))
        return any(_first(item, "00080018") == sop_instance_uid for item in found)

    def retrieve_series(self, series: SeriesInfo, folder: str | os.PathLike) -> list[Path]:
        """Write each instance of ``series`` (WADO-RS) as ``folder/NNNNN.dcm``; returns the files."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)

        def fetch() -> list[Path]:
            for stale in folder.glob("*.dcm"):  # a retry starts from an empty folder
                stale.unlink()
            files = []
            for i, ds in enumerate(self.client.iter_series(series.study_uid, series.series_uid)):
                path = folder / f"{i:05d}.dcm"
                ds.save_as(path, enforce_file_format=True)
                files.append(path)
            return files

        return self._call("the series retrieval", fetch)

    def store(self, datasets: Sequence[Dataset]) -> None:
        """Store instances (STOW-RS); raises :class:`PacsError` when the PACS lists any as failed."""
        response = self._call("storing", lambda: self.client.store_instances(list(datasets)))
        failed = list(response.get("FailedSOPSequence", [])) if response is not None else []
        if failed:
            reasons = sorted({str(item.get("FailureReason", "?")) for item in failed})
            raise PacsError(f"PACS {self.settings.url} did not store {len(failed)} instance(s) "
                            f"(failure reason {', '.join(reasons)})")

