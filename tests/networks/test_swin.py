"""Shifted-window attention: each token only sees its window, padding never leaks in."""

from __future__ import annotations

import torch

from medcore.networks.swin import SwinBlock, cyclic_shift, cyclic_unshift, merge, partition, window_mask


def test_partition_merge_round_trip_and_cyclic_shift_is_roll():
    x = torch.randn(2, 6, 4, 8, 3)
    windows = partition(x, [3, 2, 4])
    assert windows.shape == (2 * 2 * 2 * 2, 24, 3)
    assert torch.equal(windows[0].reshape(3, 2, 4, 3), x[0, :3, :2, :4])
    assert torch.equal(merge(windows, [3, 2, 4], 2, [6, 4, 8]), x)
    shifted = cyclic_shift(x, [1, 0, 3], [1, 2, 3])
    assert torch.equal(shifted, torch.roll(x, [-1, 0, -3], [1, 2, 3]))
    assert torch.equal(cyclic_unshift(shifted, [1, 0, 3], [1, 2, 3]), x)


def test_window_mask_blocks_padding_keys():
    allowed = window_mask([5, 6], [8, 8], [4, 4], [0, 0], torch.device("cpu"))
    assert allowed.shape == (4, 16, 16)
    # window (1, 1) covers rows 4..7, cols 4..7; only row 4 and cols 4, 5 are inside the 5x6 image
    keys = allowed[3, 0].reshape(4, 4)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[0, :2] = True
    assert torch.equal(keys, expected)


def dependency(block: SwinBlock, size: list[int], query: tuple[int, int]) -> torch.Tensor:
    """Which input tokens the attention output at ``query`` depends on (bool map)."""
    torch.manual_seed(0)
    x = torch.randn(1, *size, block.norm1.normalized_shape[0], requires_grad=True)
    allowed = window_mask(size, [(s + w - 1) // w * w for s, w in zip(size, block.window)], block.window,
                          block.shift, x.device)
    block.mlp = torch.nn.Identity()  # keep only the attention path (and residual)
    out = block(x, allowed)
    out[(0, *query)].sum().backward()
    return x.grad[0].abs().sum(-1) > 0


def test_plain_windows_are_local_including_padded_edge():
    block = SwinBlock(8, 2, [4, 4], [0, 0], 2.0, True, 0.0)
    dep = dependency(block, [10, 10], (9, 9))
    expected = torch.zeros(10, 10, dtype=torch.bool)
    expected[8:, 8:] = True  # the last window is padded from 2x2 to 4x4
    assert torch.equal(dep, expected)


def test_shifted_windows_do_not_wrap_around():
    block = SwinBlock(8, 2, [4, 4], [2, 2], 2.0, True, 0.0)
    # shifted windows start at -2: [-2, 2), [2, 6), [6, 10); the corner token sees only [0, 2)^2
    corner = dependency(block, [10, 10], (0, 0))
    expected = torch.zeros(10, 10, dtype=torch.bool)
    expected[:2, :2] = True
    assert torch.equal(corner, expected)
    middle = dependency(block, [10, 10], (3, 7))
    expected = torch.zeros(10, 10, dtype=torch.bool)
    expected[2:6, 6:10] = True
    assert torch.equal(middle, expected)
