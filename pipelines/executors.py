"""The Dagster executor, chosen by configuration (``$MEDCORE_DAGSTER_EXECUTOR``).

``in_process`` (default, the only SQLite-safe choice), ``multiprocess``, ``celery`` (package
``dagster-celery``; broker and result backend from ``$MEDCORE_CELERY_BROKER`` / ``$MEDCORE_CELERY_BACKEND``)
or ``k8s`` (package ``dagster-k8s``; image, namespace, secrets and kubeconfig from ``$MEDCORE_K8S_*``).
Cluster settings are read when the code location loads, so every process (webserver, daemon, run and
step workers) must see the same variables. See docs/pipelines.md "Scaling out".
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping

from dagster import ExecutorDefinition, in_process_executor, multiprocess_executor

EXECUTOR_ENV = "MEDCORE_DAGSTER_EXECUTOR"
CELERY_BROKER_ENV = "MEDCORE_CELERY_BROKER"
CELERY_BACKEND_ENV = "MEDCORE_CELERY_BACKEND"
# a local Redis; the result backend defaults to the broker URL (the same Redis)
DEFAULT_CELERY_BROKER = "redis://localhost:6379/0"
K8S_IMAGE_ENV = "MEDCORE_K8S_IMAGE"
K8S_NAMESPACE_ENV = "MEDCORE_K8S_NAMESPACE"
K8S_SECRETS_ENV = "MEDCORE_K8S_ENV_SECRETS"  # comma-separated Secret names (deid key, DAGSTER_PG_URL, ...)
K8S_KUBECONFIG_ENV = "MEDCORE_K8S_KUBECONFIG"  # unset: in-cluster config
# variables every step pod needs, copied from the launching process when set there
K8S_FORWARDED_ENV = ("MEDCORE_PARAMS", "MEDCORE_DVC")

# name -> (module, attribute, pip package); None: built into dagster
EXECUTORS: dict[str, tuple[str, str, str] | None] = {
    "in_process": None, "multiprocess": None,
    "celery": ("dagster_celery", "celery_executor", "dagster-celery"),
    "k8s": ("dagster_k8s", "k8s_job_executor", "dagster-k8s"),
}


def _env_or(name: str, default: str | dict, env: Mapping[str, str]) -> str | dict:
    """``{"env": name}`` when set (resolved at run time, never shown in the UI), else ``default``."""
    return {"env": name} if env.get(name, "").strip() else default


def celery_config(env: Mapping[str, str] | None = None) -> dict:
    """Run config of ``dagster_celery.celery_executor``: broker and result backend from the environment."""
    env = os.environ if env is None else env
    broker = _env_or(CELERY_BROKER_ENV, DEFAULT_CELERY_BROKER, env)
    return {"broker": broker, "backend": _env_or(CELERY_BACKEND_ENV, broker, env)}


def k8s_config(env: Mapping[str, str] | None = None) -> dict:
    """Run config of ``dagster_k8s.k8s_job_executor``: image, namespace, env and secrets of the step pods."""
    env = os.environ if env is None else env
    config: dict = {"env_vars": [f"{EXECUTOR_ENV}=k8s", *(n for n in K8S_FORWARDED_ENV if env.get(n))]}
    if env.get(K8S_IMAGE_ENV, "").strip():
        config["job_image"] = env[K8S_IMAGE_ENV].strip()
    if env.get(K8S_NAMESPACE_ENV, "").strip():
        config["job_namespace"] = env[K8S_NAMESPACE_ENV].strip()
    secrets = [s.strip() for s in env.get(K8S_SECRETS_ENV, "").split(",") if s.strip()]
    if secrets:
        config["env_secrets"] = secrets
    if env.get(K8S_KUBECONFIG_ENV, "").strip():
        config.update(load_incluster_config=False, kubeconfig_file=env[K8S_KUBECONFIG_ENV].strip())
    return config


CONFIGS = {"celery": celery_config, "k8s": k8s_config}


def select_executor(name: str | None = None) -> ExecutorDefinition:
    """The executor called ``name`` (default ``$MEDCORE_DAGSTER_EXECUTOR``, else ``in_process``)."""
    name = (name if name is not None else os.environ.get(EXECUTOR_ENV, "")).strip() or "in_process"
    if name not in EXECUTORS:
        raise ValueError(f"{EXECUTOR_ENV}={name!r}: unknown Dagster executor; choose one of {sorted(EXECUTORS)}")
    if name == "in_process":
        return in_process_executor
    if name == "multiprocess":
        return multiprocess_executor
    spec = EXECUTORS[name]
    assert spec is not None  # only the built-in executors have none, handled above
    module, attribute, package = spec
    try:
        base: ExecutorDefinition = getattr(importlib.import_module(module), attribute)
    except ImportError as exc:
        raise ImportError(f"{EXECUTOR_ENV}={name!r} needs the package {package!r}, which is not installed "
                          f"({exc}); run `pip install -e '.[scale]'` (or `pip install {package}`, same release "
                          f"line as dagster) or pick in_process/multiprocess") from exc
    return base.configured(CONFIGS[name](), name=base.name)
