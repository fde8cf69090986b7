"""The ``medcore`` command line: ``medcore convert | predict | train``.

Each subcommand lives next to the code it drives and exposes ``add_arguments(parser)`` and
``run(args) -> int``; this module only dispatches, importing the subcommand lazily so that
``medcore convert`` never pays for importing the training stack.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "convert": ("medcore.dicom.cli", "Convert a DICOM tree to NIfTI, quarantining what cannot be trusted."),
    "predict": ("medcore.inferers.cli", "Predict label volumes with a trained model directory."),
    "train": ("medcore.engine.cli", "Train a segmentation model from a config file or preset."),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="medcore", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    modules = {}
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            modules[name] = importlib.import_module(module_name)
            modules[name].add_arguments(p)
    args = parser.parse_args(argv)
    return int(modules[args.command].run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
