"""Build networks by name from a JSON-serialisable config, so a saved model rebuilds without pickle.

``build_network({"name": "unet", "spatial_dims": 3, ...})`` returns a module whose ``.config`` is the
complete config (defaults filled in) that rebuilds an identical architecture.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

_NETWORKS: dict[str, type[nn.Module]] = {}

T = TypeVar("T", bound=type[nn.Module])


def to_jsonable(value: Any) -> Any:
    """Tuples become lists and built modules their ``.config``, so a config survives a JSON round trip."""
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, nn.Module) and isinstance(getattr(value, "config", None), dict):
        return value.config
    return value


def record_config(name: str) -> Callable[[T], T]:
    """Class decorator: after ``__init__`` the instance holds ``.config`` = {"name": name, **all arguments}."""

    def decorate(cls: T) -> T:
        klass: Any = cls  # the wrapped __init__ is set on the class, which mypy cannot follow
        init = klass.__init__
        signature = inspect.signature(init)

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **kwargs)
            if type(self) is klass:
                bound = signature.bind(self, *args, **kwargs)
                bound.apply_defaults()
                arguments = dict(bound.arguments)
                arguments.pop("self")
                self.config = {"name": name, **to_jsonable(arguments)}

        klass.__init__ = __init__
        return cls

    return decorate


def registrar(registry: dict[str, type[nn.Module]], kind: str) -> Callable[[str], Callable[[T], T]]:
    """``register(name)``: a class decorator that records the config and adds the class to ``registry``."""

    def register(name: str) -> Callable[[T], T]:
        def decorate(cls: T) -> T:
            if name in registry:
                raise ValueError(f"{kind} name {name!r} is already registered to {registry[name].__name__}")
            registry[name] = record_config(name)(cls)
            return cls

        return decorate

    return register


#: Class decorator: register a network under a name and record its config on construction.
register_network = registrar(_NETWORKS, "network")


def network_names() -> list[str]:
    """Sorted names accepted by :func:`build_network`."""
    return sorted(_NETWORKS)


def build_from_registry(config: dict, registry: dict[str, type], kind: str) -> Any:
    """Shared by networks and losses: validate ``config`` and construct ``registry[config["name"]]``."""
    if not isinstance(config, dict):
        raise TypeError(f"{kind} config must be a dict like {{'name': ..., ...}}, got {type(config).__name__}")
    if "name" not in config:
        raise ValueError(f"{kind} config has no 'name' field; choose one of {sorted(registry)}")
    name = config["name"]
    if name not in registry:
        raise ValueError(f"unknown {kind} name {name!r} in config; choose one of {sorted(registry)}")
    try:
        json.dumps(config)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{kind} config for {name!r} is not JSON-serialisable ({error}); use plain "
                         "numbers, strings, lists and dicts") from error
    kwargs = {k: v for k, v in config.items() if k != "name"}
    cls: Any = registry[name]
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            allowed = sorted(k for k in params if k != "self")
            raise ValueError(f"{kind} config for {name!r} has unknown field(s) {unknown}; allowed: {allowed}")
    return cls(**kwargs)


def build_network(config: dict) -> nn.Module:
    """Construct the registered network ``config["name"]`` with the remaining fields as arguments."""
    return build_from_registry(config, _NETWORKS, "network")
