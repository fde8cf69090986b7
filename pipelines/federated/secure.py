"""SecAgg+ rounds (Flower's secure aggregation): the server learns only the sum of the sites' masked updates.

Flower runs SecAgg+ through its workflow API (``SecAggPlusWorkflow`` on the server, ``secaggplus_mod`` on
the clients), which speaks the ``fitins``/``fitres`` records of its legacy strategies. This module is
the bridge: a server round through the workflow with a FedAvg strategy restricted to the chosen sites,
and on the client the conversion of those records to and from the medcore engine's weights. Arrays
travel in the order of the model's own ``state_dict`` keys on both sides.
"""

from __future__ import annotations

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

SECAGG_RECORD = "secaggplus"
FIT_PARAMETERS = "fitins.parameters"
SHARES = 1.0  # every site holds a share of every other's key (few sites)
THRESHOLD = 0.67  # shares needed to reconstruct a dropped site's mask


def secagg_mod(message: Message, context: Context, call_next) -> Message:
    """ClientApp mod: SecAgg+ for the train messages of a run started with ``secagg = true``."""
    if bool(context.run_config.get("secagg", False)):
        return secaggplus_mod(message, context, call_next)
    return call_next(message, context)


def is_secure_fit(content: RecordDict) -> bool:
    return FIT_PARAMETERS in content


def fit_inputs(content: RecordDict) -> tuple[list[torch.Tensor], dict]:
    """Global weights (in ``state_dict`` key order) and the round config from a SecAgg+ train message."""
    fitins = compat.recorddict_to_fitins(content, keep_input=True)
    return [torch.from_numpy(a.copy()) for a in parameters_to_ndarrays(fitins.parameters)], dict(fitins.config)


def fit_reply(weights: dict[str, torch.Tensor], keys: list[str], num_examples: int, loss: float) -> RecordDict:
    """The records ``secaggplus_mod`` masks: parameters (in ``keys`` order), sample count, the loss."""
    params = ndarrays_to_parameters([weights[k].numpy() for k in keys])
    return compat.fitres_to_recorddict(FitRes(Status(Code.OK, ""), params, num_examples, {"train_loss": loss}),
                                       keep_input=True)


def secure_round(grid, context: Context, nodes: list[int], weights: dict[str, torch.Tensor], keys: list[str],
                 config: dict, rnd: int, timeout: float) -> dict[str, torch.Tensor] | None:
    """One SecAgg+ round of FedAvg over ``nodes``; the new weights, or None when the protocol halted."""
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.constant import Key as WorkflowKey

    manager = SimpleClientManager()
    for node in nodes:
        manager.register(GridClientProxy(node, grid, context.run_id))
    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=len(nodes),
                      min_available_clients=len(nodes), on_fit_config_fn=lambda _: config)
    legacy = LegacyContext(context, strategy=strategy, client_manager=manager)
    start = compat.parameters_to_arrayrecord(ndarrays_to_parameters([weights[k].numpy() for k in keys]),
                                             keep_input=True)
    legacy.state.array_records[MAIN_PARAMS_RECORD] = start
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: rnd})
    SecAggPlusWorkflow(num_shares=SHARES, reconstruction_threshold=THRESHOLD, timeout=timeout)(grid, legacy)
    result = legacy.state.array_records[MAIN_PARAMS_RECORD]
    if result is start:
        return None
    arrays = parameters_to_ndarrays(compat.arrayrecord_to_parameters(result, keep_input=True))
    return {k: torch.from_numpy(a.copy()).to(weights[k].dtype) for k, a in zip(keys, arrays)}
