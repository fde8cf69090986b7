"""``python -m pipelines federate --sites DIR [DIR ...] [options]``: run a federation here and register its model."""

from __future__ import annotations

import argparse
import json
import sys

from pipelines.federated.federate import FederationSettings, federate
from pipelines.federated.processes import TLS


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines federate", description=__doc__)
    d = FederationSettings()
    p.add_argument("--sites", nargs="+", default=[], help="site folders, each with its own params.yaml")
    p.add_argument("--register-only", action="store_true",
                   help="register the result a server wrote in --out (a federation run across machines)")
    p.add_argument("--fetch-champion", action="store_true",
                   help="put the registry's champion in --out for the sites to score beside the global model (before "
                        "`flwr run` across machines; the one-machine command does it itself)")
    p.add_argument("--params", default=None, help="params.yaml of the coordinating project (MLflow registry)")
    p.add_argument("--out", default=None, help="server folder (default: OUTPUT_DIR/federated)")
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--local-steps", type=int, default=d.local_steps, help="optimiser steps per site and round")
    p.add_argument("--fraction", type=float, default=d.fraction, help="fraction of the sites that train each round")
    p.add_argument("--min-sites", type=int, default=d.min_sites)
    p.add_argument("--aggregation", choices=("fedavg", "fedprox"), default=d.aggregation)
    p.add_argument("--proximal-mu", type=float, default=d.proximal_mu, help="FedProx's mu")
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate (default: the plan's)")
    p.add_argument("--round-timeout", type=float, default=d.round_timeout, help="seconds a round waits for a site")
    p.add_argument("--prepare-timeout", type=float, default=d.prepare_timeout,
                   help="seconds to wait for SuperNodes and for each site's preparation and fingerprint")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--plan", default="{}", help='plan overrides as JSON, e.g. \'{"patch_size": [32, 32, 16]}\'')
    p.add_argument("--secagg", action="store_true", help="Flower's SecAgg+: the server sees only summed masked updates")
    p.add_argument("--tls-dir", default=None, help="folder with ca.crt, server.pem, server.key (default: insecure "
                                                   "loopback connections)")
    return p


def server_folder_step(args: argparse.Namespace) -> int:
    """``--register-only`` or ``--fetch-champion``: one registry step on the server folder ``--out``."""
    from pathlib import Path

    from pipelines.federated.federate import fetch_champion, register_federated
    from pipelines.params import load_params
    from pipelines.steps.layout import read_json, write_json

    flag = "--register-only" if args.register_only else "--fetch-champion"
    if not args.out:
        print(f"pipelines federate {flag}: pass --out, the server folder (MEDCORE_FED_DIR)", file=sys.stderr)
        return 1
    out = Path(args.out).resolve()
    try:
        if args.register_only:
            done = register_federated(load_params(args.params), out, read_json(out / "result.json"))
            write_json(out / "registered_model.json", done)
        else:
            done = fetch_champion(load_params(args.params), out) or {"champion": None}
    except (OSError, ValueError, RuntimeError) as error:
        print(f"pipelines federate {flag}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(done, indent=1))
    return 0


def main(argv: list[str]) -> int:
    from pipelines.params import load_params

    args = parser().parse_args(argv)
    if args.register_only or args.fetch_champion:
        return server_folder_step(args)
    try:
        settings = FederationSettings(args.rounds, args.local_steps, args.fraction, args.min_sites, args.aggregation,
                                      args.proximal_mu, args.lr, args.round_timeout, args.prepare_timeout, args.seed,
                                      json.loads(args.plan), args.secagg)
        done = federate(args.sites, load_params(args.params), settings, args.out,
                        TLS.from_dir(args.tls_dir) if args.tls_dir else None)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"pipelines federate: {error}", file=sys.stderr)
        return 1
    for name, reason in done.result["refused"].items():
        print(f"site {name} refused: {reason}", file=sys.stderr)
    print(json.dumps({"out": str(done.out), "registered": done.registered, "per_site": done.result["per_site"]},
                     indent=1))
    return 0
