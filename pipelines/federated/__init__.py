"""Federated training with Flower: one SuperLink, one SuperNode per site, the medcore engine at each site.

A site is one inbox with its own params (de-identification key, ingestion, cache and run folder).
Sites send the server parameter tensors and numeric metrics only (at the end, per-case Dice lists with
no case id, for the champion rule), plus one fingerprint of their data (modality, class names,
shape/spacing/intensity statistics) for the shared plan.

Modules: ``site`` (a site's data, local training and evaluation), ``plan`` (one plan from the sites'
fingerprints, refusals by name), ``records`` (what travels, and the audit of it), ``secure`` (SecAgg+
rounds), ``client_app`` and ``server_app`` (the Flower apps; ``app/pyproject.toml`` is the Flower App),
``processes`` (SuperLink, SuperNodes and ``flwr run`` on this machine), ``federate`` (the whole run,
then MLflow registration), ``cli`` (``python -m pipelines federate``) and ``assets`` (the Dagster job).
"""
