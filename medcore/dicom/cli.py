"""``medcore convert IN_DIR OUT_DIR``: DICOM tree to NIfTI + sidecars, with a quarantine table.

Prints a progress bar and a closing summary (series written, files quarantined by reason).
Quarantined files are identified by keyed ``file_id`` only; ``--show-paths`` prints the local
path of each one to this terminal (never to a file), for the operator who owns the input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("in_dir", type=Path, help="folder with DICOM files (searched recursively)")
    parser.add_argument("out_dir", type=Path, help="output folder for NIfTI, sidecars and tables")
    parser.add_argument("--no-compress", action="store_true", help="write .nii instead of .nii.gz")
    parser.add_argument("--gzip-level", type=int, default=None, help="gzip level for .nii.gz (default 1)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count)")
    parser.add_argument("--key-file", type=Path, default=None,
                        help="de-identification key file (default $MEDCORE_DEID_KEY or ~/.config/medcore)")
    parser.add_argument("--show-paths", action="store_true",
                        help="print the local path of each quarantined file to the terminal (may show PHI)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from medcore.dicom.convert import convert_tree
    from medcore.dicom.deid import DeidentificationError, Deidentifier, load_or_create_key
    from medcore.dicom.nifti import GZIP_LEVEL

    if not args.in_dir.is_dir():
        print(f"medcore convert: input folder {args.in_dir} does not exist or is not a folder", file=sys.stderr)
        return 2
    try:
        key = load_or_create_key(args.key_file, forbidden_roots=[args.in_dir, args.out_dir])
    except DeidentificationError as exc:
        print(f"medcore convert: {exc}", file=sys.stderr)
        return 2
    report = convert_tree(args.in_dir, args.out_dir, deid=Deidentifier(key), compress=not args.no_compress,
                          progress=not args.quiet, workers=args.workers,
                          gzip_level=GZIP_LEVEL if args.gzip_level is None else args.gzip_level)
    print(report.summary())
    print(f"tables: {args.out_dir / 'series_index.parquet'}, {args.out_dir / 'quarantine.parquet'}")
    if args.show_paths and len(report.quarantine):
        print("quarantined files (local paths, shown on this terminal only):")
        for row in report.quarantine.itertuples():
            print(f"  {row.file_id}  {row.code:<22} {report.local_paths.get(str(row.file_id), '?')}")
    return 0
