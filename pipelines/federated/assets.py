"""The Dagster side of federated training: the ``federated_model`` asset and the ``federate`` job.

The asset runs the same :func:`pipelines.federated.federate.federate` as ``python -m pipelines
federate``: real SuperLink and SuperNode processes, then registration. The Launchpad sets the sites
and the federation knobs; the registry comes from the ``settings`` resource (params.yaml by default).
"""

import json

from dagster import (
    AssetExecutionContext,
    AssetSelection,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
    define_asset_job,
)
from pydantic import Field

from pipelines.federated.federate import FederationSettings
from pipelines.resources import PipelineSettings

_D = FederationSettings()


class FederateConfig(Config):
    """Sites (folders, each with its own params.yaml) and the federation settings."""

    sites: list[str] = Field(description="site folders, one SuperNode each")
    out: str = Field("", description="server folder (default: OUTPUT_DIR/federated)")
    rounds: int = Field(_D.rounds, description="federated rounds")
    local_steps: int = Field(_D.local_steps, description="optimiser steps per site and round")
    fraction: float = Field(_D.fraction, description="fraction of the sites that train each round")
    aggregation: str = Field(_D.aggregation, description="fedavg or fedprox")
    proximal_mu: float = Field(_D.proximal_mu, description="FedProx's mu")
    round_timeout: float = Field(_D.round_timeout, description="seconds a round waits for a site")
    plan_overrides: str = Field("{}", description="plan overrides as JSON")
    secagg: bool = Field(False, description="SecAgg+: the server sees only the sum of masked updates")


@asset(group_name="federated")
def federated_model(context: AssetExecutionContext, config: FederateConfig,
                    settings: PipelineSettings) -> MaterializeResult:
    """A model trained across sites with Flower (weights and metrics only leave each site), registered in MLflow."""
    from pipelines.federated.federate import federate

    fed = FederationSettings(rounds=config.rounds, local_steps=config.local_steps, fraction=config.fraction,
                             aggregation=config.aggregation, proximal_mu=config.proximal_mu,
                             round_timeout=config.round_timeout, plan_overrides=json.loads(config.plan_overrides),
                             secagg=config.secagg)
    done = federate(config.sites, settings.params(), fed, config.out or None)
    for name, reason in done.result["refused"].items():
        context.log.warning(f"site {name} refused: {reason}")
    for rnd, missing in done.result["missing_by_round"].items():
        context.log.warning(f"round {rnd}: missing {missing}")
    reg = done.registered
    return MaterializeResult(metadata={
        "sites": ", ".join(done.result["sites"]), "refused": MetadataValue.json(done.result["refused"]),
        "rounds": done.result["rounds"], "aggregation": done.result["aggregation"],
        "mean_dice": reg["mean_dice"], "per_site": MetadataValue.json(done.result["per_site"]),
        "model_uri": reg["model_uri"], "version": reg["version"], "promotion": reg["reason"]})


federate_job = define_asset_job("federate", selection=AssetSelection.assets(federated_model),
                                description="train one model across sites with Flower and register it")
