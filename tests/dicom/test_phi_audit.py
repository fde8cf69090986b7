"""PHI audit: convert synthetic studies full of planted PHI, then search every output byte for it.

Searched: every file and folder name under the output, every file's bytes (``.nii.gz`` decompressed,
parquet tables both raw and decoded), stdout/stderr of ``medcore convert`` (progress bar and summary
included) and every log record. Searched for: each planted value in any letter case, person names
also in their other spellings ("DOE^JOHN", "DOE JOHN", "JOHN DOE", "DOE, JOHN"), and every original
UID of the input.
"""

from __future__ import annotations

import gzip
import logging
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from medcore.data.synthetic import write_synthetic_studies

UID_TOKEN = re.compile(rb"[0-9]+(?:\.[0-9]+){2,}")


def name_variants(value: str) -> set[str]:
    """A planted value and, for DICOM person names, the ways a name may be re-spelled."""
    out = {value}
    if "^" in value:
        parts = [p for p in value.split("^") if p]
        out |= {" ".join(parts), ", ".join(parts), "_".join(parts), "".join(parts)}
        if len(parts) >= 2:
            out |= {f"{parts[1]} {parts[0]}", f"{parts[0]}, {parts[1]}", f"{parts[1]}^{parts[0]}"}
    return {v.lower() for v in out if len(v) >= 4}


def output_documents(out_dir: Path) -> dict[str, bytes]:
    """Every searchable text of an output tree: names, raw bytes, decompressed and decoded forms."""
    docs: dict[str, bytes] = {}
    for path in sorted(out_dir.rglob("*")):
        rel = path.relative_to(out_dir).as_posix()
        docs[f"name:{rel}"] = rel.encode()
        if not path.is_file():
            continue
        data = path.read_bytes()
        docs[f"file:{rel}"] = data
        if path.name.endswith(".gz"):
            docs[f"gunzip:{rel}"] = gzip.decompress(data)
        if path.suffix == ".parquet":
            docs[f"table:{rel}"] = pd.read_parquet(path).to_json(default_handler=str).encode()
    return docs


def find_phi(docs: dict[str, bytes], planted: list[str], original_uids: set[str]) -> list[str]:
    needles = sorted({v.encode() for p in planted for v in name_variants(p)})
    hits = []
    for where, data in docs.items():
        low = data.lower()
        hits += [f"{where}: {n.decode()!r}" for n in needles if n in low]
        hits += [f"{where}: UID {u.decode()}" for u in UID_TOKEN.findall(data) if u.decode() in original_uids]
    return hits


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("phi")
    manifest = write_synthetic_studies(root / "in", n_patients=3, seed=11, shape=(32, 32, 6), phi_in_paths=True)
    # bad inputs whose names carry PHI: they end in the quarantine table, which must not repeat them
    pn = next(v for v in manifest.planted_phi if v.count("^") == 2)
    mrn = next(v for v in manifest.planted_phi if v.startswith("MRN"))
    bad_dir = manifest.dicom_dir / f"{pn}_{mrn}"
    bad_dir.mkdir()
    (bad_dir / f"notes_{pn}.txt").write_text(f"patient {pn} {mrn}\n")
    first = next(manifest.dicom_dir.rglob("*.dcm"))
    (bad_dir / f"{mrn}_truncated.dcm").write_bytes(first.read_bytes()[:700])
    (bad_dir / f"{mrn}_empty.dcm").write_bytes(b"")
    shutil.copy(first, bad_dir / f"{mrn}_copy.dcm")  # an exact duplicate
    return manifest


@pytest.mark.parametrize("compress", [True, False], ids=["nii.gz", "nii"])
def test_no_planted_phi_leaves_conversion(study, tmp_path, capsys, caplog, monkeypatch, compress):
    from medcore.cli import main

    monkeypatch.delenv("MEDCORE_DEID_KEY", raising=False)
    out_dir = tmp_path / "out"
    key_file = tmp_path / "keys" / "deid.key"
    argv = ["convert", str(study.dicom_dir), str(out_dir), "--workers", "1", "--key-file", str(key_file)]
    caplog.set_level(logging.DEBUG)
    assert main(argv + ([] if compress else ["--no-compress"])) == 0
    captured = capsys.readouterr()

    written = list(out_dir.rglob("*.nii.gz" if compress else "*.nii"))
    assert len(written) == len(study.series), "every synthetic series must be converted"
    quarantine = pd.read_parquet(out_dir / "quarantine.parquet")
    assert len(quarantine) >= 3, "the planted bad files must be quarantined"

    docs = output_documents(out_dir)
    docs["stdout"] = captured.out.encode()
    docs["stderr"] = captured.err.encode()
    docs["log"] = caplog.text.encode()
    assert "series written" in captured.out
    leaks = find_phi(docs, study.planted_phi, set(study.original_uids))
    assert not leaks, "PHI in conversion output:\n" + "\n".join(leaks[:20])


def test_the_audit_can_fail(study):
    """Positive controls: the same search finds PHI in the input tree and in re-spelled names."""
    names = {p.relative_to(study.dicom_dir).as_posix(): b"" for p in study.dicom_dir.rglob("*")}
    docs = {f"name:{k}": k.encode() for k in names}
    assert find_phi(docs, study.planted_phi, set())
    pn = next(v for v in study.planted_phi if v.count("^") == 2)
    family, given = pn.split("^")[:2]
    for spelling in (f"{given} {family}".upper(), f"{family}, {given}", pn.replace("^", " ").lower()):
        assert find_phi({"x": f"report for {spelling}.".encode()}, [pn], set()), spelling
    uid = study.original_uids[0]
    assert find_phi({"x": f'{{"uid": "{uid}"}}'.encode()}, [], set(study.original_uids))
    assert not find_phi({"x": b"sub-0123456789 2.25.1234567"}, study.planted_phi, set(study.original_uids))
