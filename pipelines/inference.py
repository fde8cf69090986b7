"""Stage ``inference``: the champion's segmentation of a PACS study, stored back as DICOM SEG.

Plain functions (no Dagster): :func:`pending_studies` lists the studies whose series match the
champion's input and lack its SEG; :func:`segment_study` retrieves one study into a temporary
folder (always removed), converts it with the ingestion checks of training, predicts, writes a
SEG per series, stores it by STOW-RS and checks the PACS holds it. Results carry pseudonyms only:
the real Study/Series UIDs stay in memory and in the PACS.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from medcore.dicom.web import Pacs, PacsSettings, SeriesInfo
from pipelines.params import tracking_uri

STORED, PRESENT, REFUSED = "stored", "already present", "refused"


@dataclass(frozen=True)
class Champion:
    """The registered model resolved from ``@champion`` at run start."""

    name: str
    version: str
    model_dir: Path
    modality: str
    min_slices: int


@dataclass(frozen=True)
class StudyCandidate:
    """A PACS study to segment: ``key`` is its pseudonym; ``series`` hold real UIDs (memory only)."""

    key: str
    study_uid: str
    series: tuple[SeriesInfo, ...]
    segmented: tuple[bool, ...]  # per series: the champion's SEG is already in the PACS

    @property
    def done(self) -> bool:
        return all(self.segmented)


@dataclass(frozen=True)
class SeriesOutcome:
    series: str  # pseudonym
    status: str  # STORED, PRESENT or REFUSED
    reason: str = ""
    seconds: dict = field(default_factory=dict)  # retrieve, convert, predict, write, store


@dataclass(frozen=True)
class StudyOutcome:
    study: str  # pseudonym
    model: str
    version: str
    series: tuple[SeriesOutcome, ...]

    @property
    def status(self) -> str:
        states = {s.status for s in self.series}
        if STORED in states:
            return STORED
        return PRESENT if states == {PRESENT} else REFUSED

    @property
    def reason(self) -> str:
        return "; ".join(f"{s.series}: {s.reason}" for s in self.series if s.status == REFUSED)

    def line(self) -> str:
        return outcome_line(self.study, self.status, self.reason, self.model, self.version)


def outcome_line(study: str, status: str, reason: str, model: str, version: str) -> str:
    """One line for a terminal: stored, already present, or refused with the reason."""
    return f"{study}: {status} ({reason})" if status == REFUSED else f"{study}: {status} ({model} v{version})"


def pacs_settings(params: dict, url: str | None = None) -> PacsSettings:
    """PACS settings: ``url``, else ``$MEDCORE_PACS_URL``, else params.yaml's ``pacs`` section (the
    Authorization value comes from the environment variable that section names)."""
    import os

    p = params["pacs"]
    return PacsSettings(url=url or os.environ.get("MEDCORE_PACS_URL") or p["url"],
                        auth_header=os.environ.get(p["auth_header_env"] or "", ""),
                        timeout=float(p["timeout_seconds"]), retries=int(p["retries"]),
                        backoff=float(p["backoff_seconds"]))


def pseudonym(deid, kind: str, uid: str) -> str:
    """``<kind>-<12 hex>``: a keyed hash of a UID, safe for partition keys, metadata and logs."""
    return f"{kind}-" + hashlib.sha256(deid.uid(f"medcore-pacs-{kind}:{uid}").encode()).hexdigest()[:12]


#: Plan modality names that are not DICOM Modality values (MSD datasets say "MRI").
_DICOM_MODALITY = {"MRI": "MR"}


@dataclass(frozen=True)
class ChampionInput:
    """``@champion`` in the registry, and the series it segments: the modality its plan was made for (the
    version's ``modality`` tag; ``pacs.modality`` for versions registered without one) and a slice count."""

    name: str
    version: str
    modality: str
    min_slices: int


def champion_input(params: dict) -> ChampionInput:
    """Look up ``@champion`` (registry only, nothing downloaded) and what input it expects."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    name, uri = params["register"]["model_name"], tracking_uri(params)
    try:
        version = MlflowClient(uri, uri).get_model_version_by_alias(name, "champion")
    except MlflowException as exc:
        raise RuntimeError(f"no @champion for model {name!r} in {uri}: register a model first") from exc
    planned = str(version.tags.get("modality") or params["pacs"]["modality"]).upper()
    return ChampionInput(name, str(version.version), _DICOM_MODALITY.get(planned, planned),
                         int(params["pacs"]["min_slices"]))


def resolve_champion(params: dict, folder: Path) -> Champion:
    """Resolve ``@champion`` once and download that version's model directory into ``folder``."""
    import mlflow

    ref = champion_input(params)
    mlflow.set_tracking_uri(tracking_uri(params))
    mlflow.set_registry_uri(tracking_uri(params))
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{ref.name}/{ref.version}", dst_path=str(folder)))
    return Champion(ref.name, ref.version, registered_model_dir(local), ref.modality, ref.min_slices)


def registered_model_dir(local: Path) -> Path:
    """The medcore model directory inside a downloaded registered model (as its MLmodel file names it)."""
    import yaml

    meta = yaml.safe_load((Path(local) / "MLmodel").read_text())
    return Path(local) / meta["flavors"]["python_function"]["artifacts"]["model_dir"]["path"]


def matches(series: SeriesInfo, modality: str, min_slices: int) -> bool:
    """Whether a series is the kind of image the champion segments (modality, a stack of slices)."""
    return series.modality.upper() == modality.upper() and series.instances >= min_slices


def pending_studies(pacs: Pacs, deid, name: str, version: str, modality: str, min_slices: int,
                    skip: set[str] | frozenset[str] = frozenset()) -> dict[str, StudyCandidate]:
    """``{pseudonym: candidate}`` for studies with matching series (keys in ``skip`` are not queried)."""
    from medcore.dicom.seg import SegAlgorithm, seg_uids

    algorithm = SegAlgorithm(name, version)
    out = {}
    for study_uid in pacs.study_uids():
        key = pseudonym(deid, "study", study_uid)
        if key in skip:
            continue
        series = tuple(s for s in pacs.series(study_uid) if matches(s, modality, min_slices))
        if series:
            done = tuple(pacs.has_instance(study_uid, seg_uids(s.series_uid, algorithm).instance) for s in series)
            out[key] = StudyCandidate(key, study_uid, series, done)
    return out


def find_study(pacs: Pacs, deid, key: str, modality: str, min_slices: int) -> StudyCandidate:
    """The candidate behind a partition key (the PACS is searched again: no UID is stored anywhere)."""
    for study_uid in pacs.study_uids():
        if pseudonym(deid, "study", study_uid) == key:
            series = tuple(s for s in pacs.series(study_uid) if matches(s, modality, min_slices))
            return StudyCandidate(key, study_uid, series, tuple(False for _ in series))
    raise LookupError(f"study {key} is no longer in the PACS (deleted or moved?)")


def segment_series(pacs: Pacs, series: SeriesInfo, champion: Champion, model, spec, deid, device,
                   work: Path) -> SeriesOutcome:
    """Retrieve, convert (training's checks), predict, write SEG, store, verify; one series."""
    from medcore.dicom.convert import convert_tree
    from medcore.dicom.seg import SegAlgorithm, build_seg, seg_uids
    from medcore.inferers.predict import predict_volume
    from medcore.io import load_image

    name = pseudonym(deid, "series", series.series_uid)
    algorithm = SegAlgorithm(champion.name, champion.version)
    uids = seg_uids(series.series_uid, algorithm)
    if pacs.has_instance(series.study_uid, uids.instance):
        return SeriesOutcome(name, PRESENT)
    seconds = {}
    t = time.perf_counter()
    files = pacs.retrieve_series(series, work / "dicom")
    seconds["retrieve"], t = time.perf_counter() - t, time.perf_counter()
    report = convert_tree(work / "dicom", work / "converted", deid=deid, compress=False, progress=False, workers=1)
    seconds["convert"], t = time.perf_counter() - t, time.perf_counter()
    records = [r for r in report.series if r.n_volumes == 1]
    if len(records) != 1:
        why = [f"{r['code']}: {r['message']}" for r in report.refused] or [f"{len(records)} volumes converted"]
        return SeriesOutcome(name, REFUSED, "; ".join(why), seconds)
    record = records[0]
    if record.resampled:
        return SeriesOutcome(name, REFUSED, "resampled_grid: the series was resampled onto a regular grid; a SEG "
                             "must be drawn on the images it references", seconds)
    image = load_image(work / "converted" / record.nifti)
    labels = predict_volume(model, spec, image, device=device)
    seconds["predict"], t = time.perf_counter() - t, time.perf_counter()
    names = {value: label for label, value in spec.labels.items()}
    seg = build_seg(labels.data[0].numpy(), files, names, algorithm=algorithm,
                    affine=image.affine.numpy(), series_description=f"{champion.name} v{champion.version}")
    seconds["write"], t = time.perf_counter() - t, time.perf_counter()
    pacs.store([seg])
    if not pacs.has_instance(series.study_uid, uids.instance):
        raise RuntimeError(f"series {name}: the PACS accepted the SEG but does not list it; not stored")
    seconds["store"] = time.perf_counter() - t
    return SeriesOutcome(name, STORED, "", seconds)


def segment_study(pacs: Pacs, study: StudyCandidate, champion: Champion, model, spec, deid,
                  device=None) -> StudyOutcome:
    """Every matching series of ``study``, each in its own temporary folder (removed whatever happens)."""
    outcomes = []
    for series in study.series:
        with tempfile.TemporaryDirectory(prefix="medcore-infer-") as tmp:
            outcomes.append(segment_series(pacs, series, champion, model, spec, deid, device, Path(tmp)))
    return StudyOutcome(study.key, champion.name, champion.version, tuple(outcomes))
