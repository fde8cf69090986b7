"""The model directory: everything needed to rebuild a trained network and run it, without pickle.

Layout::

    MODEL_DIR/
      model.json           # the ModelSpec below, as JSON
      weights.safetensors  # the network's state dict

``model.json`` fields:

* ``format_version`` (int): ``FORMAT_VERSION``; readers refuse newer versions.
* ``network`` (dict): ``medcore.networks.build_network`` config (``model.config``).
* ``preprocessing`` (list of dicts): transform configs for ``medcore.transforms.from_config``,
  applied to the image alone (no label) before inference; geometric ones are inverted afterwards.
* ``inference`` (dict): ``roi_size``, ``overlap``, ``mode`` (``constant``/``gaussian``),
  ``sigma_scale``, ``sw_batch_size``, ``tta`` (``false``, ``true`` = all flips, or a list of
  spatial axes to flip), ``activation`` (``softmax``/``sigmoid``).
* ``postprocessing`` (list of dicts): transform configs applied to the label map after inference,
  e.g. ``KeepLargestConnectedComponent`` for the classes where validation showed it helps (version 2).
* ``labels`` (dict): class name -> integer label written in the output, e.g. ``{"background": 0,
  "anterior": 1}``; channel ``i`` of the network is label ``i``.
* ``provenance`` (dict): JSON facts about training (run id, data version, metrics, medcore
  version...). Never patient data.

``save_model_dir`` (a network and its settings) and ``write_model_dir`` (a spec and weights) build the
directory beside the target and rename it into place, so readers see the old directory or the complete
new one. ``read_spec`` (a file) and ``parse_spec`` (its parsed content, e.g. received in a message)
validate ``model.json``. ``load_model_dir`` rebuilds the network from its config and loads the weights
with safetensors (or ``torch.load(weights_only=True)`` for ``.pt``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medcore.utils.atomic import atomic_dir, atomic_write_bytes, atomic_write_text

FORMAT_VERSION = 2  # 2: ``postprocessing``
SPEC_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"

DEFAULT_INFERENCE: dict[str, Any] = {
    "roi_size": [96, 96, 96], "overlap": 0.5, "mode": "gaussian", "sigma_scale": 0.125, "sw_batch_size": 4,
    "tta": False, "activation": "softmax",
}


@dataclass
class ModelSpec:
    """The parsed ``model.json``; see the module docstring for each field."""

    network: dict
    preprocessing: list = field(default_factory=list)
    postprocessing: list = field(default_factory=list)
    inference: dict = field(default_factory=lambda: dict(DEFAULT_INFERENCE))
    labels: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"


def _check_inference(inference: dict, where: str) -> dict:
    unknown = sorted(set(inference) - set(DEFAULT_INFERENCE))
    if unknown:
        raise ValueError(f"{where}: unknown inference setting(s) {unknown}; allowed: {sorted(DEFAULT_INFERENCE)}")
    merged = {**DEFAULT_INFERENCE, **inference}
    if merged["mode"] not in ("constant", "gaussian"):
        raise ValueError(f"{where}: inference.mode must be 'constant' or 'gaussian', got {merged['mode']!r}")
    if merged["activation"] not in ("softmax", "sigmoid"):
        raise ValueError(f"{where}: inference.activation must be 'softmax' or 'sigmoid', got {merged['activation']!r}")
    if not 0 <= float(merged["overlap"]) < 1:
        raise ValueError(f"{where}: inference.overlap must lie in [0, 1), got {merged['overlap']}")
    if not isinstance(merged["tta"], (bool, list)):
        raise ValueError(f"{where}: inference.tta must be true, false or a list of spatial axes, got {merged['tta']!r}")
    return merged


def _check_labels(labels: dict, where: str) -> dict:
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, int) for k, v in labels.items()):
        raise ValueError(f"{where}: labels must map class names to integer labels, e.g. {{'background': 0}}")
    return dict(labels)


def make_spec(network: dict, preprocessing: list | None = None, inference: dict | None = None,
              labels: dict | None = None, provenance: dict | None = None,
              postprocessing: list | None = None) -> ModelSpec:
    """A validated ``ModelSpec`` (inference settings default to ``DEFAULT_INFERENCE``)."""
    where = "model spec"
    if not isinstance(network, dict) or "name" not in network:
        raise ValueError(f"{where}: network must be a build_network config dict with a 'name'")
    pre, post = list(preprocessing or []), list(postprocessing or [])
    for name, configs in (("preprocessing", pre), ("postprocessing", post)):
        if not all(isinstance(t, dict) and "name" in t for t in configs):
            raise ValueError(f"{where}: {name} must be a list of transform configs (dicts with 'name')")
    spec = ModelSpec(network=dict(network), preprocessing=pre, postprocessing=post,
                     inference=_check_inference(dict(inference or {}), where),
                     labels=_check_labels(dict(labels or {}), where), provenance=dict(provenance or {}))
    try:
        json.dumps(asdict(spec))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: every field must be JSON-serialisable ({error})") from error
    return spec


def save_model_dir(directory: str | os.PathLike, model: nn.Module, preprocessing: list | None = None,
                   inference: dict | None = None, labels: dict | None = None,
                   provenance: dict | None = None, postprocessing: list | None = None) -> Path:
    """Write ``model`` (built by ``build_network``, so it has ``.config``) as a model directory."""
    if not hasattr(model, "config"):
        raise ValueError("model has no .config; build it with medcore.networks.build_network so it can be rebuilt")
    config: dict = model.config  # type: ignore[assignment]  # set by build_network (nn.Module types it loosely)
    spec = make_spec(config, preprocessing, inference, labels, provenance, postprocessing)
    return write_model_dir(directory, spec, model.state_dict())


def write_model_dir(directory: str | os.PathLike, spec: ModelSpec, state: dict[str, torch.Tensor]) -> Path:
    """Write ``spec`` and the weights ``state`` as a model directory, atomically; a folder that is not a model
    directory is never replaced."""
    from safetensors.torch import save

    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or
                               (any(directory.iterdir()) and not (directory / SPEC_FILE).is_file())):
        raise FileExistsError(f"{directory}: exists and is not a model directory (no {SPEC_FILE}); refusing to "
                              "replace it - choose a new path or remove it")
    state = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    with atomic_dir(directory) as staging:
        atomic_write_bytes(staging / WEIGHTS_FILE, save(state, metadata={"format": "pt"}))
        atomic_write_text(staging / SPEC_FILE, spec.to_json())
    return directory


def read_spec(directory: str | os.PathLike) -> ModelSpec:
    """Parse and validate ``directory/model.json``."""
    path = Path(directory) / SPEC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no model.json; MODEL_DIR must be a directory written by "
                                f"medcore.inferers.save_model_dir (training saves one)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error}); re-export the model directory") from error
    return parse_spec(raw, str(path))


def parse_spec(raw: Any, where: str) -> ModelSpec:
    """Validate the parsed content of a ``model.json`` (``where`` names it in errors)."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a JSON object")
    version = raw.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"{where}: missing or invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{where}: format_version {version} is newer than this medcore reads ({FORMAT_VERSION}); "
                         "upgrade medcore")
    if "network" not in raw:
        raise ValueError(f"{where}: no 'network' config; the model cannot be rebuilt")
    unknown = sorted(set(raw) - {"format_version", "network", "preprocessing", "postprocessing", "inference", "labels",
                                 "provenance"})
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}")
    try:
        return make_spec(raw["network"], raw.get("preprocessing"), raw.get("inference"), raw.get("labels"),
                         raw.get("provenance"), raw.get("postprocessing"))
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from error


def read_state(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights of a model directory, read without pickle."""
    directory = Path(directory)
    path = directory / WEIGHTS_FILE
    if path.is_file():
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"{path}: cannot read safetensors weights ({error}); the file may be truncated") from error
    legacy = directory / "weights.pt"
    if legacy.is_file():
        state = torch.load(legacy, map_location="cpu", weights_only=True)
        if isinstance(state, dict):
            return state
        raise ValueError(f"{legacy}: does not hold a state dict")
    raise FileNotFoundError(f"{path}: no weights in the model directory; save it with save_model_dir")


def load_model_dir(directory: str | os.PathLike, device: torch.device | str = "cpu",
                   channels_last: bool | None = None) -> tuple[nn.Module, ModelSpec]:
    """Rebuild the network from ``model.json``, load its weights, move it to ``device``, set eval mode.

    ``channels_last`` (default: on CPU) stores 3D conv weights channels-last, which oneDNN runs
    2-3x faster; ``predict_volume`` notices and feeds windows in the same layout.
    """
    from medcore.networks import build_network

    spec = read_spec(directory)
    try:
        model = build_network(spec.network)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{Path(directory) / SPEC_FILE}: network config cannot be built ({error})") from error
    try:
        model.load_state_dict(read_state(directory), strict=True)
    except RuntimeError as error:
        raise ValueError(f"{Path(directory) / WEIGHTS_FILE}: weights do not fit the network in model.json "
                         f"({str(error).splitlines()[0]}); the directory mixes two models - re-save it") from error
    model = model.to(device).eval()
    if channels_last is None:
        channels_last = torch.device(device).type == "cpu"
    if channels_last and any(p.ndim == 5 for p in model.parameters()):
        model = model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]  # torch stubs lack it
    return model, spec
