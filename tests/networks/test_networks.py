"""Every registered network: forward/backward in 2D and 3D, config + weights round trip, export."""

from __future__ import annotations

import json

import pytest
import torch

from medcore.networks import build_network, load_network, network_names, read_weights, save_network

from .conftest import TINY, example_size, size_multiple, tiny_config

CASES = [(name, dims) for name in TINY for dims in (2, 3)]


def seeded(config: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(config)


def first(out):
    return out[0] if isinstance(out, list) else out


def test_registry_lists_every_network():
    assert set(TINY) <= set(network_names())


@pytest.mark.parametrize("name,dims", CASES)
def test_forward_backward_and_round_trip(name, dims, tmp_path):
    """Train-mode forward and backward reach every parameter; config + safetensors rebuild the same net."""
    net = seeded(tiny_config(name, dims)).train()
    size = example_size(name, dims)
    x = torch.randn(1, 2, *size, requires_grad=True)
    out = net(x)
    outputs = out if isinstance(out, list) else [out]
    assert outputs[0].shape == (1, 3, *size)
    loss = sum(o.square().mean() for o in outputs)
    loss.backward()
    assert torch.isfinite(loss)
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    assert x.grad is not None and torch.isfinite(x.grad).all()

    net.eval()
    config = json.loads(json.dumps(net.config))
    assert config["name"] == name and config == net.config
    save_network(net, tmp_path)
    torch.manual_seed(123)  # the rebuilt network starts from different random weights
    rebuilt = load_network(tmp_path).eval()
    with torch.no_grad():
        expected = net(x)
        assert torch.equal(rebuilt(x), expected)
    # a plain state dict loaded with weights_only=True works too
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    other = build_network(config).eval()
    other.load_state_dict(read_weights(tmp_path / "weights.pt"))
    with torch.no_grad():
        assert torch.equal(other(x), expected)


# Export traces with symbolic sizes; a size that is 1 somewhere inside the network (one ViT patch,
# one Swin window) gets specialised, so the example inputs keep those at 2 or more.
EXPORT_CASES = {
    "unet": (3, [16, 12, 8], 16),
    "dynunet": (3, [16, 12, 8], 16),
    "segresnet": (3, [16, 12, 8], 16),
    "unetr": (3, [32, 32, 32], 8),
    "swin_unetr": (2, [64, 64], 7),  # 3D (128^3, ~15 s export): python -m benchmarks.export_check
}


@pytest.mark.parametrize("name", list(EXPORT_CASES))
def test_torch_export_with_dynamic_spatial_size(name):
    from torch.export import Dim, export

    dims, size, top = EXPORT_CASES[name]
    net = seeded(tiny_config(name, dims)).eval()
    multiple = size_multiple(name)
    dynamic = {2 + i: multiple * Dim(f"n{i}", min=s // multiple, max=top) for i, s in enumerate(size)}
    program = export(net, (torch.randn(1, 2, *size),), dynamic_shapes={"x": dynamic})
    x = torch.randn(1, 2, size[0] + multiple, *size[1:-1], size[-1] + multiple)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), net(x), atol=1e-5, rtol=1e-4)


def test_onnx_export_has_symbolic_spatial_axes(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from torch.export import Dim

    net = seeded(tiny_config("unet", 2)).eval()
    path = tmp_path / "unet.onnx"
    dims = {2 + i: 4 * Dim(f"n{i}", min=2, max=32) for i in range(2)}
    torch.onnx.export(net, (torch.randn(1, 2, 16, 12),), str(path), dynamic_shapes={"x": dims}, dynamo=True,
                      verbose=False)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    shape = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in shape[:2]] == [1, 2]
    assert all(d.dim_param and not d.dim_value for d in shape[2:])
    from onnx.reference import ReferenceEvaluator

    x = torch.randn(1, 2, 8, 20)
    (got,) = ReferenceEvaluator(model).run(None, {model.graph.input[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), net(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list(TINY))
def test_torch_compile_traces_without_graph_breaks(name):
    """``fullgraph=True`` fails on any graph break; the aot_eager backend avoids C++ compile time."""
    torch._dynamo.reset()
    net = seeded(tiny_config(name, 2)).eval()
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True, dynamic=False)
    x = torch.randn(1, 2, *example_size(name, 2))
    with torch.no_grad():
        torch.testing.assert_close(first(compiled(x)), first(net(x)), atol=1e-5, rtol=1e-4)


def test_build_network_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown network name 'nope'"):
        build_network({"name": "nope"})
    with pytest.raises(ValueError, match="no 'name'"):
        build_network({"spatial_dims": 3})
    with pytest.raises(ValueError, match="unknown field.*'chanels'"):
        build_network({"name": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2, "chanels": [4, 8]})
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        build_network({"name": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
                       "channels": torch.tensor([4, 8])})
    with pytest.raises(ValueError, match="group norm"):
        build_network({"name": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2, "channels": [6, 12],
                       "strides": [2], "norm": ["group", {"num_groups": 4}]})


def test_load_network_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="network.json"):
        load_network(tmp_path)
    net = seeded(tiny_config("unet", 2))
    save_network(net, tmp_path)
    config = dict(net.config, channels=[8, 16, 32])
    (tmp_path / "network.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not fit the network"):
        load_network(tmp_path)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(TINY))
def test_cuda_matches_cpu(name):
    net = seeded(tiny_config(name, 3)).eval()
    x = torch.randn(1, 2, *example_size(name, 3))
    conv_tf32, matmul_tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # full float32 on both sides
    try:
        with torch.no_grad():
            expected = net(x)
            got = net.cuda()(x.cuda()).cpu()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv_tf32, matmul_tf32
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)
